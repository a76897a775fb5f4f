"""Atomic file writes shared by every output: model files, training state, GeoJSON, reports.

A report that a script reads while it is being written, or that a crash leaves half written,
would be silently wrong; so each file is written under a temporary name in the same folder,
flushed to disk, and renamed over the final name (``os.replace`` is atomic on POSIX and
Windows). An existing file is replaced only when asked.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from napari_msunet.errors import WriterError

__all__ = ["atomic_write_bytes", "check_new_file"]


def check_new_file(path: str | os.PathLike[str], overwrite: bool) -> Path:
    """Refuse ``path`` if it exists (unless ``overwrite``) or is a folder; return it as a Path."""
    p = Path(path)
    if p.is_dir():
        raise WriterError(p, "is a folder; give a file name")
    if os.path.lexists(p) and not overwrite:
        raise WriterError(p, "already exists; pass overwrite=True (--overwrite) to replace it")
    return p


def atomic_write_bytes(
    path: str | os.PathLike[str], data: bytes, *, overwrite: bool = False
) -> Path:
    """Write ``data`` to ``path`` through a temporary sibling and an atomic rename.

    Raises
    ------
    WriterError
        ``path`` exists and ``overwrite`` is false, is a folder, or cannot be written.
    """
    p = check_new_file(path, overwrite)
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise WriterError(p, f"cannot create the folder: {exc.strerror or exc}") from exc
    tmp = p.with_name(f".{p.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "xb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        if not overwrite and os.path.lexists(p):
            raise WriterError(p, "appeared while it was being written; not replaced")
        os.replace(tmp, p)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise WriterError(p, f"cannot be written ({exc.strerror or exc})") from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return p
