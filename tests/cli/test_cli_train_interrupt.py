"""Stopping ``msunet train`` (issue 12, item 13): Ctrl-C keeps the step it reached, kill -9
keeps the last checkpoint, and ``history.jsonl`` holds every step once after the rerun.

The CLI runs as a real subprocess and gets real signals part-way through an epoch.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

import pytest
import torch

from napari_msunet.io.synthetic import SyntheticSlideSpec, write_synthetic_slide
from napari_msunet.models.checkpoint import load_model

pytestmark = pytest.mark.skipif(os.name == "nt", reason="POSIX signals")

RUN = """
out: run
data:
  slides:
    - {slide: s.svs, annotation: s.geojson, split: train}
train:
  class_names: [Background, Germinal centre, Sinus]
  mpp: 4.0
  model_overrides: {widths: [4, 8]}
  patch: 32
  batch_size: 2
  epochs: 2
  steps_per_epoch: STEPS
  device: cpu
"""


@pytest.fixture
def folder(tmp_path):
    spec = SyntheticSlideSpec(768, 768, seed=4, mpp=1.0, n_regions=6, region_size=(0.08, 0.12))
    write_synthetic_slide(tmp_path / "s.svs", spec, "svs")
    spec.write_geojson(tmp_path / "s.geojson")
    return tmp_path


def _config(folder, steps: int) -> None:
    (folder / "run.yaml").write_text(RUN.replace("STEPS", str(steps)))


def _train(folder, *extra):
    return subprocess.run(
        [sys.executable, "-m", "napari_msunet.cli", "train", "--config", "run.yaml", *extra],
        capture_output=True,
        text=True,
        cwd=folder,
        timeout=300,
    )


def _signal_at_step(folder, step: int, sig: int) -> tuple[int, str]:
    """Start training, send ``sig`` once the bar shows ``step``; return (code, stderr)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "napari_msunet.cli", "train", "--config", "run.yaml"],
        cwd=folder,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    seen = bytearray()
    reader = threading.Thread(target=lambda: _read_all(proc.stderr, seen), daemon=True)
    reader.start()
    pattern = re.compile(rb"step (\d+)/")
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        steps = [int(m) for m in pattern.findall(bytes(seen))]
        if steps and max(steps) >= step:
            proc.send_signal(sig)
            break
        time.sleep(0.02)
    code = proc.wait(timeout=120)
    reader.join(timeout=10)
    return code, seen.decode(errors="replace")


def _read_all(stream, into: bytearray) -> None:
    while chunk := os.read(stream.fileno(), 4096):
        into.extend(chunk)


def _state_progress(folder) -> dict:
    from safetensors import safe_open

    with safe_open(str(folder / "run" / "last.state.safetensors"), framework="pt") as fh:
        return json.loads(fh.metadata()["napari_msunet_train_state"])["progress"]


def _history_steps(folder) -> list[int]:
    lines = (folder / "run" / "history.jsonl").read_text().splitlines()
    return [json.loads(line)["global_step"] for line in lines if '"step"' in line]


@pytest.mark.slow
def test_ctrl_c_keeps_the_step_and_the_rerun_continues_there(folder):
    _config(folder, 40)
    code, err = _signal_at_step(folder, 5, signal.SIGINT)
    assert code == 130, err
    assert "Traceback" not in err
    assert "stopping at the next step" in err
    progress = _state_progress(folder)
    reached = progress["global_step"]
    assert progress["epoch"] == 0
    assert 5 <= reached < 40  # mid-epoch, not its start
    assert progress["step"] == reached
    assert _history_steps(folder) == list(range(1, reached + 1))

    proc = _train(folder)
    assert proc.returncode == 0, proc.stderr
    assert f"step {reached + 1}/80" in proc.stderr
    assert "step 1/80" not in proc.stderr
    assert _history_steps(folder) == list(range(1, 81))  # every step once
    resumed, _ = load_model(folder / "run" / "last.safetensors")

    # the same run without the interruption ends with the same weights
    (folder / "run").rename(folder / "interrupted")
    assert _train(folder).returncode == 0
    straight, _ = load_model(folder / "run" / "last.safetensors")
    for (name, a), b in zip(
        resumed.state_dict().items(), straight.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name


@pytest.mark.slow
def test_kill_9_loses_only_the_steps_after_the_checkpoint_and_history_is_not_doubled(folder):
    _config(folder, 10)  # a checkpoint at the end of epoch 1 (step 10)
    code, err = _signal_at_step(folder, 14, signal.SIGKILL)
    assert code == -signal.SIGKILL, err
    assert _state_progress(folder)["global_step"] == 10
    assert _history_steps(folder)[-1] >= 14  # steps logged after the checkpoint
    proc = _train(folder)
    assert proc.returncode == 0, proc.stderr
    assert "step 11/20" in proc.stderr
    assert _history_steps(folder) == list(range(1, 21))


@pytest.mark.slow
def test_restart_starts_a_new_history(folder):
    _config(folder, 3)
    assert _train(folder).returncode == 0
    proc = _train(folder, "--restart")
    assert proc.returncode == 0, proc.stderr
    assert "step 1/6" in proc.stderr
    assert _history_steps(folder) == list(range(1, 7))


@pytest.mark.slow
def test_a_second_run_into_a_training_folder_is_refused_naming_the_first(folder):
    from napari_msunet.errors import WriterError
    from napari_msunet.training.data import build_datasets
    from napari_msunet.training.run_config import load_run_config
    from napari_msunet.training.trainer import iter_train

    _config(folder, 400)
    proc = subprocess.Popen(
        [sys.executable, "-m", "napari_msunet.cli", "train", "--config", "run.yaml"],
        cwd=folder,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        seen = bytearray()
        threading.Thread(target=lambda: _read_all(proc.stderr, seen), daemon=True).start()
        deadline = time.monotonic() + 240
        while b"step 2/" not in seen and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.02)
        assert (folder / "run" / "train.lock").is_file(), seen.decode(errors="replace")
        run = load_run_config(folder / "run.yaml")
        train_set, val_set, _ = build_datasets(run)
        with pytest.raises(WriterError, match=f"process {proc.pid}") as refused:
            next(iter_train(run.train, train_set, val_set, folder / "run"))
        assert "train.lock" in str(refused.value)
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=120)
    assert not (folder / "run" / "train.lock").exists()  # released by the interrupted run
