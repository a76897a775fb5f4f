"""Layers of the Review widget, placed exactly on the slide; the camera moves it makes.

Coordinates: the slide layer draws level-0 pixel ``i`` with its centre at ``i * s0`` µm
(``s0`` the slide's µm/px), so the level-0 point ``u`` (pixel corners at integers, as in
GeoJSON) sits at ``(u - 0.5) * s0``. A store pixel ``r`` covers level-0 ``[r d, (r + 1) d)``
and its centre ``(r + 0.5) d`` therefore lies at ``(r d + (d - 1) / 2) * s0``: the store
layers get scale ``d s0`` and that translate, the same rule the prediction layers follow.
Rectangles the user draws are mapped back through the layers' own transforms, whatever
scale the Shapes layer has.

Plain functions and layer-data dictionaries; nothing here computes or touches files.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from napari_msunet._napari._layer_info import Kind, LayerClass, LayerInfo, kind_of, layer_info
from napari_msunet._napari._overlay_style import EDIT_OPACITY
from napari_msunet.palette import REVIEW_COLOURS

__all__ = [
    "annotation_rank",
    "candidate_shapes",
    "center_on",
    "edit_layer_kwargs",
    "is_annotation_layer",
    "keep_edges_visible",
    "level0_of",
    "level0_rect_of_shape",
    "slide_scale",
    "slide_units",
    "store_info",
    "store_layer_kwargs",
]


def is_annotation_layer(layer: Any) -> bool:
    """Labels an annotation can come from: ours (annotation or plain labels), or anyone's."""
    from napari.layers import Labels

    return isinstance(layer, Labels) and kind_of(layer) in (Kind.ANNOTATION, Kind.LABELS, None)


def annotation_rank(layer: Any) -> int:
    """Order of preference: a review store first (continue it), then annotations, then labels."""
    info = layer_info(layer)
    if info is not None and info.regions is not None:
        return 0
    return 1 if info is not None and info.kind is Kind.ANNOTATION else 2


def level0_of(layer: Any) -> Any:
    """The finest level of a Labels layer (its data when single-scale)."""
    return layer.data[0] if layer.multiscale else layer.data


def slide_scale(slide_layer: Any) -> float:
    """µm per level-0 pixel of a slide layer (1 when unknown: the layer is in pixels)."""
    info = layer_info(slide_layer)
    return float(info.mpp or 1.0) if info is not None else 1.0


def _colormap(store: Any) -> dict[int | None, tuple[float, ...]]:
    colors: dict[int | None, tuple[float, ...]] = {None: (0, 0, 0, 0), 0: (0, 0, 0, 0)}
    for i, c in enumerate(store.class_colors or []):
        if i > 0:
            colors[i] = (*(v / 255 for v in c[:3]), 1.0)
    return colors


def _placement(store: Any, s0: float, origin: tuple[int, int] = (0, 0)) -> dict[str, Any]:
    d = store.downsample
    return {
        "scale": (d * s0, d * s0),
        "translate": ((origin[0] * d + (d - 1) / 2) * s0, (origin[1] * d + (d - 1) / 2) * s0),
    }


def store_info(store: Any, slide_layer: Any = None) -> LayerInfo:
    """The record of a layer showing a store: an annotation of the slide, with the store's
    corrected regions (what fine-tuning trusts) and its µm/px."""
    slide_info = layer_info(slide_layer)
    slide = slide_info.slide if slide_info is not None else None
    colours = store.class_colors or []
    return LayerInfo(
        kind=Kind.ANNOTATION,
        path=store.mask_path,
        regions=store.regions_path,
        store=store.root,
        slide=slide if slide is not None else store.info.get("slide"),
        mpp=store.mpp,
        classes=tuple(
            LayerClass(i, name, tuple(colours[i][:3]) if i < len(colours) else None)
            for i, name in enumerate(store.class_names or [])
            if i > 0
        ),
        details={"downsample": store.downsample},
    )


def store_layer_kwargs(store: Any, slide_layer: Any) -> dict[str, Any]:
    """Settings of the slide-level (multiscale, read-only) annotation layer of a store."""
    kwargs: dict[str, Any] = {
        "name": f"{store.root.parent.name.removesuffix('.msunet')} annotation (corrected)",
        "opacity": 0.45,
        "colormap": _colormap(store),
        "metadata": store_info(store, slide_layer).as_metadata(),
        **_placement(store, slide_scale(slide_layer)),
    }
    units = slide_units(slide_layer)
    if units:
        kwargs["units"] = units
    return kwargs


def edit_layer_kwargs(store: Any, slide_layer: Any, window: tuple[int, int, int, int]):
    """Settings of the editable (single-scale) Labels layer of one store window."""
    kwargs: dict[str, Any] = {
        "name": "annotation region (edit, then Apply)",
        "opacity": EDIT_OPACITY,  # filled, to see each stroke; light, to see the tissue
        "colormap": _colormap(store),
        "metadata": LayerInfo(
            kind=Kind.ANNOTATION_EDIT,
            store=store.root,
            window=window,
            region=store.to_level0(*window),
        ).as_metadata(),
        **_placement(store, slide_scale(slide_layer), (window[0], window[1])),
    }
    units = slide_units(slide_layer)
    if units:
        kwargs["units"] = units
    return kwargs


def level0_rect_of_shape(shape_layer: Any, index: int, slide_layer: Any):
    """Level-0 ``(y, x, h, w)`` of a drawn shape's bounding box (through the layers' transforms)."""
    verts = np.asarray(shape_layer.data[index], dtype=float)[:, -2:]
    pts = []
    for v in verts:
        world = shape_layer.data_to_world(v)
        pts.append(np.asarray(slide_layer.world_to_data(world), dtype=float)[-2:] + 0.5)
    pts = np.asarray(pts)
    y0, x0 = np.floor(pts.min(axis=0)).astype(int)
    y1, x1 = np.ceil(pts.max(axis=0)).astype(int)
    return int(y0), int(x0), int(y1 - y0), int(x1 - x0)


def slide_units(slide_layer: Any) -> tuple[str, str] | None:
    """``("um", "um")`` when the slide layer is in µm (so new layers match it), else ``None``."""
    info = layer_info(slide_layer)
    return ("um", "um") if info is not None and info.mpp else None


def candidate_shapes(
    candidates: list[Any], s0: float, units: tuple[str, str] | None = None
) -> tuple[list[np.ndarray], dict[str, Any]]:
    """Rectangles around suspected missing annotations, as a Shapes layer in µm."""
    shapes = []
    for c in candidates:
        y, x, h, w = c.bbox
        shapes.append(np.array([[y, x], [y, x + w], [y + h, x + w], [y + h, x]], float))
    kwargs = {
        "name": "suspected missing annotations",
        "shape_type": "rectangle",
        "edge_color": [tuple(v / 255 for v in REVIEW_COLOURS["missing"])] * len(shapes) or "cyan",
        "face_color": "transparent",
        "edge_width": 3 * s0,
        "scale": (s0, s0),
        "translate": (-0.5 * s0, -0.5 * s0),
        "metadata": LayerInfo(kind=Kind.CANDIDATES).as_metadata(),
    }
    if units:
        kwargs["units"] = units
    return shapes, kwargs


EDGE_SCREEN_PX = 2.5
"""Outline width of the review's rectangles on screen, whatever the zoom."""


def _camera(viewer: Any) -> Any:
    scene = getattr(viewer, "scene", None)  # napari >= 0.9 moved the camera there
    return scene.camera if scene is not None else viewer.camera


def keep_edges_visible(viewer: Any, layer: Any, screen_px: float = EDGE_SCREEN_PX) -> None:
    """Keep a Shapes layer's outlines ``screen_px`` wide on screen as the user zooms.

    napari draws edge widths in data units, so a fixed width vanishes on a zoomed-out slide
    (a 3-pixel outline on a 100,000-pixel slide) and swamps the tissue when zoomed in. The
    width follows the camera's zoom until the layer leaves the viewer.
    """
    camera = _camera(viewer)
    scale = float(layer.scale[-1])

    def update(_event: Any = None) -> None:
        if layer not in viewer.layers:
            camera.events.zoom.disconnect(update)
            return
        width = screen_px / max(camera.zoom * scale, 1e-12)
        layer.current_edge_width = width
        if layer.nshapes:
            layer.edge_width = width

    camera.events.zoom.connect(update)
    update()


#: The least field of view when the review moves to a region: a pathologist judges a region
#: with its surroundings (issue 15: small suspects zoomed far beyond what they needed).
MIN_FIELD_UM = 400.0
#: The same for a slide of unknown µm/px, in level-0 pixels (400 µm at 0.5 µm/px).
MIN_FIELD_PX = 800.0


def center_on(viewer: Any, slide_layer: Any, bbox: tuple[int, int, int, int]) -> None:
    """Centre the view on a level-0 box, zoomed so that it fills about half the canvas, but
    showing at least :data:`MIN_FIELD_UM` across and never beyond the scan's resolution
    (one screen pixel per level-0 pixel)."""
    y, x, h, w = bbox
    center = slide_layer.data_to_world([y + h / 2 - 0.5, x + w / 2 - 0.5])
    s0 = slide_scale(slide_layer)
    camera = _camera(viewer)
    canvas = getattr(viewer, "canvas", None)
    size = getattr(canvas, "size", None) if canvas is not None else None
    if size is None:
        size = viewer._canvas_size
    ch, cw = (float(v) for v in size)
    camera.center = tuple(float(v) for v in center[-2:])
    fills_half = 0.5 * min(ch / max(h * s0, 1e-9), cw / max(w * s0, 1e-9))
    field = MIN_FIELD_UM if slide_units(slide_layer) else MIN_FIELD_PX * s0
    camera.zoom = min(fills_half, min(ch, cw) / field, 1.0 / max(s0, 1e-12))
