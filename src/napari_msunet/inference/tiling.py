"""The tile plan: which windows of the working image the network sees, and what they cost.

Centre-crop stitching. The working image is cut into output tiles of ``tile x tile`` pixels on
a grid starting at ``(0, 0)``; each is computed from a window that adds ``margin`` pixels on
every side, and only the window's centre is kept. Two facts make the stitched result equal
to one forward pass over the whole image:

1. the network is shift-equivariant for shifts by its ``alignment`` (a multiple of its
   downsampling factor: 16 for lite U-Net, 64 for lite MS U-Net whose deepest block has a
   stride-4 branch), so every window must start at a multiple of it. Windows start at
   ``tile_origin - margin``, hence ``tile`` and ``margin`` are both multiples of it;
2. an output pixel depends only on inputs within the receptive radius, so a margin of at
   least that radius gives every kept pixel its whole context.

Padding convention. Windows that reach past the image read white (255, glass; see
:mod:`napari_msunet.io.working_image`). The equal whole-image pass is therefore the network
run on the image padded with white by ``margin`` on the top and left (and by at least
``margin`` on the bottom and right), cropped back. White rather than reflection: beyond a slide
there is glass, a mirrored copy would invent tissue at the edge, and a window then never needs
pixels from the far side of the image. Next to the image border the result differs from the
network run on the unpadded image (whose convolutions see zeros there); that is inherent to
any tiling and the same for every tile.

Cost. Each tile computes ``(tile + 2 margin)^2`` pixels for ``tile^2`` kept ones; the plan
reports this overhead (the paper's 50 %-overlap tiling computes every pixel about 4 times).
Tiles whose area holds no tissue are skipped. When the image is smaller than a tile, the tile
shrinks to the image (rounded up to the alignment) instead of computing white.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from napari_msunet.errors import ConfigError
from napari_msunet.inference.config import AUTO, EXACT, MAX_AUTO_TILE, InferenceConfig
from napari_msunet.inference.device import DeviceSettings

__all__ = ["Tile", "TilePlan", "TilingSettings", "balanced_tile", "plan_tiles", "resolve_tiling"]

#: Tile side on CPU and MPS when ``tile="auto"``: lite MS U-Net peaks at about 1.6 GB for its
#: 1664 x 1664 window (docs/benchmarks.md), within the 2 GB a workstation run should use.
CPU_AUTO_TILE = 1024
#: Share of the free GPU memory the CUDA auto-sizing plans to use.
GPU_MEMORY_FRACTION = 0.5
#: Most tiles per batch chosen automatically.
MAX_AUTO_BATCH = 8


def _round_up(n: int, a: int) -> int:
    return -(-n // a) * a


@dataclass(frozen=True)
class Tile:
    """One output tile: its top-left ``(y, x)`` and the size ``(h, w)`` of its part inside the
    image, in working pixels. Its window starts ``margin`` earlier on both axes."""

    index: int
    y: int
    x: int
    h: int
    w: int


@dataclass(frozen=True)
class TilingSettings:
    """Resolved tile side, margin and batch size for one model, device and image."""

    tile: int
    margin: int
    batch_size: int
    alignment: int
    receptive_radius: int | None


@dataclass(frozen=True)
class TilePlan:
    """All tiles of an image and which of them are computed.

    Attributes
    ----------
    shape
        ``(H, W)`` of the working image.
    tile
        ``(th, tw)``: output size of every tile (the last row/column is clipped to the image).
    margin
        Context on every side of each tile.
    tiles
        The tiles to compute (with tissue), row-major.
    skipped
        The tiles without tissue (never computed; their output stays 0).
    """

    shape: tuple[int, int]
    tile: tuple[int, int]
    margin: int
    tiles: tuple[Tile, ...]
    skipped: tuple[Tile, ...]

    @property
    def window(self) -> tuple[int, int]:
        """``(h, w)`` of the network input per tile."""
        return self.tile[0] + 2 * self.margin, self.tile[1] + 2 * self.margin

    @property
    def n_total(self) -> int:
        return len(self.tiles) + len(self.skipped)

    @property
    def nominal_overhead(self) -> float:
        """Computed / kept pixels of an interior tile: ``((t + 2m) / t)^2``."""
        (wh, ww), (th, tw) = self.window, self.tile
        return wh * ww / (th * tw)

    def overhead(self, tiles: tuple[Tile, ...] | list[Tile] | None = None) -> float:
        """Computed pixels / output pixels over ``tiles`` (default: the tiles to compute).

        Tiles at the right and bottom edges keep fewer pixels for the same window, so this is
        at least :attr:`nominal_overhead`.
        """
        tiles = self.tiles if tiles is None else tiles
        kept = sum(t.h * t.w for t in tiles)
        if kept == 0:
            return float("nan")
        wh, ww = self.window
        return len(tiles) * wh * ww / kept

    def within(self, y0: int, x0: int, y1: int, x1: int) -> TilePlan:
        """The plan restricted to the tiles whose output area meets ``[y0, y1) x [x0, x1)``.

        The tiles keep their place on the grid (same origin, size and index), so each one is
        computed exactly as in the whole-image plan and a windowed run equals a whole run
        inside the window.
        """

        def meets(t: Tile) -> bool:
            return t.y < y1 and t.y + t.h > y0 and t.x < x1 and t.x + t.w > x0

        return TilePlan(
            self.shape,
            self.tile,
            self.margin,
            tuple(t for t in self.tiles if meets(t)),
            tuple(t for t in self.skipped if meets(t)),
        )

    def part(self, index: int, count: int) -> TilePlan:
        """The ``index``-th of ``count`` contiguous runs of the tiles to compute (row-major,
        sizes differing by at most one): one share of a slide spread over several workers.

        The tiles keep their place on the grid, as in :meth:`within`; the skipped tiles go
        with none of the parts.
        """
        if not 0 <= index < count:
            raise ValueError(f"part {index} of {count} does not exist")
        n = len(self.tiles)
        start, end = n * index // count, n * (index + 1) // count
        return TilePlan(self.shape, self.tile, self.margin, self.tiles[start:end], ())

    def conflict_free(self, chunk: int) -> bool:
        """Whether no two tiles share an output chunk of side ``chunk`` (then tiles may be
        written from parallel threads)."""
        (h, w), (th, tw) = self.shape, self.tile
        return (th >= h or th % chunk == 0) and (tw >= w or tw % chunk == 0)


def plan_tiles(
    shape: tuple[int, int],
    tile: int,
    margin: int,
    alignment: int,
    keep: Callable[[int, int, int, int], bool] | None = None,
) -> TilePlan:
    """Cut an ``(H, W)`` working image into tiles.

    Parameters
    ----------
    shape
        Working image size.
    tile, margin
        Multiples of ``alignment`` (see :func:`resolve_tiling`).
    alignment
        The network's shift period.
    keep
        ``keep(y0, x0, y1, x1)`` on a tile's output area in working pixels: False skips it
        (no tissue). ``None`` keeps every tile.
    """
    H, W = shape
    if H < 1 or W < 1:
        raise ConfigError(f"cannot tile an empty image of shape {shape}")
    th = min(tile, _round_up(H, alignment))
    tw = min(tile, _round_up(W, alignment))
    tiles, skipped = [], []
    index = 0
    for y in range(0, H, th):
        for x in range(0, W, tw):
            t = Tile(index, y, x, min(th, H - y), min(tw, W - x))
            index += 1
            if keep is None or keep(t.y, t.x, t.y + t.h, t.x + t.w):
                tiles.append(t)
            else:
                skipped.append(t)
    return TilePlan((H, W), (th, tw), margin, tuple(tiles), tuple(skipped))


def _check_multiple(name: str, value: int, alignment: int, arch: str) -> None:
    if value % alignment:
        lo = value // alignment * alignment
        options = f"{lo} or {lo + alignment}" if lo else str(alignment)
        raise ConfigError(
            f"{name} {value} is not a multiple of {arch}'s alignment {alignment} (tile offsets "
            "must be multiples of it for the stitched result to equal a whole-image pass); "
            f"use {options}"
        )


def resolve_tiling(
    config: InferenceConfig,
    model: nn.Module,
    settings: DeviceSettings,
    shape: tuple[int, int],
    measured: int | None = None,
) -> TilingSettings:
    """Resolve ``tile``, ``margin`` and ``batch_size`` for this model, device and image.

    The model must already be on the device (the CUDA auto-sizing runs it once).
    ``measured`` is the margin measured for the model file
    (:func:`~napari_msunet.models.margin.measured_margin`), which ``margin="auto"`` takes.

    Raises
    ------
    ConfigError
        When an explicit tile or margin is not a multiple of the model's alignment.
    """
    factor = int(getattr(model, "downsampling_factor", 1))
    alignment = int(getattr(model, "alignment", factor))
    arch = str(getattr(model, "arch_name", type(model).__name__))
    radius = None
    if config.margin == AUTO and measured is not None and measured % alignment == 0:
        margin = int(measured)
    elif config.margin in (AUTO, EXACT):
        radius = int(model.receptive_radius)
        margin = _round_up(radius, alignment)
    else:
        margin = int(config.margin)
        _check_multiple("margin", margin, alignment, arch)
    if config.tile != AUTO:
        _check_multiple("tile", int(config.tile), alignment, arch)
    H, W = shape
    fit = (_round_up(H, alignment), _round_up(W, alignment))
    batch = config.batch_size
    if settings.device.type != "cuda":
        tile = balanced_tile(shape, alignment, margin) if config.tile == AUTO else int(config.tile)
        batch = 1 if batch == AUTO else int(batch)
    else:
        bpp = _cuda_bytes_per_px(model, settings, _round_up(max(1024, 2 * margin), alignment))
        free, _ = torch.cuda.mem_get_info(settings.device)
        budget = GPU_MEMORY_FRACTION * free
        if config.tile == AUTO:
            per_tile = budget / (1 if batch == AUTO else int(batch))
            side = min(math.isqrt(int(per_tile / bpp)), _max_cudnn_window(model))
            tile = max(alignment, min(MAX_AUTO_TILE, (side - 2 * margin) // alignment * alignment))
        else:
            tile = int(config.tile)
        if batch == AUTO:
            th, tw = min(tile, fit[0]), min(tile, fit[1])
            window_px = (th + 2 * margin) * (tw + 2 * margin)
            batch = max(1, min(MAX_AUTO_BATCH, int(budget // (window_px * bpp))))
        batch = int(batch)
    n_tiles = math.ceil(H / min(tile, fit[0])) * math.ceil(W / min(tile, fit[1]))
    return TilingSettings(tile, margin, max(1, min(batch, n_tiles)), alignment, radius)


def balanced_tile(
    shape: tuple[int, int], alignment: int, margin: int, largest: int = CPU_AUTO_TILE
) -> int:
    """The CPU's auto tile: at most ``largest``, the fewest pixels computed for this image.

    Every window of a run has one shape (``tile + 2 * margin``), so a grid of 1024 tiles over
    a 3584² image computes 16 windows of 1280² for a last row and column only half used: 26.2
    Mpx for 12.8 kept. Tiles of 896 cover it exactly: 16 windows of 1152², 21.2 Mpx, 19 %
    less work. So among the aligned tiles between half of ``largest`` and ``largest`` (larger
    windows run slower per pixel on a CPU: cache; smaller ones pay more margin), the one
    whose grid computes the fewest window pixels is taken; ties go to the larger tile. On a
    large slide this stays within a few percent of ``largest``.
    """
    top = _round_up(largest, alignment)
    fit = [_round_up(n, alignment) for n in shape]

    def cost(t: int) -> int:
        th, tw = min(t, fit[0]), min(t, fit[1])
        n = math.ceil(shape[0] / th) * math.ceil(shape[1] / tw)
        return n * (th + 2 * margin) * (tw + 2 * margin)

    candidates = range(top, max(alignment, top // 2) - 1, -alignment)
    return min(candidates, key=lambda t: (cost(t), -t))


def _max_cudnn_window(model: nn.Module) -> int:
    """Largest window side whose widest activation stays below 2**31 elements per tile.

    cuDNN indexes tensors with 32-bit integers and PyTorch can only split a too-large
    convolution along the batch, so one tile must stay below that. The widest activation is
    the decoder's full-resolution concatenation, ``2 * widths[0]`` channels.
    """
    widths = getattr(getattr(model, "config", None), "widths", None) or (64,)
    return math.isqrt((2**31 - 1) // (2 * int(widths[0])))


def _cuda_bytes_per_px(model: nn.Module, settings: DeviceSettings, size: int) -> float:
    """Peak CUDA memory per input pixel of one forward pass (plus softmax) at ``size``².

    Measured rather than estimated from the architecture, so it holds for any registry model,
    precision and memory format; per-pixel memory falls slightly with size, so extrapolating
    from a small probe errs on the safe side.
    """
    dev = settings.device
    torch.cuda.synchronize(dev)
    torch.cuda.reset_peak_memory_stats(dev)
    base = torch.cuda.memory_allocated(dev)
    fmt = torch.channels_last if settings.channels_last else torch.contiguous_format
    with torch.inference_mode(), settings.autocast():
        x = torch.zeros((1, 3, size, size), device=dev).contiguous(memory_format=fmt)
        torch.softmax(model(x).float(), dim=1)
    torch.cuda.synchronize(dev)
    peak = torch.cuda.max_memory_allocated(dev) - base
    # + the uint8 window and its float copy, held while the network runs
    return peak / (size * size) + 3
