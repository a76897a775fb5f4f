"""Whole-slide inference: tiling, the generator engine, tissue detection and outputs.

Headless (torch, NumPy, zarr; never Qt or napari). Entry points:

- :func:`predict_slide`: slide + model -> OME-Zarr label and probability pyramids, as a
  generator of :class:`Progress` returning a :class:`PredictionResult`;
- :func:`predict_array` / :func:`predict_array_iter`: the same tiling on an in-memory image;
- :class:`InferenceConfig`: the settings; :func:`select_device`; :func:`detect_tissue`.
"""

from napari_msunet.inference.array import predict_array, predict_array_iter
from napari_msunet.inference.config import InferenceConfig
from napari_msunet.inference.device import DeviceSettings, Normalization, select_device
from napari_msunet.inference.engine import predict_slide
from napari_msunet.inference.outputs import SlideOutputs
from napari_msunet.inference.progress import PredictionResult, Progress
from napari_msunet.inference.reading import WorkingGeometry, working_geometry
from napari_msunet.inference.tiling import Tile, TilePlan, plan_tiles
from napari_msunet.inference.tissue import TissueMask, detect_tissue

__all__ = [
    "DeviceSettings",
    "InferenceConfig",
    "Normalization",
    "PredictionResult",
    "Progress",
    "SlideOutputs",
    "Tile",
    "TilePlan",
    "TissueMask",
    "WorkingGeometry",
    "detect_tissue",
    "plan_tiles",
    "predict_array",
    "predict_array_iter",
    "predict_slide",
    "select_device",
    "working_geometry",
]
