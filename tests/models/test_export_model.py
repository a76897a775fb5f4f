"""msunet export-model / import-model: the bundled model as a bioimage.io package (validated
with bioimageio.spec), ONNX and TorchScript, each run by its own runtime and compared with
torch; the package travels back as the same model file."""

from __future__ import annotations

import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch

from napari_msunet.errors import ModelFileError, WriterError
from napari_msunet.models.bundled import bundled_model_path
from napari_msunet.models.checkpoint import load_model
from napari_msunet.models.export import ExportNet, check_tile, export_model

pytest.importorskip("onnxruntime")
pytest.importorskip("bioimageio.spec")


def msunet(*args):
    cmd = [sys.executable, "-m", "napari_msunet.cli", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "gland.bioimageio.zip"
    run = msunet("export-model", "--format", "bioimageio", "--out", out)
    assert run.returncode == 0, run.stderr
    assert "max |Δp|" in run.stdout
    return out


def _torch_probabilities(image: np.ndarray) -> np.ndarray:
    model, header = load_model(bundled_model_path())
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        return ExportNet(model, header).eval()(x).numpy()


def test_the_package_is_valid_and_carries_what_a_user_needs(package):
    from bioimageio.spec import InvalidDescr, load_description

    descr = load_description(package, perform_io_checks=True)
    assert not isinstance(descr, InvalidDescr), descr.validation_summary.format()
    assert descr.validation_summary.status in ("valid-format", "passed")
    assert descr.inputs[0].axes[2].scale == pytest.approx(1.0)  # µm/px of the bundled model
    assert descr.weights.onnx is not None
    assert descr.weights.torchscript is not None
    with zipfile.ZipFile(package) as z:
        readme = z.read("README.md").decode()
        test_in = np.load(z.open("test_input.npy"))
        test_out = np.load(z.open("test_output.npy"))
    assert "EBHI-Seg" in readme
    assert "CC BY 4.0" in readme
    assert "2205.01777" in readme  # the paper
    assert "QuPath" in readme
    # the stored test output is what torch gives for the stored test input
    got = _torch_probabilities(test_in[0].transpose(1, 2, 0))
    assert np.abs(got - test_out).max() < 1e-4


def test_a_package_travels_back_as_the_same_model_file(package, tmp_path):
    out = tmp_path / "back.safetensors"
    run = msunet("import-model", package, "--out", out)
    assert run.returncode == 0, run.stderr
    assert out.read_bytes() == bundled_model_path().read_bytes()
    # and every command that takes a model file takes the package itself
    _, header = load_model(package)
    assert header.class_names == ("Background", "Gland")


def test_onnx_and_torchscript_agree_with_torch_at_another_tile_size(tmp_path):
    import onnxruntime as ort

    onnx = export_model(bundled_model_path(), "onnx", tmp_path / "m.onnx")
    script = export_model(bundled_model_path(), "torchscript", tmp_path / "m.pt")
    assert onnx.max_abs_diff < 1e-4
    assert script.max_abs_diff < 1e-4
    image = check_tile(448)[:448, :320]  # not the shape either was made or checked with
    want = _torch_probabilities(image)
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float().div(255).numpy()
    session = ort.InferenceSession(str(onnx.path), providers=["CPUExecutionProvider"])
    assert np.abs(session.run(None, {"input": x})[0] - want).max() < 1e-4
    with torch.no_grad():
        traced = torch.jit.load(str(script.path))(torch.from_numpy(x)).numpy()
    assert np.abs(traced - want).max() < 1e-4
    np.testing.assert_allclose(want.sum(axis=1), 1.0, atol=1e-5)  # probabilities


def test_bad_requests_are_clear_and_write_nothing(package, tmp_path):
    existing = tmp_path / "m.onnx"
    existing.write_bytes(b"mine")
    with pytest.raises(WriterError, match="already exists"):
        export_model(bundled_model_path(), "onnx", existing)
    assert existing.read_bytes() == b"mine"
    not_a_package = tmp_path / "x.zip"
    with zipfile.ZipFile(not_a_package, "w") as z:
        z.writestr("weights.bin", b"0")
    run = msunet("import-model", not_a_package, "--out", tmp_path / "y.safetensors")
    assert run.returncode == 2
    assert "x.zip" in run.stderr
    assert "not a bioimage.io model package" in run.stderr
    # another tool's package: no model file of ours inside
    foreign = tmp_path / "foreign.zip"
    with zipfile.ZipFile(package) as src, zipfile.ZipFile(foreign, "w") as dst:
        for name in src.namelist():
            if not name.endswith(".safetensors"):
                dst.writestr(name, src.read(name))
    with pytest.raises(ModelFileError, match="without a napari-msunet model file"):
        load_model(foreign)
    assert not (tmp_path / "y.safetensors").exists()
