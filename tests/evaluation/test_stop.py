"""The long-work contract for evaluate, compare and find-missing: stop and close() mid-way.

Each generator is driven past its first window, then stopped with a ``threading.Event``, with
a callable, or closed with ``gen.close()``. Each must return cleanly (evaluate and compare
return ``None``, the search returns what it found so far), yield only
:class:`napari_msunet.progress.Progress` records, leave no file behind (no report, no overlay,
no temporary sibling) and no reading thread running.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Generator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import shapely

from napari_msunet.evaluation import LabelPyramid, evaluate, iter_compare, iter_evaluate
from napari_msunet.evaluation.missing import iter_find_missing
from napari_msunet.io.annotations import Annotation, AnnotationSet
from napari_msunet.io.geojson import write_geojson
from napari_msunet.io.ome_zarr import write_ome_zarr
from napari_msunet.progress import Progress

# wider than one 2048-px counting window: three windows per pass
H, W = 256, 4352
NAMES = ["background", "GC"]


def _labels() -> np.ndarray:
    a = np.zeros((H, W), np.uint8)
    a[50:150, 100:4000] = 1
    return a


def _evaluation_inputs(tmp_path: Path) -> tuple[Path, Path]:
    pred = write_ome_zarr(
        tmp_path / "pred.ome.zarr", _labels(), kind="labels", chunk=128, class_names=NAMES
    )
    truth = write_geojson(
        AnnotationSet.from_annotations([Annotation(shapely.box(120, 60, 3900, 160), "GC")]),
        tmp_path / "truth.geojson",
    )
    return pred, truth


def _evaluate(tmp_path: Path, stop: Any) -> Generator[Progress, None, Any]:
    pred, truth = _evaluation_inputs(tmp_path)
    return iter_evaluate(pred, truth, out_dir=tmp_path / "out", stop=stop)


def _compare(tmp_path: Path, stop: Any) -> Generator[Progress, None, Any]:
    truth = _labels()
    truth[60:160] = truth[50:150].copy()
    pred = LabelPyramid([_labels()], 1.0, {1: "GC"}, "pred")
    return iter_compare(pred, LabelPyramid([truth], 1.0, {1: "GC"}, "truth"), stop=stop)


def _find_missing(tmp_path: Path, stop: Any) -> Generator[Progress, None, Any]:
    fg = np.full((H, W), 25, np.uint8)
    fg[50:150, 100:4000] = 250  # confident, and the annotation is empty
    path = write_ome_zarr(
        tmp_path / "probabilities.ome.zarr",
        np.stack([255 - fg, fg]),
        mpp=1.0,
        chunk=128,
        class_names=NAMES,
    )
    empty = np.zeros((H, W), np.uint8)
    return iter_find_missing(path, empty, level=0, window=1024, stop=stop)


OPERATIONS = {
    # name: (make the generator, stage of its records, what a stopped one returns)
    "evaluate": (_evaluate, "count", lambda value: value is None),
    "compare": (_compare, "compare", lambda value: value is None),
    "find_missing": (_find_missing, "search", lambda value: isinstance(value, list)),
}


def _drain(gen: Generator[Progress, None, Any], records: list[Progress]) -> Any:
    """Run ``gen`` to its end, keeping its records; return its value."""
    while True:
        try:
            records.append(next(gen))
        except StopIteration as finished:
            return finished.value


def _files(root: Path) -> set[Path]:
    return set(root.rglob("*"))


def _reader_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name.startswith("ThreadPoolExecutor")}


@pytest.mark.parametrize("how", ["event", "callable", "close"])
@pytest.mark.parametrize("operation", sorted(OPERATIONS))
def test_stopped_or_closed_mid_way_returns_cleanly_and_leaves_nothing(tmp_path, operation, how):
    make, stage, stopped_value = OPERATIONS[operation]
    event = threading.Event()
    flag = {"stop": False}
    stop: threading.Event | Callable[[], bool] | None = (
        event if how == "event" else (lambda: flag["stop"]) if how == "callable" else None
    )
    gen = make(tmp_path, stop)
    inputs, threads_before = _files(tmp_path), _reader_threads()
    first = next(gen)
    records = [first]
    assert first.done < first.total  # more than one window: it really stops mid-way

    if how == "close":
        gen.close()
    else:
        event.set()
        flag["stop"] = True
        value = _drain(gen, records)
        assert stopped_value(value)
    assert all(type(r) is Progress and r.stage == stage for r in records)
    assert records[-1].done < records[-1].total
    assert _files(tmp_path) == inputs  # no report, no overlay, no temporary file
    assert not (tmp_path / "out").exists()
    assert not _reader_threads() - threads_before  # the read-ahead pool is shut down


@pytest.mark.parametrize("operation", sorted(OPERATIONS))
def test_records_are_the_one_progress_type_with_a_stage(tmp_path, operation):
    make, stage, _ = OPERATIONS[operation]
    gen = make(tmp_path, None)
    records = []
    assert _drain(gen, records) is not None
    assert [r.done for r in records] == list(range(1, len(records) + 1))
    assert all(type(r) is Progress and r.stage == stage for r in records)
    assert records[-1].done == records[-1].total > 1
    assert all(r.elapsed_s >= 0 for r in records)


def test_evaluate_stopped_before_it_starts_writes_nothing(tmp_path):
    stop = threading.Event()
    stop.set()
    gen = _evaluate(tmp_path, stop)
    with pytest.raises(StopIteration) as finished:
        next(gen)
    assert finished.value.value is None
    assert not (tmp_path / "out").exists()


def test_eager_evaluate_takes_the_same_stop(tmp_path):
    pred, truth = _evaluation_inputs(tmp_path)
    assert evaluate(pred, truth, out_dir=tmp_path / "out", stop=lambda: True) is None
    assert not (tmp_path / "out").exists()
    result = evaluate(pred, truth, out_dir=tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "overlay.png",
        "report.csv",
        "report.json",
    ]
    assert result.metrics["GC"].tp > 0


def test_a_second_evaluation_into_a_folder_in_use_is_refused(tmp_path):
    """Two evaluations writing one report folder would mix their files: the second is refused
    at start, naming the holder (issue 12: every command that writes holds its folder)."""
    from napari_msunet.errors import WriterError

    pred, truth = _evaluation_inputs(tmp_path)
    first = iter_evaluate(pred, truth, out_dir=tmp_path / "report")
    next(first)  # counting: the folder is held
    assert (tmp_path / "report" / "evaluation.lock").is_file()
    with pytest.raises(WriterError, match="another task of this program") as refused:
        evaluate(pred, truth, out_dir=tmp_path / "report")
    assert "evaluation.lock" in str(refused.value)
    first.close()
    assert not (tmp_path / "report").exists()  # made by the closed run, left empty: removed
    result = evaluate(pred, truth, out_dir=tmp_path / "report")
    assert result is not None
    assert sorted(p.name for p in (tmp_path / "report").iterdir()) == [
        "overlay.png",
        "report.csv",
        "report.json",
    ]
