"""Sample data: a small real slide with its annotation, so a new user can try everything.

The slide is the demo's EBHI-Seg mosaic (48 colon-biopsy patches from the validation split the
bundled model never trained on, tiled into an SVS-like pyramid at about 1 µm/px) with its QuPath
GeoJSON annotation. It is built once into the user's cache folder (``NAPARI_MSUNET_CACHE`` or
``XDG_CACHE_HOME`` when set, else ``~/.cache``) and reused; its workspace (predictions,
corrections) sits next to it there.

EBHI-Seg: Shi et al., Frontiers in Medicine 10:1114673 (2023), CC BY 4.0.
"""

from __future__ import annotations

import warnings
from typing import Any

from napari.utils.notifications import show_info

from napari_msunet._napari._layer_info import LayerInfo
from napari_msunet._napari._reader import _current_viewer, geojson_layers, slide_layer
from napari_msunet._napari._responsive import wait_responsively
from napari_msunet._napari._viewer_setup import prepare_viewer
from napari_msunet._napari._warm_up import warm_up
from napari_msunet._napari._workspace import _cache_root

__all__ = ["CREDIT", "sample_slide"]

CREDIT = (
    "EBHI-Seg, Shi et al., Front. Med. 10:1114673 (2023), CC BY 4.0 (doi:10.3389/fmed.2023.1114673)"
)


def sample_slide() -> list[tuple[Any, dict[str, Any], str]]:
    """The EBHI-Seg mosaic slide and its annotation as napari layer-data tuples.

    The slide is the reader's multiscale image in µm (kind "slide"); the annotation is the
    GeoJSON rasterised on the slide's pyramid (Labels, aligned on it). Both credit EBHI-Seg
    in their name and metadata.
    """
    from napari_msunet.demo import build_sample_slide
    from napari_msunet.io.slide import open_slide

    prepare_viewer(_current_viewer())  # outlines, spinner check, short notifications

    def build() -> list:
        files = build_sample_slide(_cache_root() / "sample")  # written at the first use
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            slide = open_slide(files.slide)
        layers = [slide_layer(slide), *geojson_layers(files.annotation)]
        warm_up().wait()  # napari makes a Labels layer next: its colouring compiled first
        return layers

    layers = wait_responsively("sample", build)  # the window draws meanwhile
    names = ["EBHI-Seg sample slide", "EBHI-Seg annotation"]
    for (_, kwargs, _), name in zip(layers, names, strict=False):
        kwargs["name"] = name
        info = LayerInfo.from_metadata(kwargs["metadata"])
        assert info is not None  # the reader's layers always carry their record
        kwargs["metadata"] = info.with_details(credit=CREDIT).as_metadata()
    show_info(f"Sample slide from {CREDIT}")
    return layers
