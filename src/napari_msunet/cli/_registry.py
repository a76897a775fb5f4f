"""The command registry shared by the ``msunet`` sub-command modules."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {}


def command(name: str):
    """Register the decorated function as the handler of ``msunet NAME``."""

    def register(fn: Callable[[argparse.Namespace], int]):
        COMMANDS[name] = fn
        return fn

    return register


def drive(gen, desc: str, unit: str):
    """Run a progress generator under a tqdm bar; return its result. Ctrl-C closes it."""
    from tqdm import tqdm

    bar = None
    try:
        while True:
            rec = next(gen)
            if bar is None:
                bar = tqdm(total=rec.total, desc=desc, unit=unit)
            bar.n = rec.done
            bar.set_postfix_str(getattr(rec, "message", "") or "", refresh=True)
    except StopIteration as stop:
        return stop.value
    except KeyboardInterrupt:
        gen.close()
        raise
    finally:
        if bar is not None:
            bar.close()


def stem(path: Path) -> str:
    name = path.name
    for suffix in (".ome.tiff", ".ome.tif"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem
