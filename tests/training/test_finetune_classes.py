"""Fine-tuning to classes the parent lacks (issue 13, item 1): add or replace, head rebuilt,
encoder and decoder transferred, the parent untouched."""

from __future__ import annotations

import hashlib

import pytest
import torch

from napari_msunet.errors import AnnotationError, ConfigError
from napari_msunet.io.synthetic import SyntheticSlideSpec, write_synthetic_slide
from napari_msunet.models import build_model
from napari_msunet.models.checkpoint import ModelHeader, load_model, save_model
from napari_msunet.models.transfer import class_scheme, with_classes
from napari_msunet.progress import run_to_end
from napari_msunet.training.finetune import FinetuneWarning, iter_finetune
from napari_msunet.training.slide_dataset import SlideSpec

GLAND = ("Background", "Gland")


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    """A slide annotated with germinal centres and sinuses; a parent that knows glands."""
    root = tmp_path_factory.mktemp("classes")
    spec = SyntheticSlideSpec(1024, 1024, seed=4, mpp=1.0, n_regions=8, region_size=(0.08, 0.12))
    slide = write_synthetic_slide(root / "s.svs", spec, "svs")
    spec.write_geojson(root / "s.geojson")
    torch.manual_seed(0)
    model = build_model("msunet", n_classes=2, widths=(4, 8))
    header = ModelHeader.for_model(
        model,
        class_names=GLAND,
        class_colours=((0, 0, 0), (200, 200, 0)),
        input_um_per_px=4.0,
        norm_mean=(0.5,) * 3,
        norm_std=(0.25,) * 3,
        tile_size=32,
    )
    save_model(root / "gland.safetensors", model, header)
    return root, [SlideSpec(slide, root / "s.geojson")]


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_class_schemes():
    assert class_scheme(GLAND, ["Sinus", "Gland"], "keep") == GLAND
    assert class_scheme(GLAND, ["Sinus", "Gland"], "add") == (*GLAND, "Sinus")
    assert class_scheme(GLAND, ["Sinus", "Gland"], "replace") == ("Background", "Sinus", "Gland")
    with pytest.raises(ConfigError, match="at least one class"):
        class_scheme(GLAND, [], "replace")
    with pytest.raises(ConfigError, match="keep, add, replace"):
        class_scheme(GLAND, ["Sinus"], "merge")


def test_the_head_keeps_known_rows_and_the_body_is_transferred():
    torch.manual_seed(1)
    parent = build_model("unet", n_classes=2, widths=(4, 8))
    child, mapping = with_classes(parent, GLAND, ("Background", "Sinus", "Gland"))
    assert mapping == {"Background": "Background", "Sinus": None, "Gland": "Gland"}
    assert child.head.out_channels == 3
    assert torch.equal(child.head.weight[0], parent.head.weight[0])
    assert torch.equal(child.head.weight[2], parent.head.weight[1])
    body = {k: v for k, v in parent.state_dict().items() if not k.startswith("head.")}
    for k, v in body.items():
        assert torch.equal(child.state_dict()[k], v), k
    assert parent.head.out_channels == 2  # the parent is not changed


def test_keep_refuses_new_classes_naming_both_ways(case, tmp_path):
    root, specs = case
    with pytest.raises(AnnotationError, match="Germinal centre") as refused:
        next(
            iter_finetune(
                root / "gland.safetensors", specs, steps=2, out=tmp_path / "m.st", classes="keep"
            )
        )
    assert "--classes add" in str(refused.value)
    assert "--classes replace" in str(refused.value)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("mode", "names"),
    [
        ("add", ("Background", "Gland", "Germinal centre", "Sinus")),
        ("replace", ("Background", "Germinal centre", "Sinus")),
    ],
)
def test_new_classes_make_a_version_with_the_mapping(case, tmp_path, mode, names):
    root, specs = case
    parent = root / "gland.safetensors"
    before = _digest(parent)
    out = tmp_path / "gc.safetensors"
    settings = dict(steps=3, batch_size=2, device="cpu", out=out, classes=mode)
    result = run_to_end(iter_finetune(parent, specs, **settings))
    assert result.model == out
    model, header = load_model(out)
    assert header.class_names == names
    assert header.class_colours[1] != (0, 0, 0)  # colours from the parent or the QuPath file
    assert model.head.out_channels == len(names)
    assert header.training["parent"]["path"] == str(parent)  # the user's file, not init
    mapping = header.training["class_mapping"]
    assert mapping["Background"] == "Background"
    assert mapping["Sinus"] is None
    assert mapping.get("Gland", "Gland") == "Gland"
    assert _digest(parent) == before  # the parent file is byte-identical
    start, _ = load_model(result.run_dir / "init.safetensors")
    parent_model, _ = load_model(parent)
    assert torch.equal(start.head.weight[0], parent_model.head.weight[0])


def test_auto_adds_new_classes_and_says_so(case, tmp_path):
    """The default: the command of the issue, without --classes, learns both new classes
    (only new classes: the lab's scheme replaces the model's)."""
    root, specs = case
    out = tmp_path / "auto.safetensors"
    with pytest.warns(FinetuneWarning, match="Germinal centre"):
        run_to_end(
            iter_finetune(
                root / "gland.safetensors", specs, steps=2, batch_size=2, device="cpu", out=out
            )
        )
    _, header = load_model(out)
    assert header.class_names == ("Background", "Germinal centre", "Sinus")
    assert header.training["classes"] == "auto"
