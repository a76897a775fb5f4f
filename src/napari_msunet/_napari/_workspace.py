"""Where the plugin keeps what it makes for a slide: predictions, the editable annotation,
fine-tuned models and exports.

Everything for ``/data/case01.svs`` goes under ``/data/case01.svs.msunet/`` so it travels with
the slide and a pathologist finds it next to the file. When the slide's folder is read-only
(a shared archive), the workspace moves to the user's cache folder instead, under a name made
of the slide's path hash. Nothing here ever writes over the slide or the user's own files.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

__all__ = ["workspace_dir"]


def _cache_root() -> Path:
    base = os.environ.get("NAPARI_MSUNET_CACHE") or os.environ.get("XDG_CACHE_HOME")
    return Path(base) / "napari-msunet" if base else Path.home() / ".cache" / "napari-msunet"


def workspace_dir(slide_path: str | os.PathLike[str], *, create: bool = True) -> Path:
    """The workspace folder of a slide (created unless ``create=False``).

    Parameters
    ----------
    slide_path
        The slide file (or folder, for OME-Zarr).
    create
        Make the folder (and check it is writable); without it the preferred path is
        returned as is.
    """
    slide = Path(slide_path).expanduser().resolve()
    beside = slide.with_name(slide.name + ".msunet")
    if not create:
        return beside
    try:
        beside.mkdir(exist_ok=True)
        probe = beside / ".write-test"
        probe.touch()
        probe.unlink()
        return beside
    except OSError:
        digest = hashlib.sha256(str(slide).encode()).hexdigest()[:12]
        fallback = _cache_root() / f"{slide.name}-{digest}.msunet"
        fallback.mkdir(parents=True, exist_ok=True)
        return fallback
