"""napari reader: slides open as multiscale images in µm; QuPath GeoJSON as labels or shapes.

``napari_get_reader`` opens the file right away (opening is lazy and takes milliseconds) so
that a file we cannot read yields ``None`` and napari tries its other readers; nothing here
ever raises into napari.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

from napari_msunet._napari._annotation_layers import annotation_layers
from napari_msunet._napari._layer_info import Kind, LayerClass, LayerInfo, layer_info
from napari_msunet._napari._responsive import wait_for, wait_responsively
from napari_msunet._napari._viewer_setup import prepare_viewer
from napari_msunet._napari._warm_up import warm_up
from napari_msunet.errors import MsunetError
from napari_msunet.io.slide import Slide, open_slide

log = logging.getLogger(__name__)

LayerData = tuple[Any, dict[str, Any], str]
_GEOJSON_SUFFIXES = (".geojson", ".json")
_SLIDE_SUFFIXES = (
    ".svs",
    ".ndpi",
    ".ome.tif",
    ".ome.tiff",
    ".tif",
    ".tiff",
    ".btf",
    ".png",
    ".jpg",
    ".jpeg",
    ".mrxs",
    ".scn",
    ".bif",
    ".vms",
    ".vmu",
    ".dcm",
)


def napari_get_reader(path: str | list[str]):
    """Return a reader function for ``path``, or ``None`` if we cannot read it."""
    prepare_viewer(_current_viewer())  # outlines, spinner check, short notifications
    if isinstance(path, list):
        if len(path) != 1:
            return None
        path = path[0]
    p = Path(path)

    def build() -> list[LayerData]:
        if p.name.lower().endswith(_GEOJSON_SUFFIXES):
            return geojson_layers(p)
        if p.name.lower().endswith(".zarr"):
            return [mask_layer(p)]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return [slide_layer(open_slide(p))]

    try:  # parsing and rasterising in a thread; the window draws meanwhile
        layers = wait_responsively(("read", str(p)), build)
    except MsunetError as exc:
        log.info("napari-msunet cannot read %s: %s", p, exc)
        return None
    except Exception:  # never raise into napari
        log.exception("napari-msunet failed on %s", p)
        return None
    needs = "labels" if any(kind == "labels" for *_, kind in layers) else "image"

    def read(_path: Any) -> list[LayerData]:
        wait_for(warm_up(needs))  # napari makes the layers at once: their one-off costs first
        return layers

    return read


def _scale(slide: Slide | None) -> tuple[tuple[float, float], tuple[str, str] | None]:
    if slide is None or slide.mpp is None:
        return (1.0, 1.0), None
    return (slide.mpp, slide.mpp), ("um", "um")


def slide_layer(slide: Slide) -> LayerData:
    """A multiscale RGB Image layer, scaled in µm when the slide states its µm/px."""
    scale, units = _scale(slide)
    kwargs: dict[str, Any] = {
        "name": slide.name,
        "multiscale": True,
        "rgb": True,
        "contrast_limits": [0, 255],
        "scale": scale,
        "metadata": LayerInfo(
            kind=Kind.SLIDE,
            path=slide.path,
            mpp=slide.mpp,
            details={
                "mpp_source": slide.mpp_source,
                "magnification": slide.magnification,
                "downsamples": slide.downsamples,
            },
        ).as_metadata(),
    }
    if units:
        kwargs["units"] = units
    return list(slide.levels), kwargs, "image"


def mask_layer(path: Path) -> LayerData:
    """A label mask (e.g. a prediction's ``labels.ome.zarr``) as a multiscale Labels layer in µm,
    coloured by the classes its metadata names."""
    from napari_msunet.io.masks import open_mask

    mask = open_mask(path)
    colors: dict[int | None, tuple[float, ...]] = {None: (0, 0, 0, 0), 0: (0, 0, 0, 0)}
    for c in mask.classes:
        colors[c.label] = (*(v / 255 for v in c.color), 1.0)
    kwargs: dict[str, Any] = {
        "name": path.name if path.name != "labels.ome.zarr" else f"{path.parent.name} labels",
        "multiscale": len(mask.levels) > 1,
        "scale": (mask.mpp, mask.mpp) if mask.mpp else (1.0, 1.0),
        "opacity": 0.5,
        "metadata": LayerInfo(
            kind=Kind.LABELS,
            path=path,
            mpp=mask.mpp,
            classes=tuple(LayerClass(c.label, c.name, c.color) for c in mask.classes),
        ).as_metadata(),
    }
    if len(mask.classes):
        kwargs["colormap"] = colors
    if mask.mpp:
        kwargs["units"] = ("um", "um")
    data = list(mask.levels) if len(mask.levels) > 1 else mask.levels[0]
    return data, kwargs, "labels"


def companion_slide(geojson: Path) -> Path | None:
    """The slide a GeoJSON belongs to: same folder, same name (``a.svs`` for ``a.geojson``
    or ``a.svs.geojson``, as QuPath names exports)."""
    stem = geojson.name[: geojson.name.lower().rfind(".")]
    candidates = [geojson.with_name(stem)] if stem.lower().endswith(_SLIDE_SUFFIXES) else []
    candidates += [geojson.with_name(stem + s) for s in _SLIDE_SUFFIXES]
    return next((c for c in candidates if c.is_file()), None)


def _current_viewer() -> Any:
    try:
        import napari

        return napari.current_viewer()
    except Exception:  # no Qt application, no viewer
        return None


def open_slide_that_fits(path: Path, viewer: Any = None) -> Path | None:
    """The open slide a GeoJSON named unlike any slide belongs to, by its coordinates.

    Among the slides open in ``viewer`` (default: the current one), those whose level-0 size
    holds every annotation (within the 1 % slack of
    :func:`~napari_msunet.io.geojson_fit.check_fits_slide`). One: that one. Several: the
    selected layer's slide if it fits, else the one opened last, said in a notification
    (Import / Export puts the file on another). None: ``None`` (and a notification saying
    so, so that a Shapes layer in pixels is never a silent surprise).
    """
    from napari.utils.notifications import show_info

    from napari_msunet.errors import AnnotationError
    from napari_msunet.io.geojson import read_geojson
    from napari_msunet.io.geojson_fit import check_fits_slide

    viewer = viewer if viewer is not None else _current_viewer()
    if viewer is None:
        return None
    slides = [
        (layer, info.path)
        for layer in viewer.layers
        if (info := layer_info(layer)) is not None and info.kind is Kind.SLIDE and info.path
    ]
    if not slides:
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            annotations = read_geojson(path)
    except AnnotationError:
        return None  # the reader itself reports what is wrong with the file
    fits = []
    for layer, slide_path in slides:
        level0 = layer.data[0].shape[:2] if layer.multiscale else layer.data.shape[:2]
        try:
            check_fits_slide(annotations, level0)
        except AnnotationError:
            continue
        fits.append((layer, Path(slide_path)))
    if not fits:
        show_info(
            f"{path.name}: its coordinates fit none of the open slides; shown as shapes in "
            "level-0 pixels. Open its slide, or use Import / Export to place it."
        )
        return None
    chosen = next((p for layer, p in fits if layer in viewer.layers.selection), fits[-1][1])
    if len(fits) > 1:
        show_info(
            f"{path.name} fits {len(fits)} open slides; placed on {chosen.name} (the selected "
            "one, else the last opened). Use Import / Export to place it on another."
        )
    return chosen


def geojson_layers(path: Path) -> list[LayerData]:
    """Layers for a QuPath GeoJSON, aligned on its slide: the slide lying next to it by name,
    else the open slide its coordinates fit (:func:`open_slide_that_fits`)."""
    slide_path = companion_slide(path) or open_slide_that_fits(path)
    slide = None
    if slide_path is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            slide = open_slide(slide_path)
    return annotation_layers(path, slide)
