"""Patch dataset from a folder of image/mask pairs (e.g. EBHI-Seg: ``images/*.jpg`` with
``masks/*.png`` of the same stem).

Each item is a context square (:func:`~napari_msunet.training.augment.context_size` of the
patch when rotating) cut at a random position of one image, as uint8 tensors; the batch-level
:func:`~napari_msunet.training.augment.augment_batch` then rotates, flips, jitters and crops
the patch. Positions are drawn from a generator seeded by ``(seed, epoch, index)`` so a run is
reproducible whatever the number of DataLoader workers.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from napari_msunet.errors import AnnotationError, ConfigError, SlideError
from napari_msunet.training.losses import IGNORE_INDEX

__all__ = ["FolderDataset", "ImagePair", "find_pairs", "stratified_split"]

_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff")


@dataclass(frozen=True)
class ImagePair:
    """One image and its mask; ``group`` (e.g. the diagnosis) is used for stratified splits."""

    image: Path
    mask: Path
    group: str = ""

    @property
    def stem(self) -> str:
        return self.image.stem


def find_pairs(root: str | Path, images: str = "images", masks: str = "masks") -> list[ImagePair]:
    """Pair ``root/images/<stem>.*`` with ``root/masks/<stem>.png`` (or any image suffix).

    ``root/index.csv`` with columns ``stem`` and ``diagnosis`` (as in EBHI-Seg), when present,
    gives each pair its group. An image without a mask is an error naming it: silently dropping
    it would change the split.
    """
    root = Path(root)
    img_dir, mask_dir = root / images, root / masks
    for d in (img_dir, mask_dir):
        if not d.is_dir():
            raise ConfigError(f"{d}: folder not found (expected {images}/ and {masks}/ in {root})")
    groups: dict[str, str] = {}
    index = root / "index.csv"
    if index.is_file():
        with index.open(newline="") as f:
            for row in csv.DictReader(f):
                groups[row.get("stem", "")] = row.get("diagnosis", "")
    masks_by_stem = {p.stem: p for p in mask_dir.iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES}
    pairs = []
    for img in sorted(img_dir.iterdir()):
        if img.suffix.lower() not in _IMAGE_SUFFIXES:
            continue
        mask = masks_by_stem.get(img.stem)
        if mask is None:
            raise AnnotationError(img, f"has no mask in {mask_dir} (expected {img.stem}.png)")
        pairs.append(ImagePair(img, mask, groups.get(img.stem, "")))
    if not pairs:
        raise ConfigError(f"{img_dir}: no images found")
    return pairs


def stratified_split(
    pairs: Sequence[ImagePair], val_fraction: float = 0.2, seed: int = 0
) -> tuple[list[ImagePair], list[ImagePair]]:
    """Split pairs into train/validation, the same fraction of each group in validation."""
    if not 0 < val_fraction < 1:
        raise ConfigError(f"val_fraction must be in (0, 1), got {val_fraction}")
    rng = np.random.default_rng(seed)
    train, val = [], []
    for group in sorted({p.group for p in pairs}):
        members = sorted((p for p in pairs if p.group == group), key=lambda p: p.stem)
        order = rng.permutation(len(members))
        n_val = max(1, round(len(members) * val_fraction)) if len(members) > 1 else 0
        val += [members[i] for i in order[:n_val]]
        train += [members[i] for i in order[n_val:]]
    return train, val


def _load_pair(pair: ImagePair) -> tuple[np.ndarray, np.ndarray]:
    try:
        with Image.open(pair.image) as img:
            rgb = np.array(img.convert("RGB"))
    except Exception as exc:
        raise SlideError(pair.image, f"cannot be read: {exc}") from exc
    try:
        with Image.open(pair.mask) as m:
            if m.mode in ("RGB", "RGBA"):
                raise AnnotationError(pair.mask, "is a colour image, not a label mask")
            mask = np.asarray(m)
    except AnnotationError:
        raise
    except Exception as exc:
        raise AnnotationError(pair.mask, f"cannot be read: {exc}") from exc
    if mask.shape != rgb.shape[:2]:
        raise AnnotationError(
            pair.mask,
            f"is {mask.shape[1]} x {mask.shape[0]} but its image {pair.image.name} is "
            f"{rgb.shape[1]} x {rgb.shape[0]}",
        )
    return rgb, mask.astype(np.int64)


class FolderDataset(Dataset):
    """Random context squares from image/mask pairs.

    Parameters
    ----------
    pairs
        From :func:`find_pairs` (a split of them).
    size
        Side of the square returned: ``context_size(patch)`` for rotation, or the patch itself;
        ``None`` returns whole images (validation).
    label_map
        Optional mapping of mask values to class ids (e.g. ``{255: 1}`` for 0/255 masks);
        values not in the map keep their value.
    noisy
        Marks every item as coming from noisy annotations (selects the wide fuzzy kernel).
    seed
        Seeds the positions; call :meth:`set_epoch` to draw new ones each epoch.
    cache
        Keep decoded images in memory (they are small; the folder must fit).
    """

    def __init__(
        self,
        pairs: Sequence[ImagePair],
        size: int | None,
        *,
        label_map: dict[int, int] | None = None,
        noisy: bool = False,
        seed: int = 0,
        cache: bool = True,
    ) -> None:
        self.pairs = list(pairs)
        self.size = None if size is None else int(size)
        self.noisy, self.seed = bool(noisy), int(seed)
        self.label_map = dict(label_map or {})
        self.epoch = 0
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] | None = {} if cache else None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.pairs)

    def _get(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        if self._cache is not None and i in self._cache:
            return self._cache[i]
        rgb, mask = _load_pair(self.pairs[i])
        for src, dst in self.label_map.items():
            mask = np.where(mask == src, dst, mask)
        if self._cache is not None:
            self._cache[i] = (rgb, mask)
        return rgb, mask

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        rgb, mask = self._get(i)
        h, w = mask.shape
        s = self.size
        rng = np.random.default_rng((self.seed, self.epoch, i))
        if s is None:
            pass
        elif h >= s and w >= s:
            y = int(rng.integers(0, h - s + 1))
            x = int(rng.integers(0, w - s + 1))
            rgb, mask = rgb[y : y + s, x : x + s], mask[y : y + s, x : x + s]
        else:
            # smaller than the square: centre it, unannotated (ignored) and white around it,
            # so the loss never learns from the padding
            out = np.full((s, s, 3), 255, np.uint8)
            lab = np.full((s, s), IGNORE_INDEX, np.int64)
            y, x = max(0, (s - h) // 2), max(0, (s - w) // 2)
            hh, ww = min(h, s), min(w, s)
            out[y : y + hh, x : x + ww] = rgb[:hh, :ww]
            lab[y : y + hh, x : x + ww] = mask[:hh, :ww]
            rgb, mask = out, lab
        return {
            "image": torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1),
            "mask": torch.from_numpy(np.ascontiguousarray(mask)),
            "noisy": torch.tensor(self.noisy),
            "index": torch.tensor(i),
        }
