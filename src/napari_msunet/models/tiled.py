"""A plain float32 tiled forward pass over an in-memory image, for measurements.

The slide engine (:mod:`napari_msunet.inference`) is the production path: reader threads,
mixed precision, writers. Measurements below it (the margin a model file needs,
:mod:`napari_msunet.models.margin`; held-out scores after training,
:mod:`napari_msunet.training.held_out_scores`) need the same tiling *convention* without any
of that: output tiles on a grid from ``(0, 0)``, each computed from a window with ``margin``
pixels of context on every side, white (glass) beyond the image, only the centre kept. With
``tile`` and ``margin`` multiples of the network's alignment this equals the engine's float32
result tile for tile.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

__all__ = ["tiled_forward"]

WHITE = 255


@torch.inference_mode()
def tiled_forward(
    model: nn.Module,
    image: np.ndarray,
    norm_mean: Sequence[float],
    norm_std: Sequence[float],
    *,
    tile: int,
    margin: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Labels ``(H, W)`` uint8 and probabilities ``(C, H, W)`` float32 of an RGB uint8 image.

    ``tile`` and ``margin`` must be multiples of the model's alignment (the caller's rule);
    the model runs in float32 on the device its weights are on, in eval mode.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    mean = torch.tensor(list(norm_mean), device=device).view(1, 3, 1, 1)
    std = torch.tensor(list(norm_std), device=device).view(1, 3, 1, 1)
    H, W = image.shape[:2]
    side = tile + 2 * margin
    probs: np.ndarray | None = None
    try:
        for y in range(0, H, tile):
            for x in range(0, W, tile):
                window = np.full((side, side, 3), WHITE, np.uint8)
                y0, x0 = max(0, y - margin), max(0, x - margin)
                y1, x1 = min(H, y + tile + margin), min(W, x + tile + margin)
                oy, ox = y0 - (y - margin), x0 - (x - margin)
                window[oy : oy + y1 - y0, ox : ox + x1 - x0] = image[y0:y1, x0:x1]
                t = torch.from_numpy(window).to(device).permute(2, 0, 1)[None].float() / 255
                p = torch.softmax(model((t - mean) / std), dim=1)[0]
                h, w = min(tile, H - y), min(tile, W - x)
                crop = p[:, margin : margin + h, margin : margin + w].cpu().numpy()
                if probs is None:
                    probs = np.zeros((crop.shape[0], H, W), np.float32)
                probs[:, y : y + h, x : x + w] = crop
    finally:
        model.train(was_training)
    assert probs is not None
    return probs.argmax(0).astype(np.uint8), probs
