"""Where the files that ship with the package are: the bundled model and the sample patches.

Kept in the models layer so that training (a new model transfers from the bundled one) and
the margin measurement (calibrated on the sample tissue) find them without importing the demo.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from napari_msunet.errors import ModelFileError

__all__ = ["bundled_model_path", "sample_data_dir"]


def _data(name: str) -> Path:
    return Path(str(files("napari_msunet") / "data" / name))


def bundled_model_path() -> Path:
    """The bundled default model (MS U-Net trained on the EBHI-Seg training split)."""
    path = _data("default_model.safetensors")
    if not path.is_file():
        raise ModelFileError(path, "the bundled default model is missing from this install")
    return path


def sample_data_dir() -> Path:
    """Folder of the bundled EBHI-Seg sample (``images/``, ``masks/``, ``index.csv``)."""
    return _data("ebhi_sample")
