"""Small real inputs for the fine-tune GUI tests: a synthetic slide, an annotation store
(OME-Zarr label mask + corrected-regions GeoJSON, as the Review widget keeps them) and a tiny
3-class model file, plus a viewer holding the slide and the annotation layer."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from napari_msunet._napari._layer_info import Kind, LayerInfo
from napari_msunet._napari._reader import mask_layer, slide_layer
from napari_msunet.io.ome_zarr import write_ome_zarr
from napari_msunet.io.slide import open_slide
from napari_msunet.io.synthetic import SyntheticSlideSpec, write_synthetic_slide
from napari_msunet.models import build_model
from napari_msunet.models.checkpoint import ModelHeader, save_model

NAMES = ("Background", "Germinal centre", "Sinus")


@dataclass(frozen=True)
class Case:
    slide: Path
    mask: Path
    regions: Path
    geojson: Path
    parent: Path


def make_case(root: Path, size: int = 1024) -> Case:
    spec = SyntheticSlideSpec(size, size, seed=4, mpp=1.0, n_regions=6, region_size=(0.06, 0.1))
    slide = write_synthetic_slide(root / "slide.svs", spec, "svs")
    geojson = spec.write_geojson(root / "slide.geojson")
    store = root / "annotation"
    store.mkdir()
    mask = write_ome_zarr(
        store / "mask.ome.zarr",
        spec.mask(),
        kind="labels",
        mpp=1.0,
        class_names=list(NAMES),
    )
    a, b = size // 4, 3 * size // 4
    box = [[a, a], [b, a], [b, b], [a, b], [a, a]]
    regions = store / "corrected.geojson"
    regions.write_text(
        json.dumps(
            {
                "type": "FeatureCollection",
                "features": [
                    {
                        "type": "Feature",
                        "geometry": {"type": "Polygon", "coordinates": [box]},
                        "properties": {
                            "objectType": "annotation",
                            "classification": {"name": "Corrected"},
                        },
                    }
                ],
            }
        )
    )
    torch.manual_seed(0)
    model = build_model("msunet", preset="lite", n_classes=3, widths=[8, 16, 32])
    header = ModelHeader.for_model(
        model,
        class_names=NAMES,
        input_um_per_px=2.0,
        norm_mean=(0.5,) * 3,
        norm_std=(0.25,) * 3,
        tile_size=64,
    )
    (root / "models").mkdir()
    parent = save_model(root / "models" / "tiny.safetensors", model, header)
    return Case(slide, mask, regions, geojson, parent)


def open_in_viewer(viewer, case: Case):
    """The slide layer (from our reader) and the annotation layer (as Review makes it)."""
    data, kwargs, _ = slide_layer(open_slide(case.slide))
    slide = viewer.add_image(data, **kwargs)
    data, kwargs, _ = mask_layer(case.mask)
    kwargs["name"] = "annotation (corrected)"
    kwargs["metadata"] = replace(
        LayerInfo.from_metadata(kwargs["metadata"]),
        kind=Kind.ANNOTATION,
        regions=case.regions,
        slide=case.slide,
    ).as_metadata()
    annotation = viewer.add_labels(data, **kwargs)
    return slide, annotation
