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
  all, with an ETA from the slides finished so far; while none finishes, the same record
  every :data:`POLL_S`, so that a driver's stop (the CLI's Ctrl-C) is seen within it.
  ``stop`` cancels the slides not finished (their ``.partial`` stores stay for a rerun; the
  running ones stop at their next batch, see
  :func:`~napari_msunet.distributed.worker.predict_slide_task`) and returns what finished.

The outcome of every slide is a :class:`SlideOutcome`; :func:`write_cohort_report` writes
them as CSV (``cohort-report.csv`` beside the outputs, from the CLI).
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
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
    split: int = 1,
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
    split
        Spread each slide's tiles over this many tasks (shares), then publish it in one more
        task that takes their tiles (see :mod:`~napari_msunet.inference.shares`): for a few
        large slides on more workers than slides. The result is the same.
    """
    if len(slides) != len(folders):
        raise ConfigError("one output folder per slide")
    if split < 1:
        raise ConfigError(f"split must be at least 1, not {split}")
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
    futures: dict[Any, tuple[int, int | None]] = {}  # -> (slide, share or None)
    shares_left: dict[int, set[Any]] = {}
    share_results: dict[int, list[dict[str, Any] | None]] = {}
    started: dict[int, float] = {}
    # the shares of another model or other settings never share a folder name with these
    settings = json.dumps([sha256, config.to_dict(), mpp], sort_keys=True)
    tag = hashlib.sha256(settings.encode()).hexdigest()[:10] + "-"
    stop_event = None
    try:
        if todo:
            from distributed import Event, wait

            from napari_msunet.distributed.worker import predict_slide_task
            from napari_msunet.inference.shares import share_folders

            model_ref = str(model_path.resolve())  # workers may run in another folder
            ref: Any = client.scatter(data, broadcast=True) if ship_model else model_ref
            # set when the cohort stops: running slides stop at their next batch (see worker)
            stop_event = Event(f"msunet-stop-{sha256[:8]}-{time.time_ns()}", client=client)

            def submit(i: int, share: int | None = None, adopt: bool = False) -> Any:
                folder = Path(folders[i]).resolve()
                parts = [str(p) for p in share_folders(folder, split, tag)]
                future = client.submit(
                    predict_slide_task,
                    str(Path(slides[i]).resolve()),
                    str(folder) if share is None else parts[share],
                    ref,
                    sha256,
                    config.to_dict(),
                    mpp=mpp,
                    overwrite=overwrite and share is None,
                    restart=restart,
                    threads=threads,
                    share=None if share is None else (share, split),
                    adopt=parts if adopt else None,
                    stop_event=stop_event.name,
                    key=f"msunet-predict-{i}-{share}-{sha256[:8]}-{time.time_ns()}",
                    pure=False,
                )
                futures[future] = (i, share)
                return future

            for i in todo:
                started[i] = time.perf_counter()
                if split > 1:
                    shares_left[i] = {submit(i, k) for k in range(split)}
                    share_results[i] = []
                else:
                    submit(i)
        yield Progress(len(outcomes), total, COHORT, f"{len(outcomes)}/{total} slides", 0.0)
        pending = set(futures)
        while pending:
            if stopped(stop):
                break
            try:
                done, pending = wait(pending, timeout=POLL_S, return_when="FIRST_COMPLETED")
            except TimeoutError:  # none finished yet: a record all the same (see the module)
                elapsed = time.perf_counter() - t0
                n = len(outcomes)
                yield Progress(n, total, COHORT, f"{n}/{total} slides", elapsed)
                continue
            except CancelledError:  # cancelled elsewhere (scheduler restart, data lost)
                done = {f for f in pending if f.cancelled()}
                pending -= done
            finished = False
            for future in done:
                i, share = futures[future]
                if share is not None:  # a share failed or lost: its tiles are computed later
                    share_results[i].append(_task_result(future))
                    shares_left[i].discard(future)
                    if not shares_left[i]:  # all shares ended: one task publishes the slide
                        pending.add(submit(i, adopt=True))
                    continue
                finished = True
                outcome = _outcome(future, str(slides[i]), str(folders[i]))
                if i in share_results:
                    outcome = _split_outcome(outcome, share_results[i], started[i], split)
                outcomes[i] = outcome
            if finished:
                elapsed = time.perf_counter() - t0
                n = len(outcomes)
                yield Progress(
                    n, total, COHORT, f"{n}/{total} slides{_eta(n, total, elapsed)}", elapsed
                )
    finally:
        unfinished = [(f, i) for f, (i, _) in futures.items() if i not in outcomes]
        if unfinished and stop_event is not None:
            with contextlib.suppress(Exception):  # a scheduler already gone stops them anyway
                stop_event.set()
        for future, i in unfinished:
            future.cancel()
            outcomes[i] = SlideOutcome(str(slides[i]), str(folders[i]), "stopped")
        if client is not None:
            client.close()
        if cluster is not None:
            cluster.close()
    return CohortResult([outcomes[i] for i in range(total)], time.perf_counter() - t0, n_workers)


def _task_result(future: Any) -> dict[str, Any] | None:
    """A finished task's result, or ``None`` when it failed or was cancelled."""
    try:
        return None if future.cancelled() else future.result()
    except (Exception, CancelledError):
        return None


def _split_outcome(
    outcome: SlideOutcome, shares: list[dict[str, Any] | None], since: float, split: int
) -> SlideOutcome:
    """The outcome of a slide split over shares: its tiles and workers are all of its tasks',
    its time the wall time from its shares' submission to its publishing."""
    if outcome.status != "done":
        return outcome
    ran = [r for r in shares if r is not None]
    seconds = time.perf_counter() - since
    mpx = next((r["mpx"] for r in ran), 0.0)
    workers = {str(r["worker"]) for r in ran} | {outcome.worker}
    return SlideOutcome(
        outcome.slide,
        outcome.folder,
        outcome.status,
        tiles=outcome.tiles + sum(int(r["tiles"]) for r in ran),
        resumed=outcome.resumed + sum(int(r["resumed"]) for r in ran),
        seconds=seconds,
        mpx_per_s=mpx / seconds if seconds > 0 and mpx else outcome.mpx_per_s,
        worker=f"{split} shares on {len(workers)} workers" if len(workers) > 1 else outcome.worker,
        domain_far=outcome.domain_far,
    )


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
