"""Show the demo's results in napari: slide, prediction and TP/FP/FN overlay."""

from __future__ import annotations

from typing import Any


def show_demo(results: dict[str, Any]) -> None:
    """Open a napari window with the demo slide, the prediction and the comparison."""
    import napari
    from napari_msunet._napari._comparison_colours import overlay_colormap
    from napari_msunet._napari._reader import mask_layer, slide_layer
    from napari_msunet.io.slide import open_slide

    files, evaluation = results["files"], results["evaluation"]
    viewer = napari.Viewer(title="napari-msunet demo")
    data, kwargs, _ = slide_layer(open_slide(files.slide))
    viewer.add_image(data, **kwargs)
    pred = results["prediction"]
    data, kwargs, _ = mask_layer(pred.outputs.labels)
    kwargs["name"] = "prediction"
    # hidden under the comparison: mixed colours would read as neither (its eye shows it)
    viewer.add_labels(data, visible=False, **kwargs)
    viewer.add_labels(
        evaluation.overlay_levels,
        name="TP (blue) / FP (orange) / FN (purple)",
        multiscale=True,
        scale=(pred.mpp, pred.mpp),
        colormap=overlay_colormap(None),
        opacity=0.6,
        units=("um", "um"),
    )
    canvas = getattr(viewer, "canvas", None)  # napari >= 0.9 moved the scale bar there
    scale_bar = canvas.overlays.scale_bar if canvas is not None else viewer.scale_bar
    scale_bar.visible = True
    fg = evaluation.metrics.foreground
    viewer.status = f"slide-level foreground IoU {fg.iou:.3f}, Dice {fg.dice:.3f}"
    napari.run()
