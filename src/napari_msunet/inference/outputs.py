"""What a slide prediction writes, and how a rerun knows whether it may resume.

Layout of an output folder (names can be changed with :class:`SlideOutputs`)::

    labels.ome.zarr          argmax label map (uint8), pyramidal OME-Zarr
    probabilities.ome.zarr   per-class probabilities, uint8 = round(p * 255), C Y X
    tissue.png               the tissue mask (255 = tissue), at the resolution in the manifest
    prediction.geojson       with ``exports``: the labels as QuPath GeoJSON (level-0 pixels)
    prediction.png           with ``exports``: the labels over the slide thumbnail
    prediction.json          manifest: slide, geometry, settings, model, timings
    prediction.run.json      only while unfinished: what the partial outputs were made with
    prediction.lock          only while a run writes the folder: who (see below)

Both stores are built under ``<name>.partial`` and published when complete (see
:mod:`napari_msunet.io.ome_zarr`); ``tissue.png``, the exports and, last of all, the manifest
are written after them. So a folder with a manifest holds a finished prediction with every
file it names, and an interrupted run leaves its run record with the ``.partial`` stores -- or,
killed while publishing, with stores already published and files not yet written: a plain
rerun then keeps the published stores, computes no tile, writes what is missing and the
manifest last. Every file is written through
:func:`~napari_msunet._atomic.atomic_write_bytes`. A tile is finished when both stores record
it; a rerun skips those. The run record guards against resuming with something else: it holds
a fingerprint of the slide, the model weights and every setting that changes the pixels, and a
rerun with a different one is refused instead of mixing two predictions in one output.

Nothing a user put there is replaced without ``overwrite``: a folder without a run record that
already holds a file the run would write (``tissue.png`` say) is refused before any work.
While a run writes the folder it holds ``prediction.lock`` (see
:mod:`napari_msunet.io._store_lock`): a second run into the same folder, from another program
or another task of this one, is refused at its start, naming the holder; the lock of a killed
program is taken over.

Pixels of tiles without tissue are never written: labels 0, and probabilities 0 in *every*
channel, which no computed pixel has (its channels sum to about 255), so "not computed" stays
distinguishable from "background".

:func:`write_manifest` writes the manifest;
:func:`~napari_msunet.io.prediction_record.read_prediction_record` is its one reader (the GUI
deciding whether to reuse a folder, the suspected-missing-annotation search), so nobody else
parses ``prediction.json``.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
from collections.abc import Generator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from threading import BoundedSemaphore
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from napari_msunet import __version__
from napari_msunet._atomic import atomic_write_bytes, check_writable, write_error
from napari_msunet.errors import ConfigError, MsunetError, WriterError
from napari_msunet.inference.config import InferenceConfig
from napari_msunet.io import _store_lock
from napari_msunet.io.ome_zarr import OmeZarrWriter
from napari_msunet.io.prediction_record import MANIFEST_FORMAT, MANIFEST_NAME
from napari_msunet.io.tissue import TissueMask
from napari_msunet.io.writers import partial_path
from napari_msunet.progress import Progress

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
    geojson: Path | None = None
    preview: Path | None = None

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
            geojson=r / f"{prefix}prediction.geojson",
            preview=r / f"{prefix}prediction.png",
        )

    @property
    def run_record(self) -> Path:
        return self.manifest.with_name(self.manifest.name.replace(".json", "") + ".run.json")

    @property
    def lock(self) -> Path:
        """The folder's lock file (``prediction.lock``), held while a run writes it."""
        return self.manifest.with_name(self.manifest.name.replace(".json", "") + ".lock")

    def finished(self) -> list[Path]:
        """The manifest, if it exists: only a finished run writes it (last)."""
        return [self.manifest] if self.manifest.exists() else []

    def has_partial(self) -> bool:
        return partial_path(self.labels).exists() or partial_path(self.probabilities).exists()

    def interrupted(self) -> bool:
        """Whether an unfinished run of ours left the folder: a run record, no manifest."""
        return self.run_record.exists() and not self.manifest.exists()

    def published(self, with_probabilities: bool) -> set[Path]:
        """Stores an interrupted run already published (complete; a rerun keeps them)."""
        if not self.interrupted():
            return set()
        stores = [self.labels, self.probabilities] if with_probabilities else [self.labels]
        return {p for p in stores if p.exists() and not partial_path(p).exists()}


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
    if not resume or not (outputs.has_partial() or outputs.published(True)):
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


def check_target(
    outputs: SlideOutputs, overwrite: bool, config: InferenceConfig, exports: bool = False
) -> None:
    """Refuse a folder that holds a finished prediction, or files this run would write,
    unless ``overwrite``.

    Called first, before any slow work, so a mistaken rerun fails at once, and again once the
    folder's lock is held. Creates nothing. Files in a folder with a run record (an
    interrupted run of ours) are that run's, and a rerun may replace them.
    """
    if outputs.root.exists() and not outputs.root.is_dir():
        raise WriterError(outputs.root, "is a file, not a folder")
    if overwrite:
        return
    done = outputs.finished()
    if done:
        raise WriterError(
            outputs.root,
            f"holds a finished prediction ({', '.join(p.name for p in done)}); pass "
            "overwrite=True (msunet predict --overwrite) to replace it, or choose another folder",
        )
    if outputs.interrupted():
        return
    ours = [outputs.labels]
    ours += [outputs.probabilities] if config.save_probabilities else []
    ours += [outputs.tissue] if config.tissue else []
    ours += [p for p in (outputs.geojson, outputs.preview) if exports and p is not None]
    there = [p for p in ours if os.path.lexists(p)]
    if there:
        raise WriterError(
            there[0],
            "exists and is not part of an interrupted prediction; this prediction would "
            "replace it. Pass overwrite=True (msunet predict --overwrite) to replace "
            f"{', '.join(p.name for p in there)}, or choose another folder",
        )


def lock_folder(outputs: SlideOutputs) -> bool:
    """Create the output folder and take its lock (see the module docstring).

    Returns whether the folder was created here, for :func:`unlock_folder`.

    Raises
    ------
    WriterError
        Another run (another program, or another task of this one) writes the folder: the
        message names it and the lock file; or the folder cannot be created or written (a
        read-only disk, a folder of another user, a full disk: the message says which).
    """
    created = not outputs.root.exists()
    make_folder(outputs)
    try:
        check_writable(outputs.root, folder=True)
        _store_lock.acquire(outputs.root, path=outputs.lock, kind=_store_lock.OUTPUT)
    except OSError as exc:  # the lock's own write on a full disk
        _remove_if_empty(outputs.root, created)
        raise write_error(
            outputs.root, exc, f"cannot take the lock {outputs.lock}", where=outputs.lock
        ) from exc
    except BaseException:
        _remove_if_empty(outputs.root, created)
        raise
    return created


def unlock_folder(outputs: SlideOutputs, created: bool = False) -> None:
    """Release the lock taken by :func:`lock_folder`; remove the folder if this run created
    it and left nothing in it (a run refused after the lock, say a malformed region)."""
    _store_lock.release(outputs.root, path=outputs.lock)
    _remove_if_empty(outputs.root, created)


def _remove_if_empty(folder: Path, created: bool) -> None:
    if created:
        with contextlib.suppress(OSError):  # not empty: it holds this run's resumable state
            folder.rmdir()


def make_folder(outputs: SlideOutputs) -> None:
    """Create the output folder (and its parents); a read-only or foreign parent is named."""
    if not outputs.root.exists():
        check_writable(outputs.root)
    try:
        outputs.root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise write_error(outputs.root, exc, "cannot create the folder") from exc


class TileWriter:
    """Writes finished tiles to the outputs from a small thread pool.

    ``submit`` returns at once unless ``2 * workers`` tiles are already queued (then it blocks,
    bounding the memory of the queue). Tiles may be written in parallel only when they never
    share a chunk; the engine passes ``workers=1`` otherwise. A write error is raised by the
    next ``submit`` or by :meth:`drain`.
    """

    def __init__(
        self, labels: OmeZarrWriter | None, probabilities: OmeZarrWriter | None, workers: int
    ) -> None:
        self.labels, self.probabilities = labels, probabilities
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="msunet-write")
        self._slots = BoundedSemaphore(2 * workers)
        self._futures: list[Future[None]] = []

    def is_done(self, y: int, x: int, h: int, w: int) -> bool:
        """Whether both outputs hold the region (a crash between the two writes redoes it)."""
        if self.probabilities is not None and not self.probabilities.is_done(y, x, h, w):
            return False
        return self.labels is None or self.labels.is_done(y, x, h, w)

    def _write(self, y: int, x: int, probs: np.ndarray, labels: np.ndarray) -> None:
        try:
            if self.probabilities is not None:
                self.probabilities.write_region(y, x, probs)
            if self.labels is not None:
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
    outputs: SlideOutputs,
    config: InferenceConfig,
    tissue: TissueMask | None,
    overwrite: bool,
    exports: bool = False,
) -> None:
    """With ``overwrite``, remove outputs of an earlier run that this run did not replace (they
    would contradict the new manifest)."""
    if not overwrite:
        return
    if not config.save_probabilities and outputs.probabilities.exists():
        shutil.rmtree(outputs.probabilities)
    if tissue is None:
        outputs.tissue.unlink(missing_ok=True)
    if not exports:
        for p in (outputs.geojson, outputs.preview):
            if p is not None:
                p.unlink(missing_ok=True)


def iter_write_exports(
    outputs: SlideOutputs,
    slide: Slide,
    names: list[str],
    colours: list[list[int]],
    downsample: tuple[float, float],
) -> Generator[Progress, None, None]:
    """Write ``prediction.geojson`` and ``prediction.png`` from the published labels.

    Part of publishing: called after the stores are published and before the manifest, so
    a finished folder holds them and a run killed here is finished by a plain rerun (which
    recomputes them from the labels, replacing whatever half of them the killed run wrote:
    the start's :func:`check_target` refused a folder where they were someone else's).
    Yields the export's ``"vectorise"`` records, then one ``"preview"`` record.
    """
    from napari_msunet.inference.preview import prediction_preview
    from napari_msunet.io.annotations import ClassInfo
    from napari_msunet.io.masks import open_mask
    from napari_msunet.io.vectorise import iter_export_mask

    if outputs.geojson is not None:
        classes = [ClassInfo(n, i, tuple(colours[i])) for i, n in enumerate(names) if i > 0]
        yield from iter_export_mask(
            open_mask(outputs.labels).levels[0],
            outputs.geojson,
            classes,
            downsample=downsample[0],
            overwrite=True,
        )
    if outputs.preview is not None:
        yield Progress(0, 1, "preview", "drawing the preview")
        image = prediction_preview(slide, outputs.labels, names, colours)
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        atomic_write_bytes(outputs.preview, buf.getvalue(), overwrite=True)
        yield Progress(1, 1, "preview", "preview written")


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
    exports: bool = False,
) -> None:
    """Write ``prediction.json``: everything needed to interpret and repeat the prediction
    (slide, output grid and its level-0 downsample, settings as given and as resolved, model
    header and fingerprint, tile counts, timings).

    Written last, after both stores, ``tissue.png`` and the exports, so its presence means
    a finished prediction with every file it names. ``overwrite`` is the run's:
    :func:`check_target` refused an existing manifest without it.
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
            "geojson": rel(outputs.geojson) if exports and outputs.geojson else None,
            "preview": rel(outputs.preview) if exports and outputs.preview else None,
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
                "adopted": result.tiles_adopted,
            },
            "overhead": result.overhead,
            "domain": None if result.domain is None else result.domain.to_dict(),
            "timings": result.timings,
            "region": None if result.region is None else list(result.region),
        },
        overwrite=overwrite,
    )
