"""What the Fine-tune widget offers as inputs, found by layer kind (never by layer name).

- slides: layers of kind "slide" (from the reader);
- annotations: Labels layers of kind "annotation" (the Review widget's store, or a GeoJSON
  opened with its slide) first, those of this slide before others, then any other Labels
  layer backed by a file (a label mask), then GeoJSON files the user picked;
- parent models: the models of this slide's prediction layers, the bundled default, files
  the user picked or fine-tuning made.

Plain functions over layers and paths, plus :func:`fill_combo`; no compute.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from napari.layers import Labels
from qtpy.QtWidgets import QComboBox

from napari_msunet._napari._layer_info import Kind, layer_info
from napari_msunet.demo import default_model_path
from napari_msunet.errors import MsunetError

__all__ = [
    "BROWSE",
    "annotation_items",
    "annotation_source",
    "fill_combo",
    "model_items",
    "prediction_model",
]

BROWSE = "browse"
"""userData of the "choose a file…" entry of a combo box."""

_NOT_ANNOTATIONS = (Kind.SLIDE, Kind.PREDICTION, Kind.OVERLAY)

Items = list[tuple[str, Any]]


def prediction_model(layer: Any) -> Path | None:
    """The model file a prediction layer was made with (``None`` for any other layer)."""
    info = layer_info(layer)
    return info.model if info is not None and info.kind is Kind.PREDICTION else None


def _same(a: Any, b: Any) -> bool:
    return a is b if not isinstance(a, Path) else isinstance(b, Path) and a == b


def fill_combo(combo: QComboBox, items: Items, prefer: Any = None) -> None:
    """Replace the entries of ``combo``, keeping its selection when it is still there,
    else selecting ``prefer``, else the first real entry."""
    keep = combo.currentData()
    combo.clear()
    for text, data in items:
        combo.addItem(text, data)
    for want in (keep, prefer):
        if want is None or _same(want, BROWSE):
            continue
        for i in range(combo.count()):
            if _same(want, combo.itemData(i)):
                combo.setCurrentIndex(i)
                return
    combo.setCurrentIndex(0 if combo.count() and combo.itemData(0) != BROWSE else -1)


def annotation_items(
    layers: Iterable[Any], slide: Path | None, files: Sequence[Path]
) -> tuple[Items, Any]:
    """Combo entries for the annotation, and the one to prefer (see the module docstring)."""
    ranked: list[tuple[int, Any]] = []
    for layer in layers:
        info = layer_info(layer)
        if not isinstance(layer, Labels) or info is None or info.kind in _NOT_ANNOTATIONS:
            continue
        if info.path is None or not info.path.exists():
            continue
        other_slide = slide is not None and info.slide is not None and info.slide != slide
        # corrected annotations (a review store, with its regions) first, then other
        # annotations, then any labels with a file; this slide's before other slides'
        rank = 0 if info.regions else 2 if info.kind is Kind.ANNOTATION else 4
        ranked.append((rank + other_slide, layer))
    ranked.sort(key=lambda r: r[0])
    items: Items = [(ly.name, ly) for _, ly in ranked]
    items += [(f"{p.name} (file)", p) for p in files]
    items.append(("QuPath GeoJSON file…", BROWSE))
    return items, ranked[0][1] if ranked else None


def model_items(predictions: Iterable[Any], files: Sequence[Path]) -> tuple[Items, Path | None]:
    """Combo entries for the parent model, and the bundled default (``None`` if missing)."""
    items: Items = []
    seen: set[Path] = set()
    for layer in predictions:
        path = prediction_model(layer)
        if path is not None and path not in seen:
            seen.add(path)
            items.append((f"{path.name} (used by {layer.name})", path))
    try:
        default = default_model_path()
    except MsunetError:
        default = None
    if default is not None and default not in seen:
        seen.add(default)
        items.append((f"{default.name} (bundled default)", default))
    for path in files:
        if path not in seen:
            seen.add(path)
            items.append((path.name, path))
    items.append(("Model file…", BROWSE))
    return items, default


def annotation_source(choice: Any, regions_text: str) -> tuple[Path, Path | None]:
    """The annotation file and the corrected-regions file (``None``: all of it counts).

    ``choice`` is the annotation combo's data (a layer or a file); ``regions_text`` the
    user's corrected-regions file, which wins over the layer's own.

    Raises
    ------
    ValueError
        Nothing chosen, or a file that is not there, with a message for the user.
    """
    info = None
    if isinstance(choice, Path):
        path = choice
    elif choice is not None and not _same(choice, BROWSE):
        info = layer_info(choice)
        if info is None or info.path is None:
            raise ValueError(f"{choice.name}: the layer names no annotation file")
        path = info.path
    else:
        raise ValueError("Choose the corrected annotation (Review widget) or a GeoJSON file.")
    if not path.exists():
        raise ValueError(f"{path}: the annotation file is gone")
    regions = regions_text.strip() or (info.regions if info is not None else None)
    if regions and not Path(regions).is_file():
        if regions_text.strip():
            raise ValueError(f"{regions}: no such corrected-regions file")
        regions = None  # the store has no corrected region yet: the whole annotation counts
    return path, Path(regions) if regions else None
