"""The paper's label-noise robust losses (sections III.C and III.D).

Every function works on whole batches on the tensors' own device (CPU or GPU), without
per-sample Python loops. Shapes: logits ``(N, C, H, W)``, targets ``(N, H, W)`` of class ids
with :data:`IGNORE_INDEX` marking pixels that have no annotation, per-pixel maps ``(N, H, W)``.
Ignored pixels and the centre-crop margin never contribute to any term.

Equation numbers refer to the paper (``ms-unet-paper.md``):

- eq. 1, fuzzy boundary weight: ``w_fb = 1 - |t - g(t, k)|``
- eq. 2, bootstrap weight: ``w_bs = 2 |0.5 - p|``
- eq. 3, class-weighted cross-entropy ``l_wce``
- eq. 4, total: ``l = l_wce * w_fb + 1[epoch > n] * (l_bs * w_bs)``
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from napari_msunet.errors import ConfigError

IGNORE_INDEX = 255
"""Label of pixels without annotation (the mask value QuPath exports leave unset)."""

KERNEL_CLEAN = 21
"""Gaussian kernel size for the fuzzy boundary of patches from clean annotations (III.C)."""

KERNEL_NOISY = 61
"""Gaussian kernel size for patches flagged as noisy: a wider band of low trust (III.C)."""


def class_counts(
    labels: Tensor | Iterable[Tensor], n_classes: int, ignore_index: int = IGNORE_INDEX
) -> Tensor:
    """Pixels per class over one label tensor or an iterable of them, ignore label excluded.

    Returns an int64 tensor of length ``n_classes`` on the CPU, ready to be summed over a
    dataset and passed to :func:`inverse_frequency_weights`.
    """
    if isinstance(labels, Tensor):
        labels = [labels]
    total = torch.zeros(n_classes, dtype=torch.int64)
    for lab in labels:
        lab = lab.reshape(-1).long()
        lab = lab[lab != ignore_index]
        if lab.numel() and (int(lab.min()) < 0 or int(lab.max()) >= n_classes):
            raise ConfigError(
                f"labels contain values outside 0..{n_classes - 1} other than the ignore "
                f"label {ignore_index}"
            )
        total += torch.bincount(lab, minlength=n_classes).cpu()
    return total


def inverse_frequency_weights(counts: Tensor | Sequence[float]) -> Tensor:
    """Class weights of eq. 3 as inverse class frequencies: ``w_c = total / (C * n_c)``.

    The paper counters a background:foreground imbalance of about 10:1 "by using an inverse of
    their ratio" (section III.D); this normalisation keeps the weights at 1 for balanced data,
    so ``w_fg / w_bg`` equals ``n_bg / n_fg``. A class with no pixels gets weight 0 (it cannot
    appear in the data the counts came from).
    """
    counts = torch.as_tensor(counts, dtype=torch.float64)
    if counts.ndim != 1 or counts.numel() < 2 or bool((counts < 0).any()):
        raise ConfigError(f"counts must be >= 0 for at least two classes, got {counts.tolist()}")
    total = counts.sum()
    if total <= 0:
        raise ConfigError("cannot compute class weights: no annotated pixels")
    weights = torch.where(counts > 0, total / (counts.numel() * counts.clamp_min(1)), 0.0)
    return weights.float()


def valid_mask(target: Tensor, ignore_index: int = IGNORE_INDEX, crop_margin: int = 0) -> Tensor:
    """Boolean ``(N, H, W)`` map of the pixels that count in the loss.

    Excludes the ignore label and, for the centre-cropped loss (section III.D), a margin of
    ``crop_margin`` pixels along every patch edge, where the network lacks context.
    """
    valid = target != ignore_index
    if crop_margin:
        h, w = target.shape[-2:]
        if crop_margin < 0 or 2 * crop_margin >= min(h, w):
            raise ConfigError(
                f"crop_margin {crop_margin} leaves nothing of a {h}×{w} patch; it must be "
                f"below {min(h, w) // 2}"
            )
        inner = torch.zeros((h, w), dtype=torch.bool, device=target.device)
        inner[crop_margin : h - crop_margin, crop_margin : w - crop_margin] = True
        valid = valid & inner
    return valid


def masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``values`` over ``mask`` (0 when the mask is empty, with the graph intact)."""
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp_min(1.0)


def weighted_cross_entropy_map(
    logits: Tensor,
    target: Tensor,
    class_weights: Tensor | Sequence[float] | None = None,
    ignore_index: int = IGNORE_INDEX,
) -> Tensor:
    """Per-pixel class-weighted cross-entropy ``l_wce`` (eq. 3), 0 at ignored pixels.

    ``l_wce = -sum_c w_c t_c log p_c`` with ``p`` the softmax of ``logits`` and ``t`` the
    one-hot target (eq. 3 writes the log-probabilities as ``p``). Without ``class_weights``
    every class weighs 1.
    """
    weight = None
    if class_weights is not None:
        weight = torch.as_tensor(class_weights, dtype=logits.dtype, device=logits.device)
        if weight.shape != (logits.shape[1],):
            raise ConfigError(f"{weight.numel()} class weights given for {logits.shape[1]} classes")
    return F.cross_entropy(
        logits, target.long(), weight=weight, ignore_index=ignore_index, reduction="none"
    )


def gaussian_kernel1d(size: int, sigma: float | None = None, **tensor_kw: Any) -> Tensor:
    """Normalised 1-D Gaussian of odd length ``size``.

    Without ``sigma`` it follows OpenCV's ``getGaussianKernel`` rule,
    ``sigma = 0.3 ((size - 1) / 2 - 1) + 0.8`` (3.5 for 21, 9.5 for 61), as
    ``cv2.GaussianBlur(mask, (k, k), 0)`` would use.
    """
    if not isinstance(size, int) or size < 1 or size % 2 == 0:
        raise ConfigError(f"Gaussian kernel size must be a positive odd integer, got {size!r}")
    if sigma is None:
        sigma = 0.3 * ((size - 1) * 0.5 - 1) + 0.8
    if sigma <= 0:
        raise ConfigError(f"Gaussian sigma must be positive, got {sigma}")
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    k = torch.exp(-(x**2) / (2 * sigma**2))
    return (k / k.sum()).to(**tensor_kw)


def _blur_per_sample(x: Tensor, kernels: Tensor) -> Tensor:
    """Separable blur of ``x`` ``(N, C, H, W)`` with one odd 1-D kernel per sample ``(N, k)``.

    One grouped convolution per axis over all ``N * C`` channels; edges are replicated so
    that a region touching the patch edge does not gain an artificial boundary there.
    """
    n, c, h, w = x.shape
    k = kernels.shape[1]
    p = k // 2
    weight = kernels.repeat_interleave(c, dim=0)[:, None]  # (N*C, 1, k)
    y = x.reshape(1, n * c, h, w)
    y = F.conv2d(F.pad(y, (0, 0, p, p), mode="replicate"), weight[..., None], groups=n * c)
    y = F.conv2d(F.pad(y, (p, p, 0, 0), mode="replicate"), weight[:, :, None], groups=n * c)
    return y.reshape(n, c, h, w)


def fuzzy_boundary_weight(
    target: Tensor,
    n_classes: int,
    noisy: Tensor | None = None,
    kernel_clean: int = KERNEL_CLEAN,
    kernel_noisy: int = KERNEL_NOISY,
    ignore_index: int = IGNORE_INDEX,
    sigma_clean: float | None = None,
    sigma_noisy: float | None = None,
) -> Tensor:
    """Fuzzy-boundary confidence ``w_fb = 1 - |t - g(t, k)|`` (eq. 1), shape ``(N, H, W)``.

    ``t`` is the target mask, ``g`` a Gaussian blur of kernel size ``k``: 21 for samples from
    clean annotations and 61 for samples flagged in ``noisy``, whose boundaries are trusted
    less (section III.C). The weight is 1 away from any boundary and falls to about 0.5 on a
    straight boundary, so the loss there counts less and the model decides.

    Multi-class targets: ``w_fb = 1 - max_c |t_c - g(t_c, k)|`` over the one-hot channels
    ``t_c``, the least confident class deciding. For two classes both channels give the same
    value, so this is exactly eq. 1 on the foreground mask.

    Ignored pixels are not treated as a class: the blur is normalised by the blurred mask of
    annotated pixels (``g(t) = blur(t * v) / blur(v)``), so the edge of an unannotated area is
    not a boundary. The paper also mentions normalising ``|t - g|`` before subtracting it from
    1; eq. 1 has no such step and it is not applied here.

    Parameters
    ----------
    target
        ``(N, H, W)`` class ids, ``ignore_index`` where unannotated.
    n_classes
        Number of classes ``C``.
    noisy
        ``(N,)`` booleans: which samples use ``kernel_noisy``. ``None``: all clean.
    kernel_clean, kernel_noisy
        Odd Gaussian kernel sizes.
    sigma_clean, sigma_noisy
        Gaussian sigmas; ``None`` derives them from the sizes (see :func:`gaussian_kernel1d`).
    """
    n = target.shape[0]
    dtype = torch.float32
    valid = target != ignore_index
    t = torch.where(valid, target.long(), 0)
    onehot = F.one_hot(t, n_classes).permute(0, 3, 1, 2).to(dtype) * valid[:, None]
    kw = {"device": target.device, "dtype": dtype}
    clean = gaussian_kernel1d(kernel_clean, sigma_clean, **kw)
    if noisy is None:
        kernels = clean.expand(n, -1)
    else:
        noisy = torch.as_tensor(noisy, dtype=torch.bool, device=target.device).reshape(-1)
        if noisy.shape != (n,):
            raise ConfigError(f"noisy must hold one flag per sample ({n}), got {noisy.numel()}")
        wide = gaussian_kernel1d(kernel_noisy, sigma_noisy, **kw)
        size = max(kernel_clean, kernel_noisy)
        clean = F.pad(clean, ((size - kernel_clean) // 2,) * 2)
        wide = F.pad(wide, ((size - kernel_noisy) // 2,) * 2)
        kernels = torch.where(noisy[:, None], wide, clean)
    blurred = _blur_per_sample(torch.cat([onehot, valid[:, None].to(dtype)], dim=1), kernels)
    num, den = blurred[:, :n_classes], blurred[:, n_classes:]
    g = torch.where(den > 0, num / den.clamp_min(torch.finfo(dtype).tiny), onehot)
    return 1.0 - (onehot - g).abs().amax(dim=1)


def bootstrap_weight(logits: Tensor) -> Tensor:
    """Bootstrap confidence ``w_bs`` (eq. 2) of the model's own prediction, ``(N, H, W)``.

    For two classes ``w_bs = 2 |0.5 - p|`` with ``p`` the softmax foreground probability.
    For ``C`` classes the same idea is the normalised confidence
    ``(max_c p_c - 1/C) / (1 - 1/C)``, which equals eq. 2 when ``C = 2``: 0 for a uniform
    prediction, 1 for a certain one. Computed without gradient.
    """
    c = logits.shape[1]
    conf = torch.softmax(logits.detach(), dim=1).amax(dim=1)
    return (conf - 1.0 / c) / (1.0 - 1.0 / c)


def bootstrap_loss_map(logits: Tensor) -> Tensor:
    """Per-pixel bootstrap term ``l_bs * w_bs`` of eq. 4, shape ``(N, H, W)``.

    ``l_bs`` is the cross-entropy against the model's own detached hard prediction
    (``argmax`` of the logits, the "auxiliary mask" of section III.C), so confident
    predictions of regions the annotator missed are reinforced; ``w_bs`` is
    :func:`bootstrap_weight`. Only ``l_bs`` carries gradient.
    """
    pseudo = logits.detach().argmax(dim=1)
    return F.cross_entropy(logits, pseudo, reduction="none") * bootstrap_weight(logits)


@dataclass(frozen=True)
class LossConfig:
    """Settings of the total loss (eq. 4); stored with a model's training provenance.

    Parameters
    ----------
    class_weights
        Per-class weights of eq. 3 (e.g. from :func:`inverse_frequency_weights`); ``None``
        weighs all classes 1.
    fuzzy_boundary
        Multiply the cross-entropy by :func:`fuzzy_boundary_weight` (eq. 1).
    kernel_clean, kernel_noisy
        Fuzzy-boundary Gaussian kernel sizes for clean and noisy samples.
    bootstrap_after
        The bootstrap period ``n`` in epochs: the bootstrap term is added when
        ``epoch > n``, with ``epoch`` counted from 1, i.e. after ``n`` complete epochs
        (``0`` from the start, e.g. when fine-tuning). ``None`` disables it.
    crop_margin
        Pixels along each patch edge left out of the loss (centre-crop loss, III.D).
    ignore_index
        Label of unannotated pixels.
    bootstrap_unannotated
        Let the bootstrap term also learn from unannotated pixels (fine-tuning on corrected
        regions: the rest of the slide contributes only through the model's own confident
        predictions). Off by default: eq. 4 as written covers annotated pixels.
    """

    class_weights: tuple[float, ...] | None = None
    fuzzy_boundary: bool = True
    kernel_clean: int = KERNEL_CLEAN
    kernel_noisy: int = KERNEL_NOISY
    bootstrap_after: int | None = None
    crop_margin: int = 0
    ignore_index: int = IGNORE_INDEX
    bootstrap_unannotated: bool = False

    def __post_init__(self) -> None:
        if self.class_weights is not None:
            weights = tuple(float(w) for w in self.class_weights)
            if len(weights) < 2 or any(not w >= 0 for w in weights):
                raise ConfigError(f"class_weights must be >= 0 for >= 2 classes: {weights}")
            object.__setattr__(self, "class_weights", weights)
        for name in ("kernel_clean", "kernel_noisy"):
            k = getattr(self, name)
            if not isinstance(k, int) or k < 1 or k % 2 == 0:
                raise ConfigError(f"{name} must be a positive odd integer, got {k!r}")
        if self.bootstrap_after is not None and (
            not isinstance(self.bootstrap_after, int) or self.bootstrap_after < 0
        ):
            raise ConfigError(f"bootstrap_after must be >= 0 or None, got {self.bootstrap_after}")
        if not isinstance(self.crop_margin, int) or self.crop_margin < 0:
            raise ConfigError(f"crop_margin must be a non-negative integer: {self.crop_margin}")
        if not isinstance(self.ignore_index, int) or not 0 <= self.ignore_index <= 255:
            raise ConfigError(f"ignore_index must be 0..255, got {self.ignore_index!r}")

    def bootstrap_active(self, epoch: int) -> bool:
        """The indicator ``1[epoch > n]`` of eq. 4 (``epoch`` counted from 1)."""
        return self.bootstrap_after is not None and epoch > self.bootstrap_after

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable settings, for training provenance."""
        d = asdict(self)
        if self.class_weights is not None:
            d["class_weights"] = list(self.class_weights)
        return d


@dataclass(frozen=True)
class LossTerms:
    """The total loss of one batch and its two terms (scalars, for logging)."""

    total: Tensor
    wce: Tensor
    bootstrap: Tensor


def total_loss(
    logits: Tensor,
    target: Tensor,
    config: LossConfig | None = None,
    *,
    epoch: int = 1,
    noisy: Tensor | None = None,
) -> LossTerms:
    """Total loss of eq. 4, averaged over the annotated pixels inside the crop margin.

    ``l = mean_valid(l_wce * w_fb) + 1[epoch > n] * mean_valid(l_bs * w_bs)``, where the
    mean runs over pixels that are annotated and not in the centre-crop margin (both terms
    over the same pixels, so eq. 4's per-pixel sum becomes a sum of the two means). Before the
    bootstrap period ends the bootstrap term is exactly zero and not computed.

    Parameters
    ----------
    logits
        ``(N, C, H, W)`` network output.
    target
        ``(N, H, W)`` class ids, ``config.ignore_index`` where unannotated.
    config
        Loss settings; defaults to :class:`LossConfig` ``()``.
    epoch
        Current epoch counted from 1 (see :attr:`LossConfig.bootstrap_after`).
    noisy
        ``(N,)`` flags of samples from noisy annotations (wider fuzzy boundary).
    """
    cfg = config if config is not None else LossConfig()
    if logits.ndim != 4 or target.shape != (logits.shape[0], *logits.shape[2:]):
        raise ConfigError(
            f"logits (N, C, H, W) and target (N, H, W) do not match: {tuple(logits.shape)} "
            f"vs {tuple(target.shape)}"
        )
    valid = valid_mask(target, cfg.ignore_index, cfg.crop_margin)
    wce = weighted_cross_entropy_map(logits, target, cfg.class_weights, cfg.ignore_index)
    if cfg.fuzzy_boundary:
        wce = wce * fuzzy_boundary_weight(
            target, logits.shape[1], noisy, cfg.kernel_clean, cfg.kernel_noisy, cfg.ignore_index
        )
    l_wce = masked_mean(wce, valid)
    if cfg.bootstrap_active(epoch):
        bs_valid = valid
        if cfg.bootstrap_unannotated:
            # every pixel inside the crop margin, annotated or not
            bs_valid = valid_mask(torch.zeros_like(target), cfg.ignore_index, cfg.crop_margin)
        l_bs = masked_mean(bootstrap_loss_map(logits), bs_valid)
    else:
        l_bs = torch.zeros((), dtype=l_wce.dtype, device=l_wce.device)
    return LossTerms(total=l_wce + l_bs, wce=l_wce, bootstrap=l_bs)
