"""Long work is a generator (GUIDE): how it is asked to stop, and how a caller runs it out.

Every core generator takes a ``stop`` request (a ``threading.Event`` or a callable returning
True) and checks it between batches; scripts and tests that want only the result use
:func:`run_to_end`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Generator
from typing import TypeVar

__all__ = ["Stop", "run_to_end", "stopped"]

Stop = Callable[[], bool] | threading.Event | None
"""A stop request: a callable returning True, or a ``threading.Event``; checked per batch."""

R = TypeVar("R")


def run_to_end(gen: Generator[object, None, R]) -> R:
    """Drive ``gen`` to its end, dropping its progress records, and return its return value."""
    while True:
        try:
            next(gen)
        except StopIteration as done:
            return done.value


def stopped(stop: Stop) -> bool:
    """Whether ``stop`` asks to stop now."""
    if stop is None:
        return False
    if isinstance(stop, threading.Event):
        return stop.is_set()
    return bool(stop())
