"""Folder datasets of image/mask pairs (EBHI-Seg layout), made in tmp_path."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from napari_msunet.errors import AnnotationError, ConfigError
from napari_msunet.training.folder_dataset import FolderDataset, find_pairs, stratified_split


def make_folder(root, n=12, size=96, groups=("A", "B", "C")):
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rows = ["stem,diagnosis,foreground_fraction"]
    rng = np.random.default_rng(0)
    for i in range(n):
        stem = f"img{i:03d}"
        mask = np.zeros((size, size), np.uint8)
        mask[10 + i : 50 + i, 20:70] = 1
        rgb = (rng.integers(0, 255, (size, size, 3))).astype(np.uint8)
        rgb[mask == 1] = (150, 50, 160)
        Image.fromarray(rgb).save(root / "images" / f"{stem}.png")
        Image.fromarray(mask).save(root / "masks" / f"{stem}.png")
        rows.append(f"{stem},{groups[i % len(groups)]},0.2")
    (root / "index.csv").write_text("\n".join(rows) + "\n")
    return root


def test_pairs_and_stratified_split(tmp_path):
    pairs = find_pairs(make_folder(tmp_path))
    assert len(pairs) == 12
    assert {p.group for p in pairs} == {"A", "B", "C"}
    train, val = stratified_split(pairs, 0.25, seed=3)
    assert len(train) + len(val) == 12
    assert {p.group for p in val} == {"A", "B", "C"}  # every group represented
    assert not {p.stem for p in train} & {p.stem for p in val}
    again = stratified_split(pairs, 0.25, seed=3)
    assert [p.stem for p in again[1]] == [p.stem for p in val]


def test_items_are_aligned_crops(tmp_path):
    pairs = find_pairs(make_folder(tmp_path))
    ds = FolderDataset(pairs, 64, seed=1)
    item = ds[0]
    assert item["image"].shape == (3, 64, 64)
    assert item["image"].dtype == torch.uint8
    assert item["mask"].shape == (64, 64)
    purple = (item["image"] == torch.tensor([150, 50, 160]).view(3, 1, 1)).all(0)
    assert torch.equal(purple, item["mask"] == 1)
    # reproducible per (seed, epoch, index); new positions next epoch
    assert torch.equal(ds[0]["mask"], FolderDataset(pairs, 64, seed=1)[0]["mask"])
    ds.set_epoch(1)
    assert any(
        not torch.equal(ds[i]["image"], FolderDataset(pairs, 64, seed=1)[i]["image"])
        for i in range(4)
    )


def test_small_images_are_padded_with_ignore(tmp_path):
    pairs = find_pairs(make_folder(tmp_path, n=3, size=40))
    item = FolderDataset(pairs, 64)[0]
    assert (item["mask"][:12] == 255).all()
    assert (item["image"][:, :12] == 255).all()
    assert (item["mask"][12:52, 12:52] != 255).all()


def test_label_map(tmp_path):
    root = make_folder(tmp_path, n=3)
    for p in (root / "masks").iterdir():
        m = np.asarray(Image.open(p)) * 255
        Image.fromarray(m.astype(np.uint8)).save(p)
    pairs = find_pairs(root)
    item = FolderDataset(pairs, 96, label_map={255: 1})[0]
    assert set(item["mask"].unique().tolist()) == {0, 1}


def test_bad_folders(tmp_path):
    with pytest.raises(ConfigError, match="folder not found"):
        find_pairs(tmp_path)
    root = make_folder(tmp_path / "x", n=2)
    (root / "masks" / "img001.png").unlink()
    with pytest.raises(AnnotationError, match="has no mask"):
        find_pairs(root)
    root = make_folder(tmp_path / "y", n=2)
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(root / "masks" / "img000.png")
    with pytest.raises(AnnotationError, match="10 x 10"):
        FolderDataset(find_pairs(root), 32)[0]
