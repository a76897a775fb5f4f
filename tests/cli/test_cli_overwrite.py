"""No command replaces a file it did not write without ``--overwrite`` (issue 12, item 3):
``msunet synthetic`` and its GeoJSON, ``msunet train`` and a model in its ``out:`` folder,
``msunet predict`` and a user's ``tissue.png``. In-process through ``cli.main``."""

from __future__ import annotations

import pytest

from napari_msunet.cli import main
from napari_msunet.cli.model_commands import _check_train_out
from napari_msunet.errors import MsunetError
from napari_msunet.io.synthetic import SyntheticSlideSpec, write_synthetic_slide

SMALL = ["--size", "512", "--tile", "256", "--mpp", "1.0"]


def test_synthetic_refuses_an_existing_geojson_before_writing_anything(tmp_path, capsys):
    theirs = tmp_path / "syn.geojson"
    theirs.write_text('{"type": "FeatureCollection", "features": []}')
    assert main(["synthetic", str(tmp_path / "syn.svs"), *SMALL]) == 2
    err = capsys.readouterr().err
    assert str(theirs) in err
    assert "--overwrite" in err
    assert theirs.read_text() == '{"type": "FeatureCollection", "features": []}'
    assert not (tmp_path / "syn.svs").exists()  # refused before the slide, not half-done
    assert main(["synthetic", str(tmp_path / "syn.svs"), *SMALL, "--overwrite"]) == 0
    assert '"features": []' not in theirs.read_text()


def test_write_geojson_refuses_an_existing_file(tmp_path):
    spec = SyntheticSlideSpec(512, 512, seed=1)
    path = tmp_path / "a.geojson"
    path.write_text("mine")
    with pytest.raises(MsunetError, match="overwrite"):
        spec.write_geojson(path)
    assert path.read_text() == "mine"
    spec.write_geojson(path, overwrite=True)
    assert path.read_text() != "mine"


@pytest.fixture
def run_yaml(tmp_path):
    spec = SyntheticSlideSpec(512, 512, seed=4, mpp=1.0)
    write_synthetic_slide(tmp_path / "s.svs", spec, "svs", tile=256)
    spec.write_geojson(tmp_path / "s.geojson")
    path = tmp_path / "run.yaml"
    path.write_text(
        f"""
out: {tmp_path / "run"}
data:
  slides:
    - {{slide: {tmp_path / "s.svs"}, annotation: {tmp_path / "s.geojson"}, split: train}}
train:
  class_names: [Background, Germinal centre, Sinus]
  mpp: 4.0
  model_overrides: {{widths: [4, 8]}}
  patch: 64
  batch_size: 2
  epochs: 1
  steps_per_epoch: 1
  device: cpu
"""
    )
    return path


def test_train_refuses_a_model_in_out_that_belongs_to_no_run(run_yaml, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "best.safetensors").write_bytes(b"someone's model")
    for flags in ([], ["--restart"]):
        assert main(["train", "--config", str(run_yaml), *flags]) == 2
        err = capsys.readouterr().err
        assert str(out / "best.safetensors") in err
        assert "--overwrite" in err
        assert (out / "best.safetensors").read_bytes() == b"someone's model"
        assert sorted(p.name for p in out.iterdir()) == ["best.safetensors"]


def test_train_check_lets_a_run_resume_and_overwrite_clear_the_way(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    _check_train_out(out, overwrite=False)  # empty: fine
    for name in ("last.safetensors", "last.state.safetensors", "best.safetensors"):
        (out / name).write_bytes(b"x")
    _check_train_out(out, overwrite=False)  # a run of ours: resumed, files kept
    assert len(list(out.iterdir())) == 3
    (out / "last.state.safetensors").unlink()
    (out / "history.jsonl").write_text("{}\n")
    with pytest.raises(MsunetError, match="no training run to resume"):
        _check_train_out(out, overwrite=False)
    _check_train_out(out, overwrite=True)  # removed, so the new run's best is its own
    assert list(out.iterdir()) == []
