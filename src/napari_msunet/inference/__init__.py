"""Whole-slide inference: tiling, the generator engine, tissue detection and outputs.

Headless (torch, NumPy, zarr; never Qt or napari). Entry points:

- :func:`iter_predict_slide`: slide + model -> OME-Zarr label and probability pyramids, as a
  generator of :class:`~napari_msunet.progress.Progress` records (:class:`TileProgress` while
  tiles are computed) returning a :class:`PredictionResult`; :func:`predict_slide` is its
  eager twin;
- :func:`predict_array` / :func:`iter_predict_array`: the same tiling on an in-memory image;
- :class:`InferenceConfig`: the settings; :func:`select_device`; :func:`detect_tissue`;
- :func:`read_prediction_record`: what a finished prediction folder's manifest says.

The working-image geometry, tissue detection and device choice live below training
(:mod:`napari_msunet.io.working_image`, :mod:`napari_msunet.io.tissue`,
:mod:`napari_msunet.models.device`) so that training shares them without importing inference;
they are re-exported here for the engine's users.
"""

from napari_msunet.inference.array import iter_predict_array, predict_array
from napari_msunet.inference.config import InferenceConfig
from napari_msunet.inference.device import DeviceSettings, Normalization
from napari_msunet.inference.engine import iter_predict_slide, predict_slide
from napari_msunet.inference.outputs import SlideOutputs
from napari_msunet.inference.progress import PredictionResult, TileProgress
from napari_msunet.inference.tiling import Tile, TilePlan, plan_tiles
from napari_msunet.io.prediction_record import PredictionRecord, read_prediction_record
from napari_msunet.io.tissue import TissueMask, detect_tissue
from napari_msunet.io.working_image import WorkingGeometry, working_geometry
from napari_msunet.models.device import select_device

__all__ = [
    "DeviceSettings",
    "InferenceConfig",
    "Normalization",
    "PredictionRecord",
    "PredictionResult",
    "SlideOutputs",
    "Tile",
    "TilePlan",
    "TileProgress",
    "TissueMask",
    "WorkingGeometry",
    "detect_tissue",
    "iter_predict_array",
    "iter_predict_slide",
    "plan_tiles",
    "predict_array",
    "predict_slide",
    "read_prediction_record",
    "select_device",
    "working_geometry",
]
