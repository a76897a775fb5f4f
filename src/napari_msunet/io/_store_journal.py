"""The undo journal of :class:`~napari_msunet.io.annotation_store.AnnotationStore`, on disk.

Each edit of the store gets one numbered entry folder, ``journal/000007/``, holding

- ``entry.json``: what the edit does (the store window, the chunk-aligned window saved, the
  corrected region, and the corrected-regions list before and after), and
- ``before.npz``: the store's level-0 content of the chunk-aligned window *before* the edit.

An entry is built under ``000007.tmp``, flushed to disk and renamed into place before a single
chunk of the mask is touched (write-ahead), so whatever the mask holds after a crash, the
entry can restore the state before the edit. Two empty marker files record how far the edit
got: ``applied`` (every chunk, the pyramid and the regions file are written) and ``undoing``
(an undo has started). On opening, an entry without ``applied``, or with ``undoing``, is
rolled back and deleted, which makes every edit and every undo all-or-nothing.

Entries are deleted by renaming them to ``*.trash`` first, so a crash during the deletion
never leaves half an entry under a valid name.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import numpy as np
from zarr.storage import LocalStore

from napari_msunet._atomic import atomic_write_bytes, fsync_dir
from napari_msunet.errors import WriterError

__all__ = ["DurableStore", "Journal"]

_ENTRY = "entry.json"
_BEFORE = "before.npz"
_APPLIED = "applied"
_UNDOING = "undoing"


class Journal:
    """Numbered write-ahead entries in ``folder`` (see the module docstring)."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)

    def _dir(self, index: int) -> Path:
        return self.folder / f"{index:06d}"

    def indices(self) -> list[int]:
        """Indices of the committed entries, oldest first."""
        out = []
        for p in self.folder.iterdir():
            if p.is_dir() and p.name.isdigit() and (p / _ENTRY).is_file():
                out.append(int(p.name))
        return sorted(out)

    def next_index(self) -> int:
        return max(self.indices(), default=0) + 1

    def commit(self, index: int, entry: dict[str, Any], before: np.ndarray) -> None:
        """Write an entry and its saved content durably, then make it visible under its name."""
        final = self._dir(index)
        if final.exists():
            raise WriterError(final, "journal entry exists already; is another program editing?")
        tmp = self.folder / f"{index:06d}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        buf = io.BytesIO()
        np.savez_compressed(buf, before=before)
        try:
            atomic_write_bytes(tmp / _BEFORE, buf.getvalue())
            atomic_write_bytes(tmp / _ENTRY, json.dumps(entry).encode("utf-8"))
            fsync_dir(tmp)
            os.rename(tmp, final)
            fsync_dir(self.folder)
        except (OSError, WriterError) as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            raise WriterError(final, f"cannot write the undo journal: {exc}") from exc

    def entry(self, index: int) -> dict[str, Any]:
        return json.loads((self._dir(index) / _ENTRY).read_text(encoding="utf-8"))

    def before(self, index: int) -> np.ndarray:
        with np.load(self._dir(index) / _BEFORE) as npz:
            return npz["before"]

    def mark(self, index: int, marker: str) -> None:
        """Record ``applied`` or ``undoing`` for an entry (a durable empty file)."""
        atomic_write_bytes(self._dir(index) / marker, b"", overwrite=True)
        fsync_dir(self._dir(index))

    def mark_applied(self, index: int) -> None:
        self.mark(index, _APPLIED)

    def mark_undoing(self, index: int) -> None:
        self.mark(index, _UNDOING)

    def is_complete(self, index: int) -> bool:
        """Whether the entry's edit finished and no undo of it has started."""
        d = self._dir(index)
        return (d / _APPLIED).exists() and not (d / _UNDOING).exists()

    def remove(self, index: int) -> None:
        """Delete an entry: rename it out of the numbered names first, then remove the files."""
        d = self._dir(index)
        if not d.exists():
            return
        trash = self.folder / f"{index:06d}.{uuid.uuid4().hex[:8]}.trash"
        os.rename(d, trash)
        fsync_dir(self.folder)
        shutil.rmtree(trash, ignore_errors=True)

    def clean(self) -> None:
        """Remove leftovers of interrupted commits and deletions (never a committed entry)."""
        for p in self.folder.iterdir():
            if p.name.endswith((".tmp", ".trash")):
                shutil.rmtree(p, ignore_errors=True)

    def prune(self, keep: int) -> None:
        """Forget the oldest complete entries beyond ``keep`` (they can no longer be undone)."""
        done = [i for i in self.indices() if self.is_complete(i)]
        for index in done[: max(0, len(done) - keep)]:
            self.remove(index)


class DurableStore(LocalStore):
    """A zarr LocalStore whose every write is atomic and durable.

    Each chunk (or metadata document) is written to a temporary file, flushed to disk and
    renamed over the old one, so a crash leaves either the old or the new chunk, never half of
    one, and a chunk the journal counts as written is on disk.
    """

    async def set(self, key: str, value: Any) -> None:
        if self.read_only:
            raise ValueError(f"{self.root} is opened read-only")
        await asyncio.to_thread(
            atomic_write_bytes, self.root / key, value.as_buffer_like(), overwrite=True
        )
