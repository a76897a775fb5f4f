"""The napari reader in a real viewer: slides as multiscale images in µm, GeoJSON aligned."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_msunet._napari._layer_info import Kind, layer_info
from napari_msunet._napari._overlay_style import OUTLINE_PX
from napari_msunet._napari._reader import napari_get_reader
from napari_msunet.io.synthetic import SyntheticSlideSpec, write_synthetic_slide

SPEC = SyntheticSlideSpec(1500, 2000, seed=5, mpp=0.5)


@pytest.fixture(scope="module")
def slide_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("reader")
    write_synthetic_slide(root / "case.svs", SPEC, "svs", tile=256)
    SPEC.write_geojson(root / "case.geojson")
    SPEC.write_geojson(root / "orphan.geojson")
    return root


def test_slide_opens_as_multiscale_image_in_um(make_napari_viewer, slide_dir):
    viewer = make_napari_viewer()
    layers = viewer.open(str(slide_dir / "case.svs"), plugin="napari-msunet")
    assert len(layers) == 1
    layer = layers[0]
    assert layer.multiscale
    assert layer.rgb
    assert len(layer.data) >= 2
    assert tuple(layer.scale) == pytest.approx((0.5, 0.5))
    assert layer.data[0].shape == (1500, 2000, 3)
    info = layer_info(layer)
    assert info.kind is Kind.SLIDE
    assert info.path == slide_dir / "case.svs"
    assert info.mpp == pytest.approx(0.5)


def test_geojson_opens_as_labels_on_its_slide(make_napari_viewer, slide_dir):
    viewer = make_napari_viewer()
    viewer.open(str(slide_dir / "case.svs"), plugin="napari-msunet")
    (labels,) = viewer.open(str(slide_dir / "case.geojson"), plugin="napari-msunet")
    assert labels.multiscale
    assert tuple(labels.scale) == pytest.approx((0.5, 0.5))
    assert [d.shape for d in labels.data] == [d.shape[:2] for d in viewer.layers[0].data]
    # the rasterised annotation agrees with the analytic ground truth (polygons vs ellipses)
    got = np.asarray(labels.data[1])
    truth = SPEC.mask(downsample=labels.data[0].shape[0] / labels.data[1].shape[0])
    agree = (got > 0) == (truth[: got.shape[0], : got.shape[1]] > 0)
    assert agree.mean() > 0.99
    info = layer_info(labels)
    assert info.kind is Kind.ANNOTATION
    assert info.slide == slide_dir / "case.svs"
    # drawn as outlines over the tissue, not as a fill that hides it
    assert labels.contour == OUTLINE_PX
    assert labels.opacity == 1.0
    assert viewer.layers[0].opacity == 1.0  # the slide itself untouched
    assert {c.name for c in info.classes} == {"Germinal centre", "Sinus"}
    # the class colour is what napari draws
    gc = next(c for c in info.classes if c.name == "Germinal centre")
    np.testing.assert_allclose(
        labels.colormap.map(np.array([gc.label]))[0][:3], np.array(gc.color) / 255, atol=0.01
    )


def test_geojson_without_slide_opens_as_shapes(make_napari_viewer, slide_dir):
    viewer = make_napari_viewer()
    (shapes,) = viewer.open(str(slide_dir / "orphan.geojson"), plugin="napari-msunet")
    assert shapes._type_string == "shapes"
    assert len(shapes.data) == SPEC.n_regions


def test_differently_named_geojson_is_aligned_to_the_open_slide_it_fits(
    make_napari_viewer, slide_dir, tmp_path
):
    """QuPath exports are often named unlike the slide: its coordinates find the slide."""
    other = tmp_path / "exported by a colleague.geojson"
    other.write_bytes((slide_dir / "orphan.geojson").read_bytes())
    viewer = make_napari_viewer()
    viewer.open(str(slide_dir / "case.svs"), plugin="napari-msunet")
    (labels,) = viewer.open(str(other), plugin="napari-msunet")
    assert labels._type_string == "labels"  # an annotation layer, not shapes in pixels
    assert labels.multiscale
    assert tuple(labels.scale) == pytest.approx((0.5, 0.5))  # on the slide, in µm
    assert [d.shape for d in labels.data] == [d.shape[:2] for d in viewer.layers[0].data]
    info = layer_info(labels)
    assert info.kind is Kind.ANNOTATION
    assert info.slide == slide_dir / "case.svs"


def test_geojson_that_fits_no_open_slide_says_so(make_napari_viewer, slide_dir, tmp_path):
    import shapely

    from napari_msunet.io.annotations import Annotation, AnnotationSet
    from napari_msunet.io.geojson import write_geojson

    big = AnnotationSet.from_annotations([Annotation(shapely.box(5000, 5000, 6000, 6000), "GC")])
    path = write_geojson(big, tmp_path / "from a bigger slide.geojson")
    viewer = make_napari_viewer()
    viewer.open(str(slide_dir / "case.svs"), plugin="napari-msunet")
    (shapes,) = viewer.open(str(path), plugin="napari-msunet")
    assert shapes._type_string == "shapes"  # not forced onto a slide it does not fit


def test_reader_returns_none_for_what_it_cannot_read(tmp_path):
    (tmp_path / "x.svs").write_bytes(b"")
    (tmp_path / "notes.json").write_text(json.dumps({"hello": "world"}))
    (tmp_path / "broken.geojson").write_text("{ not json")
    for name in ("x.svs", "notes.json", "broken.geojson", "missing.tif"):
        assert napari_get_reader(str(tmp_path / name)) is None
    assert napari_get_reader([str(tmp_path / "a.svs"), str(tmp_path / "b.svs")]) is None


def test_label_mask_zarr_opens_on_the_slide(make_napari_viewer, slide_dir, tmp_path):
    from napari_msunet.io.ome_zarr import write_ome_zarr

    mask = SPEC.mask()
    out = write_ome_zarr(
        tmp_path / "labels.ome.zarr",
        mask,
        kind="labels",
        mpp=0.5,
        class_names=["background", "Germinal centre", "Sinus"],
        class_colors=[[0, 0, 0, 0], [0, 200, 0, 255], [0, 0, 200, 255]],
    )
    viewer = make_napari_viewer()
    viewer.open(str(slide_dir / "case.svs"), plugin="napari-msunet")
    (labels,) = viewer.open(str(out), plugin="napari-msunet")
    assert labels.multiscale
    assert tuple(labels.scale) == pytest.approx((0.5, 0.5))
    np.testing.assert_array_equal(np.asarray(labels.data[0]), mask)
    np.testing.assert_allclose(
        labels.colormap.map(np.array([1]))[0][:3], [0, 200 / 255, 0], atol=0.01
    )
