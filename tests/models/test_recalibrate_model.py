"""examples/recalibrate_model.py: a corrected header, the same weights, the change on record."""

from __future__ import annotations

import hashlib
import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from napari_msunet.errors import ModelFileError
from napari_msunet.models import ModelHeader, build_model, load_model, save_model

ROOT = Path(__file__).resolve().parents[2]


def _script():
    spec = importlib.util.spec_from_file_location(
        "recalibrate_model", ROOT / "examples" / "recalibrate_model.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    model = build_model("msunet", widths=(8, 16, 32, 64, 128), n_classes=2)
    header = ModelHeader.for_model(
        model,
        class_names=("Background", "Gland"),
        input_um_per_px=0.27,
        norm_mean=(0.5,) * 3,
        norm_std=(0.25,) * 3,
        class_colours=((0, 0, 0), (220, 40, 40)),
        training={"steps": 10},
    )
    return save_model(tmp_path / "model.safetensors", model, header)


def test_new_file_has_the_new_scale_and_colour_and_the_same_weights(model_file, tmp_path):
    out = tmp_path / "recalibrated.safetensors"
    before = model_file.read_bytes()
    _script().main(
        [str(model_file), str(out), "--mpp", "1.0", "--colour", "Gland=255,200,0",
         "--reason", "measured from crypt size"]
    )  # fmt: skip
    assert model_file.read_bytes() == before  # the source is left as it is
    old_model, old = load_model(model_file)
    new_model, new = load_model(out)
    assert new.input_um_per_px == 1.0
    assert new.class_colours == ((0, 0, 0), (255, 200, 0))
    assert new.class_names == old.class_names
    assert new.config == old.config
    for (name, a), (_, b) in zip(
        old_model.state_dict().items(), new_model.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name
    (entry,) = new.training["recalibrations"]
    assert entry["reason"] == "measured from crypt size"
    assert entry["input_um_per_px"] == [0.27, 1.0]
    assert entry["source_sha256"] == hashlib.sha256(before).hexdigest()
    assert new.training["steps"] == 10  # the rest of the provenance stays


def test_refuses_to_replace_a_file_and_names_unknown_classes(model_file, tmp_path):
    script = _script()
    existing = tmp_path / "taken.safetensors"
    existing.write_bytes(b"mine")
    with pytest.raises(ModelFileError, match="already exists"):
        script.recalibrate(model_file, existing, mpp=1.0, reason="x")
    assert existing.read_bytes() == b"mine"
    with pytest.raises(SystemExit, match="no class named Sinus"):
        script.recalibrate(model_file, tmp_path / "n.safetensors", colours={"Sinus": (0, 0, 0)},
                           reason="x")  # fmt: skip
