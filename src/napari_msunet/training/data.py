"""Build the training and validation datasets a :class:`RunConfig` describes."""

from __future__ import annotations

from torch.utils.data import ConcatDataset, Dataset

from napari_msunet.errors import ConfigError
from napari_msunet.training.augment import context_size
from napari_msunet.training.folder_dataset import FolderDataset, find_pairs, stratified_split
from napari_msunet.training.run_config import RunConfig

__all__ = ["build_datasets"]


def _concat(parts: list[Dataset]) -> Dataset | None:
    if not parts:
        return None
    return parts[0] if len(parts) == 1 else ConcatDataset(parts)


def build_datasets(run: RunConfig) -> tuple[Dataset, Dataset | None, dict]:
    """Return ``(train, val, description)``; the description goes into the model's provenance.

    Training items are context squares for rotation (``context_size(patch)``) when rotation is
    on, else patches; validation items are whole images (folders) or tiles (slides).
    """
    cfg = run.train
    size = context_size(cfg.patch) if cfg.augment.rotate else cfg.patch
    train_parts: list[Dataset] = []
    val_parts: list[Dataset] = []
    desc: dict = {"folders": [], "slides": []}
    for src in run.folders:
        pairs = find_pairs(src.path)
        if src.limit is not None:
            pairs = pairs[: src.limit]
        train_pairs, val_pairs = stratified_split(pairs, src.val_fraction, src.split_seed)
        train_parts.append(
            FolderDataset(
                train_pairs, size, label_map=src.label_map, noisy=src.noisy, seed=cfg.seed
            )
        )
        val_parts.append(FolderDataset(val_pairs, None, label_map=src.label_map))
        desc["folders"].append(
            {
                "path": str(src.path),
                "train": len(train_pairs),
                "val": len(val_pairs),
                "split_seed": src.split_seed,
                "noisy": src.noisy,
                "val_stems": [p.stem for p in val_pairs],
            }
        )
    if run.slides:
        from napari_msunet.training.slide_dataset import slide_datasets

        tr, va, sdesc = slide_datasets(run, size)
        train_parts += tr
        val_parts += va
        desc["slides"] = sdesc
    train = _concat(train_parts)
    if train is None:
        raise ConfigError("the run has no training data")
    return train, _concat(val_parts), desc
