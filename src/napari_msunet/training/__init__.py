"""Training and fine-tuning MS U-Net models, as the paper does it (sections III.B-D).

- :mod:`~.losses`: the noise-robust losses (class-weighted cross-entropy, fuzzy boundaries,
  bootstrapping), re-exported here;
- :mod:`~.augment`: rotation without artificial background, flips and colour jitter, batched;
- :mod:`~.folder_dataset`, :mod:`~.slide_dataset`: patches from folders of image/mask pairs
  and, read lazily at the model's µm/px, from whole slides with their annotations;
  :mod:`~.label_noise` corrupts masks the way a hurried annotator would (experiments);
- :mod:`~.config`, :mod:`~.run_config`, :mod:`~.data`: a run's settings and data (YAML);
- :mod:`~.trainer`: the ``iter_train`` generator (and its eager twin ``train``), with
  checkpoints, resume (:mod:`~.state`) and validation (:mod:`~.validation`);
  :mod:`~.plots` draws a run's curves;
- :mod:`~.finetune`: ``iter_finetune`` / ``finetune``, a new model version trained on
  corrected regions of a slide.

Headless: never imports Qt or napari, nor the inference layer (GUIDE: layers).
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
