"""The long-work contract (``napari_msunet.progress``), checked on every core generator at once.

Every long operation of the core is driven past its first record and then stopped with a
``threading.Event``, stopped with a callable, or closed with ``gen.close()`` (what a napari
worker's quit and the CLI's Ctrl-C do). Each must

- end without an error (a stop makes it *return*, a close makes it exit),
- yield nothing but :class:`~napari_msunet.progress.Progress` records (training's records are
  subclasses of it), each with a stage,
- leave no partial output: none of its final outputs exists unless it is complete, and no
  temporary file is left anywhere under the folder. Work meant to be resumed stays under its
  documented names (a prediction's ``.partial`` stores and run record, a training run's state).

The areas' own tests check each generator's finer semantics (what a stopped one returns, that a
rerun resumes, that the read-ahead threads end); this file is the one place that shows the rule
holds for all of them.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import shapely
import torch
from PIL import Image

from napari_msunet.demo import iter_demo
from napari_msunet.evaluation import LabelPyramid, iter_compare, iter_evaluate
from napari_msunet.evaluation.missing import iter_find_missing
from napari_msunet.inference import InferenceConfig, iter_predict_array, iter_predict_slide
from napari_msunet.io.annotation_store import AnnotationStore
from napari_msunet.io.annotations import Annotation, AnnotationSet
from napari_msunet.io.geojson import write_geojson
from napari_msunet.io.ome_tiff import iter_write_ome_tiff
from napari_msunet.io.ome_zarr import iter_write_ome_zarr, write_ome_zarr
from napari_msunet.io.slide import open_slide
from napari_msunet.io.synthetic import SyntheticSlideSpec, write_synthetic_slide
from napari_msunet.io.vectorise import iter_export_mask
from napari_msunet.models import ModelHeader, build_model
from napari_msunet.models.checkpoint import save_model
from napari_msunet.progress import Progress
from napari_msunet.training.config import TrainConfig
from napari_msunet.training.finetune import iter_finetune
from napari_msunet.training.folder_dataset import FolderDataset, find_pairs
from napari_msunet.training.slide_dataset import SlideSpec
from napari_msunet.training.trainer import iter_train

NAMES = ("Background", "Germinal centre", "Sinus")  # the synthetic slide's classes


@dataclass(frozen=True)
class Inputs:
    """Small real inputs shared by every case (made once per session)."""

    root: Path
    slide: Path
    geojson: Path
    model: Path
    header: ModelHeader
    labels: np.ndarray
    pred: Path
    probabilities: Path
    pairs: list[Any]


def _labels(h: int = 256, w: int = 4352) -> np.ndarray:
    """A long strip: wider than one 2048-px counting window, so counting takes 3 windows."""
    a = np.zeros((h, w), np.uint8)
    a[50:150, 100:4000] = 1
    a[180:230, 300:700] = 1
    return a


def _pairs(root: Path) -> list[Any]:
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        mask = (rng.random((64, 64)) > 0.5).astype(np.uint8)
        rgb = np.where(mask[..., None] == 1, [120, 60, 160], [230, 170, 200]).astype(np.uint8)
        Image.fromarray(rgb).save(root / "images" / f"b{i}.png")
        Image.fromarray(mask).save(root / "masks" / f"b{i}.png")
    return find_pairs(root)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Inputs:
    root = tmp_path_factory.mktemp("long-work")
    spec = SyntheticSlideSpec(1024, 1024, seed=4, mpp=1.0, n_regions=6, region_size=(0.06, 0.1))
    slide = write_synthetic_slide(root / "slide.svs", spec, "svs")
    geojson = spec.write_geojson(root / "slide.geojson")
    torch.manual_seed(0)
    net = build_model("msunet", preset="lite", n_classes=3, widths=(4, 8, 8, 16, 16)).eval()
    header = ModelHeader.for_model(
        net,
        class_names=NAMES,
        input_um_per_px=1.0,
        norm_mean=(0.5,) * 3,
        norm_std=(0.25,) * 3,
        tile_size=64,
    )
    model = save_model(root / "model.safetensors", net, header)
    labels = _labels()
    pred = write_ome_zarr(
        root / "pred.ome.zarr", labels, kind="labels", chunk=128, class_names=list(NAMES[:2])
    )
    fg = np.where(labels == 1, 250, 25).astype(np.uint8)
    probabilities = write_ome_zarr(
        root / "probabilities.ome.zarr",
        np.stack([255 - fg, fg]),
        mpp=1.0,
        chunk=128,
        class_names=list(NAMES[:2]),
    )
    pairs = _pairs(root / "pairs")
    return Inputs(root, slide, geojson, model, header, labels, pred, probabilities, pairs)


class _Gated:
    """An array whose reads past the first few wait for ``gate``: a writer that works in a
    thread of its own (the OME-TIFF one) is then surely mid-way when the test stops it."""

    def __init__(self, data: np.ndarray, gate: threading.Event) -> None:
        self.data, self.shape, self.dtype, self.ndim = data, data.shape, data.dtype, data.ndim
        self.gate, self.reads = gate, 0

    def __getitem__(self, index):
        self.reads += 1
        if self.reads > 8:
            self.gate.wait(10)
        return self.data[index]


def _net(inputs: Inputs):
    from napari_msunet.models.checkpoint import load_model

    return load_model(inputs.model)


# Each case: (make(inputs, out, stop, gate) -> generator, final outputs under ``out`` that must
# not exist after a stop or close, names under ``out`` allowed to stay for a resume)
Make = Callable[[Inputs, Path, Any, threading.Event], Generator[Progress, None, Any]]


def _predict_slide(i: Inputs, out: Path, stop, gate):
    net, header = _net(i)
    slide = open_slide(i.slide)
    config = InferenceConfig(tile=128, margin=64, device="cpu", chunk=256)
    return iter_predict_slide(slide, net, header, config, out / "prediction", stop=stop)


def _predict_array(i: Inputs, out: Path, stop, gate):
    net, header = _net(i)
    image = np.asarray(open_slide(i.slide).read_region(0, 0, 0, 512, 512))
    config = InferenceConfig(tile=128, margin=64, device="cpu")
    return iter_predict_array(image, net, header, config, stop=stop)


def _evaluate(i: Inputs, out: Path, stop, gate):
    truth = write_geojson(
        AnnotationSet.from_annotations(
            [Annotation(shapely.box(120, 60, 3900, 160), "Germinal centre")]
        ),
        out.parent / "truth.geojson",
    )
    return iter_evaluate(i.pred, truth, out_dir=out / "evaluation", stop=stop)


def _compare(i: Inputs, out: Path, stop, gate):
    truth = i.labels.copy()
    truth[60:160] = truth[50:150].copy()
    pred = LabelPyramid([i.labels], 1.0, {1: "Germinal centre"}, "pred")
    return iter_compare(
        pred, LabelPyramid([truth], 1.0, {1: "Germinal centre"}, "truth"), stop=stop
    )


def _find_missing(i: Inputs, out: Path, stop, gate):
    empty = np.zeros_like(i.labels)
    return iter_find_missing(i.probabilities, empty, level=0, window=1024, stop=stop)


def _store(i: Inputs, out: Path, stop, gate):
    # 4096² at a 256-pixel chunk: four 2048-pixel windows, then a pyramid
    return AnnotationStore.iter_create(out / "annotation", None, (4096, 4096), chunk=256, stop=stop)


def _write_ome_zarr(i: Inputs, out: Path, stop, gate):
    return iter_write_ome_zarr(out / "x.ome.zarr", i.labels[:, :1024], chunk=64, stop=stop)


def _write_ome_tiff(i: Inputs, out: Path, stop, gate):
    source = _Gated(i.labels[:, :1024], gate)
    return iter_write_ome_tiff(out / "x.ome.tif", source, tile=64, stop=stop)


def _export_mask(i: Inputs, out: Path, stop, gate):
    return iter_export_mask(
        i.labels[:, :1024], out / "x.geojson", {"Germinal centre": 1}, block=64, stop=stop
    )


def _train(i: Inputs, out: Path, stop, gate):
    cfg = TrainConfig(
        model_overrides={"widths": [4, 8]},
        patch=32,
        batch_size=2,
        epochs=1,
        steps_per_epoch=6,
        class_names=NAMES[:2],
        device="cpu",
    )
    return iter_train(cfg, FolderDataset(i.pairs, None), None, out / "run", stop=stop)


def _finetune(i: Inputs, out: Path, stop, gate):
    specs = [SlideSpec(i.slide, i.geojson)]
    target = out / "model-ft1.safetensors"
    return iter_finetune(i.model, specs, steps=6, batch_size=2, device="cpu", out=target, stop=stop)


def _demo(i: Inputs, out: Path, stop, gate):
    return iter_demo(out / "demo", model=i.model, device="cpu", stop=stop)


CASES: dict[str, tuple[Make, tuple[str, ...], tuple[str, ...]]] = {
    "predict_slide": (
        _predict_slide,
        (
            "prediction/labels.ome.zarr",
            "prediction/probabilities.ome.zarr",
            "prediction/prediction.json",
        ),
        (
            "prediction/labels.ome.zarr.partial",
            "prediction/probabilities.ome.zarr.partial",
            "prediction/prediction.run.json",
        ),
    ),
    "predict_array": (_predict_array, (), ()),
    "evaluate": (_evaluate, ("evaluation",), ()),
    "compare": (_compare, (), ()),
    "find_missing": (_find_missing, (), ()),
    "store": (_store, ("annotation",), ()),
    "write_ome_zarr": (_write_ome_zarr, ("x.ome.zarr",), ()),
    "write_ome_tiff": (_write_ome_tiff, ("x.ome.tif",), ()),
    "export_mask": (_export_mask, ("x.geojson",), ()),
    # a stopped training run keeps its checkpoint and state to resume from; a model file is
    # complete or absent (atomic), which the temporary-file check below covers
    "train": (_train, (), ("run",)),
    # a fine-tune stopped after some steps saves them as a version (documented); closed, it
    # saves none and keeps its run folder to resume
    "finetune": (_finetune, (), ("model-ft1.safetensors", "model-ft1.run")),
    # the demo's sample slide is complete when it exists; the prediction inside is resumable
    "demo": (_demo, ("demo/evaluation",), ("demo",)),
}


def _temporary(root: Path) -> list[Path]:
    """Files or folders under ``root`` named as temporary by any writer of the project."""
    return [
        p
        for p in root.rglob("*")
        if p.name.endswith((".tmp", ".creating")) or ".tmp." in p.name or ".init-" in p.name
    ]


@pytest.mark.parametrize("how", ["event", "callable", "close"])
@pytest.mark.parametrize("name", list(CASES))
def test_every_generator_stops_cleanly_and_leaves_nothing_partial(inputs, tmp_path, name, how):
    make, finals, resumable = CASES[name]
    out = tmp_path / "out"
    out.mkdir()
    event, flag, gate = threading.Event(), [], threading.Event()
    stop = {"event": event, "callable": lambda: bool(flag), "close": None}[how]
    gen = make(inputs, out, stop, gate)
    records = [next(gen)]
    assert records[0].done < records[0].total, "one record was all: not a mid-way stop"
    try:
        if how == "close":
            gen.close()
        else:
            event.set()
            flag.append(True)
            while True:
                try:
                    records.append(next(gen))
                except StopIteration:
                    break
    finally:
        gate.set()  # a writer thread waiting on the gate ends at its next check
    assert all(isinstance(r, Progress) and r.stage for r in records), {
        type(r).__name__ for r in records
    }
    last = records[-1]
    assert not (last.stage == records[0].stage and last.done == last.total > 1), (
        "ran to the end: the stop came too late to test anything"
    )
    left = [f for f in finals if (out / f).exists()]
    assert not left, f"{name}: final outputs exist after a stop/close: {left}"
    assert not _temporary(tmp_path), _temporary(tmp_path)
    stray = {p.name for p in out.iterdir()} - {Path(r).parts[0] for r in resumable}
    assert not stray, f"{name}: left behind {sorted(stray)}"
