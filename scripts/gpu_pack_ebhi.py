"""Pack EBHI-Seg small enough to travel to a lent GPU machine (64 MiB per call), and unpack it.

The device tool sends the working tree plus carried folders, at most 64 MiB in all; EBHI-Seg is
82 MB. Packing re-encodes the images as JPEG quality 70 (about 30 MB; the originals are about
quality 95) and stores the 1-bit masks bit-packed in one compressed ``.npz`` (lossless).
GPU results are therefore on slightly recompressed images; docs/results.md says so.

    python scripts/gpu_pack_ebhi.py pack ../shared/data/ebhi-seg .gpudata/ebhi
    python scripts/gpu_pack_ebhi.py unpack .gpudata/ebhi /tmp/ebhi      # on the GPU machine
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
from PIL import Image


def pack(src: Path, dst: Path, quality: int = 70) -> None:
    (dst / "images").mkdir(parents=True, exist_ok=True)
    stems, masks = [], []
    for img in sorted((src / "images").glob("*.jpg")):
        with Image.open(img) as im:
            im.convert("RGB").save(dst / "images" / img.name, "JPEG", quality=quality)
        with Image.open(src / "masks" / f"{img.stem}.png") as m:
            masks.append(np.asarray(m) > 0)
        stems.append(img.stem)
    shapes = np.array([m.shape for m in masks])
    bits = np.concatenate([np.packbits(m.ravel()) for m in masks])
    np.savez_compressed(dst / "masks.npz", stems=np.array(stems), shapes=shapes, bits=bits)
    shutil.copy(src / "index.csv", dst / "index.csv")


def unpack(src: Path, dst: Path) -> None:
    (dst / "masks").mkdir(parents=True, exist_ok=True)
    if not (dst / "images").exists():
        (dst / "images").symlink_to((src / "images").resolve())
    shutil.copy(src / "index.csv", dst / "index.csv")
    z = np.load(src / "masks.npz")
    offset = 0
    for stem, (h, w) in zip(z["stems"], z["shapes"], strict=True):
        n = (h * w + 7) // 8
        mask = np.unpackbits(z["bits"][offset : offset + n])[: h * w].reshape(h, w)
        offset += n
        Image.fromarray(mask.astype(bool)).save(dst / "masks" / f"{stem}.png")


if __name__ == "__main__":
    verb, a, b = sys.argv[1:4]
    {"pack": pack, "unpack": unpack}[verb](Path(a), Path(b))
