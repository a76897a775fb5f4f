"""Small slides in formats only OpenSlide reads, written here so that no test depends on a
download: a DICOM whole-slide image (VL Whole Slide Microscopy, TILED_FULL, uncompressed RGB,
one file per pyramid level, with pydicom) and a Hamamatsu VMS (an index file, a JPEG with a
restart marker after every MCU row, and its map image, with Pillow)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

WSI_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.77.1.6"


def write_dicom_wsi(folder: Path, image: np.ndarray, mpp: float, tile: int = 256) -> Path:
    """Write ``image`` (RGB uint8) and its 2x-subsampled levels down to one tile; return the
    level-0 file (open it, or any file of the folder, with OpenSlide)."""
    from pydicom.uid import generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    uids = {"study": generate_uid(), "series": generate_uid(), "frame": generate_uid()}
    level, k, first = image, 0, None
    while True:
        path = folder / f"level{k}.dcm"
        _write_level(path, level, tile, mpp * 2**k, uids, k)
        first = first or path
        if max(level.shape[:2]) <= tile:
            return first
        level, k = level[::2, ::2], k + 1


def _write_level(path: Path, image: np.ndarray, tile: int, mpp: float, uids: dict, k: int):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.sequence import Sequence
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    h, w = image.shape[:2]
    frames = []
    for r in range(-(-h // tile)):
        for c in range(-(-w // tile)):
            frame = np.full((tile, tile, 3), 255, np.uint8)
            block = image[r * tile : (r + 1) * tile, c * tile : (c + 1) * tile]
            frame[: block.shape[0], : block.shape[1]] = block
            frames.append(frame.tobytes())
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = WSI_SOP_CLASS
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = WSI_SOP_CLASS, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = uids["study"], uids["series"]
    ds.FrameOfReferenceUID = uids["frame"]
    ds.Modality = "SM"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "VOLUME", "NONE"] if k == 0 else [
        "DERIVED", "PRIMARY", "VOLUME", "RESAMPLED"]  # fmt: skip
    ds.Rows = ds.Columns = tile
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.NumberOfFrames = len(frames)
    ds.TotalPixelMatrixColumns, ds.TotalPixelMatrixRows = w, h
    ds.TotalPixelMatrixFocalPlanes = ds.NumberOfOpticalPaths = 1
    ds.DimensionOrganizationType = "TILED_FULL"
    ds.ImagedVolumeWidth, ds.ImagedVolumeHeight = w * mpp / 1000, h * mpp / 1000
    ds.ImagedVolumeDepth = 0.001
    measures = Dataset()
    measures.PixelSpacing = [mpp / 1000, mpp / 1000]  # mm
    measures.SliceThickness = 0.001
    shared = Dataset()
    shared.PixelMeasuresSequence = Sequence([measures])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    origin = Dataset()
    origin.XOffsetInSlideCoordinateSystem = origin.YOffsetInSlideCoordinateSystem = 0
    ds.TotalPixelMatrixOriginSequence = Sequence([origin])
    ds.PixelData = b"".join(frames)
    ds.save_as(path, enforce_file_format=True)


def write_vms(folder: Path, image: np.ndarray, mpp: float) -> Path:
    """Write ``image`` (RGB uint8; sides multiples of 8) as a Hamamatsu VMS; return the .vms.

    OpenSlide reads a VMS JPEG by its restart intervals, which must not be longer than one
    row of MCUs: so 4:4:4 (8 x 8 MCUs) with a restart marker after every MCU row. The
    physical size is in nanometres; OpenSlide derives µm/px from it.
    """
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    options = {"quality": 95, "subsampling": 0, "restart_marker_rows": 1}
    Image.fromarray(image).save(folder / "image.jpg", **options)
    Image.fromarray(np.ascontiguousarray(image[::8, ::8])).save(folder / "map.jpg", **options)
    h, w = image.shape[:2]
    index = folder / "slide.vms"
    index.write_text(
        "[Virtual Microscope Specimen]\n"
        "NoLayers=1\nNoJpegColumns=1\nNoJpegRows=1\n"
        "ImageFile=image.jpg\nMapFile=map.jpg\n"
        f"PhysicalWidth={round(w * mpp * 1000)}\nPhysicalHeight={round(h * mpp * 1000)}\n"
        "SourceLens=20\n"
    )
    return index
