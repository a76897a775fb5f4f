"""The command registry shared by the ``msunet`` sub-command modules."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {}

PARSERS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None]]] = {}
"""Commands that declare their own arguments: name -> (help, function adding them)."""


def command(
    name: str,
    *,
    help: str = "",
    arguments: Callable[[argparse.ArgumentParser], None] | None = None,
):
    """Register the decorated function as the handler of ``msunet NAME``.

    With ``arguments``, the command also declares its own sub-parser (``help`` and a function
    adding its arguments), which :func:`add_parsers` adds, so that a command lives in one
    place; the older commands' arguments are in :func:`napari_msunet.cli.build_parser`.
    """

    def register(fn: Callable[[argparse.Namespace], int]):
        COMMANDS[name] = fn
        if arguments is not None:
            PARSERS[name] = (help, arguments)
        return fn

    return register


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Add the sub-parsers of the commands that declare their own arguments (see
    :func:`command`) to ``sub``, the ``msunet`` parser's sub-commands."""
    for name, (text, arguments) in PARSERS.items():
        if name not in sub.choices:
            arguments(sub.add_parser(name, help=text))


def stem(path: Path) -> str:
    """A slide's name for its output folder: the file name without its extension, or for a
    DICOM WSI (a folder of ``.dcm`` files, one per level) the folder's name."""
    name = path.name
    if name.lower().endswith(".dcm"):
        return path.resolve().parent.name
    for suffix in (".ome.tiff", ".ome.tif"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem
