"""What a slide prediction writes, and how a rerun knows whether it may resume.

Layout of an output folder (names can be changed with :class:`SlideOutputs`)::

    labels.ome.zarr          argmax label map (uint8), pyramidal OME-Zarr
    probabilities.ome.zarr   per-class probabilities, uint8 = round(p * 255), C Y X
    tissue.png               the tissue mask (255 = tissue), at the resolution in the manifest
    prediction.json          manifest: slide, geometry, settings, model, timings
    prediction.run.json      only while unfinished: what the partial outputs were made with

Both stores are built under ``<name>.partial`` and published when complete (see
:mod:`napari_msunet.io.ome_zarr`); ``tissue.png`` and the manifest are written after them, so
an interrupted run leaves only the two ``.partial`` stores and the run record, and a folder
with a manifest holds a finished prediction. Every file is written through
:func:`~napari_msunet._atomic.atomic_write_bytes`. A tile is finished when both stores record
it; a rerun skips those. The run record guards against resuming with something else: it holds
a fingerprint of the slide, the model weights and every setting that changes the pixels, and a
rerun with a different one is refused instead of mixing two predictions in one output.

Pixels of tiles without tissue are never written: labels 0, and probabilities 0 in *every*
channel, which no computed pixel has (its channels sum to about 255), so "not computed" stays
distinguishable from "background".

:func:`write_manifest` writes the manifest;
:func:`~napari_msunet.io.prediction_record.read_prediction_record` is its one reader (the GUI
deciding whether to reuse a folder, the suspected-missing-annotation search), so nobody else
parses ``prediction.json``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from threading import BoundedSemaphore
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from napari_msunet import __version__
from napari_msunet._atomic import atomic_write_bytes
from napari_msunet.errors import ConfigError, MsunetError, WriterError
from napari_msunet.inference.config import InferenceConfig
from napari_msunet.io.ome_zarr import OmeZarrWriter
from napari_msunet.io.prediction_record import MANIFEST_FORMAT, MANIFEST_NAME
from napari_msunet.io.tissue import TissueMask
from napari_msunet.io.writers import partial_path

if TYPE_CHECKING:
    from napari_msunet.inference.device import DeviceSettings
    from napari_msunet.inference.progress import PredictionResult
    from napari_msunet.inference.tiling import TilingSettings
    from napari_msunet.io.slide import Slide
    from napari_msunet.io.working_image import WorkingGeometry

__all__ = ["SlideOutputs", "TileWriter", "model_fingerprint"]


@dataclass(frozen=True)
class SlideOutputs:
    """The paths a slide prediction writes (see the module docstring)."""

    root: Path
    labels: Path
    probabilities: Path
    tissue: Path
    manifest: Path

    @classmethod
    def in_dir(cls, root: str | os.PathLike[str], prefix: str = "") -> SlideOutputs:
        """Standard names inside ``root``, optionally prefixed (``"slide1."``) so that several
        slides can share a folder."""
        r = Path(root)
        return cls(
            root=r,
            labels=r / f"{prefix}labels.ome.zarr",
            probabilities=r / f"{prefix}probabilities.ome.zarr",
            tissue=r / f"{prefix}tissue.png",
            manifest=r / f"{prefix}{MANIFEST_NAME}",
        )

    @property
    def run_record(self) -> Path:
        return self.manifest.with_name(self.manifest.name.replace(".json", "") + ".run.json")

    def finished(self) -> list[Path]:
        """The final outputs that exist already."""
        return [p for p in (self.labels, self.probabilities, self.manifest) if p.exists()]

    def has_partial(self) -> bool:
        return partial_path(self.labels).exists() or partial_path(self.probabilities).exists()


def model_fingerprint(model: nn.Module) -> str:
    """SHA-256 of the model's class, config and weights (names, shapes, dtypes and bytes)."""
    h = hashlib.sha256()
    h.update(type(model).__qualname__.encode())
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "to_json"):
        h.update(config.to_json().encode())
    for name, t in model.state_dict().items():
        t = t.detach().to("cpu").contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def check_run_record(outputs: SlideOutputs, record: Mapping[str, Any], resume: bool) -> None:
    """Refuse to resume partial outputs made with a different slide, model or settings.

    Called before any writer opens. Without partial outputs, or with ``resume=False`` (the
    writers then discard them), there is nothing to check.
    """
    if not resume or not outputs.has_partial():
        return
    path = outputs.run_record
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        stored = None
    if not isinstance(stored, dict):
        raise MsunetError(
            f"{outputs.root}: holds an interrupted prediction without a readable run record "
            f"({path.name}); pass resume=False (msunet predict --restart) to start afresh"
        )
    fresh = json.loads(json.dumps(record))
    diff = sorted(k for k in set(fresh) | set(stored) if fresh.get(k) != stored.get(k))
    if diff:
        raise MsunetError(
            f"{outputs.root}: holds an interrupted prediction made with a different "
            f"{', '.join(diff)}; rerun with the same slide, model and settings to resume it, "
            "or pass resume=False (msunet predict --restart) to discard it"
        )


def write_json(path: Path, data: Mapping[str, Any], *, overwrite: bool) -> None:
    """Write JSON atomically (temporary sibling, fsync, rename): a crash never leaves half a
    file, and a reader never sees one. ``overwrite``: replace an existing file."""
    text = json.dumps(data, indent=2, sort_keys=True)
    atomic_write_bytes(path, text.encode("utf-8"), overwrite=overwrite)


def check_target(outputs: SlideOutputs, overwrite: bool) -> None:
    """Refuse a folder that holds a finished prediction unless ``overwrite``.

    Called first, before any slow work, so a mistaken rerun fails at once. Creates nothing.
    """
    done = outputs.finished()
    if done and not overwrite:
        raise WriterError(
            outputs.root,
            f"holds a finished prediction ({', '.join(p.name for p in done)}); pass "
            "overwrite=True (msunet predict --overwrite) to replace it, or choose another folder",
        )
    if outputs.root.exists() and not outputs.root.is_dir():
        raise WriterError(outputs.root, "is a file, not a folder")


def make_folder(outputs: SlideOutputs) -> None:
    """Create the output folder (and its parents)."""
    try:
        outputs.root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise WriterError(outputs.root, f"cannot create the folder: {exc.strerror or exc}") from exc


class TileWriter:
    """Writes finished tiles to the outputs from a small thread pool.

    ``submit`` returns at once unless ``2 * workers`` tiles are already queued (then it blocks,
    bounding the memory of the queue). Tiles may be written in parallel only when they never
    share a chunk; the engine passes ``workers=1`` otherwise. A write error is raised by the
    next ``submit`` or by :meth:`drain`.
    """

    def __init__(
        self, labels: OmeZarrWriter, probabilities: OmeZarrWriter | None, workers: int
    ) -> None:
        self.labels, self.probabilities = labels, probabilities
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="msunet-write")
        self._slots = BoundedSemaphore(2 * workers)
        self._futures: list[Future[None]] = []

    def is_done(self, y: int, x: int, h: int, w: int) -> bool:
        """Whether both outputs hold the region (a crash between the two writes redoes it)."""
        if self.probabilities is not None and not self.probabilities.is_done(y, x, h, w):
            return False
        return self.labels.is_done(y, x, h, w)

    def _write(self, y: int, x: int, probs: np.ndarray, labels: np.ndarray) -> None:
        try:
            if self.probabilities is not None:
                self.probabilities.write_region(y, x, probs)
            self.labels.write_region(y, x, labels)
        finally:
            self._slots.release()

    def submit(self, y: int, x: int, probs: np.ndarray, labels: np.ndarray) -> None:
        self._raise_errors()
        self._slots.acquire()
        try:
            self._futures.append(self._pool.submit(self._write, y, x, probs, labels))
        except BaseException:
            self._slots.release()
            raise

    def _raise_errors(self) -> None:
        alive = []
        for f in self._futures:
            if f.done():
                f.result()  # raises the write's error
            else:
                alive.append(f)
        self._futures = alive

    def drain(self) -> None:
        """Wait for every queued write; raise the first error."""
        for f in self._futures:
            f.result()
        self._futures = []

    def close(self) -> None:
        """Finish queued writes (their tiles count as done) and stop the threads."""
        self._pool.shutdown(wait=True)


def class_info(norm: Any, n: int) -> tuple[list[str], list[list[int]]]:
    """Class names and RGB colours for the outputs: the model header's, else defaults."""
    names = list(getattr(norm, "class_names", None) or [f"class {i}" for i in range(n)])
    colours = getattr(norm, "class_colours", None)
    if colours is None:
        from napari_msunet.models.checkpoint import DEFAULT_COLOURS

        colours = [DEFAULT_COLOURS[i % len(DEFAULT_COLOURS)] for i in range(n)]
    if len(names) != n:
        raise ConfigError(f"the header names {len(names)} classes but the model outputs {n}")
    return names, [list(map(int, c)) for c in colours]


def remove_stale(
    outputs: SlideOutputs, config: InferenceConfig, tissue: TissueMask | None, overwrite: bool
) -> None:
    """With ``overwrite``, remove outputs of an earlier run that this run did not replace (they
    would contradict the new manifest)."""
    if not overwrite:
        return
    if not config.save_probabilities and outputs.probabilities.exists():
        shutil.rmtree(outputs.probabilities)
    if tissue is None:
        outputs.tissue.unlink(missing_ok=True)


def write_manifest(
    outputs: SlideOutputs,
    overwrite: bool,
    slide: Slide,
    geometry: WorkingGeometry,
    config: InferenceConfig,
    tiling: TilingSettings,
    settings: DeviceSettings,
    record: Mapping[str, Any],
    tissue: TissueMask | None,
    norm: Any,
    names: list[str],
    colours: list[list[int]],
    result: PredictionResult,
) -> None:
    """Write ``prediction.json``: everything needed to interpret and repeat the prediction
    (slide, output grid and its level-0 downsample, settings as given and as resolved, model
    header and fingerprint, tile counts, timings).

    Written last, after both stores are published, so its presence means a finished
    prediction. ``overwrite`` is the run's: :func:`check_target` refused an existing manifest
    without it, so one appearing meanwhile (another process) is not replaced.
    """
    header = norm.to_dict() if hasattr(norm, "to_dict") else None
    rel = lambda p: os.path.relpath(p, outputs.manifest.parent)  # noqa: E731
    write_json(
        outputs.manifest,
        {
            "format": MANIFEST_FORMAT,
            "format_version": 1,
            "package_version": __version__,
            "slide": {
                "path": str(slide.path),
                "shape": list(slide.shape),
                "mpp": geometry.slide_mpp,
                "mpp_source": (
                    slide.mpp_source if slide.mpp == geometry.slide_mpp else "given by the caller"
                ),
            },
            "output": {
                "shape": list(geometry.shape),
                "mpp": geometry.mpp,
                "level0_downsample": list(geometry.downsample),
                "level_read": geometry.level,
                "level_pixels_per_output_pixel": geometry.k,
            },
            "labels": rel(outputs.labels),
            "probabilities": rel(outputs.probabilities) if config.save_probabilities else None,
            "tissue": None if tissue is None else {"path": rel(outputs.tissue), **tissue.to_dict()},
            "class_names": names,
            "class_colours": colours,
            "config": config.to_dict(),
            "resolved": {
                "tile": tiling.tile,
                "margin": tiling.margin,
                "batch_size": tiling.batch_size,
                "receptive_radius": tiling.receptive_radius,
                "device": settings.describe(),
                "amp": settings.amp_name,
                "channels_last": settings.channels_last,
            },
            "model": {"fingerprint": record["model"], "header": header},
            "tiles": {
                "total": result.tiles_total,
                "computed": result.tiles_computed,
                "resumed": result.tiles_resumed,
                "skipped": result.tiles_skipped,
            },
            "overhead": result.overhead,
            "timings": result.timings,
            "region": None if result.region is None else list(result.region),
        },
        overwrite=overwrite,
    )
