"""The compute loop: tiles read ahead in threads, batched through the network, cropped.

Three kinds of work overlap so that the network never waits:

- reading: a thread pool reads each window (decoding JPEG tiles, shrinking, and on the CPU
  normalising) straight into one of ``prefetch + 1`` batch buffers. Buffers are recycled, so
  the read-ahead holds a bounded amount of memory however large the slide is. On CUDA the
  buffers are pinned uint8, copied with ``non_blocking=True`` and normalised on the GPU;
- compute (the calling thread): the forward pass under ``torch.inference_mode`` and autocast,
  then the centre crop, softmax, argmax and uint8 quantisation on the device, so only the
  small outputs travel back;
- writing: done by the consumer of :func:`run_batches`
  (:func:`~napari_msunet.inference.engine.iter_predict_slide` hands tiles to a writer pool;
  :func:`~napari_msunet.inference.array.iter_predict_array` copies them into arrays).

Batches always hold the same number of tiles (the last is padded), so the network sees one
input shape: the same kernels run for every tile, whether a run is fresh or resumed, which
keeps results bit-identical between the two.
"""

from __future__ import annotations

import math
import os
import time
import warnings
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from napari_msunet.errors import ConfigError, MsunetError
from napari_msunet.inference.config import AUTO, InferenceConfig
from napari_msunet.inference.device import DeviceSettings, Normalization
from napari_msunet.inference.tiling import Tile, TilePlan
from napari_msunet.io.working_image import WindowReader

__all__ = [
    "BatchOutput",
    "Timings",
    "check_model",
    "first_window",
    "next_batch",
    "read_workers",
    "run_batches",
]


@dataclass
class Timings:
    """Where the time of a run went, in seconds (wall clock of the calling thread).

    ``read_wait`` is time the network waited for tiles and ``write_wait`` time it waited for
    the writers: both near zero when I/O is hidden behind compute.
    """

    setup: float = 0.0
    tissue: float = 0.0
    read_wait: float = 0.0
    compute: float = 0.0
    write_wait: float = 0.0
    finalize: float = 0.0
    total: float = 0.0

    def to_dict(self) -> dict[str, float]:
        return {k: round(v, 4) for k, v in self.__dict__.items()}


@dataclass
class BatchOutput:
    """The outputs of one batch: per tile, probabilities ``(C, h, w)`` and labels ``(h, w)``,
    already cropped to the part of the tile inside the image."""

    tiles: list[Tile]
    probabilities: list[np.ndarray] = field(default_factory=list)
    labels: list[np.ndarray] = field(default_factory=list)


class _Batches:
    """Batch buffers and the read tasks that fill them."""

    def __init__(
        self,
        reader: WindowReader,
        plan: TilePlan,
        settings: DeviceSettings,
        norm: Normalization,
        batch_size: int,
        n_buffers: int,
        read_workers: int,
    ) -> None:
        self.reader, self.plan, self.settings = reader, plan, settings
        self.batch_size = batch_size
        wh, ww = plan.window
        self.nhwc = settings.channels_last or settings.normalise_on_device
        shape = (batch_size, wh, ww, 3) if self.nhwc else (batch_size, 3, wh, ww)
        if settings.normalise_on_device:
            pin = settings.device.type == "cuda"
            make = lambda: torch.zeros(shape, dtype=torch.uint8, pin_memory=pin)  # noqa: E731
        else:
            make = lambda: torch.zeros(shape, dtype=torch.float32)  # noqa: E731
        self.buffers = [make() for _ in range(n_buffers)]
        a, b = norm.scale_shift()
        self.scale = np.asarray(a, np.float32)
        self.shift = np.asarray(b, np.float32)
        # split windows into row strips when there are more threads than windows in flight
        per_window = max(1, math.ceil(read_workers / (n_buffers * batch_size)))
        self.strip = max(64, -(-math.ceil(wh / per_window) // 64) * 64)

    def read_into(self, buf: np.ndarray, i: int, tile: Tile, r0: int, r1: int) -> None:
        """Read window rows ``[r0, r1)`` of ``tile`` into slot ``i`` of a buffer."""
        m = self.plan.margin
        ww = self.plan.window[1]
        u8 = self.reader.read(tile.y - m + r0, tile.x - m, r1 - r0, ww)
        if self.settings.normalise_on_device:
            buf[i, r0:r1] = u8
        elif self.nhwc:
            dst = buf[i, r0:r1]
            np.multiply(u8, self.scale, out=dst, casting="unsafe")
            dst -= self.shift
        else:
            for c in range(3):
                dst = buf[i, c, r0:r1]
                np.multiply(u8[..., c], self.scale[c], out=dst, casting="unsafe")
                dst -= self.shift[c]

    def submit(
        self, pool: ThreadPoolExecutor, tiles: Sequence[Tile], slot: int
    ) -> list[Future[None]]:
        buf = self.buffers[slot].numpy()
        wh = self.plan.window[0]
        return [
            pool.submit(self.read_into, buf, i, t, r0, min(r0 + self.strip, wh))
            for i, t in enumerate(tiles)
            for r0 in range(0, wh, self.strip)
        ]


def argmax_channels(p: torch.Tensor) -> torch.Tensor:
    """``p.argmax(dim=1)`` as uint8 for ``(N, C, H, W)``: the first maximum wins, like argmax.

    One elementwise pass per class instead of torch's reduction over the channel dimension,
    which on the CPU took 170 ms per 1024² tile of two classes (8 % of a lite MS U-Net
    forward pass) against about 3 ms for this.
    """
    n, c, h, w = p.shape
    if c > 32:
        return p.argmax(dim=1).to(torch.uint8)
    labels = torch.zeros((n, h, w), dtype=torch.uint8, device=p.device)
    best = p[:, 0]
    for k in range(1, c):
        pk = p[:, k]
        labels.masked_fill_(pk > best, k)
        best = torch.maximum(best, pk)
    return labels


def _forward(
    model: nn.Module,
    settings: DeviceSettings,
    norm_t: tuple[torch.Tensor, torch.Tensor] | None,
    buf: torch.Tensor,
    nhwc: bool,
    plan: TilePlan,
    tiles: Sequence[Tile],
    float_probs: bool,
) -> BatchOutput:
    m, (th, tw) = plan.margin, plan.tile
    fmt = torch.channels_last if settings.channels_last else torch.contiguous_format
    with torch.inference_mode():
        if settings.normalise_on_device:
            x = buf.to(settings.device, non_blocking=True).permute(0, 3, 1, 2)
            x = x.to(torch.float32, memory_format=fmt)
            scale, shift = norm_t  # type: ignore[misc]
            x.mul_(scale).sub_(shift)
        else:
            x = buf.permute(0, 3, 1, 2) if nhwc else buf  # NHWC memory = channels_last
            if not settings.channels_last and nhwc:
                x = x.contiguous()
        with settings.autocast():
            logits = model(x)
        logits = logits[: len(tiles), :, m : m + th, m : m + tw].float()
        p = torch.softmax(logits, dim=1)
        labels = argmax_channels(p)
        probs = p if float_probs else p.mul_(255).round_().to(torch.uint8)
        probs_np, labels_np = probs.cpu().numpy(), labels.cpu().numpy()
    out = BatchOutput(list(tiles))
    for i, t in enumerate(tiles):
        out.probabilities.append(probs_np[i, :, : t.h, : t.w])
        out.labels.append(labels_np[i, : t.h, : t.w])
    return out


def first_window(plan: TilePlan, reader: WindowReader) -> np.ndarray | None:
    """The network input of the plan's first tile (``None`` when it computes none)."""
    if not plan.tiles:
        return None
    t, m, (th, tw) = plan.tiles[0], plan.margin, plan.tile
    return reader.read(t.y - m, t.x - m, th + 2 * m, tw + 2 * m)


def run_batches(
    tiles: Sequence[Tile],
    plan: TilePlan,
    reader: WindowReader,
    model: nn.Module,
    settings: DeviceSettings,
    norm: Normalization,
    *,
    batch_size: int,
    read_workers: int,
    prefetch: int,
    timings: Timings,
    float_probs: bool = False,
) -> Iterator[BatchOutput]:
    """Yield the outputs of ``tiles``, one batch at a time, in order.

    The model must be prepared (eval mode, on the device, memory format). Reads run up to
    ``prefetch`` batches ahead. Closing the generator cancels queued reads and waits for the
    running ones, so no thread outlives it. ``timings.read_wait`` and ``timings.compute``
    are accumulated.
    """
    batches = [list(tiles[i : i + batch_size]) for i in range(0, len(tiles), batch_size)]
    if not batches:
        return
    n_buffers = min(prefetch + 1, len(batches))
    state = _Batches(reader, plan, settings, norm, batch_size, n_buffers, read_workers)
    norm_t = None
    if settings.normalise_on_device:
        a, b = norm.scale_shift()
        norm_t = (
            torch.tensor(a, device=settings.device).view(1, 3, 1, 1),
            torch.tensor(b, device=settings.device).view(1, 3, 1, 1),
        )
    pool = ThreadPoolExecutor(max_workers=read_workers, thread_name_prefix="msunet-read")
    pending: deque[tuple[int, list[Future[None]]]] = deque()
    try:
        submitted = 0
        for j in range(len(batches)):
            # batch j + prefetch reuses the buffer of batch j - 1, consumed by now
            while submitted < len(batches) and submitted <= j + prefetch:
                slot = submitted % n_buffers
                pending.append((slot, state.submit(pool, batches[submitted], slot)))
                submitted += 1
            slot, futures = pending.popleft()
            t0 = time.perf_counter()
            for f in futures:
                f.result()
            t1 = time.perf_counter()
            out = _forward(
                model, settings, norm_t, state.buffers[slot], state.nhwc, plan, batches[j],
                float_probs,
            )  # fmt: skip
            timings.read_wait += t1 - t0
            timings.compute += time.perf_counter() - t1
            yield out
    finally:
        for _, futures in pending:
            for f in futures:
                f.cancel()
        pool.shutdown(wait=True, cancel_futures=True)


def check_model(model: nn.Module) -> int:
    """Check the model takes RGB; return its number of classes."""
    config = getattr(model, "config", None)
    n_in = getattr(config, "in_channels", 3)
    if n_in != 3:
        raise ConfigError(
            f"the model takes {n_in} input channels, but slides are RGB (3 channels); use a "
            "model trained on RGB images"
        )
    n_classes = getattr(config, "n_classes", None)
    if n_classes is None:
        raise ConfigError("the model has no config.n_classes; build it with napari_msunet.models")
    if not getattr(config, "spatially_local", True):
        warnings.warn(
            f"the model normalises with {config.norm} norm, which depends on the whole tile: "
            "tiled predictions will differ slightly from a whole-image pass",
            RuntimeWarning,
            stacklevel=3,
        )
    return int(n_classes)


def read_workers(config: InferenceConfig, settings: DeviceSettings) -> int:
    """Reader threads: 2 on the CPU (the network needs the cores); on a GPU every core but
    the one that drives the device, since there decoding, not the network, is the cost
    (docs/benchmarks.md, GPU: reads and writes took most of a 16k² run)."""
    if config.read_workers != AUTO:
        return int(config.read_workers)
    if settings.device.type == "cpu":
        return 2
    return max(2, (os.cpu_count() or 2) - 1)


def next_batch(gen: Any) -> Any:
    """``next(gen)``, turning a CUDA out-of-memory error into advice."""
    try:
        return next(gen)
    except torch.cuda.OutOfMemoryError as exc:
        raise MsunetError(
            f"out of GPU memory ({exc}); pass a smaller tile or batch size "
            "(msunet predict --tile/--batch-size)"
        ) from None
