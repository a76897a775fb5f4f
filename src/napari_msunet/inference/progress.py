"""What a run reports: :class:`TileProgress` after every batch and a :class:`PredictionResult`.

Frozen dataclasses with plain fields, so the GUI can pass them through Qt signals and the CLI
can print them; no Qt and no callbacks here (see GUIDE: long work is a generator).
:class:`TileProgress` is the package's one :class:`~napari_msunet.progress.Progress` record
with the speed of the tiles added, so any driver reads it like every other record and a
widget that wants the speed asks ``isinstance(record, TileProgress)``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from napari_msunet.inference.outputs import SlideOutputs
from napari_msunet.inference.tiling import TilePlan
from napari_msunet.io.domain import DomainCheck
from napari_msunet.progress import Progress

__all__ = ["PYRAMID", "TILES", "PredictionResult", "TileProgress"]

#: Stage of the records yielded while tiles are computed (:class:`TileProgress`).
TILES = "tiles"
#: Stage of the records yielded while the finished stores are published (see
#: :func:`~napari_msunet.inference.engine.iter_predict_slide`).
PYRAMID = "pyramid"


@dataclass(frozen=True, kw_only=True)
class TileProgress(Progress):
    """Where the tiles of a run stand, yielded before the first batch and after every batch.

    ``stage`` is ``"tiles"``; ``done`` counts the tiles finished (including those resumed
    from an earlier run) and ``total`` the tiles to compute (tiles with tissue).

    Attributes
    ----------
    tiles_per_s, mpx_per_s
        Speed of this run so far: tiles and kept output megapixels per second of compute
        (resumed tiles do not count, so the speed is this machine's, not the folder's).
    skipped, resumed
        Tiles without tissue (never computed) and tiles finished by an earlier run.
    """

    tiles_per_s: float = 0.0
    mpx_per_s: float = 0.0
    skipped: int = 0
    resumed: int = 0


@dataclass(frozen=True)
class PredictionResult:
    """What :func:`iter_predict_slide` did.

    ``completed`` is False when it was stopped; the outputs then stay under their
    ``.partial`` names and ``outputs`` paths do not exist yet. ``shape``, ``mpp`` and
    ``downsample`` describe the output grid: output pixel ``(i, j)`` covers level-0 pixels
    ``[i dy, (i + 1) dy) x [j dx, (j + 1) dx)``. ``overhead`` is computed / kept pixels over
    the tiles computed. ``timings`` are in seconds (see :class:`~.pipeline.Timings`).
    ``region`` is the level-0 ``(y0, x0, h, w)`` window of a windowed run, ``None`` for the
    whole slide. ``tiles_adopted`` were copied from shares of the slide (see
    :mod:`~napari_msunet.inference.shares`), neither computed nor resumed. ``domain``
    compares the slide's tissue with the model's training data (:mod:`napari_msunet.io.domain`);
    ``None`` when the model records no statistics.
    """

    completed: bool
    outputs: SlideOutputs
    shape: tuple[int, int]
    mpp: float
    downsample: tuple[float, float]
    level: int
    tiles_total: int
    tiles_computed: int
    tiles_resumed: int
    tiles_skipped: int
    tile: int
    margin: int
    batch_size: int
    overhead: float
    nominal_overhead: float
    device: str
    timings: dict[str, float]
    tissue_fraction: float | None
    region: tuple[int, int, int, int] | None = None
    domain: DomainCheck | None = None
    tiles_adopted: int = 0

    @property
    def output_mpx_per_s(self) -> float:
        """Slide area at the working resolution per second of the whole call."""
        t = self.timings.get("total", 0.0)
        return self.shape[0] * self.shape[1] / 1e6 / t if t else float("nan")


def make_progress(
    done: int, plan: TilePlan, resumed: int, t0: float, tc: float, px: int, msg: str
) -> TileProgress:
    """A :class:`TileProgress` for ``done`` tiles; speeds count from ``tc``, elapsed from ``t0``."""
    dt = time.perf_counter() - tc
    n = done - resumed
    return TileProgress(
        done=done,
        total=len(plan.tiles),
        stage=TILES,
        message=msg,
        elapsed_s=time.perf_counter() - t0,
        tiles_per_s=n / dt if dt > 0 and n else 0.0,
        mpx_per_s=px / 1e6 / dt if dt > 0 and px else 0.0,
        skipped=len(plan.skipped),
        resumed=resumed,
    )
