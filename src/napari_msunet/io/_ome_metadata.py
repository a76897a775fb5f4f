"""OME metadata of the written outputs: OME-NGFF 0.5 attributes and tifffile's OME-XML input.

Both describe the same pyramid (see :mod:`napari_msunet.io.writers`): level ``k`` has scale
``mpp * 2**k`` µm (pixels when the size is unknown), labels carry their class names and colours,
probability channels their class names.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from napari_msunet.io.writers import Kind


def ngff_metadata(
    kind: Kind,
    name: str,
    n_levels: int,
    mpp: float | None,
    dtype: np.dtype,
    n_channels: int,
    class_names: list[str] | None,
    class_colors: list[list[int]],
) -> dict[str, Any]:
    """OME-NGFF 0.5 ``ome`` attributes: multiscales, plus image-label or omero channels."""
    unit = {"unit": "micrometer"} if mpp is not None else {}
    axes: list[dict[str, Any]] = [
        {"name": "y", "type": "space", **unit},
        {"name": "x", "type": "space", **unit},
    ]
    if kind == "probabilities":
        axes.insert(0, {"name": "c", "type": "channel"})
    base = 1.0 if mpp is None else mpp
    datasets = []
    for level in range(n_levels):
        s = base * 2**level
        scale = [s, s] if kind == "labels" else [1.0, s, s]
        datasets.append(
            {
                "path": str(level),
                "coordinateTransformations": [{"type": "scale", "scale": scale}],
            }
        )
    method = "subsample" if kind == "labels" else "mean"
    ome: dict[str, Any] = {
        "version": "0.5",
        "multiscales": [
            {
                "name": name,
                "axes": axes,
                "datasets": datasets,
                "type": method,
                "metadata": {
                    "description": "labels: level[k] = level[k-1][::2, ::2]"
                    if kind == "labels"
                    else "probabilities: mean of 2 x 2 blocks (edges padded by repetition)",
                    "method": f"napari_msunet.io.writers.downsample ({method})",
                },
            }
        ],
    }
    names = class_names or []
    if kind == "labels":
        ome["image-label"] = {
            "colors": [{"label-value": i, "rgba": c} for i, c in enumerate(class_colors)],
            "properties": [{"label-value": i, "class": n} for i, n in enumerate(names)],
        }
    else:
        hi = 1.0 if np.issubdtype(dtype, np.floating) else float(np.iinfo(dtype).max)
        ome["omero"] = {
            "channels": [
                {
                    "label": names[i] if i < len(names) else f"class {i}",
                    "color": "{:02X}{:02X}{:02X}".format(*class_colors[i][:3]),
                    "window": {"start": 0.0, "end": hi, "min": 0.0, "max": hi},
                    "active": True,
                }
                for i in range(n_channels)
            ]
        }
    return ome


def ome_xml_metadata(
    kind: Kind, mpp: float | None, names: list[str] | None, colors: list[list[int]]
) -> dict[str, Any]:
    """tifffile ``metadata`` for the OME-XML of the first image."""
    meta: dict[str, Any] = {"axes": "YX" if kind == "labels" else "CYX"}
    if mpp is not None:
        meta |= {
            "PhysicalSizeX": mpp,
            "PhysicalSizeXUnit": "µm",
            "PhysicalSizeY": mpp,
            "PhysicalSizeYUnit": "µm",
        }
    if kind == "labels":
        classes = {
            str(i): json.dumps({"class": names[i] if names else None, "rgba": c})
            for i, c in enumerate(colors)
        }
        meta["MapAnnotation"] = {"Namespace": "napari-msunet/classes", **classes}
        meta["Description"] = "label map; lower levels: level[k] = level[k-1][::2, ::2]"
    else:
        labels = names or [f"class {i}" for i in range(len(colors))]
        # OME colours are signed 32-bit RGBA integers
        rgba = [int.from_bytes(bytes(c), "big", signed=True) for c in colors]
        meta["Channel"] = {"Name": labels, "Color": rgba}
        meta["Description"] = "class probabilities; lower levels: mean of 2 x 2 blocks"
    return meta
