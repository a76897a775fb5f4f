"""Atomic file writes shared by every output: model files, training state, GeoJSON, reports.

A report that a script reads while it is being written, or that a crash leaves half written,
would be silently wrong; so each file is written under a temporary name in the same folder,
flushed to disk, and renamed over the final name (``os.replace`` is atomic on POSIX and
Windows). An existing file is replaced only when asked.

:func:`atomic_write_bytes` writes bytes held in memory; :func:`atomic_path` gives the temporary
name to a writer that wants a file name of its own (tifffile streaming a slide, say) and
publishes it the same way. Both are the only places in the package that rename a finished file
into place; :func:`fsync_dir` makes such a rename itself durable where a caller needs that
(the annotation store's journal).
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

from napari_msunet.errors import WriterError

__all__ = ["atomic_path", "atomic_write_bytes", "check_new_file", "fsync_dir"]

Bytes = bytes | bytearray | memoryview


def check_new_file(path: str | os.PathLike[str], overwrite: bool) -> Path:
    """Refuse ``path`` if it exists (unless ``overwrite``) or is a folder; return it as a Path."""
    p = Path(path)
    if p.is_dir():
        raise WriterError(p, "is a folder; give a file name")
    if os.path.lexists(p) and not overwrite:
        raise WriterError(p, "already exists; pass overwrite=True (--overwrite) to replace it")
    return p


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], *, overwrite: bool = False) -> Iterator[Path]:
    """Give a temporary sibling of ``path`` to write, and rename it over ``path`` at the end.

    The temporary file (``.<name>.<random>.tmp``, in the same folder so the rename stays on
    one file system) is flushed to disk and renamed when the ``with`` block ends normally; when
    the block raises, or a generator suspended inside it is closed, it is deleted and ``path``
    is left as it was.

    Raises
    ------
    WriterError
        ``path`` exists and ``overwrite`` is false (checked before and again after writing),
        is a folder, or cannot be written.

    Examples
    --------
    >>> with atomic_path("slide.svs", overwrite=True) as tmp:
    ...     with tifffile.TiffWriter(tmp) as tif:
    ...         tif.write(tiles, shape=shape, dtype=np.uint8)
    """
    p = check_new_file(path, overwrite)
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise WriterError(p, f"cannot create the folder: {exc.strerror or exc}") from exc
    tmp = p.with_name(f".{p.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        yield tmp
        with open(tmp, "rb+") as fh:  # writable: Windows flushes only a handle open for writing
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


def atomic_write_bytes(
    path: str | os.PathLike[str], data: Bytes, *, overwrite: bool = False
) -> Path:
    """Write ``data`` to ``path`` through a temporary sibling and an atomic rename.

    Raises
    ------
    WriterError
        ``path`` exists and ``overwrite`` is false, is a folder, or cannot be written.
    """
    with atomic_path(path, overwrite=overwrite) as tmp, open(tmp, "xb") as fh:
        fh.write(data)
    return Path(path)


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Flush a folder's entries (renames into it) to disk, where the platform allows it.

    A rename is atomic but, until its folder is flushed, a power cut may forget it; write-ahead
    records that must outlive a crash (the annotation store's journal) call this after renaming.
    """
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
