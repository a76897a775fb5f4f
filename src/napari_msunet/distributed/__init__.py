"""Cohorts of slides on dask.distributed (``pip install napari-msunet[cluster]``).

:func:`iter_predict_cohort` runs :func:`~napari_msunet.inference.engine.iter_predict_slide`
once per slide as dask.distributed tasks, on an existing scheduler or a local cluster it
starts; :mod:`.worker` is what runs on each worker.
"""

from napari_msunet.distributed.cohort import (
    CohortResult,
    SlideOutcome,
    iter_predict_cohort,
    predict_cohort,
    write_cohort_report,
)

__all__ = [
    "CohortResult",
    "SlideOutcome",
    "iter_predict_cohort",
    "predict_cohort",
    "write_cohort_report",
]
