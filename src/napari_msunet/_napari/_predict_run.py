"""Run a prediction from the GUI and watch it fill in: :func:`start_prediction`.

The Segment widget, and the Fine-tune widget after training, call :func:`start_prediction`.
On the GUI thread it only reads the model's header and the slide's geometry (milliseconds)
and makes the prediction's Labels layer (multiscale, in µm), whose levels read the label
map on disk in whatever state it is (:func:`~napari_msunet.inference.live.live_levels`):
empty at first, the unfinished store while the engine writes it, the finished one after.
The engine (:func:`~napari_msunet.inference.engine.iter_predict_slide`) runs in a napari worker,
which also loads the model; a small thread beside it keeps a
:class:`~napari_msunet.inference.live.LivePyramid` current as tiles land on disk, so a
zoomed-out view fills in too (:mod:`~napari_msunet._napari._live_layer`). The GUI thread then
only redraws the layer, at most a few times per second, and gets at most five progress
records per second (the engine yields after every batch).

Making the layer at the click, not when the first tiles finish, puts napari's own cost of a
new Labels layer (about a second on a busy two-core machine) where the user expects a
reaction, instead of freezing the window at a random moment of the run. The first Labels
layer of a session also compiles napari's colouring code (numba) and imports pandas:
:func:`~._warm_up.warm_up` does that in a background thread at the plugin's first use.

Where results go: ``<workspace>/predictions/<model>`` for a whole slide (see
:func:`~napari_msunet._napari._workspace.workspace_dir`), with ``@<µm/px>um`` appended when
the resolution is not the model's own and ``-view-<hash>`` for a "current view only" run (its
own folder: a window is not the whole slide). A rerun resumes an interrupted folder; a
finished one is reused if the same model made it, and recomputed only with ``overwrite``.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from napari.utils.notifications import show_info, show_warning

from napari_msunet._napari._layer_info import (
    Kind,
    LayerClass,
    LayerInfo,
    layer_info,
    prediction_layers,
    set_layer_info,
)
from napari_msunet._napari._live_layer import Poller, Redraw, Shown
from napari_msunet._napari._prediction_versions import hide_superseded
from napari_msunet._napari._tasks import Task, start_task
from napari_msunet._napari._workspace import workspace_dir
from napari_msunet.errors import MsunetError

__all__ = [
    "PredictionRun",
    "prediction_dir",
    "prediction_layers",
    "start_prediction",
    "visible_region",
]

#: Fewest seconds between two progress records sent to the GUI thread (the engine yields
#: after every batch; on a fast GPU that can be dozens per second, each redrawing widgets).
RECORD_INTERVAL = 0.2
#: Seconds the worker waits before its setup (loading the model, opening the outputs, mostly
#: Python that holds the interpreter lock), so the GUI first draws the new layer undisturbed.
START_DELAY = 0.15


def prediction_dir(
    slide_path: str | Path,
    model_path: str | Path,
    target_mpp: float,
    model_mpp: float,
    region: tuple[int, int, int, int] | None = None,
) -> Path:
    """The folder a prediction of ``slide_path`` by ``model_path`` goes to (see the module
    docstring); the name says what would make two predictions differ."""
    name = Path(model_path).stem
    if not math.isclose(target_mpp, model_mpp, rel_tol=1e-3):
        name += f"@{target_mpp:g}um"
    if region is not None:
        key = json.dumps([int(v) for v in region])
        name += "-view-" + hashlib.sha1(key.encode()).hexdigest()[:10]
    return workspace_dir(slide_path) / "predictions" / name


def _camera_and_size(viewer: Any) -> tuple[Any, tuple[float, float]]:
    scene = getattr(viewer, "scene", None)  # napari >= 0.9 moved the camera there
    camera = scene.camera if scene is not None else viewer.camera
    canvas = getattr(viewer, "canvas", None)
    size = getattr(canvas, "size", None) if canvas is not None else None
    if size is None:
        size = viewer._canvas_size
    return camera, (float(size[0]), float(size[1]))


def visible_region(viewer: Any, slide_layer: Any) -> tuple[int, int, int, int]:
    """Level-0 pixels ``(y0, x0, h, w)`` of the slide that the canvas shows now.

    Taken from the camera (centre and zoom) and the canvas size, mapped through the slide
    layer's own transform and clipped to the slide. A view that misses the slide entirely
    gives the whole slide.
    """
    camera, (ch, cw) = _camera_and_size(viewer)
    cy, cx = (float(v) for v in camera.center[-2:])
    zoom = float(camera.zoom)
    hh, hw = ch / (2 * zoom), cw / (2 * zoom)
    ndim = viewer.dims.ndim
    corners = []
    for y, x in ((cy - hh, cx - hw), (cy + hh, cx + hw)):
        world = [0.0] * (ndim - 2) + [y, x]
        corners.append(slide_layer.world_to_data(world)[-2:])
    (ay, ax), (by, bx) = corners
    H, W = slide_layer.data[0].shape[:2] if slide_layer.multiscale else slide_layer.data.shape[:2]
    y0, y1 = max(0, math.floor(min(ay, by))), min(H, math.ceil(max(ay, by)))
    x0, x1 = max(0, math.floor(min(ax, bx))), min(W, math.ceil(max(ax, bx)))
    if y1 <= y0 or x1 <= x0:
        return (0, 0, int(H), int(W))
    return (y0, x0, y1 - y0, x1 - x0)


@dataclass
class PredictionRun:
    """What :func:`start_prediction` did (``task.result``; also passed to ``on_done``).

    Attributes
    ----------
    folder
        The prediction folder.
    labels
        The label map's final path (it exists when ``completed``; an interrupted run's
        tiles are in ``<labels>.partial``).
    completed
        Whether the folder holds a finished prediction now.
    reused
        True when a finished prediction by the same model was shown instead of recomputed.
    result
        The engine's :class:`~napari_msunet.inference.progress.PredictionResult` (``None``
        when reused).
    layer
        The napari Labels layer showing it.
    """

    folder: Path
    labels: Path
    completed: bool
    reused: bool = False
    result: Any = None
    layer: Any = None


# -------------------------------------------------------------------------- planning
@dataclass(frozen=True)
class _Plan:
    """Everything about a run that the GUI thread knows before it starts."""

    slide: Path
    slide_mpp: float | None  # the slide's µm/px: its own, or the one the user gave
    given_mpp: float | None  # the one the user gave for a slide that does not state it
    display_mpp: float | None  # the slide layer's scale (None: the layer is in pixels)
    model: Path
    header: Any
    config: Any
    folder: Path
    shape: tuple[int, int]
    downsample: tuple[float, float]
    region: tuple[int, int, int, int] | None

    @property
    def labels(self) -> Path:
        return self.folder / "labels.ome.zarr"

    @property
    def kind(self) -> str:
        return "view" if self.region is not None else "slide"


def _plan(
    slide_info: LayerInfo,
    model_path: Path,
    region: Any,
    config: Any,
    slide_mpp: float | None = None,
) -> _Plan:
    """Read the model header and the slide's geometry; choose the folder (fast: no pixels)."""
    from napari_msunet.inference.config import InferenceConfig
    from napari_msunet.io.slide import open_slide
    from napari_msunet.io.working_image import working_geometry
    from napari_msunet.models.checkpoint import read_header

    slide_path = slide_info.path
    assert slide_path is not None  # checked by start_prediction
    header = read_header(model_path)
    cfg = config if config is not None else InferenceConfig(target_mpp=header.input_um_per_px)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the reader showed the slide's warnings already
        slide = open_slide(slide_path)
    try:
        given = slide_mpp if slide.mpp is None else None  # the file's own value wins
        geometry = working_geometry(slide, cfg.target_mpp, given)
    finally:
        slide.close()
    folder = prediction_dir(slide_path, model_path, cfg.target_mpp, header.input_um_per_px, region)
    return _Plan(
        slide_path, geometry.slide_mpp, given, slide_info.mpp, model_path,
        header, cfg, folder, geometry.shape, geometry.downsample, region,
    )  # fmt: skip


def _prediction_info(plan: _Plan) -> LayerInfo:
    """The record of a prediction layer: its files, model, slide, µm/px and classes."""
    dy = plan.downsample[0]
    names = list(plan.header.class_names)
    colours = plan.header.class_colours or [(128, 128, 128)] * len(names)
    return LayerInfo(
        kind=Kind.PREDICTION,
        path=plan.labels,
        probabilities=plan.folder / "probabilities.ome.zarr",
        prediction_dir=plan.folder,
        model=plan.model,
        slide=plan.slide,
        mpp=dy * plan.slide_mpp if plan.slide_mpp else None,
        region=plan.region,
        classes=tuple(
            LayerClass(i, n, tuple(int(v) for v in c))  # type: ignore[arg-type]
            for i, (n, c) in enumerate(zip(names, colours, strict=True))
            if i > 0
        ),
    )


def _layer_kwargs(plan: _Plan) -> dict[str, Any]:
    """Layer settings of a prediction: µm scale, class colours, its record (kind "prediction").

    Output pixel ``i`` covers level-0 pixels ``[i d, (i + 1) d)``; napari puts a pixel's
    centre at ``i * scale + translate``, so the translate moves it onto the centre of that
    area, ``(d - 1) / 2`` slide pixels (a fraction of a µm) to the lower right. The scale is
    the slide layer's: µm when the file states its µm/px, pixels when the user gave it.
    """
    s0 = float(plan.display_mpp or 1.0)
    dy, dx = plan.downsample
    info = _prediction_info(plan)
    colormap: dict[int | None, tuple[float, ...]] = {None: (0, 0, 0, 0), 0: (0, 0, 0, 0)}
    for c in info.classes:
        assert c.color is not None
        colormap[c.label] = (*(v / 255 for v in c.color), 1.0)
    return {
        # the slide first: with two slides open, "<model> prediction [1]" said nothing
        "name": f"{Path(plan.slide).name} — {plan.model.stem} prediction"
        + (" (view)" if plan.region else ""),
        "scale": (dy * s0, dx * s0),
        "translate": ((dy - 1) / 2 * s0, (dx - 1) / 2 * s0),
        **({"units": ("um", "um")} if plan.display_mpp else {}),
        "opacity": 0.6,  # 0.5 barely shows a red class on pink H&E
        "colormap": colormap,
        "metadata": info.as_metadata(),
    }


def _reuse_refusal(plan: _Plan) -> str | None:
    """Why the finished prediction in the plan's folder must not be shown as this model's
    (compared by header here; the worker compares the weights), or ``None``."""
    from napari_msunet.io.prediction_record import read_prediction_record

    try:
        record = read_prediction_record(plan.folder)
    except MsunetError as exc:
        return str(exc)
    if record is None:
        return f"{plan.folder}: the finished prediction has no manifest"
    if not record.same_header(plan.header):
        return f"{plan.folder}: holds a finished prediction made with another version of the model"
    if record.region != plan.region:
        return f"{plan.folder}: holds a finished prediction of another window"
    return None


def _check_weights(plan: _Plan, model: Any) -> None:
    from napari_msunet.inference.outputs import model_fingerprint
    from napari_msunet.io.prediction_record import read_prediction_record

    record = read_prediction_record(plan.folder)
    if record is None or record.model_fingerprint != model_fingerprint(model):
        raise MsunetError(
            f"{plan.folder}: holds a finished prediction made with other weights than "
            f"{plan.model.name}; tick 'Replace an existing prediction' to recompute it"
        )


# -------------------------------------------------------------------------- running
def start_prediction(
    viewer: Any,
    slide_layer: Any,
    model_path: str | Path,
    *,
    region: tuple[int, int, int, int] | None = None,
    config: Any = None,
    on_done: Callable[[PredictionRun], None] | None = None,
    on_warning: Callable[[str], None] | None = None,
    overwrite: bool = False,
    slide_mpp: float | None = None,
) -> Task:
    """Predict a slide layer with a model file in a worker; show the result as it grows.

    Parameters
    ----------
    viewer
        The napari viewer that gets (or already has) the prediction layer.
    slide_layer
        An image layer of kind "slide" (from the reader): its record names the file.
    model_path
        A model file (``.safetensors`` with our header).
    region
        Level-0 ``(y0, x0, h, w)`` to compute only the tiles meeting that window (see
        :func:`visible_region`); ``None``: the whole slide.
    config
        An :class:`~napari_msunet.inference.config.InferenceConfig`; ``None``: the defaults
        at the model's own µm/px.
    on_done
        Called on the GUI thread with the :class:`PredictionRun` when the run finishes or is
        cancelled (not after an error, which is shown as a notification).
    on_warning
        Called on the GUI thread with the engine's warning that the slide looks unlike the
        model's training data (also shown as a notification).
    overwrite
        Recompute a finished prediction in the same folder (and discard an interrupted
        one) instead of reusing it.
    slide_mpp
        µm/px of the slide's level 0, for a file that does not state it (ignored when it
        does). Without either the run fails with a message asking for it.

    Returns
    -------
    Task
        Always a task, also when the inputs are wrong (it then fails at once with the
        message, as a notification and in ``task.error``). Cancel with ``task.cancel()``:
        the engine stops at the next batch, keeps what it finished (shown in the layer) and
        a rerun resumes. ``task.result`` is the :class:`PredictionRun`.

    Raises
    ------
    ValueError
        When ``slide_layer`` is not a slide layer of this plugin.
    """
    info = layer_info(slide_layer)
    if info is None or info.kind is not Kind.SLIDE or info.path is None:
        raise ValueError(f"{getattr(slide_layer, 'name', slide_layer)!r} is not a slide layer")
    model_path = Path(model_path)
    region = None if region is None else tuple(int(v) for v in region)
    what = "the current view of " if region is not None else ""
    description = f"Segmenting {what}{info.path.name} with {model_path.name}"
    try:
        plan = _plan(info, model_path, region, config, slide_mpp)
        finished = (plan.labels / "zarr.json").is_file()
        if finished and not overwrite and (why := _reuse_refusal(plan)):
            raise MsunetError(f"{why}; tick 'Replace an existing prediction' to recompute it")
    except MsunetError as exc:
        return _failed(description, exc)
    layer, created = _show_layer(viewer, plan)
    shown = Shown()
    redraw = Redraw(layer, shown)

    def returned(run: PredictionRun) -> None:
        run.layer = layer
        redraw.stop()
        if run.reused:
            show_info(
                f"{layer.name}: showing the finished prediction in {run.folder}; tick "
                "'Replace an existing prediction' to recompute it"
            )
        if on_done is not None:
            on_done(run)

    def errored(exc: BaseException) -> None:
        redraw.stop()
        level0 = layer.data[0] if layer.multiscale else layer.data
        if created and layer in viewer.layers and getattr(level0, "source", 1) is None:
            viewer.layers.remove(layer)  # nothing to show: do not leave an empty layer

    def record(rec: Any) -> None:
        from napari_msunet.inference.domain_check import DOMAIN

        if rec.stage != DOMAIN:
            return
        text = f"{info.path.name}: {rec.check.message(model_path.name)}"
        show_warning(text)
        if on_warning is not None:
            on_warning(text)

    return start_task(
        _worker(plan, overwrite, finished and not overwrite, shown),
        description,
        on_yield=record,
        on_return=returned,
        on_error=errored,
    )


def _failed(description: str, exc: BaseException) -> Task:
    """A task that fails at once with ``exc`` (shown like any task error)."""

    def make(stop):
        raise exc
        yield  # a generator, like every task

    return start_task(make, description)


def _show_layer(viewer: Any, plan: _Plan) -> tuple[Any, bool]:
    """The layer of the plan's folder: the viewer's if it has one, else a new one.

    Returns ``(layer, created)``.
    """
    from napari_msunet.inference.live import live_levels

    levels = live_levels(plan.labels, plan.shape, plan.config.chunk)
    kwargs = _layer_kwargs(plan)
    multiscale = len(levels) > 1
    data = levels if multiscale else levels[0]
    for layer in prediction_layers(viewer):
        info = layer_info(layer)
        if info is None or info.prediction_dir != plan.folder:
            continue
        if layer.multiscale == multiscale:
            layer.data = data
            set_layer_info(layer, _prediction_info(plan))
            layer.refresh()
            return layer, False
        viewer.layers.remove(layer)  # napari cannot switch a layer's multiscale
        break
    hide_superseded(viewer, plan.slide)
    return viewer.add_labels(data, multiscale=multiscale, **kwargs), True


def _worker(plan: _Plan, overwrite: bool, reuse: bool, shown: Shown) -> Callable[[Any], Any]:
    """The worker's generator: loads the model, runs the engine, keeps the pyramid current."""

    def make(stop):
        from napari_msunet.inference.engine import iter_predict_slide
        from napari_msunet.inference.live import LivePyramid
        from napari_msunet.inference.outputs import SlideOutputs
        from napari_msunet.inference.progress import TILES
        from napari_msunet.io.slide import open_slide
        from napari_msunet.models.checkpoint import load_model

        time.sleep(START_DELAY)
        model, header = load_model(plan.model)
        outputs = SlideOutputs.in_dir(plan.folder)
        if reuse:
            _check_weights(plan, model)
            return PredictionRun(plan.folder, outputs.labels, completed=True, reused=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            slide = open_slide(plan.slide)
        try:
            gen = iter_predict_slide(
                slide, model, header, plan.config, outputs, overwrite=overwrite,
                resume=not overwrite, stop=stop, region=plan.region, mpp=plan.given_mpp,
            )  # fmt: skip
            poller, sent = None, 0.0
            try:
                while True:
                    try:
                        record = next(gen)
                    except StopIteration as end:
                        result = end.value
                        break
                    tile = record.stage == TILES
                    if poller is None and tile:  # the store exists from the first record
                        poller = Poller(LivePyramid(outputs.labels), shown)
                    elif poller is not None and not tile:  # the final pyramid comes next
                        poller.stop()
                        poller = None
                    # the engine still checks `stop` before every batch; only the GUI's
                    # share of the records is thinned out
                    now = time.monotonic()
                    if not tile or record.done == record.total or now - sent >= RECORD_INTERVAL:
                        sent = now
                        yield record
            finally:
                gen.close()
                if poller is not None:  # stopped or failed: show what was written
                    poller.stop(final_update=True)
            return PredictionRun(plan.folder, outputs.labels, result.completed, result=result)
        finally:
            slide.close()

    return make
