"""One program edits an annotation store at a time: a lock file beside the store.

Two napari windows (or a napari window and a script) writing the same store would interleave
their chunk writes and undo journals, and an undo in one could restore what the other wrote.
The store therefore takes ``<store>.lock`` (beside the store folder, so that replacing the
folder does not move it) before it recovers, creates or edits anything. The file names the
holder: process id, host, program and time, so the refusal can say who holds it.

Within one process the lock is shared and counted (the GUI reopens a store it already
holds); it is released when the last holder closes it, or when the process exits. A lock left
by a process that no longer runs on this host (a crash, a kill) is taken over. A lock from
another host (a shared network folder) cannot be checked: the message says which file to
delete once that program is closed.

The same lock guards a prediction's output folder (:data:`OUTPUT`): two ``msunet predict``
runs into one folder would interleave their tiles and publish each other's half-built stores.
That lock is exclusive even within one process (two GUI tasks into one folder are refused
too), and its file is named by the caller (``prediction.lock`` inside the folder, see
:class:`~napari_msunet.inference.outputs.SlideOutputs`). Every other command that writes a
folder holds the same kind of lock while it works, through :func:`folder_lock`: a training
run its ``out`` folder (``train.lock``, fine-tuning included), an evaluation its report
folder (``evaluation.lock``).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from napari_msunet._atomic import os_error_reason
from napari_msunet.errors import AnnotationError, MsunetError, WriterError

__all__ = [
    "OUTPUT",
    "STORE",
    "LockKind",
    "acquire",
    "folder_lock",
    "holder",
    "lock_path",
    "release",
]


@dataclass(frozen=True)
class LockKind:
    """What a lock guards, and how a refusal reads.

    Attributes
    ----------
    error
        The error raised, called as ``error(guarded_path, reason)``.
    busy
        What the guarded path is, while another program holds it ("is being edited ...").
    advice
        What the user should do about the other program ("Close it there first").
    shared
        Whether holders in one process share the lock (counted) rather than refuse each other.
    """

    error: Callable[[Path, str], MsunetError]
    busy: str
    advice: str
    shared: bool


STORE = LockKind(
    AnnotationError, "is being edited by another program", "Close it there first", True
)
"""The annotation store's edit lock: shared within a process (the GUI reopens a store)."""

OUTPUT = LockKind(
    WriterError, "is being written by another program", "Wait for it to finish", False
)
"""An output folder's lock: one writer at a time, even within one process."""

_held: dict[Path, int] = {}  # lock file -> how many holders in this process
_guard = threading.Lock()


def lock_path(root: str | os.PathLike[str]) -> Path:
    """The lock file of the store at ``root``: ``<root>.lock`` beside it."""
    root = Path(root).absolute()
    return root.with_name(root.name + ".lock")


def holder(path: Path) -> dict[str, Any] | None:
    """What the lock file at ``path`` says about its holder (``None``: none, or unreadable)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def acquire(
    root: str | os.PathLike[str],
    *,
    path: str | os.PathLike[str] | None = None,
    kind: LockKind = STORE,
) -> None:
    """Take the lock of ``root`` for this process (counted when ``kind.shared``).

    Parameters
    ----------
    root
        What is guarded (named in the refusal).
    path
        The lock file; ``None``: :func:`lock_path` ``(root)``.
    kind
        :data:`STORE` (the default) or :data:`OUTPUT`.

    Raises
    ------
    AnnotationError, WriterError
        (``kind.error``) Another running program holds it -- or, for a lock that is not
        shared, another task of this one; the message names it and the lock file.
    """
    lock = Path(path).absolute() if path is not None else lock_path(root)
    with _guard:
        if lock in _held:
            if not kind.shared:
                other = holder(lock) or _me()
                raise kind.error(Path(root), _refusal(other, lock, kind, same_process=True))
            _held[lock] += 1
            return
        _take(lock, Path(root), kind)
        _held[lock] = 1


def release(root: str | os.PathLike[str], *, path: str | os.PathLike[str] | None = None) -> None:
    """Drop one hold; the last one removes the lock file (if it is still this process's)."""
    path = Path(path).absolute() if path is not None else lock_path(root)
    with _guard:
        count = _held.get(path, 0)
        if count > 1:
            _held[path] = count - 1
            return
        _held.pop(path, None)
        if count:
            _remove_if_mine(path)


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike[str], name: str) -> Iterator[Path]:
    """Hold the :data:`OUTPUT` lock ``folder/name`` while a command writes ``folder``.

    The folder is created if needed (the lock lives in it); if it was created here and holds
    nothing when the work ends (a run refused after the lock, say), it is removed again, so a
    refused command leaves no trace.

    Raises
    ------
    WriterError
        Another program, or another task of this one, writes the folder (the message names
        it and the lock file); or the folder cannot be created.
    """
    folder = Path(folder)
    created = not folder.exists()
    try:
        acquire(folder, path=folder / name, kind=OUTPUT)
    except BaseException:
        if created:
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise
    try:
        yield folder
    finally:
        release(folder, path=folder / name)
        if created:
            with contextlib.suppress(OSError):  # not empty: it holds the command's work
                folder.rmdir()


def _me() -> dict[str, Any]:
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "program": " ".join(sys.argv[:1]) or "python",
        "since": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def _take(path: Path, root: Path, kind: LockKind) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise kind.error(
            root, f"cannot take the lock {path}: {os_error_reason(exc, path)}"
        ) from exc
    for _ in range(3):  # a stale lock removed by two takers at once: O_EXCL decides
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            other = holder(path)
            if other is not None and not _is_stale(other):
                raise kind.error(root, _refusal(other, path, kind)) from None
            if other is None and _age(path) < 5.0:
                time.sleep(0.2)  # being written by its taker right now
                continue
            path.unlink(missing_ok=True)
            continue
        except OSError as exc:
            raise kind.error(
                root, f"cannot take the lock {path}: {os_error_reason(exc, path)}"
            ) from exc
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(_me(), f)
                f.flush()
                os.fsync(f.fileno())
        except OSError as exc:  # a full disk: an empty lock would block the next run for 5 s
            path.unlink(missing_ok=True)
            raise kind.error(
                root, f"cannot take the lock {path}: {os_error_reason(exc, path)}"
            ) from exc
        return
    raise kind.error(root, f"cannot take the lock {path}; try again")


def _refusal(
    other: dict[str, Any], path: Path, kind: LockKind, *, same_process: bool = False
) -> str:
    who = f"process {other.get('pid')} ({other.get('program', '?')}) on {other.get('host', '?')}"
    if same_process:
        return (
            f"{kind.busy.replace('another program', 'another task of this program')}: {who} "
            f"(lock {path}). {kind.advice}"
        )
    return (
        f"{kind.busy}: {who}, since {other.get('since', '?')}. {kind.advice}; if that program "
        f"is no longer running, delete {path}"
    )


def _age(path: Path) -> float:
    try:
        return time.time() - path.stat().st_mtime
    except OSError:
        return 0.0


def _is_stale(other: dict[str, Any]) -> bool:
    """Whether the holder is gone: on this host, its process is not running any more."""
    if other.get("host") != socket.gethostname():
        return False  # another machine's process cannot be checked from here
    pid = other.get("pid")
    if not isinstance(pid, int):
        return True
    if pid == os.getpid():
        return True  # this process, but not held: left by an earlier process with our pid
    return not _running(pid)


def _running(pid: int) -> bool:
    """Whether process ``pid`` runs. A zombie does not: a killed process whose parent has not
    collected it yet (or never will, in a container without an init process) still has its
    pid, and its lock must be taken over (a dask worker killed mid-slide left one)."""
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True  # exists, owned by someone else


def _remove_if_mine(path: Path) -> None:
    other = holder(path)
    if other and other.get("pid") == os.getpid() and other.get("host") == socket.gethostname():
        path.unlink(missing_ok=True)


@atexit.register
def _release_all() -> None:
    with _guard:
        for path in list(_held):
            _remove_if_mine(path)
        _held.clear()
