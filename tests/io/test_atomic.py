"""The one atomic write: a temporary sibling, flushed and renamed, or nothing at all."""

from __future__ import annotations

import pytest

from napari_msunet._atomic import atomic_path, atomic_write_bytes
from napari_msunet.errors import WriterError


def test_atomic_write_bytes_publishes_and_refuses_to_replace(tmp_path):
    out = tmp_path / "sub" / "a.json"
    assert atomic_write_bytes(out, b"one") == out
    with pytest.raises(WriterError, match="already exists"):
        atomic_write_bytes(out, b"two")
    atomic_write_bytes(out, memoryview(b"two"), overwrite=True)
    assert out.read_bytes() == b"two"
    assert [p.name for p in out.parent.iterdir()] == ["a.json"]


def test_atomic_path_publishes_what_the_block_wrote(tmp_path):
    out = tmp_path / "slide.tif"
    with atomic_path(out) as tmp:
        assert tmp.parent == tmp_path
        assert tmp.name != out.name
        tmp.write_bytes(b"tiles")
        assert not out.exists()  # nothing under the final name before the block ends
    assert out.read_bytes() == b"tiles"
    assert [p.name for p in tmp_path.iterdir()] == ["slide.tif"]


def test_atomic_path_leaves_nothing_when_the_block_fails(tmp_path):
    out = tmp_path / "slide.tif"
    out.write_bytes(b"old")

    def fail():
        with atomic_path(out, overwrite=True) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        fail()
    assert out.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["slide.tif"]


def test_atomic_path_in_a_closed_generator_leaves_nothing(tmp_path):
    def write():
        with atomic_path(tmp_path / "x.bin") as tmp:
            tmp.write_bytes(b"part")
            yield
            tmp.write_bytes(b"part and the rest")

    gen = write()
    next(gen)
    gen.close()
    assert list(tmp_path.iterdir()) == []


def test_atomic_path_refuses_a_folder(tmp_path):
    with pytest.raises(WriterError, match="is a folder"), atomic_path(tmp_path):
        pass
