"""What an annotation store folder holds, and how one is built from an annotation.

The layout (``store.json``, ``mask.ome.zarr/``, ``corrected_regions.geojson``, ``journal/``,
``rejected.json``) and its resolution rule are described in
:mod:`napari_msunet.io.annotation_store`; this module writes a new store (streaming the source
window by window into ``<root>.creating`` and publishing it in one rename) and reads and writes
the corrected-regions file. :class:`~napari_msunet.io.annotation_store.AnnotationStore` edits
what it builds.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Generator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import shapely

from napari_msunet._atomic import atomic_write_bytes
from napari_msunet.errors import WriterError
from napari_msunet.io._store_sources import open_source
from napari_msunet.io.annotations import Annotation, AnnotationSet, ClassInfo
from napari_msunet.io.geojson import read_geojson, write_geojson
from napari_msunet.io.ome_zarr import OmeZarrWriter
from napari_msunet.io.writers import prefetched, publish, remove_path
from napari_msunet.progress import Progress, Stop, stopped

STORE_FORMAT = "napari-msunet-annotation-store"
STORE_VERSION = 1
INFO_NAME = "store.json"
MASK_NAME = "mask.ome.zarr"
REGIONS_NAME = "corrected_regions.geojson"
JOURNAL_NAME = "journal"
REJECTED_NAME = "rejected.json"
CORRECTED_CLASS = ClassInfo("Corrected", 1, (255, 200, 0))
"""Class of the rectangles in the corrected-regions GeoJSON."""

Window = tuple[int, int, int, int]  # (y, x, h, w)


def store_downsample(slide_mpp: float | None, mpp: float | None) -> int:
    """The integer downsample of a store at ``mpp`` µm/px on a slide at ``slide_mpp``.

    ``round(mpp / slide_mpp)``, at least 1; 1 (level 0) when either is unknown.
    """
    if slide_mpp is None or mpp is None:
        return 1
    if not (slide_mpp > 0 and mpp > 0):
        raise ValueError(f"pixel sizes must be positive, got {slide_mpp} and {mpp}")
    return max(1, round(mpp / slide_mpp))


def store_exists(root: str | Path) -> bool:
    """Whether ``root`` holds a complete store."""
    r = Path(root)
    return (r / INFO_NAME).is_file() and (r / MASK_NAME).is_dir()


def iter_build(
    root: Path,
    source: Any,
    slide: Any,
    *,
    slide_mpp: float | None,
    mpp: float | None,
    downsample: int | None,
    classes: Sequence[str] | None,
    colors: Sequence[Any] | None,
    chunk: int,
    overwrite: bool,
    stop: Stop,
) -> Generator[Progress, None, bool]:
    """Write a store's files at ``root`` (see ``AnnotationStore.iter_create``).

    The store is built in ``<root>.creating`` and published by one rename. Yields a
    :class:`~napari_msunet.progress.Progress` per window of the mask (stage ``"build"``) and
    per chunk of its pyramid (stage ``"pyramid"``). The caller holds the store's edit lock.

    Returns ``True`` once the store is published, ``False`` when ``stop`` (checked after every
    window and chunk) interrupted it; then, as after ``close()`` or an error, ``<root>.creating``
    is gone and ``root`` is as it was. One left by a crash is deleted by the next build: a store
    is always made from one source in one go (resuming another source's windows would mix two
    annotations).
    """
    if store_exists(root) and not overwrite:
        raise WriterError(root, "an annotation store exists here; open it, or pass overwrite=True")
    if hasattr(slide, "shape") and not isinstance(slide, tuple | list):
        slide_shape = tuple(int(s) for s in slide.shape[:2])
        slide_mpp = slide_mpp if slide_mpp is not None else getattr(slide, "mpp", None)
        slide_path = str(getattr(slide, "path", "")) or None
    else:
        slide_shape, slide_path = (int(slide[0]), int(slide[1])), None
    d = int(downsample) if downsample is not None else store_downsample(slide_mpp, mpp)
    if d < 1:
        raise ValueError(f"downsample must be >= 1, got {downsample}")
    shape = (math.ceil(slide_shape[0] / d), math.ceil(slide_shape[1] / d))
    read, names, rgba, desc = open_source(source, slide_shape, d, shape, classes, colors)
    store_mpp = slide_mpp * d if slide_mpp is not None else None

    build = root.with_name(root.name + ".creating")
    remove_path(build)  # left by a failed build, perhaps of another source: never mixed in
    build.mkdir(parents=True)
    try:
        writer = OmeZarrWriter(
            build / MASK_NAME,
            shape,
            kind="labels",
            dtype=np.uint8,
            chunk=chunk,
            mpp=store_mpp,
            class_names=names,
            class_colors=rgba,
            overwrite=True,
            resume=False,
        )
        step = writer.chunk * max(1, 2048 // writer.chunk)
        todo = [
            (y, x, min(step, shape[0] - y), min(step, shape[1] - x))
            for y in range(0, shape[0], step)
            for x in range(0, shape[1], step)
        ]
        total = len(todo)
        yield Progress(0, total, "build", "preparing the editable annotation")
        halted = False
        with (
            writer,
            contextlib.closing(prefetched(lambda r: (r, read(*r)), todo, depth=2)) as items,
        ):
            for done, ((y, x, _, _), block) in enumerate(items, 1):
                writer.write_region(y, x, block)
                yield Progress(done, total, "build", f"rasterising the annotation ({desc})")
                if stopped(stop):
                    halted = True
                    break
            if not halted:
                halted = (yield from writer.iter_finalize(stop=stop)) is None
    except BaseException:  # closed (a cancel), or failed: a build is never resumed
        remove_path(build)
        raise
    if halted:
        remove_path(build)
        return False
    info = {
        "format": STORE_FORMAT,
        "version": STORE_VERSION,
        "slide": slide_path,
        "slide_shape": list(slide_shape),
        "slide_mpp": slide_mpp,
        "downsample": d,
        "mpp": store_mpp,
        "shape": list(shape),
        "class_names": names,
        "class_colors": rgba,
        "source": desc,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    write_regions(build / REGIONS_NAME, [])
    (build / JOURNAL_NAME).mkdir(exist_ok=True)
    atomic_write_bytes(build / INFO_NAME, json.dumps(info, indent=1).encode(), overwrite=True)
    publish(build, root, overwrite)
    return True


def write_regions(path: Path, regions: Sequence[Window]) -> None:
    """Rewrite the corrected-regions GeoJSON atomically (level-0 rectangles)."""
    annotations = [
        Annotation(
            shapely.box(x, y, x + w, y + h),
            CORRECTED_CLASS.name,
            name=f"corrected region {i + 1}",
        )
        for i, (y, x, h, w) in enumerate(regions)
        if h > 0 and w > 0
    ]
    write_geojson(
        AnnotationSet.from_annotations(annotations, [CORRECTED_CLASS]), path, overwrite=True
    )


def read_regions(path: Path) -> list[Window]:
    """The corrected regions of a regions GeoJSON, as level-0 ``(y, x, h, w)``."""
    if not path.exists():
        return []
    out = []
    for a in read_geojson(path):
        x0, y0, x1, y1 = (round(v) for v in a.geometry.bounds)
        out.append((y0, x0, y1 - y0, x1 - x0))
    return out
