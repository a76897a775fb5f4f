"""What fine-tuning reads before its first step (issue 12, items 4-6).

Each test writes real files (a synthetic SVS, PNG masks, GeoJSON) and gives them to the real
fine-tune: a binary 0/255 mask marks the model's foreground class instead of the ignore label;
a mask of another size is refused rather than stretched over the slide; an annotation that
marks nothing is refused (or, with corrected regions, fine-tuned with a warning).
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from napari_msunet.errors import AnnotationError
from napari_msunet.io.synthetic import SyntheticSlideSpec, write_synthetic_slide
from napari_msunet.models import build_model
from napari_msunet.models.checkpoint import ModelHeader, save_model
from napari_msunet.progress import run_to_end
from napari_msunet.training.finetune import FinetuneWarning, iter_finetune
from napari_msunet.training.slide_dataset import SlidePatchDataset, SlideSpec, check_annotation

BINARY = ("Background", "Gland")
THREE = ("Background", "Germinal centre", "Sinus")


def _model(path, names):
    torch.manual_seed(0)
    model = build_model("msunet", n_classes=len(names), widths=(4, 8))
    header = ModelHeader.for_model(
        model,
        class_names=names,
        input_um_per_px=4.0,
        norm_mean=(0.5,) * 3,
        norm_std=(0.25,) * 3,
        tile_size=32,
    )
    return save_model(path, model, header)


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    """A 1536² slide at 1 µm/px (working image 384² at the models' 4 µm/px), two models."""
    root = tmp_path_factory.mktemp("ft_inputs")
    spec = SyntheticSlideSpec(1536, 1536, seed=4, mpp=1.0, n_regions=6, region_size=(0.06, 0.1))
    slide = write_synthetic_slide(root / "s.svs", spec, "svs")
    truth = spec.mask(1.0)  # level-0 labels: 0, 1 (germinal centre), 2 (sinus)
    binary = root / "binary255.png"
    Image.fromarray(np.where(truth > 0, 255, 0).astype(np.uint8)).save(binary)
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
    return {
        "root": root,
        "spec": spec,
        "slide": slide,
        "truth": truth,
        "binary": binary,
        "regions": root / "regions.geojson",
        "binary_model": _model(root / "binary.safetensors", BINARY),
        "three_model": _model(root / "three.safetensors", THREE),
    }


def _png(path, array):
    Image.fromarray(np.asarray(array, np.uint8)).save(path)
    return path


# --- item 4: a 0/255 mask is one foreground class, not "not annotated" ---------------------


def test_binary_255_mask_trains_the_foreground_class(case):
    spec = SlideSpec(case["slide"], case["binary"])
    working = case["spec"].mask(4.0) > 0
    y, x = np.argwhere(working)[len(np.argwhere(working)) // 2] - 16  # a window on a gland
    ds = SlidePatchDataset(spec, 4.0, [(y, x)], 32, 32, BINARY)
    labels = ds[0]["mask"].numpy()
    expected = working[y : y + 32, x : x + 32].astype(np.int64)
    assert not (labels == 255).any()  # before: every foreground pixel was the ignore label
    assert labels.any()
    # sampled at each working pixel's centre, level-0 labels agree with the working-level
    # rendering except on a boundary pixel or two
    assert (labels != expected).mean() < 0.05
    assert check_annotation(spec, 4.0, BINARY)


def test_binary_mask_for_a_model_with_several_foreground_classes_is_refused(case):
    spec = SlideSpec(case["slide"], case["binary"])
    with pytest.raises(AnnotationError, match=r"binary mask \(0 and 255\).*2 foreground") as err:
        check_annotation(spec, 4.0, THREE)
    assert str(case["binary"]) in str(err.value)
    assert "Germinal centre" in str(err.value)


def test_mask_values_without_a_class_are_refused(case, tmp_path):
    values = case["truth"].astype(np.uint8)
    values[:10, :10] = 9  # a value the three-class model has no class for
    path = _png(tmp_path / "nine.png", values)
    with pytest.raises(AnnotationError, match=r"values \[9\].*0\.\.2"):
        check_annotation(SlideSpec(case["slide"], path), 4.0, THREE)
    # 255 next to real classes keeps its meaning: not annotated
    values[:10, :10] = 255
    path = _png(tmp_path / "ignore.png", values)
    ds = SlidePatchDataset(SlideSpec(case["slide"], path), 4.0, [(0, 0)], 32, 32, THREE)
    assert (ds[0]["mask"].numpy()[:2, :2] == 255).all()


# --- item 5: a mask of another size is refused, never stretched ------------------------------


def test_mask_of_another_size_is_refused_naming_both(case, tmp_path):
    small = np.asarray(Image.open(case["binary"]).resize((1000, 1000), Image.NEAREST))
    path = _png(tmp_path / "small.png", small)
    with pytest.raises(AnnotationError) as err:
        run_to_end(
            iter_finetune(
                case["binary_model"],
                [SlideSpec(case["slide"], path)],
                steps=1,
                device="cpu",
                out=tmp_path / "out.safetensors",
            )
        )
    msg = str(err.value)
    assert msg.startswith(str(path))
    assert "1000 x 1000" in msg
    assert "1536 x 1536" in msg
    assert "384 x 384" in msg
    assert "rasterize" in msg
    assert sorted(p.name for p in tmp_path.iterdir()) == ["small.png"]  # nothing started


def test_mask_at_the_working_resolution_is_read_pixel_for_pixel(case, tmp_path):
    working = case["spec"].mask(4.0)
    assert working.shape == (384, 384)
    path = _png(tmp_path / "working.png", working)
    ds = SlidePatchDataset(SlideSpec(case["slide"], path), 4.0, [(150, 150)], 32, 32, THREE)
    np.testing.assert_array_equal(ds[0]["mask"].numpy(), working[150:182, 150:182])


# --- item 6: an annotation that marks nothing --------------------------------------------------


def _empty_geojson(tmp_path):
    path = tmp_path / "empty.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": []}))
    return path


@pytest.mark.parametrize("kind", ["geojson", "mask"])
def test_empty_annotation_is_refused_before_training(case, tmp_path, kind):
    if kind == "geojson":
        path = _empty_geojson(tmp_path)
    else:
        path = _png(tmp_path / "zeros.png", np.zeros((1536, 1536)))
    out = tmp_path / "out.safetensors"
    gen = iter_finetune(
        case["binary_model"], [SlideSpec(case["slide"], path)], steps=1, device="cpu", out=out
    )
    with pytest.raises(AnnotationError, match="marks no Gland anywhere") as err:
        next(gen)  # refused before the first step
    assert str(err.value).startswith(str(path))
    assert "--regions" in str(err.value)
    assert not out.exists()
    assert not out.with_name("out.run").exists()


def test_empty_annotation_inside_corrected_regions_warns_and_trains(case, tmp_path):
    """With regions, "nothing here" is a correction (false positives removed): a warning."""
    spec = SlideSpec(case["slide"], _empty_geojson(tmp_path), regions=case["regions"])
    out = tmp_path / "out.safetensors"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = run_to_end(
            iter_finetune(
                case["binary_model"],
                [spec],
                steps=1,
                batch_size=2,
                device="cpu",
                out=out,
                held_out_fraction=0,  # one corrected region: none could be kept out anyway
            )
        )
    assert result.model == out
    assert out.exists()
    msgs = [str(w.message) for w in caught if issubclass(w.category, FinetuneWarning)]
    assert len(msgs) == 1
    assert "empty.geojson" in msgs[0]
    assert "regions.geojson" in msgs[0]


# --- item 11: a parent saved in half precision ------------------------------------------------


def test_half_precision_parent_fine_tunes(case, tmp_path):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(case["binary_model"]), framework="pt") as f:
        meta = f.metadata()
    tensors = load_file(str(case["binary_model"]))
    half = tmp_path / "half.safetensors"
    save_file(
        {k: v.half() if v.is_floating_point() else v for k, v in tensors.items()},
        str(half),
        metadata=meta,
    )
    out = tmp_path / "half-ft1.safetensors"
    spec = SlideSpec(case["slide"], case["binary"])
    result = run_to_end(iter_finetune(half, [spec], steps=1, batch_size=2, device="cpu", out=out))
    assert result.model == out
    assert result.steps == 1


def test_training_refuses_a_mask_of_another_size_before_any_batch(case, tmp_path):
    """Training reads masks the same way: the check runs when the datasets are built."""
    from napari_msunet.training.config import TrainConfig
    from napari_msunet.training.run_config import RunConfig, SlideSource
    from napari_msunet.training.slide_dataset import slide_datasets

    path = _png(tmp_path / "small.png", np.zeros((1000, 1000)))
    run = RunConfig(
        out=tmp_path / "run",
        train=TrainConfig(class_names=BINARY, mpp=4.0, patch=32),
        slides=(SlideSource(case["slide"], path),),
    )
    with pytest.raises(AnnotationError, match="is 1000 x 1000 px"):
        slide_datasets(run, 32)
    ok = RunConfig(
        out=tmp_path / "run",
        train=TrainConfig(class_names=BINARY, mpp=4.0, patch=32),
        slides=(SlideSource(case["slide"], case["binary"]),),
    )
    train, _, desc = slide_datasets(ok, 32)
    assert desc[0]["patches"] == len(train[0]) > 0
