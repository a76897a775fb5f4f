"""The layer record: one shape, written and read in one place, plain JSON in the metadata."""

from __future__ import annotations

import copy
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from napari_msunet._napari._layer_info import (
    KEY,
    Kind,
    LayerClass,
    LayerInfo,
    kind_of,
    layer_info,
    prediction_layers,
    set_layer_info,
)
from napari_msunet._napari._layers import remember_slide_mpp, slide_mpp_of, slide_path_of

PREDICTION = LayerInfo(
    kind=Kind.PREDICTION,
    path=Path("/w/case.svs.msunet/predictions/m/labels.ome.zarr"),
    slide=Path("/w/case.svs"),
    mpp=1.0,
    model=Path("/models/m.safetensors"),
    classes=(LayerClass(1, "GC", (0, 160, 255)), LayerClass(2, "Sinus", (255, 0, 0))),
    prediction_dir=Path("/w/case.svs.msunet/predictions/m"),
    probabilities=Path("/w/case.svs.msunet/predictions/m/probabilities.ome.zarr"),
    region=(10, 20, 300, 400),
    details={"note": ("a", 1)},
)


def test_round_trip_through_plain_json_metadata():
    metadata = PREDICTION.as_metadata()
    # plain values only: napari copies metadata, a JSON round trip loses nothing
    assert json.loads(json.dumps(metadata)) == metadata
    assert LayerInfo.from_metadata(copy.deepcopy(metadata)) == PREDICTION
    block = metadata[KEY]
    assert block["kind"] == "prediction"
    assert block["slide"] == "/w/case.svs"
    assert block["region"] == [10, 20, 300, 400]
    assert block["classes"][0] == {"name": "GC", "label": 1, "color": [0, 160, 255]}
    assert "slide_path" not in block


def test_values_are_normalised_and_derived_facts_follow():
    info = LayerInfo(kind="slide", path="/w/case.svs", mpp=np.float64(0.25))
    assert info.kind is Kind.SLIDE
    assert info.path == Path("/w/case.svs")
    assert info.slide == info.path  # a slide lies on itself
    assert type(info.mpp) is float
    assert info.slide_mpp == 0.25
    given = LayerInfo(kind=Kind.SLIDE, path="/w/scan.tif", mpp_given=0.5)
    assert given.mpp is None
    assert given.slide_mpp == 0.5
    assert PREDICTION.class_names == {1: "GC", 2: "Sinus"}
    assert PREDICTION.with_details(shows="GC").details == {"note": ["a", 1], "shows": "GC"}
    with pytest.raises(ValueError, match="field names"):
        LayerInfo(kind=Kind.LABELS, details={"path": "/elsewhere"})
    with pytest.raises(ValueError, match="no-such-kind"):
        LayerInfo(kind="no-such-kind")


def test_foreign_or_broken_metadata_is_tolerated():
    assert LayerInfo.from_metadata({}) is None
    assert LayerInfo.from_metadata({KEY: "not a record"}) is None
    assert LayerInfo.from_metadata({KEY: {"kind": "from-a-future-version"}}) is None
    assert LayerInfo.from_metadata({KEY: {"classes": []}}) is None  # no role
    info = LayerInfo.from_metadata(
        {
            KEY: {
                "kind": "labels",
                "mpp": "not a number",
                "region": [1, 2],
                "classes": [{"label": 1}, {"name": "G", "label": "2"}, "junk"],
                "odd": object(),
                "shown": "kept",
            }
        }
    )
    assert info is not None
    assert info.mpp is None
    assert info.region is None
    assert info.classes == (LayerClass(2, "G"),)
    assert info.details == {"shown": "kept"}


def test_layers_of_others_have_no_record(make_napari_viewer):
    viewer = make_napari_viewer()
    theirs = viewer.add_labels(np.zeros((4, 4), np.uint8), metadata={"other_plugin": {"x": 1}})
    assert layer_info(theirs) is None
    assert kind_of(theirs) is None
    assert layer_info(None) is None
    assert slide_path_of(theirs) is None
    assert prediction_layers(viewer) == []


def test_read_and_written_through_napari_proxies(make_napari_viewer):
    from napari.utils._proxies import PublicOnlyProxy

    viewer = make_napari_viewer()
    slide = LayerInfo(kind=Kind.SLIDE, path="/w/scan.tif")
    layer = viewer.add_image(
        np.zeros((8, 8, 3), np.uint8), rgb=True, metadata={"other": 1, **slide.as_metadata()}
    )
    proxied = PublicOnlyProxy(viewer).layers[0]
    assert proxied is not layer
    assert layer_info(proxied) == slide
    # the µm/px the user enters for a slide whose file does not state it, through the proxy
    remember_slide_mpp(proxied, 0.5)
    assert layer_info(layer).mpp_given == 0.5
    assert slide_mpp_of(layer) == 0.5
    assert layer.metadata["other"] == 1  # other plugins' metadata stays
    # a slide that states its µm/px keeps it
    set_layer_info(proxied, replace(slide, mpp=0.25))
    remember_slide_mpp(layer, 0.5)
    assert layer_info(layer).mpp_given is None
    assert slide_mpp_of(layer) == 0.25


def test_prediction_layers_of_a_slide(make_napari_viewer):
    viewer = make_napari_viewer()
    zeros = np.zeros((4, 4), np.uint8)
    mine = viewer.add_labels(zeros, metadata=PREDICTION.as_metadata())
    other = replace(PREDICTION, slide=Path("/w/other.svs"))
    theirs = viewer.add_labels(zeros, metadata=other.as_metadata())
    anywhere = viewer.add_labels(zeros, metadata=replace(PREDICTION, slide=None).as_metadata())
    viewer.add_labels(zeros, metadata=LayerInfo(kind=Kind.LABELS).as_metadata())
    assert prediction_layers(viewer) == [mine, theirs, anywhere]
    assert prediction_layers(viewer, Path("/w/case.svs")) == [mine, anywhere]
    assert prediction_layers(viewer, "/w/other.svs") == [theirs, anywhere]


def test_a_store_layer_names_mask_regions_store_and_slide(tmp_path):
    from napari_msunet._napari._review_layers import store_info
    from napari_msunet.io.annotation_store import AnnotationStore

    store = AnnotationStore.create(tmp_path / "s", None, (64, 64), classes=["bg", "Gland"])
    try:
        slide = LayerInfo(kind=Kind.SLIDE, path=Path("/x/slide.svs"), mpp=0.5)

        class _Layer:  # what layer_info reads of a napari layer: its metadata
            metadata = slide.as_metadata()

        info = store_info(store, _Layer())
        assert info.kind is Kind.ANNOTATION
        assert info.path == store.mask_path
        assert info.regions == store.regions_path
        assert info.store == store.root
        assert info.slide == Path("/x/slide.svs")
        assert [c.name for c in info.classes] == ["Gland"]
        # survives the trip through plain JSON layer metadata
        assert LayerInfo.from_metadata(json.loads(json.dumps(info.as_metadata()))) == info
    finally:
        store.close()
