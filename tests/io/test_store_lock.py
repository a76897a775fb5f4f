"""One program edits an annotation store at a time: real processes hold and release it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from napari_msunet.errors import AnnotationError
from napari_msunet.io._store_lock import lock_path
from napari_msunet.io.annotation_store import AnnotationStore, remove_store

SHAPE = (256, 320)
HOLDER = Path(__file__).with_name("hold_store.py")


@pytest.fixture
def root(tmp_path):
    store = AnnotationStore.create(tmp_path / "annotation", None, SHAPE, chunk=64)
    store.close()
    assert not lock_path(store.root).exists()
    return store.root


def _holder(root):
    """A second process that opens the store, says so, and waits for a line on stdin."""
    proc = subprocess.Popen(
        [sys.executable, str(HOLDER), str(root)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline().strip() == "holding"
    return proc


def test_another_program_is_refused_while_one_edits_and_may_edit_after(root):
    proc = _holder(root)
    try:
        with pytest.raises(AnnotationError, match=f"another program: process {proc.pid}"):
            AnnotationStore.open(root)
        with pytest.raises(AnnotationError, match="being edited"):
            AnnotationStore.create(root, None, SHAPE, overwrite=True)  # nor replaced
        with pytest.raises(AnnotationError, match="being edited"):
            remove_store(root)  # nor deleted
        assert AnnotationStore.exists(root)
    finally:
        proc.communicate("\n", timeout=60)  # the holder exits normally: lock released
    assert proc.returncode == 0
    assert not lock_path(root).exists()
    with AnnotationStore.open(root) as store:
        store.apply(0, 0, np.ones((10, 10), np.uint8))
        assert lock_path(root).exists()
    assert not lock_path(root).exists()


def test_the_lock_of_a_killed_program_is_taken_over(root):
    proc = _holder(root)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert json.loads(lock_path(root).read_text())["pid"] == proc.pid  # left behind
    store = AnnotationStore.open(root)
    assert json.loads(lock_path(root).read_text())["pid"] == os.getpid()
    store.close()


def test_the_lock_of_a_killed_program_not_yet_collected_is_taken_over(root):
    # a zombie: killed, but its parent has not collected it (a dask worker killed under a
    # nanny, in a container without an init process): its pid still exists
    proc = _holder(root)
    proc.send_signal(signal.SIGKILL)
    deadline = time.monotonic() + 30
    while _state(proc.pid) != "Z" and time.monotonic() < deadline:
        time.sleep(0.01)
    assert _state(proc.pid) == "Z"
    store = AnnotationStore.open(root)
    assert json.loads(lock_path(root).read_text())["pid"] == os.getpid()
    store.close()
    proc.wait(timeout=60)


def _state(pid):
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def test_one_process_may_open_a_store_twice(root):
    first = AnnotationStore.open(root)
    second = AnnotationStore.open(root)  # the GUI reopening what it holds
    first.close()
    first.close()  # once only
    assert lock_path(root).exists()  # the second still holds it
    second.apply(0, 0, np.ones((4, 4), np.uint8))
    second.close()
    assert not lock_path(root).exists()


def test_a_lock_from_another_machine_names_the_file_to_delete(root):
    other = {"pid": 1, "host": "scanner-room-pc", "program": "napari", "since": "2026-11-27"}
    lock_path(root).write_text(json.dumps(other))
    with pytest.raises(AnnotationError) as info:
        AnnotationStore.open(root)
    message = str(info.value)
    assert "scanner-room-pc" in message
    assert str(lock_path(root)) in message  # delete it once that program is closed
    lock_path(root).unlink()
    AnnotationStore.open(root).close()


def test_an_output_lock_is_exclusive_even_within_one_process(tmp_path):
    """The same lock, generalised: an output folder's (``OUTPUT``) is not shared by two
    tasks of one process, is refused with a WriterError naming its file, and is released."""
    from napari_msunet.errors import WriterError
    from napari_msunet.io import _store_lock

    folder, lock = tmp_path / "out", tmp_path / "out" / "prediction.lock"
    _store_lock.acquire(folder, path=lock, kind=_store_lock.OUTPUT)
    try:
        assert json.loads(lock.read_text())["pid"] == os.getpid()
        with pytest.raises(WriterError, match="another task of this program") as info:
            _store_lock.acquire(folder, path=lock, kind=_store_lock.OUTPUT)
        assert str(lock) in str(info.value)
    finally:
        _store_lock.release(folder, path=lock)
    assert not lock.exists()
    other = {"pid": 1, "host": "render-node-7", "program": "msunet", "since": "2026-11-27"}
    lock.write_text(json.dumps(other))
    with pytest.raises(WriterError, match="being written by another program: process 1"):
        _store_lock.acquire(folder, path=lock, kind=_store_lock.OUTPUT)
