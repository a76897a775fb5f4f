"""Fine-tuning on corrected regions: new version, parent recorded, only corrections count."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from napari_msunet.errors import ConfigError, ModelFileError
from napari_msunet.io.synthetic import SyntheticSlideSpec, write_synthetic_slide
from napari_msunet.models import build_model
from napari_msunet.models.checkpoint import ModelHeader, load_model, save_model
from napari_msunet.training.finetune import iter_finetune, next_version_path
from napari_msunet.training.slide_dataset import SlidePatchDataset, SlideSpec, patch_positions

NAMES = ("Background", "Germinal centre", "Sinus")


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    root = tmp_path_factory.mktemp("ft")
    spec = SyntheticSlideSpec(1536, 1536, seed=4, mpp=1.0, n_regions=6, region_size=(0.06, 0.1))
    slide = write_synthetic_slide(root / "s.svs", spec, "svs")
    spec.write_geojson(root / "s.geojson")
    regions = {
        "type": "FeatureCollection",
        "features": [
            {
                "type": "Feature",
                "geometry": {
                    "type": "Polygon",
                    "coordinates": [
                        [[500, 500], [1000, 500], [1000, 1000], [500, 1000], [500, 500]]
                    ],
                },
                "properties": {"objectType": "annotation", "classification": {"name": "Corrected"}},
            }
        ],
    }
    (root / "regions.geojson").write_text(json.dumps(regions))
    torch.manual_seed(0)
    model = build_model("msunet", n_classes=3, widths=(4, 8))
    header = ModelHeader.for_model(
        model,
        class_names=NAMES,
        input_um_per_px=4.0,
        norm_mean=(0.5,) * 3,
        norm_std=(0.25,) * 3,
        tile_size=32,
    )
    parent = save_model(root / "model.safetensors", model, header)
    return root, slide, parent, spec


def run(gen):
    try:
        while True:
            next(gen)
    except StopIteration as stop:
        return stop.value


def test_labels_outside_corrected_regions_are_ignored(case):
    root, slide, _, spec = case
    s = SlideSpec(slide, root / "s.geojson", regions=root / "regions.geojson")
    pos = patch_positions(s, 4.0, 32, class_names=NAMES)
    ds = SlidePatchDataset(s, 4.0, [(0, 0), (150, 150)], 32, 32, NAMES)
    far, inside = ds[0]["mask"], ds[1]["mask"]
    assert (far == 255).all()  # (0, 0) is far from the corrected box [500, 1000) px
    assert (inside != 255).all()  # working px 150 = level-0 600: inside the box
    truth = spec.mask(4.0)[150:182, 150:182]
    np.testing.assert_array_equal(inside.numpy(), truth)
    assert len(pos) > 0


def test_finetune_saves_a_new_version_with_parent(case):
    root, slide, parent, _ = case
    specs = [SlideSpec(slide, root / "s.geojson", regions=root / "regions.geojson")]
    result = run(iter_finetune(parent, specs, steps=4, batch_size=2, device="cpu"))
    assert result.model == root / "model-ft1.safetensors"
    assert result.steps == 4
    model, header = load_model(result.model)
    assert header.training["kind"] == "fine-tune"
    assert header.training["parent"]["path"] == str(parent)
    assert len(header.training["parent_sha256"]) == 64
    assert header.training["config"]["loss"]["bootstrap_unannotated"] is True
    assert header.training["config"]["loss"]["bootstrap_after"] == 0
    before, _ = load_model(parent)
    changed = any(
        not torch.equal(a, b)
        for a, b in zip(before.state_dict().values(), model.state_dict().values(), strict=True)
    )
    assert changed
    # a second fine-tune of the same parent gets the next free name; nothing is overwritten
    assert next_version_path(parent) == root / "model-ft2.safetensors"
    assert next_version_path(result.model) == root / "model-ft2.safetensors"
    with pytest.raises(ConfigError, match="never overwritten"):
        run(iter_finetune(parent, specs, steps=1, out=result.model))


def test_finetune_bad_inputs(case, tmp_path):
    root, slide, parent, _ = case
    bogus = tmp_path / "model.safetensors"
    bogus.write_bytes(b"not a model")
    with pytest.raises(ModelFileError):
        run(iter_finetune(bogus, [SlideSpec(slide, root / "s.geojson")], steps=1))
    wrong = tmp_path / "wrong.geojson"
    wrong.write_text(
        json.dumps(
            {
                "type": "Feature",
                "geometry": {
                    "type": "Polygon",
                    "coordinates": [[[0, 0], [99, 0], [99, 99], [0, 0]]],
                },
                "properties": {"classification": {"name": "Tumour"}},
            }
        )
    )
    from napari_msunet.errors import AnnotationError

    spec = SlideSpec(slide, wrong)
    with pytest.raises(AnnotationError, match="Tumour"):
        run(iter_finetune(parent, [spec], steps=1, device="cpu", classes="keep"))


def _specs(root, slide):
    return [SlideSpec(slide, root / "s.geojson", regions=root / "regions.geojson")]


def test_stopped_before_the_first_step_writes_no_version(case, tmp_path):
    """A version that trained zero steps would copy its parent: the core writes none."""
    root, slide, parent, _ = case
    out = tmp_path / "model-ft1.safetensors"
    gen = iter_finetune(
        parent, _specs(root, slide), steps=4, device="cpu", out=out, stop=lambda: True
    )
    with pytest.raises(StopIteration) as done:  # it returns without a single record
        next(gen)
    result = done.value.value
    assert result.model is None
    assert result.run_dir is None
    assert result.steps == 0
    assert result.stopped
    assert list(tmp_path.iterdir()) == []  # no model file, no run folder


def test_stop_after_some_steps_saves_them_as_a_version(case, tmp_path):
    import threading

    from napari_msunet.progress import Progress
    from napari_msunet.training.trainer import TrainStep

    root, slide, parent, _ = case
    out = tmp_path / "model-ft1.safetensors"
    stop = threading.Event()
    gen = iter_finetune(
        parent, _specs(root, slide), steps=50, batch_size=2, device="cpu", out=out, stop=stop
    )
    first = next(gen)
    assert isinstance(first, TrainStep)
    assert isinstance(first, Progress)
    assert (first.done, first.total, first.stage) == (1, 50, "train")
    stop.set()
    result = run(gen)
    assert result.stopped
    assert result.steps == 1
    assert result.model == out
    assert load_model(out)[1].training["steps"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model-ft1.run", "model-ft1.safetensors"]


def test_close_writes_no_version_and_a_rerun_resumes(case, tmp_path):
    """Ctrl-C: no model version and nothing half written; the run folder resumes."""
    root, slide, parent, _ = case
    out = tmp_path / "model-ft1.safetensors"
    settings = dict(steps=3, batch_size=2, device="cpu", out=out)
    gen = iter_finetune(parent, _specs(root, slide), **settings)
    assert next(gen).done == 1
    gen.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model-ft1.run"]
    assert sorted(p.name for p in (tmp_path / "model-ft1.run").iterdir()) == [
        "history.jsonl",
        "last.safetensors",
        "last.state.safetensors",
    ]
    steps = []
    gen = iter_finetune(parent, _specs(root, slide), **settings)
    try:
        while True:
            steps.append(next(gen).done)
    except StopIteration as done:
        result = done.value
    assert steps[:2] == [2, 3]  # continues at its step
    assert result.steps == 3
    assert not result.stopped
    assert load_model(out)[1].training["steps"] == 3


def test_a_plain_rerun_finishes_an_interrupted_version(case, tmp_path):
    """Issue 12 item 15: an interrupted fine-tune left ``-ft1.run`` behind and the rerun
    started over as ``-ft2``; now the same command finishes ``-ft1`` at its step, and other
    settings start a new version, leaving the interrupted one alone."""
    import shutil

    root, slide, parent_file, _ = case
    parent = shutil.copy(parent_file, tmp_path / "model.safetensors")
    settings = dict(steps=3, batch_size=2, device="cpu")
    gen = iter_finetune(parent, _specs(root, slide), **settings)
    next(gen)
    gen.close()  # Ctrl-C after one step
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model-ft1.run", "model.safetensors"]

    other = iter_finetune(parent, _specs(root, slide), **{**settings, "steps": 2})
    assert run(other).model == tmp_path / "model-ft2.safetensors"  # other settings: new
    gen = iter_finetune(parent, _specs(root, slide), **settings)
    steps = []
    try:
        while True:
            steps.append(next(gen).done)
    except StopIteration as done:
        result = done.value
    assert steps[0] == 2  # resumed at its step
    assert result.model == tmp_path / "model-ft1.safetensors"
    assert result.steps == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "model-ft1.run",
        "model-ft1.safetensors",
        "model-ft2.run",
        "model-ft2.safetensors",
        "model.safetensors",
    ]
