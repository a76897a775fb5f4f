"""Segmentation networks (MS U-Net, U-Net, Attention U-Net), their registry and model files.

Headless: imports torch and safetensors, never Qt or napari.
"""

from napari_msunet.models.attention_unet import AttentionUNet
from napari_msunet.models.base import SegmentationModel, crop_to, pad_to_multiple
from napari_msunet.models.checkpoint import ModelHeader, load_model, read_header, save_model
from napari_msunet.models.config import PRESETS, ModelConfig, make_config
from napari_msunet.models.msunet import MSUNet
from napari_msunet.models.receptive_field import measure_receptive_radius
from napari_msunet.models.registry import MODELS, build_from_config, build_model, get_model_class
from napari_msunet.models.unet import UNet

__all__ = [
    "MODELS",
    "PRESETS",
    "AttentionUNet",
    "MSUNet",
    "ModelConfig",
    "ModelHeader",
    "SegmentationModel",
    "UNet",
    "build_from_config",
    "build_model",
    "crop_to",
    "get_model_class",
    "load_model",
    "make_config",
    "measure_receptive_radius",
    "pad_to_multiple",
    "read_header",
    "save_model",
]
