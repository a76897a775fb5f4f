"""TP/FP/FN maps: where the prediction and the truth agree, as the paper shows them.

The paper overlays each prediction on the slide with true positives green, false positives
red and false negatives blue (its figures 3 and 4). Here that map is a label image with

====  ==========================================  ===============================
code  meaning                                     colour (default; paper)
====  ==========================================  ===============================
0     TN: neither says the class (or not counted)  transparent
1     TP: both say the class                       blue (0, 114, 178); green
2     FP: only the prediction says it              orange (230, 159, 0); red
3     FN: only the truth says it                   reddish purple; blue
====  ==========================================  ===============================

The default colours are colour-blind safe (Okabe & Ito; red against green is lost on about
8 % of men); the paper's are a scheme of :mod:`napari_msunet.palette`.

for one class (``label=k``) or for "any foreground" (``label=None``: non-zero against
non-zero). Pixels whose truth is the ignore label, or outside a region mask, are 0.

:func:`tpfpfn_map` builds it lazily from two label arrays (dask ``map_blocks``, nothing is
computed until a viewer asks for a chunk); :func:`tpfpfn_pyramid` builds a multiscale stack
for napari; :func:`render_overlay` draws a small level over a slide thumbnail with a legend,
for the report (Pillow only).
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np

from napari_msunet._atomic import atomic_write_bytes
from napari_msunet.evaluation._windows import Resampled, check_label_array
from napari_msunet.io.writers import DEFAULT_CHUNK
from napari_msunet.palette import COMPARISON_SCHEMES, DEFAULT_SCHEME

__all__ = [
    "FN",
    "FP",
    "OVERLAY_COLORS",
    "OVERLAY_COLORS_RGBA8",
    "OVERLAY_NAMES",
    "TN",
    "TP",
    "render_overlay",
    "tpfpfn_codes",
    "tpfpfn_map",
    "tpfpfn_pyramid",
    "write_overlay_png",
]

TN, TP, FP, FN = 0, 1, 2, 3
#: Short names of the codes, for legends and napari layer properties.
OVERLAY_NAMES: dict[int, str] = {TN: "TN", TP: "TP", FP: "FP", FN: "FN"}
#: The default scheme's colours (:mod:`napari_msunet.palette`: colour-blind safe, blue TP,
#: orange FP, reddish purple FN) as RGBA floats in 0-1 (napari's ``DirectLabelColormap``).
OVERLAY_COLORS: dict[int, tuple[float, float, float, float]] = {
    TN: (0.0, 0.0, 0.0, 0.0),
    **{
        code: (*(v / 255 for v in COMPARISON_SCHEMES[DEFAULT_SCHEME][name]), 1.0)
        for code, name in ((TP, "TP"), (FP, "FP"), (FN, "FN"))
    },
}
#: The same colours as RGBA integers in 0-255 (PNG, OME metadata).
OVERLAY_COLORS_RGBA8: dict[int, tuple[int, int, int, int]] = {
    k: tuple(round(c * 255) for c in v)  # type: ignore[misc]
    for k, v in OVERLAY_COLORS.items()
}

# code = (pred says it) + 2 * (truth says it)  ->  TN, FP, FN, TP
_LUT = np.array([TN, FP, FN, TP], dtype=np.uint8)
# a region coarser than the map (and not a pyramid level of it) is held in memory up to this
_MAX_RESAMPLED_REGION = 1 << 26
_DEFAULT_CHUNK = 1024


def tpfpfn_codes(
    pred: np.ndarray,
    truth: np.ndarray,
    label: int | None = None,
    *,
    ignore_label: int | None = None,
    valid: np.ndarray | None = None,
) -> np.ndarray:
    """Return the TP/FP/FN codes (uint8, see the module docstring) of two in-memory blocks.

    Parameters
    ----------
    pred, truth
        Equal-shaped label blocks.
    label
        The class to show; ``None`` for any foreground (non-zero).
    ignore_label
        Truth value shown as 0 (not counted).
    valid
        Optional mask; where it is zero the code is 0.
    """
    p, t = np.asarray(pred), np.asarray(truth)
    if p.shape != t.shape:
        raise ValueError(f"blocks differ in shape: {p.shape} and {t.shape}")
    p_pos = p != 0 if label is None else p == label
    t_pos = t != 0 if label is None else t == label
    if ignore_label is not None:
        p_pos &= t != ignore_label
        t_pos &= t != ignore_label
    codes = _LUT[p_pos.view(np.uint8) + 2 * t_pos.view(np.uint8)]
    if valid is not None:
        codes *= np.asarray(valid) != 0
    return codes


def _as_dask(arr: Any, chunks: Any) -> da.Array:
    if isinstance(arr, da.Array):
        return arr if chunks is None else arr.rechunk(chunks)
    own = getattr(arr, "chunks", None)
    if chunks is None:
        chunks = own if own is not None and not isinstance(arr, np.ndarray) else _DEFAULT_CHUNK
    return da.from_array(arr, chunks=chunks, asarray=True, fancy=False)


def _region_source(region: Any, shape: tuple[int, int], chunks: Any) -> da.Array | Resampled:
    """The region mask at ``shape``: a dask array when it can stay lazy, else an in-memory view."""
    check_label_array(region, "the region mask")
    rshape = tuple(int(s) for s in region.shape)
    if rshape == shape:
        return _as_dask(region, chunks)
    f = round(rshape[0] / shape[0]) if rshape[0] > shape[0] else 0
    if f > 1 and all(math.ceil(r / f) == s for r, s in zip(rshape, shape, strict=True)):
        return _as_dask(region, None)[::f, ::f].rechunk(chunks)  # a finer pyramid level
    if rshape[0] * rshape[1] > _MAX_RESAMPLED_REGION:
        raise ValueError(
            f"the region mask {rshape} is neither the map's shape {shape} nor a pyramid level "
            "of it, and too large to resample in memory; give it at the map's resolution"
        )
    return Resampled(np.asarray(region), shape)


def _codes_block(
    p: np.ndarray,
    t: np.ndarray,
    v: np.ndarray | None = None,
    *,
    label: int | None,
    ignore_label: int | None,
    sampler: Resampled | None,
    block_info: dict[Any, Any] | None = None,
) -> np.ndarray:
    if sampler is not None and block_info is not None:
        (y0, y1), (x0, x1) = block_info[None]["array-location"]
        v = sampler.read((slice(y0, y1), slice(x0, x1)))
    return tpfpfn_codes(p, t, label, ignore_label=ignore_label, valid=v)


def tpfpfn_map(
    pred: Any,
    truth: Any,
    label: int | None = None,
    *,
    ignore_label: int | None = None,
    region: Any = None,
    chunks: int | tuple[int, int] | None = None,
) -> da.Array:
    """Build the TP/FP/FN map of two label arrays lazily.

    Parameters
    ----------
    pred, truth
        Equal-shaped 2-D label arrays (NumPy, zarr or dask). The truth is rechunked to the
        prediction's chunks when they differ.
    label
        The class to show; ``None`` for any foreground.
    ignore_label
        Truth value shown as 0.
    region
        Optional mask (non-zero = counted) at the map's shape, at a finer pyramid level of
        it, or small enough to resample in memory.
    chunks
        Chunks of the result; default: the prediction's (1024 for NumPy input).

    Returns
    -------
    dask.array.Array
        uint8 codes 0-3, computed chunk by chunk on demand.
    """
    shape = check_label_array(pred, "the prediction")
    tshape = check_label_array(truth, "the truth")
    if shape != tshape:
        raise ValueError(f"the prediction is {shape} but the truth is {tshape}")
    p = _as_dask(pred, chunks)
    t = _as_dask(truth, p.chunks)
    args: list[da.Array] = [p, t]
    sampler = None
    if region is not None:
        source = _region_source(region, shape, p.chunks)
        if isinstance(source, Resampled):
            sampler = source
        else:
            args.append(source)
    return da.map_blocks(
        _codes_block,
        *args,
        label=label,
        ignore_label=ignore_label,
        sampler=sampler,
        dtype=np.uint8,
        meta=np.empty((0, 0), dtype=np.uint8),
    )


def _levels(x: Any) -> list[Any]:
    if isinstance(x, list | tuple):
        if not x:
            raise ValueError("a pyramid needs at least one level")
        return list(x)
    return [x]


def tpfpfn_pyramid(
    pred: Any,
    truth: Any,
    label: int | None = None,
    *,
    ignore_label: int | None = None,
    region: Any = None,
    min_side: int = DEFAULT_CHUNK,
    chunk: int = _DEFAULT_CHUNK,
) -> list[da.Array]:
    """Build a lazy multiscale TP/FP/FN map for napari (finest level first).

    Parameters
    ----------
    pred, truth
        A label array each, or a pyramid each (a list of levels, finest first). Where both
        pyramids have levels of equal shapes, level ``k`` is computed from their levels
        ``k`` (cheap: a coarse view never touches full-resolution data).
    label, ignore_label, region
        As in :func:`tpfpfn_map`; ``region`` is one array, used at every level.
    min_side
        Levels are added by subsampling (``[::2, ::2]`` of the level above, the labels
        pyramid rule of the writers) until the shorter side is below this.
    chunk
        Chunk edge of subsampled levels (halving would otherwise halve the chunks each time,
        and napari would fetch thousands of tiny ones).

    Raises
    ------
    ValueError
        The level-0 shapes differ.
    """
    preds, truths = _levels(pred), _levels(truth)
    if tuple(preds[0].shape) != tuple(truths[0].shape):
        raise ValueError(
            f"the prediction is {tuple(preds[0].shape)} but the truth is {tuple(truths[0].shape)}"
        )
    levels: list[da.Array] = []
    for p, t in zip(preds, truths, strict=False):
        if tuple(p.shape) != tuple(t.shape):
            break
        levels.append(tpfpfn_map(p, t, label, ignore_label=ignore_label, region=region))
    while min(levels[-1].shape) >= min_side:
        nxt = levels[-1][::2, ::2]
        if max(nxt.chunksize) < chunk:
            nxt = nxt.rechunk(chunk)
        levels.append(nxt)
    return levels


# --------------------------------------------------------------------------------------------
# rendering


def _font(size: int) -> Any:
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _fmt(v: float) -> str:
    return "n/a" if v is None or math.isnan(v) else f"{v:.4f}"


def render_overlay(
    codes: np.ndarray,
    background: np.ndarray | None = None,
    *,
    scores: Sequence[tuple[str, float, float]] = (),
    title: str | None = None,
    subject: str | None = None,
    alpha: float | None = None,
    min_side: int = 512,
) -> Any:
    """Draw a TP/FP/FN map over a slide thumbnail, with a legend below it.

    Parameters
    ----------
    codes
        A small 2-D map of codes 0-3 (a coarse level of :func:`tpfpfn_map`).
    background
        RGB uint8 thumbnail of the slide (any size; resized to the map), or ``None`` for
        white.
    scores
        ``(name, iou, dice)`` lines for the legend; NaN shows as "n/a".
    title
        First legend line (the slide's name, say).
    subject
        What the map shows, e.g. "foreground (all classes)" or a class name.
    alpha
        Opacity of the colours; default 0.5 over a slide, 1.0 over white.
    min_side
        Maps smaller than this are enlarged (nearest neighbour, integer factor) so the
        picture stays legible.

    Returns
    -------
    PIL.Image.Image
        An RGB image.
    """
    from PIL import Image, ImageDraw

    c = np.asarray(codes)
    if c.ndim != 2 or c.size == 0:
        raise ValueError(f"codes must be a non-empty 2-D map, got shape {c.shape}")
    h, w = c.shape
    if background is None:
        base = np.full((h, w, 3), 255, dtype=np.float32)
        alpha = 1.0 if alpha is None else alpha
    else:
        bg = np.asarray(background)
        if bg.ndim == 2:
            bg = np.repeat(bg[..., None], 3, axis=2)
        img = Image.fromarray(np.ascontiguousarray(bg[..., :3]).astype(np.uint8), "RGB")
        base = np.asarray(img.resize((w, h), Image.Resampling.BILINEAR), dtype=np.float32)
        alpha = 0.5 if alpha is None else alpha
    lut = np.array([OVERLAY_COLORS_RGBA8[k][:3] for k in range(4)], dtype=np.float32)
    weight = (np.minimum(c, 3) > 0).astype(np.float32)[..., None] * float(alpha)
    rgb = base * (1 - weight) + lut[np.minimum(c, 3)] * weight
    picture = Image.fromarray(np.clip(rgb + 0.5, 0, 255).astype(np.uint8), "RGB")
    scale = max(1, min_side // max(h, w))
    if scale > 1:
        picture = picture.resize((w * scale, h * scale), Image.Resampling.NEAREST)

    font = _font(14)
    line_h, pad, box = 20, 8, 12
    lines: list[str] = []
    if title:
        lines.append(title)
    if subject:
        lines.append(f"map: {subject}")
    lines += [f"{name}: IoU {_fmt(iou)}  Dice {_fmt(dice)}" for name, iou, dice in scores]
    swatches = [(TP, "TP (both)"), (FP, "FP (prediction only)"), (FN, "FN (truth only)")]
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    swatch_w = sum(box + 4 + measure.textlength(t, font=font) + 16 for _, t in swatches)
    text_w = max([measure.textlength(t, font=font) for t in lines] + [swatch_w])
    width = max(picture.width, int(text_w) + 2 * pad)
    height = picture.height + pad + line_h * (len(lines) + 1) + pad
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    canvas.paste(picture, (0, 0))
    draw = ImageDraw.Draw(canvas)
    y = picture.height + pad
    x = pad
    for code, text in swatches:
        draw.rectangle([x, y + 3, x + box, y + 3 + box], fill=OVERLAY_COLORS_RGBA8[code][:3])
        x += box + 4
        draw.text((x, y + 1), text, fill=(0, 0, 0), font=font)
        x += int(measure.textlength(text, font=font)) + 16
    for text in lines:
        y += line_h
        draw.text((pad, y + 1), text, fill=(0, 0, 0), font=font)
    return canvas


def write_overlay_png(image: Any, path: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
    """Save a rendered overlay (a PIL image) as PNG atomically; refuse to overwrite unless asked."""
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=True)
    return atomic_write_bytes(path, buf.getvalue(), overwrite=overwrite)
