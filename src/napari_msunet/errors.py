"""The project's exception hierarchy.

Every error a user can trigger with bad input derives from :class:`MsunetError`, so the CLI
and the GUI can catch one type and show its message. Messages name the file and say what is
wrong and, where possible, what to do about it.
"""

from __future__ import annotations

from pathlib import Path


class MsunetError(Exception):
    """Base class of all errors raised on bad input or bad state."""


class _FileError(MsunetError):
    """An error about one file: the message always starts with the file's path."""

    def __init__(self, path: str | Path | None, reason: str) -> None:
        self.path = Path(path) if path is not None else None
        self.reason = reason
        super().__init__(f"{self.path}: {reason}" if self.path is not None else reason)


class SlideError(_FileError):
    """A slide (or plain image) cannot be opened or read."""


class AnnotationError(_FileError):
    """An annotation file (QuPath GeoJSON, a mask) is malformed or does not fit its slide."""


class ModelFileError(_FileError):
    """A model file is not ours, is truncated, or does not match the architecture it names."""


class WriterError(_FileError):
    """An output (OME-Zarr, OME-TIFF) cannot be written."""


class ConfigError(MsunetError):
    """A configuration value is invalid."""


class InputShapeError(MsunetError, ValueError):
    """A tensor given to a model has the wrong shape (channels, rank, or a size the model's
    downsampling does not divide)."""
