"""Training: the paper's noise-robust losses (more to come: datasets, augmentation, trainer).

Headless: never imports Qt or napari.
"""

from napari_msunet.training.losses import (
    IGNORE_INDEX,
    KERNEL_CLEAN,
    KERNEL_NOISY,
    LossConfig,
    LossTerms,
    bootstrap_loss_map,
    bootstrap_weight,
    class_counts,
    fuzzy_boundary_weight,
    gaussian_kernel1d,
    inverse_frequency_weights,
    masked_mean,
    total_loss,
    valid_mask,
    weighted_cross_entropy_map,
)

__all__ = [
    "IGNORE_INDEX",
    "KERNEL_CLEAN",
    "KERNEL_NOISY",
    "LossConfig",
    "LossTerms",
    "bootstrap_loss_map",
    "bootstrap_weight",
    "class_counts",
    "fuzzy_boundary_weight",
    "gaussian_kernel1d",
    "inverse_frequency_weights",
    "masked_mean",
    "total_loss",
    "valid_mask",
    "weighted_cross_entropy_map",
]
