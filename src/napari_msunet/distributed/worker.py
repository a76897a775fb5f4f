"""What runs on a dask worker: one slide's prediction, with the model loaded once per worker.

The model reaches the worker as a file path (shared storage) or as the file's bytes (scattered
once to every worker by the client, written to a worker-local file named by its SHA-256 and
read like any model file): never as a pickled network, so a worker runs only weights read by
the same safetensors loader as ``msunet predict``. Loaded models stay in a per-process cache
keyed by that SHA-256.

The slide's own dask work (building the pyramid) runs on the worker's threads, never as
tasks of the cluster (see :func:`predict_slide_task`).

On a machine with several GPUs each worker of a local cluster takes the GPU of its index
(workers are named 0..N-1); on the CPU each worker uses the torch threads the client gives it
(the cores split between workers).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading
import time
import warnings
from pathlib import Path
from typing import Any

__all__ = ["predict_slide_task"]

_models: dict[str, tuple[Any, Any]] = {}
_lock = threading.Lock()


def _model_file(model: str | bytes, sha256: str) -> Path:
    """A local file holding the model: its path, or the shipped bytes written once."""
    if isinstance(model, bytes):
        folder = Path(tempfile.gettempdir()) / "napari-msunet-models"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{sha256}.safetensors"
        if not path.is_file():
            from napari_msunet._atomic import atomic_write_bytes

            atomic_write_bytes(path, model, overwrite=True)
        return path
    return Path(model)


def _load(model: str | bytes, sha256: str) -> tuple[Any, Any]:
    from napari_msunet.errors import ModelFileError
    from napari_msunet.models.checkpoint import load_model

    with _lock:
        if sha256 in _models:
            return _models[sha256]
        path = _model_file(model, sha256)
        if not path.is_file():
            raise ModelFileError(
                path,
                f"not found on worker {_worker_name()}: put the model on storage every worker "
                "sees, or ship it to the workers (--ship-model)",
            )
        if hashlib.sha256(path.read_bytes()).hexdigest() != sha256:
            raise ModelFileError(path, f"differs on worker {_worker_name()} from the client's")
        _models[sha256] = load_model(path)
        return _models[sha256]


def _worker_name() -> str:
    try:
        from distributed import get_worker

        return str(get_worker().name)
    except (ImportError, ValueError):
        return "local"


def _device(device: str) -> str:
    """``device``, or for ``auto``/``cuda`` on a multi-GPU machine the GPU of this worker."""
    import torch

    if device not in ("auto", "cuda") or torch.cuda.device_count() < 2:
        return device
    name = _worker_name()
    index = int(name) if name.isdigit() else hash(name)
    return f"cuda:{index % torch.cuda.device_count()}"


#: Seconds between two looks at the cohort's stop event (each one asks the scheduler).
STOP_POLL_S = 1.0


def _stop_flag(name: str | None) -> Any:
    """The engine's ``stop`` for a task: whether the cohort's ``distributed.Event`` ``name``
    is set, asked of the scheduler at most every :data:`STOP_POLL_S` (``None`` without one).

    Cancelling a running future does not interrupt its thread; without this a stopped
    cohort's slides ran on to their end, holding their folders' locks, and a rerun was
    refused until they had finished.
    """
    if not name:
        return None
    from distributed import Event

    event = Event(name)
    state = {"at": 0.0, "set": False}

    def stop() -> bool:
        now = time.monotonic()
        if not state["set"] and now - state["at"] >= STOP_POLL_S:
            state["at"] = now
            try:
                state["set"] = bool(event.is_set())
            except Exception:  # the scheduler gone: the worker goes with it anyway
                state["set"] = False
        return state["set"]

    return stop


def predict_slide_task(
    slide: str,
    folder: str,
    model: str | bytes,
    sha256: str,
    config: dict[str, Any],
    *,
    mpp: float | None = None,
    overwrite: bool = False,
    restart: bool = False,
    threads: int | None = None,
    share: tuple[int, int] | None = None,
    adopt: list[str] | None = None,
    stop_event: str | None = None,
) -> dict[str, Any]:
    """Predict ``slide`` into ``folder`` as ``msunet predict`` does (exports included).

    With ``share`` only that part of the slide's tiles is computed, into ``folder`` (a
    share's folder), and nothing is published; with ``adopt`` the shares' finished tiles are
    taken, the rest computed, the prediction published and the shares' folder removed (see
    :mod:`~napari_msunet.inference.shares`). ``stop_event`` names the cohort's
    ``distributed.Event``: once it is set the slide stops at its next batch, its tiles kept
    for a rerun.

    Returns the slide's outcome as plain values (see
    :class:`~napari_msunet.distributed.cohort.SlideOutcome`); errors propagate to the client,
    which reports them for this slide alone.
    """
    import dask
    import torch

    from napari_msunet.inference.config import InferenceConfig
    from napari_msunet.inference.engine import iter_predict_slide
    from napari_msunet.inference.shares import SHARES
    from napari_msunet.io.slide import open_slide
    from napari_msunet.io.writers import remove_path
    from napari_msunet.progress import run_to_end

    if threads:
        torch.set_num_threads(int(threads))
    net, header = _load(model, sha256)
    settings = InferenceConfig.from_dict(config)
    settings = InferenceConfig.from_dict({**settings.to_dict(), "device": _device(settings.device)})
    t0 = time.perf_counter()
    # the engine's own dask arrays (the pyramid) run on this process's threads, as in a
    # one-process run: inside a worker dask would otherwise send them to the cluster as
    # new tasks, which wait behind the slides and made every slide 3-5x slower
    with dask.config.set(scheduler="threads"), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a slide's warnings (µm/px source) stay on the worker
        with open_slide(slide) as opened:
            gen = iter_predict_slide(
                opened, net, header, settings, folder, mpp=mpp, overwrite=overwrite,
                resume=not restart, exports=share is None, share=share, adopt=adopt or (),
                stop=_stop_flag(stop_event),
            )  # fmt: skip
            result = run_to_end(gen)
    if adopt and result.completed:  # published: the shares have served
        remove_path(Path(folder) / SHARES)
    return {
        "completed": bool(result.completed),
        "tiles": int(result.tiles_computed),
        "resumed": int(result.tiles_resumed),
        "adopted": int(result.tiles_adopted),
        "mpx": result.shape[0] * result.shape[1] / 1e6,
        "seconds": round(time.perf_counter() - t0, 3),
        "mpx_per_s": round(float(result.output_mpx_per_s), 4),
        "device": result.device,
        "worker": _worker_name(),
        "pid": os.getpid(),
        "domain_far": bool(result.domain is not None and result.domain.far),
    }
