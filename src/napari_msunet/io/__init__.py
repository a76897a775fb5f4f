"""Input and output: slides, QuPath annotations, label masks, pyramidal writers.

Everything here is headless (no Qt, no napari). Submodules:

- :mod:`~napari_msunet.io.slide`: :func:`open_slide`, the lazy whole-slide reader.
- :mod:`~napari_msunet.io.annotations`, :mod:`~napari_msunet.io.geojson`: the annotation model
  and QuPath GeoJSON import/export.
- :mod:`~napari_msunet.io.rasterise` / :mod:`~napari_msunet.io.vectorise`: annotations to label
  masks (chunk by chunk) and back.
- :mod:`~napari_msunet.io.writers`: streaming pyramidal OME-Zarr and OME-TIFF writers.

The writers and the GeoJSON export are long work, so each is a generator ``iter_<verb>``
(progress records, a ``stop``; see :mod:`napari_msunet.progress`) with an eager twin
``<verb>``: ``iter_write_ome_zarr`` / ``write_ome_zarr``, ``iter_write_ome_tiff`` /
``write_ome_tiff``, ``iter_export_mask`` / ``export_mask``.
- :mod:`~napari_msunet.io.synthetic`: synthetic slides with a known ground truth.

The functions ``rasterise`` and ``vectorise`` are not re-exported here: they share their
modules' names, and re-exporting them would hide the modules.
"""

from napari_msunet.io.annotations import (
    UNCLASSIFIED,
    Annotation,
    AnnotationSet,
    AnnotationWarning,
    ClassInfo,
)
from napari_msunet.io.geojson import (
    annotations_to_geojson,
    parse_geojson,
    read_geojson,
    write_geojson,
)
from napari_msunet.io.ome_tiff import iter_write_ome_tiff, write_ome_tiff
from napari_msunet.io.ome_zarr import OmeZarrWriter, iter_write_ome_zarr, write_ome_zarr
from napari_msunet.io.rasterise import rasterise_array
from napari_msunet.io.slide import LevelChoice, Slide, SlideWarning, open_slide
from napari_msunet.io.vectorise import export_mask, iter_export_mask

__all__ = [
    "UNCLASSIFIED",
    "Annotation",
    "AnnotationSet",
    "AnnotationWarning",
    "ClassInfo",
    "LevelChoice",
    "OmeZarrWriter",
    "Slide",
    "SlideWarning",
    "annotations_to_geojson",
    "export_mask",
    "iter_export_mask",
    "iter_write_ome_tiff",
    "iter_write_ome_zarr",
    "open_slide",
    "parse_geojson",
    "rasterise_array",
    "read_geojson",
    "write_geojson",
    "write_ome_tiff",
    "write_ome_zarr",
]
