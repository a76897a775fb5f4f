"""napari-msunet: Multi-Scale U-Net segmentation of whole-slide images.

The package root exports only the version so that ``import napari_msunet`` never pulls in
Qt or napari; the compute core (``io``, ``models``, ``training``, ``inference``,
``evaluation``) is headless and the GUI lives in ``napari_msunet._napari``.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("napari-msunet")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
