"""Build the training and validation datasets a :class:`RunConfig` describes."""

from __future__ import annotations

from pathlib import Path

from torch.utils.data import ConcatDataset, Dataset

from napari_msunet.errors import ConfigError
from napari_msunet.training.augment import context_size
from napari_msunet.training.domain_stats import images_domain
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
                "_train_pairs": train_pairs,  # measured below, not recorded
            }
        )
    folder_images = [p.image for src in desc["folders"] for p in src.pop("_train_pairs")]
    if folder_images:  # what predictions compare slides with (io.domain)
        names = ", ".join(Path(f["path"]).name for f in desc["folders"])
        domain = images_domain(folder_images, f"{names} ({len(folder_images)} images)")
        if domain is not None:
            desc["domain"] = domain.to_dict()
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
