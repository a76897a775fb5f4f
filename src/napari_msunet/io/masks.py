"""Reading label masks: OME-Zarr, (OME-)TIFF and PNG label images, as lazy pyramids.

A mask is what the writers of :mod:`napari_msunet.io.writers` produce, or what another tool
exported: one integer label per pixel, 0 = background. Class names and colours are taken from
the file when it carries them (OME-NGFF ``image-label``, our OME-XML MapAnnotation).
"""

from __future__ import annotations

import json
import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import tifffile
import zarr

from napari_msunet.errors import AnnotationError
from napari_msunet.io.annotations import ClassInfo, default_color

__all__ = ["LabelMask", "open_mask"]


@dataclass(frozen=True, eq=False)
class LabelMask:
    """A label mask pyramid: ``levels[0]`` is full resolution, 2-D unsigned integers."""

    path: Path
    levels: tuple[da.Array, ...]
    mpp: float | None = None
    classes: tuple[ClassInfo, ...] = field(default=())

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.levels[0].shape)


def open_mask(path: str | Path) -> LabelMask:
    """Open a label mask lazily.

    Raises
    ------
    AnnotationError
        Missing file, unreadable file, or not a label image (RGB, float, more than 2-D).
    """
    path = Path(path)
    if not path.exists():
        raise AnnotationError(path, "mask not found")
    try:
        if path.is_dir() or path.name.lower().endswith(".zarr"):
            mask = _open_zarr(path)
        elif path.suffix.lower() in (".png", ".jpg", ".jpeg", ".bmp"):
            mask = _open_plain(path)
        else:
            mask = _open_tiff(path)
    except AnnotationError:
        raise
    except Exception as exc:
        raise AnnotationError(
            path, f"cannot be read as a label mask: {type(exc).__name__}: {exc}"
        ) from exc
    for lv in mask.levels:
        _check_labels(path, lv)
    return mask


def _check_labels(path: Path, arr: Any) -> None:
    if arr.ndim != 2:
        hint = (
            " (an RGB picture of a mask? save one label value per pixel)" if arr.ndim == 3 else ""
        )
        raise AnnotationError(path, f"a label mask must be 2-D, got shape {arr.shape}{hint}")
    if np.dtype(arr.dtype).kind not in "ub":
        raise AnnotationError(
            path, f"a label mask must hold unsigned integers, got {arr.dtype} (probabilities?)"
        )


class _GuardedReader:
    """A zarr array whose read errors become an :class:`AnnotationError` naming the file.

    Masks are read lazily, chunk by chunk, long after :func:`open_mask` returned: a truncated
    or corrupt chunk would otherwise surface as a codec or tifffile error from deep inside
    dask, which the CLI and the GUI do not recognise as a problem with the user's file.
    """

    def __init__(self, path: Path, array: Any) -> None:
        self.path, self._array = path, array
        self.shape, self.dtype, self.ndim = tuple(array.shape), array.dtype, array.ndim

    def __getitem__(self, key: Any) -> np.ndarray:
        try:
            return np.asarray(self._array[key])
        except MemoryError:  # not the file's fault
            raise
        except Exception as exc:
            detail = f"{type(exc).__name__}: {exc}"
            raise AnnotationError(
                self.path,
                f"cannot be read: the file is corrupt or truncated ({detail[:200]})",
            ) from exc


def _lazy(path: Path, array: Any) -> da.Array:
    """``array`` (zarr) as a dask array chunked like the file, read errors made ours."""
    return da.from_array(
        _GuardedReader(path, array),
        chunks=array.chunks,
        name=f"mask-{uuid.uuid4().hex}",
        asarray=False,
        fancy=False,
        meta=np.empty((0,) * array.ndim, dtype=array.dtype),
    )


def _classes(names: list[str | None], colors: list[Any]) -> tuple[ClassInfo, ...]:
    out = []
    for label, name in enumerate(names):
        if label == 0 or not name:
            continue
        color = colors[label][:3] if label < len(colors) and colors[label] else default_color(label)
        out.append(ClassInfo(str(name), label, tuple(int(c) for c in color)))
    return tuple(out)


def _open_zarr(path: Path) -> LabelMask:
    group = zarr.open_group(path, mode="r")
    attrs = dict(group.attrs)
    ome = attrs.get("ome", attrs)
    multiscales = ome.get("multiscales")
    if not multiscales:
        raise AnnotationError(path, "is a zarr store without OME-NGFF multiscales metadata")
    datasets = multiscales[0]["datasets"]
    levels = tuple(_lazy(path, group[d["path"]]) for d in datasets)
    scale = datasets[0].get("coordinateTransformations", [{}])[0].get("scale")
    units = [a.get("unit") for a in multiscales[0].get("axes", [])]
    mpp = float(scale[-1]) if scale and "micrometer" in units else None
    label_meta = ome.get("image-label", {})
    names: dict[int, str] = {
        int(p["label-value"]): p.get("class") for p in label_meta.get("properties", [])
    }
    colors: dict[int, Any] = {
        int(c["label-value"]): c.get("rgba") for c in label_meta.get("colors", [])
    }
    top = max([*names, *colors], default=0)
    classes = _classes(
        [names.get(i) for i in range(top + 1)], [colors.get(i) for i in range(top + 1)]
    )
    return LabelMask(path, levels, mpp, classes)


def _open_tiff(path: Path) -> LabelMask:
    tif = tifffile.TiffFile(path)
    series = tif.series[0]
    levels = []
    for i in range(len(series.levels)):
        z = zarr.open_array(series.aszarr(level=i), mode="r")
        arr = _lazy(path, z)
        if arr.ndim == 3 and arr.shape[-1] == 1:
            arr = arr[..., 0]
        levels.append(arr)
    mpp, classes = None, ()
    if tif.is_ome and tif.ome_metadata:
        mpp, classes = _ome_mask_metadata(tif.ome_metadata)
    return LabelMask(path, tuple(levels), mpp, classes)


def _ome_mask_metadata(xml: str) -> tuple[float | None, tuple[ClassInfo, ...]]:
    root = ET.fromstring(xml)

    def local(el: ET.Element) -> str:
        return el.tag.rsplit("}", 1)[-1]

    mpp = None
    for el in root.iter():
        if local(el) == "Pixels" and el.get("PhysicalSizeX"):
            unit = el.get("PhysicalSizeXUnit", "µm")
            factor = {"µm": 1.0, "um": 1.0, "nm": 1e-3, "mm": 1e3}.get(unit)
            mpp = float(el.get("PhysicalSizeX")) * factor if factor else None
            break
    entries: dict[int, dict[str, Any]] = {}
    for el in root.iter():
        if local(el) == "MapAnnotation" and el.get("Namespace") == "napari-msunet/classes":
            for m in el.iter():
                if local(m) == "M" and m.get("K", "").isdigit():
                    entries[int(m.get("K"))] = json.loads(m.text or "{}")
    top = max(entries, default=0)
    classes = _classes(
        [entries.get(i, {}).get("class") for i in range(top + 1)],
        [entries.get(i, {}).get("rgba") for i in range(top + 1)],
    )
    return mpp, classes


def _open_plain(path: Path) -> LabelMask:
    from PIL import Image

    from napari_msunet.io._slide_sanity import check_plain_image

    check_plain_image(path, path.suffix.lstrip(".").lower(), AnnotationError)
    with Image.open(path) as img:
        if img.mode in ("RGB", "RGBA"):  # a grey mask saved as RGB (many tools do): one channel
            rgb = np.asarray(img)[..., :3]
            if not (
                np.array_equal(rgb[..., 0], rgb[..., 1])
                and np.array_equal(rgb[..., 0], rgb[..., 2])
            ):
                raise AnnotationError(
                    path,
                    f"is a colour ({img.mode}) image, not a label mask: save one label value "
                    "per pixel (mode L, P or 1; a grey mask saved as RGB is read too)",
                )
            arr = np.ascontiguousarray(rgb[..., 0])
        elif img.mode in ("CMYK", "YCbCr", "LAB", "HSV"):
            raise AnnotationError(
                path,
                f"is a colour ({img.mode}) image, not a label mask: save one label value per "
                f"pixel (mode L, P or 1)",
            )
        else:
            arr = np.asarray(img)
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    if arr.dtype.kind == "i" and arr.min(initial=0) >= 0:
        arr = arr.astype(np.uint16 if arr.max(initial=0) < 65536 else np.uint32)
    return LabelMask(path, (da.from_array(arr, chunks=1024),))
