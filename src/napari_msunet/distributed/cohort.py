"""Predict a cohort of slides on dask.distributed: one task per slide, each slide on its own.

:func:`iter_predict_cohort` submits one task per slide
(:func:`~napari_msunet.distributed.worker.predict_slide_task`: the engine's
``iter_predict_slide`` with the CLI's exports) to an existing scheduler (``scheduler``) or to
a local cluster of ``workers`` processes it starts (one per GPU on a multi-GPU machine; on the
CPU the cores are split between them). It is the same engine with the same settings, so each
slide's outputs equal a one-process run's.

- **One slide fails alone.** A slide whose task raises (unreadable, corrupt, no µm/px) is
  reported with its error; the other slides go on.
- **Rerunning resumes.** A slide whose folder holds a finished prediction of this model is
  skipped (unless ``overwrite``); one made with another model is reported failed, as the
  one-process run refuses it; an interrupted one is resumed from its ``.partial`` stores.
- **A worker lost mid-run** (killed, out of memory, its machine gone): the scheduler gives its
  slide to another worker, which resumes the slide's tiles from the ``.partial`` stores (the
  dead process's folder lock is taken over, see
  :func:`~napari_msunet.inference.outputs.lock_folder`). A slide whose workers die
  ``distributed.scheduler.allowed-failures`` times (default 3) is reported failed.
- **Progress** is per slide: stage ``"cohort"``, slides finished (done, skipped or failed) of
  all, with an ETA from the slides finished so far. ``stop`` cancels the slides not finished
  (their ``.partial`` stores stay for a rerun) and returns what finished.

The outcome of every slide is a :class:`SlideOutcome`; :func:`write_cohort_report` writes
them as CSV (``cohort-report.csv`` beside the outputs, from the CLI).
"""

from __future__ import annotations

import csv
import hashlib
import io
import math
import os
import time
from asyncio import CancelledError
from collections.abc import Generator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from napari_msunet._atomic import atomic_write_bytes
from napari_msunet.errors import ConfigError, MsunetError
from napari_msunet.inference.config import InferenceConfig
from napari_msunet.progress import Progress, Stop, eager, stopped

__all__ = [
    "COHORT",
    "CohortResult",
    "SlideOutcome",
    "iter_predict_cohort",
    "predict_cohort",
    "write_cohort_report",
]

#: Stage of the cohort's progress records.
COHORT = "cohort"
#: Seconds between two checks of ``stop`` while slides run.
POLL_S = 0.5


@dataclass(frozen=True)
class SlideOutcome:
    """What happened to one slide of a cohort.

    ``status`` is ``"done"``, ``"skipped"`` (a finished prediction was there), ``"failed"``
    (``error`` says why) or ``"stopped"`` (cancelled; a rerun resumes it).
    """

    slide: str
    folder: str
    status: str
    error: str = ""
    tiles: int = 0
    resumed: int = 0
    seconds: float = 0.0
    mpx_per_s: float = 0.0
    worker: str = ""
    domain_far: bool = False


@dataclass
class CohortResult:
    """Every slide's outcome, in the order given, and the cohort's wall time."""

    outcomes: list[SlideOutcome] = field(default_factory=list)
    seconds: float = 0.0
    workers: int = 0

    @property
    def failed(self) -> list[SlideOutcome]:
        return [o for o in self.outcomes if o.status == "failed"]

    def table(self) -> str:
        """The summary table the CLI prints: one row per slide."""
        rows = [("slide", "status", "tiles", "time s", "Mpx/s", "worker")]
        for o in self.outcomes:
            rows.append(
                (
                    Path(o.slide).name,
                    o.status + (f": {o.error}" if o.error else ""),
                    str(o.tiles),
                    f"{o.seconds:.1f}",
                    f"{o.mpx_per_s:.2f}" if o.status == "done" else "",
                    o.worker,
                )
            )
        widths = [max(len(r[i]) for r in rows[1:] + rows[:1]) for i in range(len(rows[0]))]
        widths[1] = min(widths[1], 70)
        lines = ["  ".join(v[:70].ljust(w) for v, w in zip(r, widths, strict=True)) for r in rows]
        done = sum(o.status == "done" for o in self.outcomes)
        lines.append(
            f"{done} done, {sum(o.status == 'skipped' for o in self.outcomes)} skipped, "
            f"{len(self.failed)} failed of {len(self.outcomes)} slides in {self.seconds:.1f} s "
            f"on {self.workers} worker(s)"
        )
        return "\n".join(lines)


def write_cohort_report(path: str | os.PathLike[str], result: CohortResult) -> Path:
    """Write the outcomes as CSV (atomically; an earlier report of the cohort is replaced)."""
    buf = io.StringIO()
    names = [f.name for f in SlideOutcome.__dataclass_fields__.values()]
    writer = csv.DictWriter(buf, fieldnames=names)
    writer.writeheader()
    for o in result.outcomes:
        writer.writerow(asdict(o))
    return atomic_write_bytes(path, buf.getvalue().encode(), overwrite=True)


def _finished_with(folder: Path) -> str | None:
    """The model fingerprint of the finished prediction in ``folder`` ("" when unreadable),
    or ``None`` when there is none."""
    import json

    from napari_msunet.inference.outputs import SlideOutputs

    manifest = SlideOutputs.in_dir(folder).manifest
    if not manifest.is_file():
        return None
    try:
        return str(json.loads(manifest.read_text())["model"]["fingerprint"])
    except (OSError, ValueError, KeyError, TypeError):
        return ""


def _fingerprint(model: Path) -> str:
    from napari_msunet.inference.outputs import model_fingerprint
    from napari_msunet.models.checkpoint import load_model

    return model_fingerprint(load_model(model)[0])


def _client(scheduler: str | None, workers: int | None, threads: int | None) -> tuple[Any, Any]:
    """A client of ``scheduler``, or of a local cluster of ``workers`` processes."""
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise ConfigError(
            "predicting on a cluster needs dask.distributed: pip install 'napari-msunet[cluster]'"
        ) from None
    if scheduler:
        try:
            return Client(scheduler, timeout="20s"), None
        except (OSError, TimeoutError) as exc:
            raise MsunetError(f"cannot reach the dask scheduler at {scheduler}: {exc}") from None
    import dask

    # distributed sets MALLOC_TRIM_THRESHOLD_ in its workers to hand memory back early; it
    # also turns off glibc's adaptive mmap threshold, so every large tensor of a forward pass
    # is mapped and faulted in afresh (see docs/scale-out.md for what it cost)
    unset = {"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}
    with dask.config.set(unset):
        cluster = LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            env={"OMP_NUM_THREADS": str(threads or 1)},
        )
    return Client(cluster), cluster


def _eta(done: int, total: int, elapsed: float) -> str:
    if not done or done >= total:
        return ""
    left = elapsed / done * (total - done)
    return (
        f", about {math.ceil(left / 60)} min left" if left >= 60 else f", about {left:.0f} s left"
    )


def iter_predict_cohort(
    slides: Sequence[str | os.PathLike[str]],
    folders: Sequence[str | os.PathLike[str]],
    model: str | os.PathLike[str],
    config: InferenceConfig | None = None,
    *,
    scheduler: str | None = None,
    workers: int | None = None,
    mpp: float | None = None,
    overwrite: bool = False,
    restart: bool = False,
    ship_model: bool = False,
    stop: Stop = None,
) -> Generator[Progress, None, CohortResult]:
    """Predict ``slides`` into ``folders`` (one each) on dask.distributed; see the module.

    Parameters
    ----------
    scheduler
        Address of a running scheduler (``tcp://host:8786``); else a local cluster of
        ``workers`` processes (default: one per GPU, else 2) is started and closed here.
    ship_model
        Send the model file's bytes to every worker (once) instead of its path: for workers
        that do not see the client's files.
    """
    if len(slides) != len(folders):
        raise ConfigError("one output folder per slide")
    if scheduler and workers:
        raise ConfigError("give either a scheduler address or a number of local workers")
    config = config or InferenceConfig()
    model_path = Path(model)
    data = model_path.read_bytes()
    sha256 = hashlib.sha256(data).hexdigest()
    threads = None
    if not scheduler:
        import torch

        gpus = torch.cuda.device_count() if config.device in ("auto", "cuda") else 0
        workers = workers or gpus or 2
        threads = max(1, (os.cpu_count() or 1) // workers)
    t0 = time.perf_counter()
    outcomes: dict[int, SlideOutcome] = {}
    todo = []
    fingerprint = None
    for i, (slide, folder) in enumerate(zip(slides, folders, strict=True)):
        made_with = None if overwrite or restart else _finished_with(Path(folder))
        if made_with is None:
            todo.append(i)
            continue
        fingerprint = fingerprint or _fingerprint(model_path)
        if made_with == fingerprint:  # this model's finished prediction: a rerun skips it
            outcomes[i] = SlideOutcome(str(slide), str(folder), "skipped")
        else:  # as the one-process run refuses it: never silently kept as this model's
            why = f"{folder}: holds a finished prediction made with another model"
            why += "; --overwrite replaces it"
            outcomes[i] = SlideOutcome(str(slide), str(folder), "failed", error=why)
    total = len(slides)
    client, cluster = _client(scheduler, workers, threads) if todo else (None, None)
    n_workers = len(client.nthreads()) if client is not None else 0  # every worker, not 5
    futures: dict[Any, int] = {}
    try:
        if todo:
            from distributed import wait

            from napari_msunet.distributed.worker import predict_slide_task

            model_ref = str(model_path.resolve())  # workers may run in another folder
            ref: Any = client.scatter(data, broadcast=True) if ship_model else model_ref
            for i in todo:
                future = client.submit(
                    predict_slide_task,
                    str(Path(slides[i]).resolve()),
                    str(Path(folders[i]).resolve()),
                    ref,
                    sha256,
                    config.to_dict(),
                    mpp=mpp,
                    overwrite=overwrite,
                    restart=restart,
                    threads=threads,
                    key=f"msunet-predict-{i}-{sha256[:8]}-{time.time_ns()}",
                    pure=False,
                )
                futures[future] = i
        yield Progress(len(outcomes), total, COHORT, f"{len(outcomes)}/{total} slides", 0.0)
        pending = set(futures)
        while pending:
            if stopped(stop):
                break
            try:
                done, pending = wait(pending, timeout=POLL_S, return_when="FIRST_COMPLETED")
            except TimeoutError:  # none finished yet: look at `stop` again
                continue
            except CancelledError:  # cancelled elsewhere (scheduler restart, data lost)
                done = {f for f in pending if f.cancelled()}
                pending -= done
            for future in done:
                i = futures[future]
                outcomes[i] = _outcome(future, str(slides[i]), str(folders[i]))
            if done:
                elapsed = time.perf_counter() - t0
                n = len(outcomes)
                yield Progress(
                    n, total, COHORT, f"{n}/{total} slides{_eta(n, total, elapsed)}", elapsed
                )
    finally:
        for future, i in futures.items():
            if i not in outcomes:
                future.cancel()
                outcomes[i] = SlideOutcome(str(slides[i]), str(folders[i]), "stopped")
        if client is not None:
            client.close()
        if cluster is not None:
            cluster.close()
    return CohortResult([outcomes[i] for i in range(total)], time.perf_counter() - t0, n_workers)


def _outcome(future: Any, slide: str, folder: str) -> SlideOutcome:
    if future.cancelled():
        return SlideOutcome(slide, folder, "failed", error="cancelled by the cluster")
    try:
        r = future.result()
    except (Exception, CancelledError) as exc:  # its own error, or its workers lost too often
        text = str(exc) or type(exc).__name__
        return SlideOutcome(slide, folder, "failed", error=text)
    status = "done" if r["completed"] else "stopped"
    return SlideOutcome(
        slide,
        folder,
        status,
        tiles=r["tiles"],
        resumed=r["resumed"],
        seconds=r["seconds"],
        mpx_per_s=r["mpx_per_s"],
        worker=str(r["worker"]),
        domain_far=r["domain_far"],
    )


predict_cohort = eager(iter_predict_cohort)
