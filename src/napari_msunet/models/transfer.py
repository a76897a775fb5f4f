"""A model for other classes from a trained one: keep the encoder and decoder, rebuild the head.

A pathologist's classes (germinal centre, sinus) are rarely the bundled model's (gland). What
the network learnt about tissue -- stains, nuclei, texture, boundaries -- sits in the encoder
and the decoder and serves any class scheme; only the 1 x 1 head maps those features to
classes. So a model for new classes starts from the parent's weights with a head of the new
size: rows of classes the parent already had (matched by name; background is always row 0)
are copied, new classes start from a fresh row. Fine-tuning then learns the new rows (and
adapts the rest) in far fewer steps than training from scratch.

Two ways to choose the new classes (:data:`CLASS_MODES`):

``"add"``
    The parent's classes, then the annotation's new ones: the model keeps predicting what it
    knew (e.g. gland) and learns the rest.
``"replace"``
    Background, then the annotation's classes only: the parent's other classes are dropped.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import torch

from napari_msunet.errors import ConfigError
from napari_msunet.models.base import SegmentationModel
from napari_msunet.models.registry import build_from_config

__all__ = ["CLASS_MODES", "class_scheme", "with_classes"]

CLASS_MODES = ("keep", "add", "replace")
"""``keep``: the parent's classes (the annotation must use them); ``add``; ``replace``."""


def class_scheme(parent: Sequence[str], annotated: Sequence[str], mode: str) -> tuple[str, ...]:
    """The classes of the new model, background first.

    Parameters
    ----------
    parent
        The parent model's classes (background first).
    annotated
        The foreground classes the annotations use, in order of first appearance.
    mode
        One of :data:`CLASS_MODES`.

    Raises
    ------
    ConfigError
        An unknown mode; ``"replace"`` without any annotated class.
    """
    if mode not in CLASS_MODES:
        raise ConfigError(f"classes must be one of {', '.join(CLASS_MODES)}, got {mode!r}")
    fg = [n for n in dict.fromkeys(annotated) if n != parent[0]]
    if mode == "keep":
        return tuple(parent)
    if mode == "add":
        return (*parent, *(n for n in fg if n not in parent))
    if not fg:
        raise ConfigError("replacing the classes needs annotations with at least one class")
    return (parent[0], *fg)


def with_classes(
    model: SegmentationModel, old: Sequence[str], new: Sequence[str]
) -> tuple[SegmentationModel, dict[str, str | None]]:
    """A copy of ``model`` whose head predicts ``new``; ``model`` itself is not changed.

    Parameters
    ----------
    model
        The parent network (predicting ``old``).
    old, new
        Class names, background first. Row 0 of the head maps to row 0 whatever the names;
        other rows are matched by exact name.

    Returns
    -------
    tuple
        The new network (on the CPU, float32) and the class mapping ``{new name: parent name
        whose head row it starts from, or None for a new class}``, for the version's header.
    """
    if len(old) != model.config.n_classes:
        raise ConfigError(f"{len(old)} class names for a model of {model.config.n_classes}")
    if len(set(new)) != len(new) or len(new) < 2:
        raise ConfigError(f"the new classes must be 2 or more distinct names, got {list(new)}")
    child = build_from_config(model.arch_name, replace(model.config, n_classes=len(new)))
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("head.")}
    missing = child.load_state_dict(state, strict=False).missing_keys
    assert all(k.startswith("head.") for k in missing), missing
    rows = {name: i for i, name in enumerate(old)}
    rows[new[0]] = 0
    mapping: dict[str, str | None] = {}
    with torch.no_grad():
        for j, name in enumerate(new):
            i = 0 if j == 0 else rows.get(name)
            mapping[name] = old[i] if i is not None else None
            if i is not None:
                child.head.weight[j] = model.head.weight[i].detach().cpu().float()
                child.head.bias[j] = model.head.bias[i].detach().cpu().float()
    return child, mapping
