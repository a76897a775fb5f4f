"""The I/O layer's long work under the one contract: stopped or closed, nothing is left behind.

Each generator (the OME-Zarr and OME-TIFF writers, the GeoJSON export, the annotation store's
creation) is stopped part-way with a ``threading.Event``, with a callable, and by ``close()``
(what a napari worker's quit and the CLI's Ctrl-C do). Each must yield only
:class:`~napari_msunet.progress.Progress` records, end without an error (a stop returns its
"stopped" value) and leave the output folder empty: no output, no ``.partial``, no temporary
file or folder, no lock.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

from napari_msunet.io.annotation_store import AnnotationStore
from napari_msunet.io.ome_tiff import iter_write_ome_tiff
from napari_msunet.io.ome_zarr import iter_write_ome_zarr
from napari_msunet.io.vectorise import iter_export_mask
from napari_msunet.progress import Progress, run_to_end

SIDE = 512


def _labels() -> np.ndarray:
    """Rectangles of three labels: many blocks, few regions (vectorising noise is slow)."""
    yy, xx = np.mgrid[:SIDE, :SIDE]
    return ((yy // 37 + xx // 53) % 3).astype(np.uint8)


class _GatedSource:
    """An array whose reads past the first few wait for ``gate``: a writer working in a
    thread (the OME-TIFF one) is then surely mid-way when the test stops it."""

    def __init__(self, data: np.ndarray, gate: threading.Event) -> None:
        self.data, self.shape, self.dtype, self.ndim = data, data.shape, data.dtype, data.ndim
        self.gate, self.reads = gate, 0

    def __getitem__(self, index):
        self.reads += 1
        if self.reads > 8:
            self.gate.wait(10)
        return self.data[index]


def _zarr(out, stop, gate):
    return iter_write_ome_zarr(out / "x.ome.zarr", _labels(), chunk=64, mpp=1.0, stop=stop)


def _tiff(out, stop, gate):
    source = _GatedSource(_labels(), gate)
    return iter_write_ome_tiff(out / "x.ome.tif", source, tile=64, stop=stop)


def _geojson(out, stop, gate):
    return iter_export_mask(_labels(), out / "x.geojson", {"a": 1, "b": 2}, block=64, stop=stop)


def _store(out, stop, gate):
    # 4096² at a 256-pixel chunk: four 2048-pixel windows, then a pyramid
    return AnnotationStore.iter_create(out / "annotation", None, (4096, 4096), chunk=256, stop=stop)


def _drain(gen):
    """Run ``gen`` to its end: its return value and the records it yielded."""
    records = []
    while True:
        try:
            records.append(next(gen))
        except StopIteration as end:
            return end.value, records


GENERATORS = {"ome-zarr": _zarr, "ome-tiff": _tiff, "geojson": _geojson, "store": _store}


@pytest.mark.parametrize("how", ["event", "callable", "close"])
@pytest.mark.parametrize("name", list(GENERATORS))
def test_stopped_or_closed_generator_leaves_nothing(tmp_path, name, how):
    out = tmp_path / "out"
    out.mkdir()
    event, flag, gate = threading.Event(), [], threading.Event()
    stop = {"event": event, "callable": lambda: bool(flag), "close": None}[how]
    gen = GENERATORS[name](out, stop, gate)
    records = [next(gen), next(gen)]
    assert records[-1].done < records[-1].total, "stopped only once finished: not a mid-way stop"
    gate.set()
    if how == "close":
        gen.close()
    else:
        event.set()
        flag.append(True)
        result, rest = _drain(gen)  # a stopped generator returns at its next check
        assert result in (None, False)
        records += rest
    assert all(type(r) is Progress for r in records)
    assert sorted(p.name for p in out.iterdir()) == []


@pytest.mark.parametrize("name", list(GENERATORS))
def test_unstopped_generator_reports_and_publishes(tmp_path, name):
    out = tmp_path / "out"
    out.mkdir()
    gate = threading.Event()
    gate.set()
    result, records = _drain(GENERATORS[name](out, threading.Event(), gate))
    assert result is not None
    assert all(type(r) is Progress for r in records)
    for stage in {r.stage for r in records}:
        last = [r for r in records if r.stage == stage][-1]
        assert last.done == last.total > 0, stage  # each stage's bar reaches its end
    if name == "store":
        result.close()
    assert [p.name for p in out.iterdir()] == [result.root.name if name == "store" else result.name]


def test_stop_set_before_the_end_publishes_nothing(tmp_path):
    """A stop that arrives after the last block but before the rename still wins."""
    stop = threading.Event()
    gen = iter_write_ome_zarr(tmp_path / "x.ome.zarr", _labels(), chunk=512, stop=stop)
    assert next(gen).done == 0
    stop.set()
    assert run_to_end(gen) is None
    assert list(tmp_path.iterdir()) == []
