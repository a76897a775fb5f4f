"""``msunet train`` under ``torchrun --nproc-per-node 2`` (gloo on the CPU) follows the
one-process run with the doubled batch: the same items each step, gradients averaged.

GroupNorm in the test network: with batch norm each process normalises over its own share
on the CPU (gloo has no synchronised batch norm), which is a different computation.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from napari_msunet.io.synthetic import SyntheticSlideSpec, write_synthetic_slide
from napari_msunet.models.checkpoint import load_model

RUN = """
out: OUT
data:
  slides:
    - {slide: s.svs, annotation: s.geojson, split: train}
train:
  class_names: [Background, Germinal centre, Sinus]
  mpp: 4.0
  model_overrides: {widths: [4, 8], norm: group, norm_groups: 2}
  patch: 32
  batch_size: BATCH
  epochs: 2
  steps_per_epoch: 4
  lr: 0.003
  device: cpu
  num_workers: 0
  augment: {flip: false, rotate: false, brightness: 0, contrast: 0, saturation: 0, hue: 0}
"""


def _losses(folder):
    lines = [json.loads(x) for x in (folder / "history.jsonl").read_text().splitlines()]
    return [x["loss"] for x in lines if x["type"] == "step"]


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    spec = SyntheticSlideSpec(768, 768, seed=4, mpp=1.0, n_regions=6, region_size=(0.08, 0.12))
    write_synthetic_slide(root / "s.svs", spec, "svs")
    spec.write_geojson(root / "s.geojson")
    return root


def _train(root, name, batch, nproc):
    (root / f"{name}.yaml").write_text(RUN.replace("OUT", name).replace("BATCH", str(batch)))
    if nproc == 1:
        cmd = [sys.executable, "-m", "napari_msunet.cli", "train", "--config", f"{name}.yaml"]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
        cmd += [f"--nproc-per-node={nproc}", "-m", "napari_msunet.cli"]
        cmd += ["train", "--config", f"{name}.yaml"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, cwd=root, capture_output=True, text=True, env=env, timeout=600)


def test_two_processes_follow_one_process_with_the_doubled_batch(case):
    one = _train(case, "one", 4, 1)
    assert one.returncode == 0, one.stderr
    two = _train(case, "two", 2, 2)
    assert two.returncode == 0, two.stdout + two.stderr
    a, b = _losses(case / "one"), _losses(case / "two")
    assert len(a) == len(b) == 8  # rank 0 alone logged, once per step
    np.testing.assert_allclose(b, a, rtol=1e-3, atol=1e-4)
    # the same weights at the end (only rank 0 wrote them)
    m1, _ = load_model(case / "one" / "last.safetensors")
    m2, _ = load_model(case / "two" / "last.safetensors")
    for (k, v1), v2 in zip(m1.state_dict().items(), m2.state_dict().values(), strict=True):
        np.testing.assert_allclose(v2.numpy(), v1.numpy(), rtol=1e-3, atol=1e-4, err_msg=k)
    assert not (case / "two" / "train.lock").exists()


def test_a_two_process_run_resumes_from_rank_0s_checkpoint(case):
    first = RUN.replace("OUT", "resume").replace("BATCH", "2").replace("epochs: 2", "epochs: 1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    cmd += ["-m", "napari_msunet.cli", "train", "--config", "resume.yaml"]
    (case / "resume.yaml").write_text(first)
    run = subprocess.run(cmd, cwd=case, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    assert len(_losses(case / "resume")) == 4
    # the same run asked for one epoch more: both ranks resume at step 4
    (case / "resume.yaml").write_text(first.replace("epochs: 1", "epochs: 2"))
    run = subprocess.run(cmd, cwd=case, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    assert len(_losses(case / "resume")) == 8  # 4 kept, 4 new: no step twice


def test_a_run_resumes_only_with_the_processes_it_was_saved_with(case):
    one = RUN.replace("OUT", "world").replace("BATCH", "2").replace("epochs: 2", "epochs: 1")
    (case / "world.yaml").write_text(one)
    single = [sys.executable, "-m", "napari_msunet.cli", "train", "--config", "world.yaml"]
    run = subprocess.run(single, cwd=case, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    (case / "world.yaml").write_text(one.replace("epochs: 1", "epochs: 2"))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    cmd += ["-m", "napari_msunet.cli", "train", "--config", "world.yaml"]
    run = subprocess.run(cmd, cwd=case, capture_output=True, text=True, timeout=600)
    assert run.returncode != 0
    assert "saved with 1 process(es) and resumed with 2" in run.stdout + run.stderr
    assert len(_losses(case / "world")) == 4  # nothing trained, nothing lost


def test_stopping_torchrun_checkpoints_every_rank_at_one_step(case):
    long = RUN.replace("OUT", "stopped").replace("BATCH", "2").replace("epochs: 2", "epochs: 50")
    (case / "stopped.yaml").write_text(long)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    cmd += ["-m", "napari_msunet.cli", "train", "--config", "stopped.yaml"]
    proc = subprocess.Popen(cmd, cwd=case, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    history = case / "stopped" / "history.jsonl"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if history.exists() and len(_losses(case / "stopped")) >= 3:
            break
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)  # what torchrun does to its processes on a Ctrl-C
    proc.communicate(timeout=120)
    done = len(_losses(case / "stopped"))
    assert 3 <= done < 200
    state = case / "stopped" / "last.state.safetensors"
    assert state.exists()
    assert not (case / "stopped" / "train.lock").exists()
    from napari_msunet.models.checkpoint import read_header

    assert read_header(case / "stopped" / "last.safetensors").training["steps"] == done


@pytest.mark.parametrize(
    "args",
    [
        ["finetune", "--model", "m.safetensors", "--slides", "s.svs", "--annotations", "a"],
        ["train", "--slides", "s.svs", "--annotations", "a", "--out", "m.safetensors"],
    ],
)
def test_slide_training_and_fine_tuning_refuse_several_processes(case, args):
    env = {**os.environ, "WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0"}
    cmd = [sys.executable, "-m", "napari_msunet.cli", *args]
    run = subprocess.run(cmd, cwd=case, capture_output=True, text=True, env=env, timeout=120)
    assert run.returncode != 0
    assert "runs in one process" in run.stderr
    assert "msunet train --config RUN.yaml" in run.stderr
