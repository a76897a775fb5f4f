"""Long work is a generator (GUIDE); scripts and tests that want only its result run it out."""

from __future__ import annotations

from collections.abc import Generator
from typing import TypeVar

__all__ = ["run_to_end"]

R = TypeVar("R")


def run_to_end(gen: Generator[object, None, R]) -> R:
    """Drive ``gen`` to its end, dropping its progress records, and return its return value."""
    while True:
        try:
            next(gen)
        except StopIteration as done:
            return done.value
