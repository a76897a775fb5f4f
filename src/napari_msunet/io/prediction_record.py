"""What a finished prediction folder says about itself: its manifest, ``prediction.json``.

The engine (:mod:`napari_msunet.inference.outputs`) writes the manifest last, after both stores
are published, so its presence means a finished prediction. Everything that reads one -- the
GUI deciding whether a folder can be shown again, the suspected-missing-annotation search
finding the slide's shape -- reads it here, into a typed record, so the format has one owner.
It lives in ``io`` (below evaluation and inference) because both read it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from napari_msunet.errors import MsunetError

__all__ = ["MANIFEST_FORMAT", "MANIFEST_NAME", "PredictionRecord", "read_prediction_record"]

MANIFEST_FORMAT = "napari-msunet-prediction"
"""The manifest's ``format`` value."""

MANIFEST_NAME = "prediction.json"
"""The manifest's name in a prediction folder."""


@dataclass(frozen=True)
class PredictionRecord:
    """What a finished prediction's manifest (``prediction.json``) says about how it was made.

    Enough to decide whether a folder can be shown again instead of recomputed: the same
    model (header and weights) and the same window.

    Attributes
    ----------
    manifest
        The file it was read from.
    labels, probabilities
        Paths of the stores, next to the manifest (``probabilities`` is ``None`` when they
        were not saved).
    model_fingerprint
        :func:`model_fingerprint` of the weights that made it.
    model_header
        The model file's header as a JSON dict (``None`` when the run was given a bare
        normalisation instead of a header).
    region
        Level-0 ``(y0, x0, h, w)`` of a windowed run, ``None`` for the whole slide.
    slide_shape, slide_mpp
        The slide's level-0 ``(Y, X)`` and the µm/px the run used (``None`` when not recorded).
    level0_downsample
        Level-0 pixels per output pixel along ``(y, x)``.
    mpp, shape
        µm per output pixel and the output's ``(Y, X)``.
    class_names
        The label values' names, in order.
    """

    manifest: Path
    labels: Path
    probabilities: Path | None
    model_fingerprint: str | None
    model_header: dict[str, Any] | None
    region: tuple[int, int, int, int] | None
    mpp: float | None
    shape: tuple[int, int] | None
    class_names: tuple[str, ...]
    slide_shape: tuple[int, int] | None = None
    slide_mpp: float | None = None
    level0_downsample: tuple[float, float] | None = None

    def same_header(self, header: Any) -> bool:
        """Whether ``header`` (a :class:`~napari_msunet.models.ModelHeader` or its dict) is
        the one recorded, compared as JSON (tuples and lists alike)."""
        if self.model_header is None or header is None:
            return False
        mine = header.to_dict() if hasattr(header, "to_dict") else header
        return json.loads(json.dumps(mine)) == self.model_header


def read_prediction_record(where: str | os.PathLike[str]) -> PredictionRecord | None:
    """Read the manifest of the prediction in ``where``: a prediction folder (its
    ``prediction.json``) or the manifest file itself.

    Returns
    -------
    PredictionRecord or None
        ``None`` when there is no manifest: no finished prediction there (an interrupted one
        has only ``.partial`` stores and its run record).

    Raises
    ------
    MsunetError
        The manifest exists but cannot be read or is not a prediction manifest.
    """
    path = Path(where)
    if path.suffix.lower() != ".json":
        path = path / MANIFEST_NAME
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise MsunetError(
            f"{path}: cannot read the finished prediction's manifest ({exc})"
        ) from exc
    try:
        if data.get("format", MANIFEST_FORMAT) != MANIFEST_FORMAT:
            raise ValueError(f"format {data['format']!r}")
        model = data.get("model") or {}
        output = data.get("output") or {}
        region = data.get("region")
        probs = data.get("probabilities")
        shape = output.get("shape")
        slide = data.get("slide") or {}
        slide_shape = slide.get("shape")
        d0 = output.get("level0_downsample")
        return PredictionRecord(
            manifest=path,
            labels=path.parent / data["labels"],
            probabilities=None if probs is None else path.parent / probs,
            model_fingerprint=model.get("fingerprint"),
            model_header=model.get("header"),
            region=None if region is None else tuple(int(v) for v in region),
            mpp=None if output.get("mpp") is None else float(output["mpp"]),
            shape=None if shape is None else (int(shape[0]), int(shape[1])),
            class_names=tuple(str(n) for n in data.get("class_names") or ()),
            slide_shape=None if not slide_shape else (int(slide_shape[0]), int(slide_shape[1])),
            slide_mpp=None if slide.get("mpp") is None else float(slide["mpp"]),
            level0_downsample=None if not d0 else (float(d0[0]), float(d0[1])),
        )
    except (AttributeError, KeyError, TypeError, ValueError, IndexError) as exc:
        raise MsunetError(
            f"{path}: not a prediction manifest of napari-msunet ({type(exc).__name__}: {exc})"
        ) from exc
