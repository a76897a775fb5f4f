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

A write that fails for a reason of the disk -- a read-only mount, a folder the user may not
write, a full disk or quota -- is one :class:`~napari_msunet.errors.WriterError` naming the
file, the folder and the cause (:func:`write_error`, :func:`os_error_reason`), never the
bare ``OSError`` of whichever library wrote the bytes; :func:`check_writable` refuses such a
folder before any work. Every writer of the package translates through these, and the CLI
translates an ``OSError`` that still escapes the same way.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

from napari_msunet.errors import WriterError

__all__ = [
    "atomic_path",
    "atomic_write_bytes",
    "check_new_file",
    "check_writable",
    "fsync_dir",
    "os_error_reason",
    "write_error",
]

Bytes = bytes | bytearray | memoryview


#: The errors of a disk rather than of a program: each gets a cause a user can act on.
DISK_ERRNOS = frozenset(
    {errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOSPC, getattr(errno, "EDQUOT", -1)}
)


def _folder(path: str | os.PathLike[str]) -> Path:
    """The nearest existing folder at or above ``path``'s parent, as an absolute path."""
    folder = Path(os.path.abspath(path)).parent
    while not folder.is_dir() and folder != folder.parent:
        folder = folder.parent
    return folder


def _megabytes_free(folder: Path) -> str:
    try:
        free = shutil.disk_usage(folder).free / 1e6
    except OSError:
        return "?"
    return f"{free:.1f}" if free < 10 else f"{free:.0f}"


def _user() -> str:
    try:
        import pwd

        return f"user {pwd.getpwuid(os.geteuid()).pw_name!r}"
    except (ImportError, KeyError, AttributeError):  # Windows, or a uid without a name
        return "this user"


def os_error_reason(exc: OSError, path: str | os.PathLike[str] | None = None) -> str:
    """Say why writing ``path`` failed, in words a user can act on.

    A read-only file system, a permission refused, a full disk or quota name the folder
    (the nearest existing folder above ``path``; ``exc.filename`` when ``path`` is ``None``)
    and what to do; any other error is its own ``strerror``.

    Examples
    --------
    >>> os_error_reason(OSError(errno.ENOSPC, "No space left on device"), "/data/out.png")
    'the disk is full (0.3 MB free in /data); free some space or write to another disk'
    """
    where = path if path is not None else exc.filename
    code = exc.errno
    if where is None or code not in DISK_ERRNOS:
        return exc.strerror or str(exc)
    folder = _folder(where)
    if code == errno.EROFS:
        return f"{folder} is read-only (a read-only file system); write to another folder"
    if code in (errno.EACCES, errno.EPERM):
        target = Path(where)
        if target.is_file() and not os.access(target, os.W_OK):
            return f"permission denied: {_user()} may not write {target}"
        return (
            f"permission denied: {_user()} may not write in {folder}; choose a folder you "
            "can write to"
        )
    if code == errno.ENOSPC:
        return (
            f"the disk is full ({_megabytes_free(folder)} MB free in {folder}); free some "
            "space or write to another disk"
        )
    return (
        f"the disk quota is exceeded ({_megabytes_free(folder)} MB free in {folder}); free "
        "some space or write to another disk"
    )


def write_error(
    path: str | os.PathLike[str],
    exc: OSError,
    what: str = "cannot be written",
    *,
    where: str | os.PathLike[str] | None = None,
) -> WriterError:
    """The :class:`WriterError` for an ``OSError`` raised while writing ``path``.

    ``path`` is the output the user named (a temporary or inner file of the writer in
    ``exc.filename`` would mean nothing to them); ``what`` says what failed; the cause names
    the folder of ``where`` (default ``path``): a file inside an output folder names that
    folder.
    """
    return WriterError(path, f"{what}: {os_error_reason(exc, path if where is None else where)}")


def check_writable(path: str | os.PathLike[str], *, folder: bool = False) -> None:
    """Refuse, before any work, an output whose folder is read-only or not writable.

    ``path`` is the output to be written (its nearest existing folder above is checked), or,
    with ``folder``, the folder itself. A check, not a promise: a disk can still fill up.

    Raises
    ------
    WriterError
        Naming ``path`` and the cause, as :func:`write_error` does.
    """
    probe = Path(path) / "_" if folder else Path(path)
    existing = Path(os.path.abspath(probe)).parent
    while not os.path.lexists(existing) and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return  # a file where a folder should be: creating the folder says so
    try:
        read_only = bool(os.statvfs(existing).f_flag & os.ST_RDONLY)
    except (AttributeError, OSError):  # Windows has no statvfs
        read_only = False
    code = errno.EROFS if read_only else None
    if code is None and not os.access(existing, os.W_OK | os.X_OK):
        code = errno.EACCES
    if code is not None:
        raise write_error(path, OSError(code, os.strerror(code)), where=probe)


def _discard(tmp: Path) -> None:
    """Remove a temporary file, if there is one; never raise (a read-only mount refuses even
    the unlink of a file that does not exist)."""
    with contextlib.suppress(OSError):
        tmp.unlink(missing_ok=True)


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
        is a folder, or cannot be written (the message says why: see :func:`write_error`;
        the temporary file is removed and ``path`` left as it was).

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
        raise write_error(p, exc, "cannot create its folder") from exc
    tmp = p.with_name(f".{p.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        yield tmp
        with open(tmp, "rb+") as fh:  # writable: Windows flushes only a handle open for writing
            os.fsync(fh.fileno())
        if not overwrite and os.path.lexists(p):
            raise WriterError(p, "appeared while it was being written; not replaced")
        os.replace(tmp, p)
    except OSError as exc:  # a full disk, a read-only folder: nothing stays, one clear error
        _discard(tmp)
        raise write_error(p, exc) from exc
    except BaseException:
        _discard(tmp)
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
