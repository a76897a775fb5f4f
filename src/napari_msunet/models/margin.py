"""The margin a trained model needs, measured once per model file and kept in its header.

The exact margin of the tiling (:mod:`napari_msunet.inference.tiling`) is the network's
*structural* receptive radius: 320 px for lite MS U-Net, so every kept pixel of a 1024 tile is
computed 2.6 times. A trained network's *effective* field is far smaller: on the bundled model
a margin of 64 px gave labels equal to the exact run on 99.87 % of the pixels of a real slide
(issue 14). Rather than guess, each model file carries the smallest margin measured to agree:

- **Method.** Calibration images (tissue at the model's µm/px) are predicted with small tiles
  (:data:`CALIBRATION_TILE`, so that many pixels lie near a tile border: the worst case for a
  margin) at the exact margin and at each multiple of the alignment below it, in float32
  (:func:`~napari_msunet.models.tiled.tiled_forward`: the engine's tiling convention).
  The chosen margin is the smallest whose labels agree with the exact ones on at least
  :data:`AGREEMENT` of the pixels *and* whose probabilities differ from the exact ones by at
  most :data:`PROB_BOUND` at the 99.9th percentile (of the per-pixel largest difference over
  the classes). Neither holding, the structural margin is kept.
- **Record.** ``training["margin"]`` of the header: the margin, the structural one, both
  measured figures, the tile, the thresholds, what the images were, and the package version
  (and the file's ``recalibrations`` list gets an entry when an existing model is measured).
- **Use.** ``InferenceConfig(margin="auto")`` takes the measured margin when the header has
  one, else the structural one; ``margin="exact"`` always takes the structural one (for
  whoever needs a result equal to one whole-image forward pass).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from torch import nn

from napari_msunet import __version__
from napari_msunet.models.device import select_device
from napari_msunet.models.tiled import tiled_forward

__all__ = [
    "AGREEMENT",
    "CALIBRATION_TILE",
    "PROB_BOUND",
    "MarginRecord",
    "measure_margin",
    "measured_margin",
    "record_margin",
    "sample_calibration_images",
]

#: Share of pixels whose labels must equal the exact run's.
AGREEMENT = 0.999
#: Largest allowed probability difference from the exact run, at the 99.9th percentile.
PROB_BOUND = 0.1
#: Output tile of the calibration runs (working pixels, rounded up to the alignment).
CALIBRATION_TILE = 256
#: Side of the calibration image (working pixels): 16 calibration tiles.
CALIBRATION_SIDE = 1024


@dataclass(frozen=True)
class MarginRecord:
    """A measured margin and how it was measured (``training["margin"]`` of a header)."""

    margin: int
    structural: int
    agreement: float  # labels equal to the exact run's, share of pixels
    prob_diff_p999: float  # 99.9th percentile of the largest class-probability difference
    tile: int
    pixels: int
    images: str
    thresholds: dict[str, float]
    method: str = "smallest alignment multiple agreeing with the structural margin"
    package_version: str = __version__

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _round_up(n: int, a: int) -> int:
    return -(-n // a) * a


def measure_margin(
    model: nn.Module,
    norm: Any,
    images: Sequence[np.ndarray],
    *,
    description: str,
    device: str = "cpu",
    agreement: float = AGREEMENT,
    bound: float = PROB_BOUND,
) -> MarginRecord:
    """The smallest margin of ``model`` agreeing with its structural one on ``images``.

    Parameters
    ----------
    model, norm
        The network and its header (its normalisation).
    images
        RGB uint8 ``(H, W, 3)`` tissue at the model's µm/px; each at least a few tiles wide.
    description
        What the images are, for the record.
    """
    alignment = int(getattr(model, "alignment", 1))
    structural = _round_up(int(model.receptive_radius), alignment)
    tile = _round_up(CALIBRATION_TILE, alignment)

    model.to(select_device(device))
    mean = getattr(norm, "norm_mean", None) or norm.mean  # a header, or a Normalization
    std = getattr(norm, "norm_std", None) or norm.std

    def run(image: np.ndarray, margin: int) -> tuple[np.ndarray, np.ndarray]:
        return tiled_forward(model, image, mean, std, tile=tile, margin=margin)

    exact = [run(im, structural) for im in images]
    pixels = int(sum(lab.size for lab, _ in exact))
    chosen = (structural, 1.0, 0.0)
    for margin in range(alignment, structural, alignment):
        same, diffs = 0, []
        for im, (lab0, p0) in zip(images, exact, strict=True):
            lab, p = run(im, margin)
            same += int((lab == lab0).sum())
            diffs.append(np.abs(p - p0).max(axis=0).ravel())
        agree = same / pixels
        p999 = float(np.quantile(np.concatenate(diffs), 0.999))
        if agree >= agreement and p999 <= bound:
            chosen = (margin, agree, p999)
            break
    margin, agree, p999 = chosen
    return MarginRecord(
        margin=margin,
        structural=structural,
        agreement=round(agree, 6),
        prob_diff_p999=round(p999, 6),
        tile=tile,
        pixels=pixels,
        images=description,
        thresholds={"agreement": agreement, "prob_diff_p999": bound},
    )


def measured_margin(header: Any) -> int | None:
    """The measured margin a model header records (``None``: none, or not a header)."""
    training = getattr(header, "training", None)
    record = training.get("margin") if isinstance(training, Mapping) else None
    value = record.get("margin") if isinstance(record, Mapping) else None
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return None


def sample_calibration_images(
    mpp: float, side: int = CALIBRATION_SIDE
) -> tuple[list[np.ndarray], str]:
    """Tissue for models that ship without their images: the bundled EBHI-Seg sample patches
    at ``mpp`` (tiled into one square mosaic), else a synthetic H&E-like image."""
    from napari_msunet.io.mosaic import EBHI_UM_PER_PX, PATCH, MosaicSpec
    from napari_msunet.models.bundled import sample_data_dir

    sample = sample_data_dir()
    try:
        import csv

        with (sample / "index.csv").open(newline="") as f:
            stems = [row["stem"] for row in csv.DictReader(f)]
    except OSError:
        stems = []
    scale = EBHI_UM_PER_PX / mpp  # working px per EBHI px
    n = max(1, math.ceil(side / (PATCH * scale)))
    if len(stems) >= n * n:
        from PIL import Image

        spec = MosaicSpec(stems[: n * n], sample, n, n, margin=0, mpp=EBHI_UM_PER_PX)
        image = spec.image()
        if abs(scale - 1) > 1e-6:  # area-average down, or enlarge for a finer model
            size = (round(image.shape[1] * scale), round(image.shape[0] * scale))
            image = np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BOX))
        description = f"{n * n} EBHI-Seg sample patches (CC BY 4.0) at {mpp:g} µm/px"
        return [np.ascontiguousarray(image[:side, :side])], description
    from napari_msunet.io.synthetic import SyntheticSlideSpec

    size = math.ceil(side)
    spec = SyntheticSlideSpec(size, size, seed=0, mpp=mpp)
    return [spec.image()], f"a synthetic H&E-like image, {size}² at {mpp:g} µm/px"


def record_margin(model: nn.Module, header: Any, *, device: str = "cpu") -> Any:
    """``header`` with the margin measured for ``model`` on the sample tissue at its µm/px.

    What training and fine-tuning call at save time, and ``examples/measure_model_margin.py``
    for an existing model file (the header only: the weights do not change).
    """
    import dataclasses

    images, description = sample_calibration_images(header.input_um_per_px, CALIBRATION_SIDE)
    record = measure_margin(model, header, images, description=description, device=device)
    training = dict(header.training) if isinstance(header.training, Mapping) else {}
    training["margin"] = record.to_dict()
    return dataclasses.replace(header, training=training)
