"""Patch datasets from whole slides and their annotations, read lazily at the model's µm/px.

Each item reads one window of the slide's *working image* (the slide at the target µm/px,
exactly as the inference engine sees it: :mod:`napari_msunet.io.working_image`) and the labels
of the same window: a QuPath GeoJSON is rasterised for that window only, a label mask is
sampled at the window's pixel centres. A mask must have exactly the size of one of the
slide's pyramid levels or of the working image: a mask of any other size is refused, never
stretched (it is the mask of another slide). Its values are the model's class numbers (255 =
not annotated), or are matched by the class names the file carries; a binary mask (0 and one
other value, typically 255) marks the one foreground class of a two-class model. Nothing loads
a whole slide, and slides are opened inside each DataLoader worker (the dataset pickles
without its open files).

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

from napari_msunet.errors import AnnotationError, ConfigError, brief
from napari_msunet.io.annotations import ClassInfo
from napari_msunet.io.geojson import read_geojson
from napari_msunet.io.masks import LabelMask, open_mask
from napari_msunet.io.rasterise import Rasteriser
from napari_msunet.io.slide import Slide, open_slide
from napari_msunet.io.tissue import detect_tissue
from napari_msunet.io.working_image import SlideReader, working_geometry
from napari_msunet.training.losses import IGNORE_INDEX

__all__ = [
    "SlidePatchDataset",
    "SlideSpec",
    "annotation_classes",
    "check_annotation",
    "patch_positions",
    "slide_datasets",
]

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
    held_out: Path | None = None  # GeoJSON of regions kept out of training (training.held_out)


class _Labels:
    """Labels of working-image windows from a GeoJSON or a label mask.

    Parameters
    ----------
    spec
        The slide and its annotation.
    slide
        The opened slide (its level shapes are the sizes a mask may have).
    geometry
        The grid windows are asked in (the working image, or a coarser view of it).
    class_names
        The model's classes; annotation classes are matched by name.
    working
        The model's working geometry when ``geometry`` is a coarser view of it (class-balanced
        sampling): a mask drawn on the working image is accepted at that size.

    Raises
    ------
    AnnotationError
        An annotation class the model lacks; a mask whose size is not one of the slide's
        (see :func:`_mask_grid`) or whose values the model has no class for.
    """

    def __init__(
        self,
        spec: SlideSpec,
        slide: Slide,
        geometry,
        class_names: Sequence[str],
        *,
        working=None,
    ):
        self.geometry = geometry
        slide_shape = slide.shape
        self.slide_shape = slide_shape
        self.n_classes = len(class_names)
        names = {n: i for i, n in enumerate(class_names)}
        ann = spec.annotation
        self._mask = None
        self._raster = None
        if _is_geojson(ann):
            anns = read_geojson(ann, slide_shape=slide_shape)
            unknown = sorted({c.name for c in anns.classes} - set(names))
            if unknown:
                raise AnnotationError(
                    ann,
                    f"classes {brief(unknown)} are not among the model's {brief(class_names)}",
                )
            mapping = {c.name: names[c.name] for c in anns.classes}
            dy, _ = geometry.downsample
            self._raster = Rasteriser(
                anns, slide_shape, dy, labels=mapping, level_shape=geometry.shape
            )
            self.foreground = any(mapping.get(a.class_name, 0) > 0 for a in anns)
        else:
            mask = open_mask(ann)
            level, scale = _mask_grid(ann, mask, spec, slide, working or geometry)
            self._mask = mask.levels[level]
            self._scale = scale  # level-0 slide px per mask px, (y, x)
            self._lut = _mask_lut(ann, mask, level, class_names)
            values = _present_values(ann, level, self._mask)
            mapped = self._lut[values]
            self.foreground = bool(((mapped > 0) & (mapped < self.n_classes)).any())
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
        sy, sx = self._scale
        rows = np.floor((np.arange(y, y + h) + 0.5) * (dy / sy)).astype(np.int64)
        cols = np.floor((np.arange(x, x + w) + 0.5) * (dx / sx)).astype(np.int64)
        inside_r = (rows >= 0) & (rows < mh)
        inside_c = (cols >= 0) & (cols < mw)
        out = np.zeros((h, w), np.int64)
        if inside_r.any() and inside_c.any():
            r0, r1 = rows[inside_r].min(), rows[inside_r].max() + 1
            c0, c1 = cols[inside_c].min(), cols[inside_c].max() + 1
            block = np.asarray(self._mask[r0:r1, c0:c1])
            sub = block[np.ix_(rows[inside_r] - r0, cols[inside_c] - c0)]
            out[np.ix_(inside_r, inside_c)] = self._lut[sub.astype(np.intp, copy=False)]
        return out


def annotation_classes(path: Path) -> tuple[ClassInfo, ...]:
    """The classes an annotation file names (QuPath classifications, or a mask's class table).

    A mask without a class table names none: its labels are the model's class numbers.
    """
    if _is_geojson(path):
        return read_geojson(path).classes
    return open_mask(path).classes


def _is_geojson(path: Path) -> bool:
    return path.suffix.lower() in (".geojson", ".json")


def _mask_grid(
    path: Path, mask: LabelMask, spec: SlideSpec, slide: Slide, working
) -> tuple[int, tuple[float, float]]:
    """The mask level to read and its scale: the mask must be drawn on one of the slide's grids.

    The rule is evaluate's (a truth mask must have a level of exactly the prediction's size):
    a mask level must have exactly the size of a slide pyramid level (what ``msunet rasterize
    --level N`` writes) or of the working image at the model's µm/px (what ``msunet predict``
    writes). Any other size would be a guess at a scale: a 1000² mask given for a 3584² slide
    has the right aspect ratio but belongs to another slide, and stretching it 3.6x trains
    on labels that lie beside the tissue they name.

    Returns
    -------
    tuple
        The mask level, and level-0 slide pixels per mask pixel along ``(y, x)``.
    """
    H, W = slide.shape
    grids = [((int(h), int(w)), (H / h, W / w)) for h, w in slide.level_shapes]
    grids.append((tuple(int(v) for v in working.shape), tuple(working.downsample)))
    shapes = [tuple(int(v) for v in lv.shape) for lv in mask.levels]
    for j, shape in enumerate(shapes):
        for grid, scale in grids:
            if shape == grid:
                return j, scale
    mh, mw = shapes[0]
    levels = ", ".join(f"{w} x {h}" for h, w in slide.level_shapes[1:6])
    more = len(slide.level_shapes) - 6
    levels = f" (lower levels: {levels}{f' and {more} more' if more > 0 else ''})" if levels else ""
    wh, ww = working.shape
    raise AnnotationError(
        path,
        f"is {mw} x {mh} px, but the slide {spec.slide} is {W} x {H} px{levels} and its "
        f"working image at the model's {working.mpp:.3g} µm/px is {ww} x {wh} px: a mask must "
        "have exactly one of these sizes (stretched, its labels would lie beside the tissue "
        "they name). Is it the mask of another slide? Rasterise the annotation for this "
        "slide (`msunet rasterize ANNOTATION --slide SLIDE --level N`) or give its QuPath "
        "GeoJSON",
    )


def _mask_lut(path: Path, mask: LabelMask, level: int, class_names: Sequence[str]) -> np.ndarray:
    """Mask value -> training label.

    With class names in the file, labels are matched to the model's classes by name.
    Without, values are the model's class indices and 255 is "not annotated" (the ignore
    label), except in a binary mask: a mask whose only non-zero value is one value (255, as
    most tools save a binary mask, or any other) marks the model's one foreground class, as
    evaluate reads it. Reading 255 there as "not annotated" would train background only.
    Values the model has no class for are refused rather than left to fail inside the loss.
    """
    n = len(class_names)
    names = {c: i for i, c in enumerate(class_names)}
    values = _present_values(path, level, mask.levels[level])
    # every value the mask holds is in ``values`` (all of it was read), so this covers them
    top = max([int(values.max(initial=0)), *(c.label for c in mask.classes)])
    lut = np.arange(max(256, top + 1), dtype=np.int64)
    if mask.classes:  # map the file's labels to the model's classes by name
        for c in mask.classes:
            if c.name not in names:
                raise AnnotationError(
                    path, f"class {c.name!r} is not among the model's {brief(class_names)}"
                )
            lut[c.label] = names[c.name]
        return lut
    nonzero = [int(v) for v in values if v != 0]
    if len(nonzero) == 1 and (nonzero[0] >= n or nonzero[0] == IGNORE_INDEX):
        v = nonzero[0]
        if n != 2:
            raise AnnotationError(
                path,
                f"is a binary mask (0 and {v}) but the model has {n - 1} foreground classes "
                f"{brief(class_names[1:])}: which one it marks is not known. Save the mask "
                f"with the model's class numbers (1 = {class_names[1]!r}, ...; 0 = background, "
                "255 = not annotated)",
            )
        lut[v] = 1
        return lut
    unknown = [v for v in nonzero if v >= n and v != IGNORE_INDEX]
    if unknown:
        raise AnnotationError(
            path,
            f"holds the values {brief(unknown)}, but the model's classes are 0..{n - 1} "
            f"{brief(class_names)} (255 = not annotated): save the mask with the model's "
            "class numbers, or with class names (OME-Zarr or OME-TIFF written by `msunet "
            "rasterize`)",
        )
    return lut


_VALUES: dict[tuple, np.ndarray] = {}


def _present_values(path: Path, level: int, arr) -> np.ndarray:
    """The distinct values of a mask level, read block by block (cached per file version).

    Every block is read once; the result is kept for the file's modification time and
    size, so the dataset's workers and the checks before training do not read it again.
    """
    try:
        st = path.stat()
        key = (str(path.resolve()), level, st.st_mtime_ns, st.st_size)
    except OSError:
        key = None
    if key is not None and key in _VALUES:
        return _VALUES[key]
    seen: set[int] = set()
    for idx in np.ndindex(*arr.numblocks):
        block = np.asarray(arr.blocks[idx])
        if block.dtype == bool or block.dtype.itemsize == 1:
            counts = np.bincount(block.ravel().view(np.uint8), minlength=256)
            seen.update(np.flatnonzero(counts).tolist())
        else:
            seen.update(np.unique(block).tolist())
    values = np.array(sorted(seen), dtype=np.int64)
    if key is not None:
        _VALUES[key] = values
    return values


def check_annotation(spec: SlideSpec, target_mpp: float, class_names: Sequence[str]) -> bool:
    """Open a slide's annotation as training will, before any training; whether it marks glands.

    Training reads labels lazily, patch by patch, so without this a mask of the wrong size or
    with values the model has no class for would only fail (or silently mislead) once the
    run is under way.

    Returns
    -------
    bool
        Whether any pixel carries a foreground class (a GeoJSON with an annotation of a class
        other than background; a mask with a value that maps to one).

    Raises
    ------
    AnnotationError
        As :class:`_Labels`: classes the model lacks, a mask that is not the slide at one of
        its sizes, mask values without a class.
    """
    with open_slide(spec.slide) as slide:
        geometry = working_geometry(slide, target_mpp, spec.mpp)
        return _Labels(spec, slide, geometry, class_names).foreground


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
        labels = _Labels(spec, slide, _coarse(geometry, tissue), class_names, working=geometry)
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
            labels = _Labels(self.spec, slide, geometry, self.class_names)
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
        if not rgb.flags.writeable:  # a decoded tile shared read-only (torch warns on those)
            rgb = rgb.copy()
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
        if not _is_geojson(spec.annotation):
            # a mask of the wrong size or with values without a class is told now, not in a
            # DataLoader worker at the first batch (its values are read once, here)
            check_annotation(spec, cfg.mpp, cfg.class_names)
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
