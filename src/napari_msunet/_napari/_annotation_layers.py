"""Layer data for QuPath annotations: labels aligned on their slide, or shapes on their own.

Plain ``(data, kwargs, layer_type)`` tuples, so this module needs no napari import.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np

from napari_msunet._napari._layer_info import Kind, LayerClass, LayerInfo
from napari_msunet.io.annotations import AnnotationSet
from napari_msunet.io.geojson import read_geojson
from napari_msunet.io.rasterise import rasterise
from napari_msunet.io.slide import Slide

LayerData = tuple[Any, dict[str, Any], str]


def label_colors(annotations: AnnotationSet) -> dict[int | None, tuple[float, ...]]:
    """napari label colour dict: each class's colour, background transparent."""
    colors: dict[int | None, tuple[float, ...]] = {
        None: (0.0, 0.0, 0.0, 0.0),
        0: (0.0, 0.0, 0.0, 0.0),
    }
    for c in annotations.classes:
        colors[c.label] = (*(v / 255 for v in c.color), 1.0)
    return colors


def _info(path: Path, annotations: AnnotationSet, slide: Slide | None) -> LayerInfo:
    return LayerInfo(
        kind=Kind.ANNOTATION,
        path=path,
        slide=slide.path if slide is not None else None,
        classes=tuple(LayerClass(c.label, c.name, c.color) for c in annotations.classes),
    )


def annotation_layers(path: Path, slide: Slide | None) -> list[LayerData]:
    """Layers for a QuPath GeoJSON file.

    With its slide (found next to it by name) the annotation becomes a multiscale Labels layer
    rasterised lazily, level by level and chunk by chunk, on the slide's own pyramid and µm
    scale, so it lies exactly on the slide and holes stay holes. Without a slide it becomes a
    Shapes layer in level-0 pixels (outer rings only: napari shapes cannot have holes).
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        annotations = read_geojson(path, slide_shape=slide.shape if slide else None)
    notes = [str(w.message) for w in caught]
    meta = _info(path, annotations, slide).with_details(warnings=notes).as_metadata()
    if slide is not None:
        levels = [
            rasterise(
                annotations,
                slide.shape,
                downsample=d,
                level_shape=shape,
                labels=annotations.class_to_label,
                chunks=1024,
            )
            for d, shape in zip(slide.downsamples, slide.level_shapes, strict=True)
        ]
        scale = (slide.mpp, slide.mpp) if slide.mpp else (1.0, 1.0)
        kwargs: dict[str, Any] = {
            "name": path.name,
            "multiscale": True,
            "scale": scale,
            "opacity": 0.5,
            "colormap": label_colors(annotations),
            "metadata": meta,
        }
        if slide.mpp:
            kwargs["units"] = ("um", "um")
        return [(levels, kwargs, "labels")]

    shapes, faces = [], []
    colour = {c.name: c.color for c in annotations.classes}
    for ann in annotations:
        polys = getattr(ann.geometry, "geoms", [ann.geometry])
        for poly in polys:
            xy = np.asarray(poly.exterior.coords)[:-1]
            shapes.append(xy[:, ::-1])  # napari wants (y, x)
            faces.append((*(v / 255 for v in colour[ann.class_name]), 0.4))
    kwargs = {
        "name": path.name,
        "shape_type": "polygon",
        "face_color": faces or "transparent",
        "edge_color": [(*f[:3], 1.0) for f in faces] or "white",
        "edge_width": 2,
        "metadata": meta,
    }
    return [(shapes, kwargs, "shapes")]
