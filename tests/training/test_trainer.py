"""The trainer generator: learning, validation, checkpoints, cancel and resume."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch
from PIL import Image

from napari_msunet.errors import ConfigError
from napari_msunet.models.checkpoint import load_model
from napari_msunet.progress import Progress
from napari_msunet.training.augment import AugmentConfig, context_size
from napari_msunet.training.config import TrainConfig
from napari_msunet.training.folder_dataset import FolderDataset, find_pairs
from napari_msunet.training.losses import LossConfig
from napari_msunet.training.trainer import EpochEnd, TrainStep, iter_train

TINY = {"widths": [4, 8]}


def make_blobs(root, n=6, size=96, seed=0):
    """Purple discs on pink: a task a tiny network learns in a few dozen steps."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    for i in range(n):
        mask = np.zeros((size, size), np.uint8)
        for _ in range(3):
            cy, cx, r = [*rng.uniform(10, size - 10, 2).tolist(), rng.uniform(8, 18)]
            mask[(yy - cy) ** 2 + (xx - cx) ** 2 < r**2] = 1
        rgb = np.where(mask[..., None] == 1, [120, 60, 160], [230, 170, 200])
        rgb = np.clip(rgb + rng.normal(0, 8, rgb.shape), 0, 255).astype(np.uint8)
        Image.fromarray(rgb).save(root / "images" / f"b{i}.png")
        Image.fromarray(mask).save(root / "masks" / f"b{i}.png")
    return find_pairs(root)


def config(**kw):
    base = dict(
        model_overrides=TINY,
        patch=32,
        batch_size=4,
        epochs=2,
        steps_per_epoch=4,
        lr=1e-2,
        class_names=("Background", "Blob"),
        augment=AugmentConfig(brightness=0.05, contrast=0.05, saturation=0.05, hue=0.02),
        device="cpu",
    )
    base.update(kw)
    return TrainConfig(**base)


def run(gen):
    records = []
    try:
        while True:
            records.append(next(gen))
    except StopIteration as stop:
        return records, stop.value


def test_trains_validates_and_checkpoints(tmp_path):
    pairs = make_blobs(tmp_path / "data")
    cfg = config(epochs=3, steps_per_epoch=10, loss=LossConfig(bootstrap_after=1))
    train_set = FolderDataset(pairs, context_size(cfg.patch), seed=0)
    val_set = FolderDataset(pairs[:2], None)
    records, result = run(iter_train(cfg, train_set, val_set, tmp_path / "run"))
    steps = [r for r in records if isinstance(r, TrainStep)]
    ends = [r for r in records if isinstance(r, EpochEnd)]
    assert len(steps) == 30
    assert len(ends) == 3
    assert [s.done for s in steps] == list(range(1, 31))
    assert {s.total for s in records} == {30}
    # one Progress stage for the run: both records count its steps, one bar serves it
    assert all(isinstance(r, Progress) and r.stage == "train" for r in records)
    assert [e.done for e in ends] == [10, 20, 30]
    assert steps[4].message == f"step 5/30, loss {steps[4].loss:.3f}"
    assert ends[-1].message == f"epoch 3 done, validation Dice {ends[-1].val.foreground_dice:.3f}"
    assert all(b.elapsed_s >= a.elapsed_s for a, b in itertools.pairwise(records))
    # bootstrap switched on exactly after epoch 1
    assert all(s.bootstrap == 0 for s in steps if s.epoch == 0)
    assert all(s.bootstrap > 0 for s in steps if s.epoch >= 1)
    assert np.mean([s.loss for s in steps[-5:]]) < np.mean([s.loss for s in steps[:5]])
    assert ends[-1].val.foreground_dice > 0.5
    assert result.best.exists()
    _model, header = load_model(result.best)
    assert header.class_names == ("Background", "Blob")
    assert header.tile_size == 32
    assert header.training["config"]["epochs"] == 3
    assert header.training["best_val_foreground_dice"] == pytest.approx(result.best_score)
    # history.jsonl is a file format (plots, older runs): its keys did not change
    lines = [json.loads(x) for x in (tmp_path / "run" / "history.jsonl").read_text().splitlines()]
    first = next(x for x in lines if x["type"] == "step")
    assert first["global_step"] == 1
    assert first["total_steps"] == 30
    assert {"epoch", "step", "loss", "wce", "bootstrap", "data_wait_s", "step_s"} < set(first)
    assert not {"done", "total", "stage", "message"} & set(first)


def test_cancel_then_resume_equals_uninterrupted(tmp_path):
    pairs = make_blobs(tmp_path / "data")
    cfg = config()
    ds = FolderDataset(pairs, context_size(cfg.patch), seed=0)
    _, full = run(iter_train(cfg, ds, None, tmp_path / "a"))

    ds_b = FolderDataset(pairs, context_size(cfg.patch), seed=0)
    gen = iter_train(cfg, ds_b, None, tmp_path / "b")
    for _ in range(6):  # epoch 0 (4 steps), its end, then one step of epoch 1
        next(gen)
    gen.close()  # Ctrl-C: a loadable checkpoint must remain, and nothing half written
    _model_mid, header = load_model(tmp_path / "b" / "last.safetensors")
    assert header.training["steps"] == 5
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == [
        "history.jsonl",
        "last.safetensors",
        "last.state.safetensors",
    ]
    ds_b = FolderDataset(pairs, context_size(cfg.patch), seed=0)
    records, resumed = run(iter_train(cfg, ds_b, None, tmp_path / "b"))
    steps = [r for r in records if isinstance(r, TrainStep)]
    assert [s.done for s in steps] == [6, 7, 8]  # continues from the same step
    assert {r.total for r in records} == {8}  # a resumed bar starts at step 6 of 8
    a, _ = load_model(full.last)
    b, _ = load_model(resumed.last)
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        torch.testing.assert_close(va, vb, msg=k)


def test_stop_event(tmp_path):
    import threading

    pairs = make_blobs(tmp_path / "data", n=3)
    stop = threading.Event()
    cfg = config()
    gen = iter_train(cfg, FolderDataset(pairs, context_size(32)), None, tmp_path / "r", stop=stop)
    next(gen)
    stop.set()
    _records, result = run(gen)
    assert result.stopped
    assert result.global_step == 1
    assert load_model(result.last)[1].training["steps"] == 1


def test_stop_callable_before_the_first_step(tmp_path):
    """A callable stop works like an Event; stopped at once, the run returns, trained nothing."""
    pairs = make_blobs(tmp_path / "data", n=3)
    gen = iter_train(
        config(), FolderDataset(pairs, context_size(32)), None, tmp_path / "r", stop=lambda: True
    )
    records, result = run(gen)
    assert records == []
    assert result.stopped
    assert result.global_step == 0
    assert load_model(result.last)[1].training["steps"] == 0  # a checkpoint to resume from


def test_fine_tune_from_model_file_keeps_parent(tmp_path):
    pairs = make_blobs(tmp_path / "data", n=3)
    cfg = config(epochs=1)
    ds = FolderDataset(pairs, context_size(32))
    _, first = run(iter_train(cfg, ds, None, tmp_path / "v1"))
    _, second = run(iter_train(cfg, ds, None, tmp_path / "v2", init_model=first.last))
    header = load_model(second.last)[1]
    assert header.training["parent"]["path"] == str(first.last)
    bad = config(epochs=1, class_names=("A", "B", "C"))
    with pytest.raises(ConfigError, match="classes"):
        run(iter_train(bad, ds, None, tmp_path / "v3", init_model=first.last))


def test_bad_config():
    with pytest.raises(ConfigError):
        TrainConfig(patch=0)
    with pytest.raises(ConfigError, match="unknown training settings"):
        TrainConfig.from_dict({"epochs": 2, "learning_rate": 0.1})
    with pytest.raises(ConfigError):
        TrainConfig(class_weights="inverse")
    cfg = TrainConfig.from_dict(config().to_dict())
    assert cfg == config()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_training_with_amp_learns_and_saves_a_cpu_loadable_model(tmp_path):
    # the CUDA path: pinned memory, autocast (bf16 on Hopper), FB + bootstrap losses in mixed
    # precision; the saved model must load on the CPU and agree with itself there
    pairs = make_blobs(tmp_path / "data")
    cfg = config(
        epochs=3,
        steps_per_epoch=10,
        device="cuda",
        amp=True,
        loss=LossConfig(fuzzy_boundary=True, bootstrap_after=1),
    )
    train_set = FolderDataset(pairs, context_size(cfg.patch), seed=0)
    records, result = run(
        iter_train(cfg, train_set, FolderDataset(pairs[:2], None), tmp_path / "r")
    )
    steps = [r for r in records if isinstance(r, TrainStep)]
    ends = [r for r in records if isinstance(r, EpochEnd)]
    assert all(np.isfinite(s.loss) for s in steps)
    assert np.mean([s.loss for s in steps[-5:]]) < np.mean([s.loss for s in steps[:5]])
    assert ends[-1].val.foreground_dice > 0.5
    model, _ = load_model(result.last, device="cpu")
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        cpu = model(x)
        gpu = model.to("cuda")(x.to("cuda")).cpu()
    # cuDNN may use TF32 for convolutions (10-bit mantissa): close, not equal
    assert torch.allclose(cpu, gpu, atol=2e-2, rtol=2e-2)


def test_a_restarted_run_does_not_return_the_old_runs_best(tmp_path):
    """``resume=False`` (``--restart``): the earlier run's best and history are not this run's."""
    pairs = make_blobs(tmp_path / "data")
    cfg = config(epochs=1, steps_per_epoch=2)
    ds = FolderDataset(pairs, context_size(cfg.patch), seed=0)
    val = FolderDataset(pairs, None, seed=0)
    _, first = run(iter_train(cfg, ds, val, tmp_path / "run"))
    assert first.best is not None
    assert first.best.exists()
    _, again = run(iter_train(cfg, ds, None, tmp_path / "run", resume=False))
    assert again.best is None
    assert again.best_score is None
    assert again.history == []
    assert not (tmp_path / "run" / "best.safetensors").exists()
    lines = (tmp_path / "run" / "history.jsonl").read_text().splitlines()
    assert [json.loads(line)["global_step"] for line in lines] == [1, 2]


class _FailsAfter(torch.utils.data.Dataset):
    """A dataset whose reads fail after ``n`` items: a tile that cannot be read mid-epoch."""

    def __init__(self, inner, n):
        self.inner, self.left = inner, n

    def __len__(self):
        return len(self.inner)

    def __getitem__(self, i):
        if self.left <= 0:
            raise OSError("the slide's disk went away")
        self.left -= 1
        return self.inner[i]


def test_an_error_mid_epoch_keeps_the_steps_done_for_the_rerun(tmp_path):
    pairs = make_blobs(tmp_path / "data")
    cfg = config(epochs=1, steps_per_epoch=8)
    failing = _FailsAfter(FolderDataset(pairs, context_size(cfg.patch), seed=0), 20)
    gen = iter_train(cfg, failing, None, tmp_path / "run")
    done = []

    def drain():
        for rec in gen:
            done.append(rec.done)

    with pytest.raises(OSError, match="went away"):
        drain()
    assert 0 < len(done) < 8
    _, header = load_model(tmp_path / "run" / "last.safetensors")
    assert header.training["steps"] == len(done)  # every full step before the error
    data = FolderDataset(pairs, context_size(cfg.patch), seed=0)
    records, result = run(iter_train(cfg, data, None, tmp_path / "run"))
    assert next(r.done for r in records if isinstance(r, TrainStep)) == len(done) + 1
    assert result.global_step == 8


def test_cosine_schedule_resumes_on_the_same_curve(tmp_path):
    cfg = config(lr_schedule="cosine", warmup_steps=2)
    assert [round(cfg.lr_at(s, 8) / cfg.lr, 4) for s in (0, 1, 2, 5, 8)] == [
        0.5, 1.0, 1.0, round(0.5 * (1 + np.cos(np.pi * 3 / 6)), 4), 0.0,
    ]  # fmt: skip
    assert cfg.to_dict()["lr_schedule"] == "cosine"
    assert "lr_schedule" not in config().to_dict()  # old run records keep their keys
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="lr_schedule"):
        config(lr_schedule="step")
    pairs = make_blobs(tmp_path / "data")
    ds = FolderDataset(pairs, context_size(cfg.patch), seed=0)
    _, full = run(iter_train(cfg, ds, None, tmp_path / "a"))
    ds = FolderDataset(pairs, context_size(cfg.patch), seed=0)
    _, constant = run(iter_train(config(), ds, None, tmp_path / "c"))
    ds = FolderDataset(pairs, context_size(cfg.patch), seed=0)
    gen = iter_train(cfg, ds, None, tmp_path / "b")
    for _ in range(6):
        next(gen)
    gen.close()
    ds = FolderDataset(pairs, context_size(cfg.patch), seed=0)
    _, resumed = run(iter_train(cfg, ds, None, tmp_path / "b"))
    a, _ = load_model(full.last)
    b, _ = load_model(resumed.last)
    c, _ = load_model(constant.last)
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        torch.testing.assert_close(va, vb, msg=k)
    changed = [
        k for (k, va), vc in zip(a.state_dict().items(), c.state_dict().values(), strict=True)
        if va.is_floating_point() and not torch.equal(va, vc)
    ]  # fmt: skip
    assert changed  # the schedule took effect
