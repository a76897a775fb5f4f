"""The contract of long work (GUIDE: "Long work is a generator"): one record, one stop, one rule.

Every long operation of the core (predict, evaluate, compare, find missing annotations, build an
annotation store, train, fine-tune, write a pyramid, export a mask) is a generator that

- yields :class:`Progress` records only (training's records are subclasses of it, with the
  loss or the validation scores as extra fields), so a driver reads ``done``, ``total``,
  ``stage`` and ``message`` from any of them and never parses text;
- takes one ``stop`` (a :data:`Stop`: a ``threading.Event`` or a callable returning True) and
  checks it only through :func:`stopped`, between batches; a stopped generator *returns*
  normally with what it finished (its return value says it stopped);
- on a stop or ``close()`` leaves nothing half written under a final name: files appear by
  atomic rename only when complete. Work meant to be resumed (a prediction's tiles, a training
  run's checkpoint) stays under its documented ``.partial`` / run-state names.

Naming rule: the generator is ``iter_<verb>`` and its eager twin ``<verb>`` (same arguments)
runs it with :func:`run_to_end` and returns the same value (``iter_predict_slide`` /
``predict_slide``, ``iter_train`` / ``train``, ``iter_write_ome_zarr`` / ``write_ome_zarr`` ...).

The CLI drives any of them with one tqdm driver (``napari_msunet.cli._drive.drive``), the GUI with
one napari worker runner (``napari_msunet._napari._tasks.start_task``).
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import ParamSpec, TypeVar

__all__ = ["Progress", "Stop", "eager", "run_to_end", "stopped"]

Stop = Callable[[], bool] | threading.Event | None
"""A stop request: a callable returning True, or a ``threading.Event``; checked per batch."""

R = TypeVar("R")
P = ParamSpec("P")


@dataclass(frozen=True)
class Progress:
    """Where a piece of long work stands; the one record every core generator yields.

    Attributes
    ----------
    done, total
        Units finished and units in all (tiles, windows, steps, blocks: ``stage`` says which).
        ``total`` may be 0 when there is nothing to count.
    stage
        A short machine-readable name of the phase (``"tiles"``, ``"pyramid"``, ``"count"``,
        ``"train"``, ``"validate"``, ``"write"`` ...): drivers start a new bar when it
        changes and widgets branch on it, never on ``message``.
    message
        One line for a person (status bar, tqdm postfix).
    elapsed_s
        Seconds since the operation started (0.0 when not measured).
    """

    done: int
    total: int
    stage: str
    message: str = ""
    elapsed_s: float = 0.0

    @property
    def fraction(self) -> float:
        """``done / total``; 1.0 when there is nothing to count."""
        return self.done / self.total if self.total else 1.0


def run_to_end(gen: Generator[Progress, None, R]) -> R:
    """Drive ``gen`` to its end, dropping its progress records, and return its return value.

    The eager twin of every ``iter_<verb>`` generator is ``run_to_end(iter_<verb>(...))``.
    """
    while True:
        try:
            next(gen)
        except StopIteration as done:
            return done.value


def eager(gen_fn: Callable[P, Generator[Progress, None, R]]) -> Callable[P, R]:
    """The eager twin of ``iter_<verb>``: same arguments, runs it to the end, returns its value.

    ``predict_slide = eager(iter_predict_slide)`` is the whole definition of a twin, so the two
    can never drift apart.
    """
    name = gen_fn.__name__.removeprefix("iter_")

    @functools.wraps(gen_fn)
    def twin(*args: P.args, **kwargs: P.kwargs) -> R:
        return run_to_end(gen_fn(*args, **kwargs))

    twin.__name__ = name
    twin.__qualname__ = gen_fn.__qualname__.replace(gen_fn.__name__, name)
    twin.__doc__ = (
        f"Run :func:`{gen_fn.__name__}` to its end and return its result (same arguments; "
        "its progress records are dropped)."
    )
    del twin.__wrapped__  # introspection shows the twin's own docstring, not the generator's
    return twin


def stopped(stop: Stop) -> bool:
    """Whether ``stop`` asks to stop now."""
    if stop is None:
        return False
    if isinstance(stop, threading.Event):
        return stop.is_set()
    return bool(stop())
