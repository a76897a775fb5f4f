"""Model files: round trip, atomic writes, and refusal of anything that is not ours."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from napari_msunet import __version__
from napari_msunet.errors import ConfigError, ModelFileError, WriterError
from napari_msunet.models import ModelHeader, build_model, load_model, read_header, save_model
from napari_msunet.models.checkpoint import FORMAT_VERSION, METADATA_KEY

TINY = {"preset": None, "widths": (6, 12, 24)}


def _header(model, **kw) -> ModelHeader:
    fields = {
        "class_names": ("background", "sinus"),
        "class_colours": ((0, 0, 0), (0, 120, 255)),
        "input_um_per_px": 0.92,
        "norm_mean": (0.7, 0.55, 0.7),
        "norm_std": (0.15, 0.2, 0.15),
        "tile_size": 512,
        "training": {
            "data": ["slide_01.svs", "slide_02.svs"],
            "epochs": 3,
            "losses": {"fuzzy_boundary": True, "bootstrap_after": 8},
            "metrics": {"val_iou": 0.61},
            "parent_model": None,
        },
    }
    fields.update(kw)
    return ModelHeader.for_model(model, **fields)


def _trained_looking(name: str = "msunet", **cfg) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model(name, **(cfg or TINY))
    for m in model.modules():  # non-default running statistics must survive the round trip
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.num_batches_tracked.fill_(7)
    return model.eval()


@pytest.fixture
def saved(tmp_path: Path) -> Path:
    model = _trained_looking()
    return save_model(tmp_path / "model.safetensors", model, _header(model))


@pytest.mark.parametrize("name", ["msunet", "unet", "attention_unet"])
def test_round_trip_gives_identical_outputs(tmp_path: Path, name: str) -> None:
    model = _trained_looking(name)
    header = _header(model)
    path = save_model(tmp_path / f"{name}.safetensors", model, header)
    loaded, loaded_header = load_model(path)
    assert type(loaded) is type(model)
    assert not loaded.training
    assert all(p.requires_grad for p in loaded.parameters())  # ready for fine-tuning
    assert loaded_header == header
    assert loaded_header.package_version == __version__
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    for (k, a), (k2, b) in zip(
        model.state_dict().items(), loaded.state_dict().items(), strict=True
    ):
        assert k == k2
        assert torch.equal(a, b)


def test_round_trip_of_a_channels_last_paper_preset_model(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_model("msunet", preset="paper", n_classes=3).eval()
    model = model.to(memory_format=torch.channels_last)
    header = _header(model, class_names=("bg", "gc", "sinus"), class_colours=None)
    assert header.class_colours is not None
    assert len(header.class_colours) == 3
    path = save_model(tmp_path / "paper.safetensors", model, header)
    loaded, _ = load_model(path)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=1e-5, atol=1e-6)


def test_header_is_plain_json_in_safetensors_metadata(saved: Path) -> None:
    from safetensors import safe_open

    with safe_open(str(saved), framework="pt") as f:
        meta = f.metadata()
    doc = json.loads(meta[METADATA_KEY])
    assert doc["format"] == "napari-msunet-model"
    assert doc["format_version"] == FORMAT_VERSION
    assert doc["architecture"] == "msunet"
    assert doc["config"]["widths"] == [6, 12, 24]
    assert doc["class_names"] == ["background", "sinus"]
    assert doc["class_colours"] == [[0, 0, 0], [0, 120, 255]]
    assert doc["input_um_per_px"] == 0.92
    assert doc["norm_mean"] == [0.7, 0.55, 0.7]
    assert doc["tile_size"] == 512
    assert doc["training"]["losses"]["bootstrap_after"] == 8
    assert doc["package_version"] == __version__
    assert read_header(saved).to_dict() == doc


def test_save_refuses_to_overwrite_and_leaves_no_temp_files(saved: Path) -> None:
    model = _trained_looking()
    before = saved.read_bytes()
    with pytest.raises(ModelFileError, match="already exists"):
        save_model(saved, model, _header(model))
    assert saved.read_bytes() == before
    save_model(saved, model, _header(model, tile_size=256), overwrite=True)
    assert read_header(saved).tile_size == 256
    assert sorted(p.name for p in saved.parent.iterdir()) == ["model.safetensors"]


def test_failed_save_leaves_nothing_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = _trained_looking()

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    # a failed write is reported as a WriterError naming the file and the OS's reason
    with pytest.raises(WriterError, match="disk full"):
        save_model(tmp_path / "m.safetensors", model, _header(model))
    assert list(tmp_path.iterdir()) == []


def test_save_checks_header_matches_model() -> None:
    model = _trained_looking()
    other = build_model("unet", **TINY)
    with pytest.raises(ConfigError, match="header describes"):
        save_model("unused.safetensors", model, _header(other))


# --- files that must be refused --------------------------------------------------------


class _Exploit:
    def __reduce__(self):
        return (os.system, ("touch pwned_by_pickle",))


def _write(tmp_path: Path, name: str, data: bytes) -> Path:
    p = tmp_path / name
    p.write_bytes(data)
    return p


def _retag(saved: Path, out: Path, edit=None, tensors_edit=None) -> Path:
    """Rewrite ``saved`` with an edited header and/or tensors (the way an attacker would)."""
    from safetensors import safe_open

    with safe_open(str(saved), framework="pt") as f:
        meta = dict(f.metadata())
    tensors = load_file(str(saved))
    if edit is not None:
        doc = json.loads(meta[METADATA_KEY])
        edit(doc)
        meta[METADATA_KEY] = json.dumps(doc)
    if tensors_edit is not None:
        tensors_edit(tensors)
    save_file(tensors, str(out), metadata=meta)
    return out


def test_pickle_checkpoint_is_refused_without_running_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    evil = _write(tmp_path, "evil.pt", pickle.dumps(_Exploit()))
    with pytest.raises(ModelFileError, match="pickle") as info:
        load_model(evil)
    assert "evil.pt" in str(info.value)
    assert not (tmp_path / "pwned_by_pickle").exists()
    torch.save(_trained_looking().state_dict(), tmp_path / "weights.pth")  # zip-based pickle
    with pytest.raises(ModelFileError, match="never unpickles"):
        load_model(tmp_path / "weights.pth")


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"", "is empty"),
        (b"\x01\x02\x03", "truncated"),
        (os.urandom(4096), "truncated or not a safetensors"),
        ((100).to_bytes(8, "little") + b"{not json" + b" " * 91, "not a valid safetensors"),
    ],
    ids=["empty", "tiny", "random", "bad-json"],
)
def test_garbage_is_refused(tmp_path: Path, data: bytes, match: str) -> None:
    path = _write(tmp_path, "garbage.safetensors", data)
    with pytest.raises(ModelFileError, match=match) as info:
        load_model(path)
    assert info.value.path == path
    assert str(info.value).startswith(str(path))


def test_truncated_file_is_refused(saved: Path, tmp_path: Path) -> None:
    data = saved.read_bytes()
    for cut in (4, 40, len(data) // 2, len(data) - 1):
        path = _write(tmp_path, f"cut{cut}.safetensors", data[:cut])
        with pytest.raises(ModelFileError, match="truncated"):
            load_model(path)


def test_missing_and_folder_paths(tmp_path: Path) -> None:
    with pytest.raises(ModelFileError, match="does not exist"):
        load_model(tmp_path / "nope.safetensors")
    with pytest.raises(ModelFileError, match="folder"):
        load_model(tmp_path)


def test_plain_safetensors_without_our_header_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(3)}, str(path), metadata={"format": "pt"})
    with pytest.raises(ModelFileError, match="not a napari-msunet model"):
        load_model(path)
    save_file({"w": torch.zeros(3)}, str(path))
    with pytest.raises(ModelFileError, match="not a napari-msunet model"):
        read_header(path)


def _set(key, value):
    def edit(doc):
        doc[key] = value

    return edit


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (_set("format", "other-model"), "format is 'other-model'"),
        (_set("format_version", FORMAT_VERSION + 1), "upgrade napari-msunet"),
        (_set("architecture", "resnet"), "unknown architecture"),
        (_set("class_names", ["one"]), "class_names must be 2"),
        (_set("norm_std", [1.0, 0.0, 1.0]), "norm_std must be positive"),
        (_set("input_um_per_px", -1), "input_um_per_px"),
        (_set("sneaky", 1), "unknown keys sneaky"),
        (lambda d: d.pop("norm_mean"), "lacks norm_mean"),
        (lambda d: d["config"].update(widths=[6, 12, 48]), "shape"),
        (lambda d: d["config"].update(widths=[6, 12, 24, 48]), "missing"),
        (lambda d: d["config"].update(widths=[6, 12]), "unexpected"),
        (lambda d: d["config"].update(n_classes=3), "class_names must be 3"),
        (
            lambda d: (
                d["config"].update(n_classes=3),
                d.update(class_names=["a", "b", "c"], class_colours=[[0, 0, 0]] * 3),
            ),
            r"'head\.weight' has shape \(2, 6, 1, 1\) but msunet .* needs \(3, 6, 1, 1\)",
        ),
        (lambda d: d.update(architecture="unet"), "unexpected"),
        (lambda d: d["config"].update(depth=9), "unknown model config keys"),
    ],
    ids=[
        "format",
        "newer",
        "arch",
        "classes",
        "std",
        "um",
        "extra-key",
        "missing-key",
        "wrong-shape",
        "missing-tensors",
        "extra-tensors",
        "classes-vs-names",
        "wrong-classes",
        "wrong-arch",
        "bad-config",
    ],
)
def test_tampered_header_is_refused(saved: Path, tmp_path: Path, edit, match: str) -> None:
    path = _retag(saved, tmp_path / "tampered.safetensors", edit=edit)
    with pytest.raises(ModelFileError, match=match) as info:
        load_model(path)
    assert str(info.value).startswith(str(path))


def test_header_that_is_not_json_is_refused(saved: Path, tmp_path: Path) -> None:
    tensors = load_file(str(saved))
    path = tmp_path / "nonjson.safetensors"
    save_file(tensors, str(path), metadata={METADATA_KEY: "{'python': 'dict'}"})
    with pytest.raises(ModelFileError, match="not valid JSON"):
        load_model(path)
    save_file(tensors, str(path), metadata={METADATA_KEY: "[1, 2]"})
    with pytest.raises(ModelFileError, match="JSON object"):
        load_model(path)


@pytest.mark.parametrize(
    ("tensors_edit", "match"),
    [
        (lambda t: t.pop("head.bias"), r"missing 1 tensor\(s\), e\.g\. head\.bias"),
        (lambda t: t.update(extra=torch.zeros(1)), "unexpected, e.g. extra"),
        (lambda t: t.update({"head.bias": torch.zeros(3)}), "'head.bias' has shape"),
        (lambda t: t["head.bias"].fill_(float("nan")), "NaN"),
        (lambda t: t.update({"head.bias": torch.zeros(2, dtype=torch.int64)}), "dtype"),
    ],
    ids=["missing", "extra", "shape", "nan", "dtype"],
)
def test_tampered_weights_are_refused(saved: Path, tmp_path: Path, tensors_edit, match) -> None:
    path = _retag(saved, tmp_path / "bad-weights.safetensors", tensors_edit=tensors_edit)
    with pytest.raises(ModelFileError, match=match):
        load_model(path)


# --- header validation -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"class_names": ("a", "b", "c")}, "class_names must be 2"),
        ({"class_names": "ab"}, "list of names"),
        ({"class_colours": ((0, 0, 0), (0, 0, 256))}, "RGB triples of 0..255"),
        ({"class_colours": ((0, 0, 0),)}, "2 RGB triples"),
        ({"input_um_per_px": 0}, "positive"),
        ({"input_um_per_px": float("inf")}, "positive"),
        ({"norm_mean": (0.5, 0.5)}, "3 finite numbers"),
        ({"norm_std": (1.0, -1.0, 1.0)}, "positive"),
        ({"tile_size": 0}, "tile_size"),
        ({"training": {"when": object()}}, "JSON-serialisable"),
        ({"training": {"loss": float("nan")}}, "JSON-serialisable"),
    ],
)
def test_header_validation(kw: dict, match: str) -> None:
    model = build_model("unet", **TINY)
    with pytest.raises(ConfigError, match=match):
        _header(model, **kw)


def test_header_dict_round_trip() -> None:
    header = _header(build_model("attention_unet", **TINY))
    assert ModelHeader.from_dict(json.loads(header.to_json())) == header
    doc = header.to_dict()
    del doc["package_version"]
    assert ModelHeader.from_dict(doc).package_version == "unknown"


def test_header_length_that_looks_like_a_pickle_opcode_still_loads(tmp_path: Path) -> None:
    # The first byte of a safetensors file is the low byte of its header length; 0x80 is
    # also pickle's PROTO opcode. Our own files must not be mistaken for pickles.
    model = _trained_looking("unet")
    for pad in range(0, 512, 8):
        path = tmp_path / f"m{pad}.safetensors"
        save_model(path, model, _header(model, training={"note": "x" * pad}))
        if path.read_bytes()[0] == 0x80:
            break
    else:
        pytest.fail("no padding gave a header length ending in 0x80")
    _, header = load_model(path)
    assert header.training["note"] == "x" * pad


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_half_and_double_precision_weights_load_as_float32(
    saved: Path, tmp_path: Path, dtype: torch.dtype
) -> None:
    """An export in fp16/fp64 (issue 12, item 11) used to fail later with a torch dtype error."""

    def cast(t: dict) -> None:
        for k, v in t.items():
            if v.is_floating_point():
                t[k] = v.to(dtype)

    path = _retag(saved, tmp_path / f"{dtype}.safetensors", tensors_edit=cast)
    model, header = load_model(path)
    assert header.stored_dtype == str(dtype).removeprefix("torch.")
    assert all(p.dtype == torch.float32 for p in model.parameters())
    reference, reference_header = load_model(saved)
    assert reference_header.stored_dtype == "float32"
    assert header == reference_header  # what the file held is said, not compared
    assert "stored_dtype" not in header.to_dict()  # and never written back
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        out, ref = model(x), reference(x)
    assert out.dtype == torch.float32
    tol = 0.05 if dtype != torch.float64 else 1e-6
    assert torch.allclose(out, ref, atol=tol)


def test_double_weights_beyond_float32_are_refused(saved: Path, tmp_path: Path) -> None:
    def huge(t: dict) -> None:
        t["head.bias"] = t["head.bias"].to(torch.float64).fill_(1e300)

    path = _retag(saved, tmp_path / "huge.safetensors", tensors_edit=huge)
    with pytest.raises(ModelFileError, match="too large for float32"):
        load_model(path)


@pytest.mark.parametrize(
    ("edit", "shown"),
    [
        (lambda d: d.update(class_names=[f"class {i}" for i in range(10**6)]), "1000000 in all"),
        (lambda d: d.update(class_colours=[[1, 2, 3]] * 10**5), "100000 in all"),
        (lambda d: d.update(norm_mean=["x" * 10**6]), "1000000 characters"),
        (lambda d: d.update(architecture="u" * 10**6), "1000000 characters"),
        (lambda d: d.update({f"key{i}": 0 for i in range(10**5)}), "100000 in all"),
        (lambda d: d["config"].update(n_classes="9" * 10**6), "characters in all"),
    ],
    ids=["class-names", "colours", "norm", "architecture", "keys", "config"],
)
def test_errors_about_a_huge_header_stay_short(
    saved: Path, tmp_path: Path, edit, shown: str
) -> None:
    """A hostile header of megabytes gives an error of a few lines (issue 12, item 14)."""
    path = _retag(saved, tmp_path / "huge.safetensors", edit=edit)
    with pytest.raises(ModelFileError) as info:
        load_model(path)
    message = str(info.value)
    assert len(message) < 600, message[:1000]
    assert message.startswith(str(path))
    assert shown in message
