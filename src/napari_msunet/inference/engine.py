"""Whole-slide prediction as a generator: progress after every batch, a result at the end.

:func:`iter_predict_slide` turns a slide and a model into a pyramidal label map and probability map
(OME-Zarr), streaming tiles in and results out so that memory does not grow with the slide.
It is a generator (see GUIDE: long work is a generator): the CLI wraps it in a tqdm bar, the
GUI in a napari ``thread_worker``, tests drive it directly::

    gen = iter_predict_slide(slide, model, header, InferenceConfig(), "out/")
    try:
        while True:
            record = next(gen)            # Progress(done, total, stage, message, ...)
    except StopIteration as stop:
        result = stop.value               # PredictionResult

or, without the records, ``result = predict_slide(slide, model, header, None, "out/")``.

It stops cleanly at the next batch when ``stop`` (a callable or a ``threading.Event``) says so,
or when the generator is closed (``gen.close()``, napari's ``worker.quit()``): tiles already
computed are written and kept in the ``.partial`` stores, threads are shut down, and a rerun on
the same folder computes only the rest. Results are deterministic for a fixed model: the tile
plan depends only on the slide and the settings, and every batch has the same shape.

:func:`~napari_msunet.inference.array.iter_predict_array` runs the same tiling on an in-memory
image.
"""

from __future__ import annotations

import os
import time
from collections.abc import Generator, Sequence
from typing import Any

import numpy as np
import zarr
from torch import nn

from napari_msunet.errors import ConfigError
from napari_msunet.inference.config import EXACT, InferenceConfig
from napari_msunet.inference.device import (
    Normalization,
    confirm_amp,
    prepare_model,
    resolve_device_settings,
)
from napari_msunet.inference.domain_check import DOMAIN, DomainProgress, slide_domain
from napari_msunet.inference.outputs import (
    SlideOutputs,
    TileWriter,
    check_run_record,
    check_target,
    class_info,
    iter_write_exports,
    lock_folder,
    model_fingerprint,
    remove_stale,
    unlock_folder,
    write_json,
    write_manifest,
)
from napari_msunet.inference.pipeline import (
    Timings,
    check_model,
    first_window,
    next_batch,
    read_workers,
    run_batches,
)
from napari_msunet.inference.progress import PYRAMID, PredictionResult, make_progress
from napari_msunet.inference.shares import ShareTiles
from napari_msunet.inference.tiling import plan_tiles, resolve_tiling
from napari_msunet.io.ome_zarr import OmeZarrWriter
from napari_msunet.io.slide import Slide
from napari_msunet.io.tissue import iter_detect_tissue
from napari_msunet.io.working_image import SlideReader, working_geometry, working_window
from napari_msunet.models.margin import measured_margin
from napari_msunet.progress import Progress, Stop, eager, stopped

__all__ = ["iter_predict_slide", "predict_slide"]


def iter_predict_slide(
    slide: Slide,
    model: nn.Module,
    norm: Any,
    config: InferenceConfig | None,
    out: str | os.PathLike[str] | SlideOutputs,
    *,
    mpp: float | None = None,
    overwrite: bool = False,
    resume: bool = True,
    stop: Stop = None,
    region: tuple[int, int, int, int] | None = None,
    exports: bool = False,
    share: tuple[int, int] | None = None,
    adopt: Sequence[str | os.PathLike[str]] = (),
) -> Generator[Progress, None, PredictionResult]:
    """Predict a whole slide into pyramidal OME-Zarr outputs, as a generator.

    Parameters
    ----------
    slide
        The opened slide (not closed here).
    model
        A segmentation network of :mod:`napari_msunet.models` taking RGB. It is put in eval
        mode and moved to the device (in place); its training mode is restored at the end.
    norm
        The model file's :class:`~napari_msunet.models.ModelHeader` (normalisation, class
        names and colours) or a :class:`~napari_msunet.inference.device.Normalization` /
        ``(mean, std)`` pair.
    config
        Settings; ``None`` for the defaults (:class:`InferenceConfig()`).
    out
        Output folder (standard names, see :mod:`~napari_msunet.inference.outputs`) or a
        :class:`SlideOutputs` with explicit paths.
    mpp
        µm per level-0 pixel, overriding the file's; required when the file does not state it.
    overwrite
        Replace a finished prediction in ``out``; without it such a folder is refused at once.
    resume
        Continue an interrupted run in ``out`` (default); False discards it.
    stop
        Checked before every batch (see :func:`napari_msunet.progress.stopped`): a callable
        returning True, or a ``threading.Event``. A stopped run *returns* a result with
        ``completed=False``.
    region
        Level-0 ``(y0, x0, height, width)``: compute only the tiles whose output meets this
        window (the GUI's "current view only"). The tiles stay on the whole-slide grid, so
        the labels there equal a whole-slide run's; the outputs keep the whole slide's
        shape and stay 0 (not computed) elsewhere. ``None``: the whole slide.
    exports
        Also write ``prediction.geojson`` and ``prediction.png`` (``msunet predict`` does),
        before the manifest: see :func:`~napari_msunet.inference.outputs.iter_write_exports`.
    share
        ``(i, n)``: compute only the ``i``-th of ``n`` parts of the tiles and publish nothing;
        the tiles stay in the ``.partial`` stores for the run that adopts them (see
        :mod:`~napari_msunet.inference.shares`). Not with ``region`` or ``exports``.
    adopt
        Folders of share runs of this prediction: every tile one of them finished is copied
        from it instead of computed (counted in ``tiles_adopted``); the rest are computed.

    Yields
    ------
    Progress
        Drivers branch on ``record.stage``, never on the message:

        ``"tissue"``
            While tissue is detected, when that reads more than one window (see
            :func:`~napari_msunet.io.tissue.iter_detect_tissue`: a large level, or a slide
            without a pyramid, where it decodes all of level 0). ``stop`` is checked between
            windows; a run stopped here returns ``completed=False`` with nothing written.
        ``"domain"``
            At most once, before the tiles: the slide's tissue looks unlike the model's
            training data (:mod:`napari_msunet.io.domain`); ``message`` says how. Drivers
            show it as a warning. The check itself is on the result (``domain``).
        ``"tiles"``
            :class:`~napari_msunet.inference.progress.TileProgress` records, once before the
            first batch (``done`` = tiles resumed from an earlier run; the ``.partial``
            label store exists from this record on) and after every batch. ``done`` and
            ``total`` count tiles with tissue; the speed fields are this run's.
        ``"pyramid"``
            Only when the tiles are all done: ``done=0, total=1`` before the coarse levels
            are built and the stores and ``tissue.png`` published, then (after the exports'
            records, with ``exports``) ``done=1, total=1`` once the manifest is written, last:
            the folder then holds the finished prediction.
        ``"vectorise"``, ``"preview"``
            With ``exports``, while ``prediction.geojson`` and ``prediction.png`` are written.
            A ``close()`` here leaves the stores published and no manifest; a plain rerun
            keeps them, computes no tile and writes what is missing.

    Returns
    -------
    PredictionResult
        ``completed`` is False when ``stop`` ended the run early; its tiles then stay in the
        ``.partial`` stores (with the run record ``prediction.run.json``) for a rerun to
        resume, and nothing is written under a final name (a finished prediction that
        ``overwrite`` was to replace stays as it was). A ``close()`` leaves the same state
        (and returns nothing). While it runs the folder's lock ``prediction.lock`` is held;
        it is released at the end, on an error and on ``close()``.

    Raises
    ------
    SlideError
        Unknown µm/px without ``mpp``, unreadable tiles.
    ConfigError
        Invalid settings: tile or margin not a multiple of the model's alignment, a model that
        does not take RGB, an unavailable device.
    WriterError, MsunetError
        A finished prediction without ``overwrite``, or a file the run would write that
        is not its own (``tissue.png`` say); another run writing the folder (refused before
        any tile, naming it); an interrupted one made with another model or settings;
        outputs that cannot be written; out of GPU memory.
    """
    t0 = time.perf_counter()
    config = config or InferenceConfig()
    if share is not None and (region is not None or exports or adopt):
        raise ConfigError("a share of a slide has no region, exports or shares of its own")
    timings = Timings()
    n_classes = check_model(model)
    normalization = Normalization.of(norm)
    outputs = out if isinstance(out, SlideOutputs) else SlideOutputs.in_dir(out)
    check_target(outputs, overwrite, config, exports)
    geometry = working_geometry(slide, config.target_mpp, mpp)
    names, colours = class_info(norm, n_classes)
    settings = resolve_device_settings(config)
    fingerprint = model_fingerprint(model)
    was_training = model.training
    # margin "exact" promises the stored network's own arithmetic: only then unfolded
    net = prepare_model(model, settings, fold=config.margin != EXACT)
    writers: list[OmeZarrWriter] = []
    locked = created = False
    try:
        tiling = resolve_tiling(config, model, settings, geometry.shape, measured_margin(norm))
        reader = SlideReader(slide, geometry)
        created = lock_folder(outputs)  # the last check before work: a second run is refused
        locked = True
        check_target(outputs, overwrite, config, exports)  # again: the holder may have finished
        tissue = None
        if config.tissue:
            tt = time.perf_counter()
            tissue = yield from iter_detect_tissue(
                slide, config.tissue_settings, mpp=geometry.slide_mpp, stop=stop
            )
            timings.tissue = time.perf_counter() - tt
            if tissue is None:  # stopped while detecting tissue: no tile computed, none kept
                return _stopped_before_tiles(outputs, geometry, tiling, settings, timings, t0)
        keep = None
        if tissue is not None:
            dy, dx = geometry.downsample
            mask = tissue

            def keep(y0: int, x0: int, y1: int, x1: int) -> bool:
                return mask.any_in(y0 * dy, x0 * dx, y1 * dy, x1 * dx)

        plan = plan_tiles(geometry.shape, tiling.tile, tiling.margin, tiling.alignment, keep)
        # bf16 is checked on the slide's first tile, whatever part of it this run computes:
        # so a window or a share of a slide decides as the whole-slide run does
        amp_window = first_window(plan, reader) if settings.check_amp else None
        if region is not None:
            plan = plan.within(*working_window(geometry, region, slide.shape))
        if share is not None:
            plan = plan.part(*share)
        if settings.check_amp:  # bf16 chosen on a CPU: kept only if it agrees with float32
            settings = confirm_amp(net, settings, normalization, amp_window)
        domain = slide_domain(norm, reader, plan)
        if domain is not None and domain.far:
            message = domain.message("the model")
            yield DomainProgress(1, 1, DOMAIN, message, time.perf_counter() - t0, domain)
        record = {
            "slide": {
                "name": slide.path.name,
                "shape": list(slide.shape),
                "bytes": slide.path.stat().st_size if slide.path.exists() else None,
            },
            "geometry": geometry.to_dict(),
            "model": fingerprint,
            "tile": tiling.tile,
            "margin": tiling.margin,
            "amp": settings.amp_name,
            "tissue": None if tissue is None else tissue.to_dict(),
            "chunk": config.chunk,
            "save_probabilities": config.save_probabilities,
            "labels_on_tissue_only": config.labels_on_tissue_only,
            "classes": names,
        }
        if region is not None:  # only then, so records of whole-slide runs stay as they were
            record["region"] = [int(v) for v in region]
        if share is not None:
            record["share"] = [int(v) for v in share]
        check_run_record(outputs, record, resume)
        # stores a killed run published are complete (checked by the run record just now):
        # kept, not recomputed; other files of an interrupted run of ours may be replaced
        published = outputs.published(config.save_probabilities) if resume else set()
        ours = overwrite or outputs.interrupted()
        write_json(outputs.run_record, record, overwrite=True)  # a resumed run rewrites it

        def open_writers(
            into: SlideOutputs, resume: bool = resume, ours: bool = ours
        ) -> tuple[OmeZarrWriter | None, OmeZarrWriter | None]:
            common = {"chunk": config.chunk, "mpp": geometry.mpp, "overwrite": ours}
            labels_w = probs_w = None
            if into.labels not in published:
                labels_w = OmeZarrWriter(
                    into.labels,
                    geometry.shape,
                    kind="labels",
                    class_names=names,
                    class_colors=[[0, 0, 0, 0]] + [[*c, 255] for c in colours[1:]],
                    resume=resume,
                    **common,
                )
            if config.save_probabilities and into.probabilities not in published:
                probs_w = OmeZarrWriter(
                    into.probabilities,
                    geometry.shape,
                    kind="probabilities",
                    n_channels=n_classes,
                    class_names=names,
                    class_colors=colours,
                    resume=resume,
                    **common,
                )
            return labels_w, probs_w

        labels_w, probs_w = open_writers(outputs)
        writers.extend(w for w in (labels_w, probs_w) if w is not None)
        workers = config.write_workers if plan.conflict_free(config.chunk) else 1
        tile_writer = TileWriter(labels_w, probs_w, workers)
        # a store is published only once every tile is in both: none is left to compute
        todo = (
            []
            if published
            else [t for t in plan.tiles if not tile_writer.is_done(t.y, t.x, t.h, t.w)]
        )
        resumed = len(plan.tiles) - len(todo)
        done, px = resumed, 0
        timings.setup = time.perf_counter() - t0 - timings.tissue
        yield make_progress(done, plan, resumed, t0, time.perf_counter(), 0, "starting")
        cancelled = False
        adopted = 0
        if adopt and todo:
            shares = ShareTiles(
                adopt,
                record,
                lambda into: open_writers(into, resume=True, ours=False),
                config.save_probabilities,
            )
            try:
                left = []
                for t in todo:
                    block = None if cancelled else shares.take(t)
                    if block is None:
                        left.append(t)
                        continue
                    tile_writer.submit(t.y, t.x, *block)
                    adopted += 1
                    if adopted % 16 == 0:
                        msg = f"tile {done + adopted}/{len(plan.tiles)} (from the shares)"
                        yield make_progress(done + adopted, plan, done + adopted, t0, t0, 0, msg)
                        cancelled = stopped(stop)
                tile_writer.drain()  # before the shares' stores close
            finally:
                shares.close()
            todo, done, resumed = left, done + adopted, resumed + adopted
        tc = time.perf_counter()
        batches = run_batches(
            todo,
            plan,
            reader,
            net,
            settings,
            normalization,
            batch_size=tiling.batch_size,
            read_workers=read_workers(config, settings),
            prefetch=config.prefetch,
            timings=timings,
        )
        try:
            while True:
                if stopped(stop):
                    cancelled = True
                    break
                try:
                    batch = next_batch(batches)
                except StopIteration:
                    break
                tw = time.perf_counter()
                for t, p, lab in zip(batch.tiles, batch.probabilities, batch.labels, strict=True):
                    if tissue is not None and config.labels_on_tissue_only:
                        lab = _on_tissue(lab, tissue, t.y, t.x, geometry.downsample)
                    tile_writer.submit(t.y, t.x, p, lab)
                    px += t.h * t.w
                timings.write_wait += time.perf_counter() - tw
                done += len(batch.tiles)
                msg = f"tile {done}/{len(plan.tiles)}"
                yield make_progress(done, plan, resumed, t0, tc, px, msg)
            tw = time.perf_counter()
            tile_writer.drain()
            timings.write_wait += time.perf_counter() - tw
        finally:
            batches.close()
            tile_writer.close()
        computed = done - resumed
        publish = not cancelled and share is None  # a share's tiles wait for the adopting run
        if publish:
            yield Progress(0, 1, PYRAMID, "building the pyramid", time.perf_counter() - t0)
            tf = time.perf_counter()
            # publishing: from here a kill leaves published stores and no manifest, which a
            # plain rerun finishes (the run record stays until the manifest is written); an
            # old manifest being replaced goes first, so it never describes the new stores
            if overwrite:
                outputs.manifest.unlink(missing_ok=True)
            for w in writers:
                w.finalize()
            extra = {
                "mpp": geometry.mpp,
                "level0_downsample": list(geometry.downsample),
                "slide": slide.path.name,
                "manifest": outputs.manifest.name,
            }
            stores = [outputs.labels, outputs.probabilities][: 1 + config.save_probabilities]
            for store in stores:
                group = zarr.open_group(store, mode="r+", zarr_format=3)
                group.attrs["napari_msunet_prediction"] = extra
            if tissue is not None:  # written with the stores, not before: see the Returns
                tissue.save_png(outputs.tissue, overwrite=True)  # ours: see check_target
            timings.finalize = time.perf_counter() - tf
            if exports:
                yield from iter_write_exports(outputs, slide, names, colours, geometry.downsample)
        timings.total = time.perf_counter() - t0
        result = PredictionResult(
            completed=not cancelled,
            outputs=outputs,
            shape=geometry.shape,
            mpp=geometry.mpp,
            downsample=geometry.downsample,
            level=geometry.level,
            tiles_total=plan.n_total,
            tiles_computed=computed,
            tiles_resumed=resumed - adopted,
            tiles_skipped=len(plan.skipped),
            tile=tiling.tile,
            margin=tiling.margin,
            batch_size=tiling.batch_size,
            overhead=plan.overhead(),
            nominal_overhead=plan.nominal_overhead,
            device=settings.describe(),
            timings=timings.to_dict(),
            tissue_fraction=None if tissue is None else tissue.fraction,
            region=None if region is None else tuple(record["region"]),
            domain=domain,
            tiles_adopted=adopted,
        )
        if publish:
            remove_stale(outputs, config, tissue, overwrite, exports)
            write_manifest(outputs, overwrite, slide, geometry, config, tiling, settings, record,
                            tissue, norm, names, colours, result, exports)  # fmt: skip
            outputs.run_record.unlink(missing_ok=True)
            yield Progress(1, 1, PYRAMID, "finished", time.perf_counter() - t0)
        return result
    finally:
        for w in writers:
            w.close()
        model.train(was_training)
        if locked:
            unlock_folder(outputs, created)


def _stopped_before_tiles(outputs, geometry, tiling, settings, timings, t0) -> PredictionResult:
    """The result of a run stopped during tissue detection: nothing computed or written."""
    timings.total = time.perf_counter() - t0
    return PredictionResult(
        completed=False,
        outputs=outputs,
        shape=geometry.shape,
        mpp=geometry.mpp,
        downsample=geometry.downsample,
        level=geometry.level,
        tiles_total=0,
        tiles_computed=0,
        tiles_resumed=0,
        tiles_skipped=0,
        tile=tiling.tile,
        margin=tiling.margin,
        batch_size=tiling.batch_size,
        overhead=0.0,
        nominal_overhead=0.0,
        device=settings.describe(),
        timings=timings.to_dict(),
        tissue_fraction=None,
    )


def _on_tissue(labels: np.ndarray, tissue, y: int, x: int, downsample) -> np.ndarray:
    """Labels with every pixel off the tissue mask set to background (0).

    A network never trained on glass may call it anything; the tissue mask knows better. The
    mask pixel under each label pixel's centre decides (nearest neighbour).
    """
    h, w = labels.shape
    (dy, dx), (ty, tx) = downsample, tissue.downsample
    rows = np.floor((y + np.arange(h) + 0.5) * dy / ty).astype(np.int64)
    cols = np.floor((x + np.arange(w) + 0.5) * dx / tx).astype(np.int64)
    mh, mw = tissue.mask.shape
    on = tissue.mask[np.clip(rows, 0, mh - 1)[:, None], np.clip(cols, 0, mw - 1)[None, :]]
    if on.all():
        return labels
    out = labels.copy()
    out[~on] = 0
    return out


predict_slide = eager(iter_predict_slide)
