"""The project's exception hierarchy.

Every error a user can trigger with bad input derives from :class:`MsunetError`, so the CLI
and the GUI can catch one type and show its message. Messages name the file and say what is
wrong and, where possible, what to do about it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


def brief(values: Any, limit: int = 5, *, _depth: int = 0) -> str:
    """A short text for a value read from a file, for error messages.

    A list shows its first ``limit`` items and how many there are in all; a long string its
    start and its length; anything else its ``repr`` cut to a line. Files are untrusted input:
    echoing a list of 10⁶ class names made a 10.9 MB message, and a 10⁵-deep list a
    RecursionError.
    """
    if isinstance(values, str):
        return (
            repr(values) if len(values) <= 60 else f"{values[:40]!r}... ({len(values)} characters)"
        )
    if isinstance(values, Sequence | set | frozenset | Mapping):
        items = list(values)
        if _depth >= 3:  # nested lists of lists: the shape is enough
            return f"[... ({len(items)} items)]"
        shown = ", ".join(brief(v, limit, _depth=_depth + 1) for v in items[:limit])
        if len(items) > limit:
            return f"[{shown}, ... ({len(items)} in all)]"
        return f"[{shown}]"
    try:
        text = repr(values)
    except ValueError:  # an integer of more than 4300 digits has no repr
        return f"<a {type(values).__name__} too long to show>"
    return text if len(text) <= 80 else f"{text[:60]}... ({type(values).__name__})"


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
