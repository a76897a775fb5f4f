"""Validation during training: dataset-level IoU and Dice from one confusion matrix.

Pixels of all validation images are pooled (as the paper's slide-level IoU pools a slide's
pixels), so a large image weighs more than a small one, and the ignore label is left out.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from napari_msunet.training.config import TrainConfig


@dataclass(frozen=True)
class ValScores:
    """Per-class and foreground (all classes but background as one) IoU and Dice."""

    iou: tuple[float, ...]
    dice: tuple[float, ...]
    foreground_iou: float
    foreground_dice: float
    pixels: int

    def to_dict(self) -> dict:
        return {
            "iou": list(self.iou),
            "dice": list(self.dice),
            "foreground_iou": self.foreground_iou,
            "foreground_dice": self.foreground_dice,
            "pixels": self.pixels,
        }


def scores_from_confusion(cm: np.ndarray) -> ValScores:
    """IoU and Dice per class from a confusion matrix ``cm[truth, pred]``; NaN for a class
    absent from both truth and prediction."""
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diag(cm)
    fp = cm.sum(0) - tp
    fn = cm.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = tp / (tp + fp + fn)
        dice = 2 * tp / (2 * tp + fp + fn)
    fg_tp = cm[1:, 1:].sum()
    fg_fp = cm[0, 1:].sum()
    fg_fn = cm[1:, 0].sum()
    denom = fg_tp + fg_fp + fg_fn
    fg_iou = fg_tp / denom if denom else float("nan")
    fg_dice = 2 * fg_tp / (2 * fg_tp + fg_fp + fg_fn) if denom else float("nan")
    return ValScores(
        tuple(float(v) for v in iou),
        tuple(float(v) for v in dice),
        float(fg_iou),
        float(fg_dice),
        int(cm.sum()),
    )


@torch.inference_mode()
def iter_predictions(
    model, dataset, config: TrainConfig, device: torch.device
) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """``(index, predicted labels, target)`` of each image, predicted whole (padded to the
    model's factor) in eval mode; the model's mode is restored at the end."""
    was_training = model.training
    model.eval()
    mean = torch.tensor(config.norm_mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(config.norm_std, device=device).view(1, 3, 1, 1)
    try:
        for i in range(len(dataset)):
            item = dataset[i]
            image = item["image"][None].to(device).float() / 255
            target = item["mask"].to(device).long()
            with torch.no_grad():
                logits = model((image - mean) / std, pad=True)
            yield i, logits.argmax(1)[0], target
    finally:
        model.train(was_training)


def validate(model, dataset, config: TrainConfig, device: torch.device) -> ValScores:
    """Predict each validation image whole and pool the pixels of all of them."""
    n = config.n_classes
    cm = torch.zeros(n * n, dtype=torch.int64)
    for _, pred, target in iter_predictions(model, dataset, config, device):
        keep = target != config.loss.ignore_index
        idx = target[keep] * n + pred[keep]
        cm += torch.bincount(idx.cpu(), minlength=n * n)
    return scores_from_confusion(cm.view(n, n).numpy())
