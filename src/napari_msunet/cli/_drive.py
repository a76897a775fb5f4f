"""The CLI's one driver of long work: any core generator under a tqdm bar.

Every core generator yields :class:`~napari_msunet.progress.Progress` records (see
:mod:`napari_msunet.progress`); this driver reads their ``done``/``total``/``stage``/``message``
fields and starts a new bar when the stage changes. Ctrl-C closes the generator (which cleans up
what it had half written) and re-raises.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import TypeVar

from napari_msunet.progress import Progress

__all__ = ["drive"]

R = TypeVar("R")


def drive(
    gen: Generator[Progress, None, R],
    desc: str,
    *,
    on_record: Callable[[Progress], str | None] | None = None,
) -> R:
    """Run ``gen`` under a tqdm bar and return its return value.

    Parameters
    ----------
    gen
        A core ``iter_<verb>`` generator.
    desc
        What the bar says before the stage ("predict case01.svs").
    on_record
        Called with every record; a string it returns is printed above the bar (a validation
        score at the end of an epoch, say).
    """
    from tqdm import tqdm

    bar = None
    stage = None
    try:
        while True:
            rec = next(gen)
            if bar is None or rec.stage != stage:
                if bar is not None:
                    bar.close()
                stage = rec.stage
                bar = tqdm(
                    total=rec.total or None,
                    initial=rec.done,  # a resumed run starts part-way; its rate counts from here
                    desc=f"{desc}: {stage}" if stage else desc,
                )
            if rec.total and bar.total != rec.total:
                bar.total = rec.total
            bar.n = rec.done
            bar.set_postfix_str(rec.message, refresh=True)
            if on_record is not None:
                line = on_record(rec)
                if line:
                    bar.write(line)
    except StopIteration as finished:
        return finished.value
    except KeyboardInterrupt:
        gen.close()
        raise
    finally:
        if bar is not None:
            bar.close()
