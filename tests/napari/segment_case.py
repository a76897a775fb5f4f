"""Small real inputs for the Segment GUI tests: a synthetic slide and a tiny model file.

The slide is 1024 x 1536 at 0.5 µm/px; the model (lite MS U-Net with widths 8-16-32, trained
at 1 µm/px) has random weights whose head is rescaled so that both classes occur on the slide
(a random head calls everything one class, which would make comparisons trivial).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from napari_msunet.io.slide import open_slide
from napari_msunet.io.synthetic import SyntheticSlideSpec, write_synthetic_slide
from napari_msunet.io.working_image import SlideReader, working_geometry
from napari_msunet.models import build_model
from napari_msunet.models.checkpoint import ModelHeader, save_model

SPEC = SyntheticSlideSpec(1024, 1536, seed=7, mpp=0.5)


@dataclass(frozen=True)
class SegmentCase:
    slide: Path
    model: Path


def make_case(root: Path, spec: SyntheticSlideSpec = SPEC) -> SegmentCase:
    slide_path = write_synthetic_slide(root / "slide.svs", spec, "svs", tile=256)
    torch.manual_seed(0)
    model = build_model("msunet", preset="lite", n_classes=2, widths=[8, 16, 32]).eval()
    with open_slide(slide_path) as slide:
        geometry = working_geometry(slide, 1.0)
        image = SlideReader(slide, geometry).read(0, 0, *geometry.shape)
    x = torch.from_numpy(np.array(image)).permute(2, 0, 1)[None].float() / 255
    with torch.inference_mode():
        logits = model((x - 0.5) / 0.25, pad=True)
    d = (logits[0, 1] - logits[0, 0]).flatten()
    with torch.no_grad():
        scale = 3.0 / float(d.std())
        model.head.weight.mul_(scale)
        model.head.bias.mul_(scale)
        model.head.bias[1] -= scale * float(d.median())
    header = ModelHeader.for_model(
        model,
        class_names=("Background", "Region"),
        class_colours=((0, 0, 0), (0, 160, 255)),
        input_um_per_px=1.0,
        norm_mean=(0.5,) * 3,
        norm_std=(0.25,) * 3,
    )
    return SegmentCase(slide_path, save_model(root / "tiny.safetensors", model, header))
