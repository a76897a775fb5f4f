"""The slide engine's tiling on an in-memory image (the GUI's "current view only").

Same plan, same batches, same reader threads and the same forward pass as
:func:`~napari_msunet.inference.engine.iter_predict_slide`, but the image is the working image
itself (no pyramid level, no resampling) and the outputs are arrays.
"""

from __future__ import annotations

import time
from collections.abc import Generator
from typing import Any

import numpy as np
from torch import nn

from napari_msunet.errors import ConfigError, InputShapeError
from napari_msunet.inference.config import EXACT, InferenceConfig
from napari_msunet.inference.device import (
    Normalization,
    confirm_amp,
    prepare_model,
    resolve_device_settings,
)
from napari_msunet.inference.pipeline import (
    Timings,
    check_model,
    first_window,
    next_batch,
    read_workers,
    run_batches,
)
from napari_msunet.inference.progress import TileProgress, make_progress
from napari_msunet.inference.tiling import plan_tiles, resolve_tiling
from napari_msunet.io.tissue import TissueMask
from napari_msunet.io.working_image import ArrayReader
from napari_msunet.models.margin import measured_margin
from napari_msunet.progress import Stop, eager, stopped

__all__ = ["iter_predict_array", "predict_array"]


def iter_predict_array(
    image: np.ndarray,
    model: nn.Module,
    norm: Any,
    config: InferenceConfig | None = None,
    *,
    tissue: TissueMask | None = None,
    probabilities: str = "uint8",
    stop: Stop = None,
) -> Generator[TileProgress, None, tuple[np.ndarray, np.ndarray]]:
    """Predict an in-memory RGB image with the slide engine's tiling, as a generator.

    The image is taken as the working image (no resampling; ``config.target_mpp`` and the
    tissue settings are not used). Tiles without tissue in ``tissue`` (a mask whose
    downsample is relative to ``image``) and tiles not computed because of ``stop`` (or a
    ``close()``) are 0 in both outputs; nothing is written anywhere, so there is nothing to
    clean up.

    Yields
    ------
    TileProgress
        After every batch, in stage ``"tiles"`` (``done``/``total`` count tiles).

    Returns
    -------
    labels, probabilities
        ``(H, W)`` uint8 and ``(C, H, W)``, uint8 (``round(p * 255)``) or float32 with
        ``probabilities="float32"``.
    """
    config = config or InferenceConfig()
    t0 = time.perf_counter()
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8 or 0 in image.shape:
        raise InputShapeError(
            f"expected an RGB uint8 image of shape (H, W, 3), got {image.dtype} {image.shape}"
        )
    if probabilities not in ("uint8", "float32"):
        raise ConfigError(f"probabilities must be 'uint8' or 'float32', got {probabilities!r}")
    n_classes = check_model(model)
    normalization = Normalization.of(norm)
    settings = resolve_device_settings(config)
    was_training = model.training
    # margin "exact" promises the stored network's own arithmetic: only then unfolded
    net = prepare_model(model, settings, fold=config.margin != EXACT)
    try:
        shape = (int(image.shape[0]), int(image.shape[1]))
        tiling = resolve_tiling(config, model, settings, shape, measured_margin(norm))
        keep = None if tissue is None else tissue.any_in
        plan = plan_tiles(shape, tiling.tile, tiling.margin, tiling.alignment, keep)
        reader = ArrayReader(image)
        if settings.check_amp:  # bf16 chosen on a CPU: kept only if it agrees with float32
            settings = confirm_amp(net, settings, normalization, first_window(plan, reader))
        labels = np.zeros(shape, np.uint8)
        probs = np.zeros((n_classes, *shape), np.dtype(probabilities))
        timings = Timings()
        batches = run_batches(
            plan.tiles,
            plan,
            reader,
            net,
            settings,
            normalization,
            batch_size=tiling.batch_size,
            read_workers=read_workers(config, settings),
            prefetch=config.prefetch,
            timings=timings,
            float_probs=probabilities == "float32",
        )
        done, px, tc = 0, 0, time.perf_counter()
        try:
            while not stopped(stop):
                try:
                    batch = next_batch(batches)
                except StopIteration:
                    break
                for t, p, lab in zip(batch.tiles, batch.probabilities, batch.labels, strict=True):
                    labels[t.y : t.y + t.h, t.x : t.x + t.w] = lab
                    probs[:, t.y : t.y + t.h, t.x : t.x + t.w] = p
                    px += t.h * t.w
                done += len(batch.tiles)
                yield make_progress(done, plan, 0, t0, tc, px, f"tile {done}/{len(plan.tiles)}")
        finally:
            batches.close()
        return labels, probs
    finally:
        model.train(was_training)


predict_array = eager(iter_predict_array)
