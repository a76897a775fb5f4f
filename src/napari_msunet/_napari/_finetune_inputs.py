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

from napari_msunet.demo import default_model_path
from napari_msunet.errors import MsunetError

__all__ = [
    "BROWSE",
    "annotation_items",
    "annotation_source",
    "fill_combo",
    "meta",
    "model_items",
    "prediction_layers",
]

BROWSE = "browse"
"""userData of the "choose a file…" entry of a combo box."""

_NOT_ANNOTATIONS = ("slide", "prediction", "overlay")

Items = list[tuple[str, Any]]


def meta(layer: Any) -> dict[str, Any]:
    """The plugin's metadata of a layer (empty for other layers)."""
    found = getattr(layer, "metadata", {}).get("napari_msunet")
    return found if isinstance(found, dict) else {}


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


def prediction_layers(layers: Iterable[Any], slide: Path | None) -> list[Any]:
    """Prediction layers (with a model file) of ``slide`` (all of them when ``None``)."""
    out = []
    for layer in layers:
        m = meta(layer)
        if m.get("kind") != "prediction" or not m.get("model"):
            continue
        if slide is None or not m.get("slide") or Path(m["slide"]) == slide:
            out.append(layer)
    return out


def annotation_items(
    layers: Iterable[Any], slide: Path | None, files: Sequence[Path]
) -> tuple[Items, Any]:
    """Combo entries for the annotation, and the one to prefer (see the module docstring)."""
    ranked: list[tuple[int, Any]] = []
    for layer in layers:
        m = meta(layer)
        if not isinstance(layer, Labels) or m.get("kind") in _NOT_ANNOTATIONS:
            continue
        if not m.get("path") or not Path(m["path"]).exists():
            continue
        own = m.get("slide") or m.get("slide_path")
        other_slide = slide is not None and own is not None and Path(own) != slide
        # corrected annotations (a review store, with its regions) first, then other
        # annotations, then any labels with a file; this slide's before other slides'
        rank = 0 if m.get("regions") else 2 if m.get("kind") == "annotation" else 4
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
        path = Path(meta(layer)["model"])
        if path not in seen:
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
    if isinstance(choice, Path):
        path, m = choice, {}
    elif choice is not None and not _same(choice, BROWSE):
        m = meta(choice)
        path = Path(m["path"])
    else:
        raise ValueError("Choose the corrected annotation (Review widget) or a GeoJSON file.")
    if not path.exists():
        raise ValueError(f"{path}: the annotation file is gone")
    regions = regions_text.strip() or m.get("regions")
    if regions and not Path(regions).is_file():
        if regions_text.strip():
            raise ValueError(f"{regions}: no such corrected-regions file")
        regions = None  # the store has no corrected region yet: the whole annotation counts
    return path, Path(regions) if regions else None
