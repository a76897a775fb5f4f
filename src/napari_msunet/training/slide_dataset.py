"""Patch datasets from whole slides and their annotations, read lazily at the model's µm/px.

Each item reads one window of the slide's *working image* (the slide at the target µm/px,
exactly as the inference engine sees it: :mod:`napari_msunet.io.working_image`) and the labels
of the same window: a QuPath GeoJSON is rasterised for that window only, a label mask is
sampled at the window's pixel centres. Nothing loads a whole slide, and slides are opened
inside each DataLoader worker (the dataset pickles without its open files).

Patch positions, in working pixels:

- ``grid``: the paper's grid, stride half a patch (50 % overlap), only where there is tissue;
- ``balanced``: random centres drawn equally from each class (background restricted to
  tissue), so rare classes are seen as often as common ones.

Pixels can be marked unannotated (the ignore label): everything outside ``regions`` (the
corrected regions of a fine-tuning run), so that only corrected areas count in the
cross-entropy while the rest still feeds the bootstrap term.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from napari_msunet.errors import AnnotationError, ConfigError
from napari_msunet.io.geojson import read_geojson
from napari_msunet.io.masks import open_mask
from napari_msunet.io.rasterise import Rasteriser
from napari_msunet.io.slide import open_slide
from napari_msunet.io.tissue import detect_tissue
from napari_msunet.io.working_image import SlideReader, working_geometry
from napari_msunet.training.losses import IGNORE_INDEX

__all__ = ["SlidePatchDataset", "SlideSpec", "patch_positions", "slide_datasets"]

#: Side of the windows slides are validated on, in working pixels (rounded to the patch).
_VAL_WINDOW = 512


@dataclass(frozen=True)
class SlideSpec:
    """A slide, its annotation, and how to read them."""

    slide: Path
    annotation: Path
    noisy: bool = False
    mpp: float | None = None  # override when the file does not state µm/px
    regions: Path | None = None  # GeoJSON of corrected regions: outside them is unannotated


class _Labels:
    """Labels of working-image windows from a GeoJSON or a label mask."""

    def __init__(self, spec: SlideSpec, slide_shape, geometry, class_names: Sequence[str]):
        self.geometry = geometry
        self.slide_shape = slide_shape
        names = {n: i for i, n in enumerate(class_names)}
        ann = spec.annotation
        if ann.suffix.lower() in (".geojson", ".json"):
            anns = read_geojson(ann, slide_shape=slide_shape)
            unknown = sorted({c.name for c in anns.classes} - set(names))
            if unknown:
                raise AnnotationError(
                    ann, f"classes {unknown} are not among the model's {list(class_names)}"
                )
            mapping = {c.name: names[c.name] for c in anns.classes}
            dy, _ = geometry.downsample
            self._raster = Rasteriser(
                anns, slide_shape, dy, labels=mapping, level_shape=geometry.shape
            )
            self._mask = None
        else:
            mask = open_mask(ann)
            mh, mw = mask.shape
            sy, sx = slide_shape[0] / mh, slide_shape[1] / mw
            if abs(sy / sx - 1) > 0.02 + 2 / min(mh, mw):
                raise AnnotationError(
                    ann,
                    f"is {mw} x {mh} px, which is not the slide {spec.slide.name} "
                    f"({slide_shape[1]} x {slide_shape[0]} px) at any scale: wrong mask for "
                    f"this slide?",
                )
            self._mask = mask.levels[0]
            self._raster = None
            self._lut = np.arange(256, dtype=np.int64)
            if mask.classes:  # map the file's labels to the model's classes by name
                for c in mask.classes:
                    if c.name not in names:
                        raise AnnotationError(
                            ann, f"class {c.name!r} is not among {list(class_names)}"
                        )
                    self._lut[c.label] = names[c.name]
        self._regions = None
        if spec.regions is not None:
            # every class of the regions file counts as "corrected"
            regions = read_geojson(spec.regions, slide_shape=slide_shape)
            dy, _ = geometry.downsample
            self._regions = Rasteriser(
                regions,
                slide_shape,
                dy,
                labels={c.name: 1 for c in regions.classes},
                level_shape=geometry.shape,
            )

    def window(self, y: int, x: int, h: int, w: int) -> np.ndarray:
        if self._raster is not None:
            lab = self._raster.region(y, x, h, w).astype(np.int64)
        else:
            lab = self._mask_window(y, x, h, w)
        if self._regions is not None:
            lab[self._regions.region(y, x, h, w) == 0] = IGNORE_INDEX
        return lab

    def _mask_window(self, y: int, x: int, h: int, w: int) -> np.ndarray:
        mh, mw = self._mask.shape
        dy, dx = self.geometry.downsample
        sy, sx = mh / self.slide_shape[0], mw / self.slide_shape[1]
        rows = np.floor((np.arange(y, y + h) + 0.5) * dy * sy).astype(np.int64)
        cols = np.floor((np.arange(x, x + w) + 0.5) * dx * sx).astype(np.int64)
        inside_r = (rows >= 0) & (rows < mh)
        inside_c = (cols >= 0) & (cols < mw)
        out = np.zeros((h, w), np.int64)
        if inside_r.any() and inside_c.any():
            r0, r1 = rows[inside_r].min(), rows[inside_r].max() + 1
            c0, c1 = cols[inside_c].min(), cols[inside_c].max() + 1
            block = np.asarray(self._mask[r0:r1, c0:c1])
            sub = block[np.ix_(rows[inside_r] - r0, cols[inside_c] - c0)]
            out[np.ix_(inside_r, inside_c)] = self._lut[np.clip(sub, 0, 255)]
        return out


def patch_positions(
    spec: SlideSpec,
    target_mpp: float,
    patch: int,
    *,
    sampling: str = "grid",
    stride: int | None = None,
    n: int = 2000,
    class_names: Sequence[str] = ("Background", "Region"),
    seed: int = 0,
) -> list[tuple[int, int]]:
    """Top-left working-pixel corners of the patches of one slide (see the module docstring)."""
    slide = open_slide(spec.slide)
    try:
        geometry = working_geometry(slide, target_mpp, spec.mpp)
        tissue = detect_tissue(slide, mpp=spec.mpp)
        dy, dx = geometry.downsample
        H, W = geometry.shape
        if sampling == "grid":
            stride = stride or max(1, patch // 2)
            out = []
            for y in range(0, max(1, H - patch + stride), stride):
                for x in range(0, max(1, W - patch + stride), stride):
                    if tissue.any_in(y * dy, x * dx, (y + patch) * dy, (x + patch) * dx):
                        out.append((y, x))
            return out
        if sampling != "balanced":
            raise ConfigError(f"sampling must be grid or balanced, got {sampling!r}")
        # class of each tissue-mask pixel, from the annotation at the mask's resolution
        th, tw = tissue.mask.shape
        labels = _Labels(spec, slide.shape, _coarse(geometry, tissue), class_names)
        lab = labels.window(0, 0, th, tw)
        rng = np.random.default_rng(seed)
        per_class = [
            np.argwhere((lab == c) & (tissue.mask | (c > 0))) for c in range(len(class_names))
        ]
        per_class = [p for p in per_class if len(p)]
        out = []
        for i in range(n):
            cand = per_class[i % len(per_class)]
            r, c = cand[rng.integers(len(cand))] + rng.uniform(0, 1, 2)
            cy, cx = r * tissue.downsample[0] / dy, c * tissue.downsample[1] / dx
            out.append((int(cy) - patch // 2, int(cx) - patch // 2))
        return out
    finally:
        slide.close()


def _coarse(geometry, tissue):
    """A geometry-like view at the tissue mask's resolution (for class-balanced sampling)."""
    from dataclasses import replace

    return replace(geometry, shape=tissue.mask.shape, downsample=tissue.downsample)


class SlidePatchDataset(Dataset):
    """Windows of one slide's working image with their labels.

    Parameters
    ----------
    spec
        The slide and its annotation.
    target_mpp
        Working resolution (the model's input µm/px).
    positions
        Top-left corners of the *patches* (working pixels), from :func:`patch_positions`.
    patch, size
        Patch side, and the side of the square returned (``context_size(patch)`` when the
        trainer rotates; equal to ``patch`` otherwise); the square is centred on the patch.
    class_names
        The model's classes; annotation classes are matched by name.
    """

    def __init__(
        self,
        spec: SlideSpec,
        target_mpp: float,
        positions: Sequence[tuple[int, int]],
        patch: int,
        size: int,
        class_names: Sequence[str],
    ) -> None:
        if (size - patch) % 2:
            raise ConfigError(f"size {size} and patch {patch} must have the same parity")
        self.spec, self.target_mpp = spec, float(target_mpp)
        self.positions = [tuple(map(int, p)) for p in positions]
        self.patch, self.size = int(patch), int(size)
        self.class_names = tuple(class_names)
        self._state: tuple[Any, Any] | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_state"] = None  # each worker opens the slide itself
        return state

    def _open(self) -> tuple[SlideReader, _Labels]:
        if self._state is None:
            slide = open_slide(self.spec.slide)
            geometry = working_geometry(slide, self.target_mpp, self.spec.mpp)
            labels = _Labels(self.spec, slide.shape, geometry, self.class_names)
            self._state = (SlideReader(slide, geometry), labels)
        return self._state

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        reader, labels = self._open()
        y, x = self.positions[i]
        o = (self.size - self.patch) // 2
        rgb = reader.read(y - o, x - o, self.size, self.size)
        lab = labels.window(y - o, x - o, self.size, self.size)
        return {
            "image": torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1),
            "mask": torch.from_numpy(lab),
            "noisy": torch.tensor(self.spec.noisy),
            "index": torch.tensor(i),
        }


def slide_datasets(run, size: int) -> tuple[list[Dataset], list[Dataset], list[dict]]:
    """Training and validation datasets of the slides of a run config."""
    cfg = run.train
    train, val, desc = [], [], []
    for k, src in enumerate(run.slides):
        spec = SlideSpec(src.slide, src.annotation, src.noisy, src.mpp)
        if src.split == "train":
            pos = patch_positions(
                spec,
                cfg.mpp,
                cfg.patch,
                sampling=run.sampling,
                n=run.patches_per_slide,
                class_names=cfg.class_names,
                seed=cfg.seed + k,
            )
            train.append(SlidePatchDataset(spec, cfg.mpp, pos, cfg.patch, size, cfg.class_names))
        else:
            # large validation windows: small ones would judge the model on its tile-edge
            # effects rather than on what it predicts over a slide
            win = cfg.patch * max(1, _VAL_WINDOW // cfg.patch)
            pos = patch_positions(spec, cfg.mpp, win, stride=win)
            val.append(SlidePatchDataset(spec, cfg.mpp, pos, win, win, cfg.class_names))
        if not pos:
            raise ConfigError(f"{src.slide}: no tissue found, so no patches to {src.split} on")
        desc.append(
            {
                "slide": str(src.slide),
                "annotation": str(src.annotation),
                "split": src.split,
                "noisy": src.noisy,
                "patches": len(pos),
            }
        )
    return train, val, desc
