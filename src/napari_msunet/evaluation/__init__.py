"""Slide-level evaluation: IoU/Dice from chunked confusion matrices, TP/FP/FN maps, reports.

Headless (no Qt, no napari). Modules:

- :mod:`~napari_msunet.evaluation.metrics`: :func:`confusion_matrix` (window by window,
  memory-bounded), :func:`compute_metrics` and the result dataclasses.
- :mod:`~napari_msunet.evaluation.overlay`: TP/FP/FN maps (lazy, and as a napari pyramid),
  the paper's colours, and the overlay PNG.
- :mod:`~napari_msunet.evaluation.matching`: matching truth classes to prediction classes.
- :mod:`~napari_msunet.evaluation.report`: JSON and CSV report writers.
- :mod:`~napari_msunet.evaluation.evaluate`: :func:`iter_evaluate` / :func:`evaluate`, which
  ``msunet evaluate`` runs: two files in, a report out.
- :mod:`~napari_msunet.evaluation.compare`: :func:`iter_compare` / :func:`compare` on label
  pyramids held as arrays (napari layers), writing nothing.
- :mod:`~napari_msunet.evaluation.missing`: ``iter_find_missing`` / ``find_missing``, the
  review queue of suspected missing annotations (import it from its module).

The long operations are generators that yield :class:`napari_msunet.progress.Progress` and take
a ``stop`` (see :mod:`napari_msunet.progress`); evaluate and compare share one counting pass.
"""

from napari_msunet.evaluation.compare import Comparison, LabelPyramid, compare, iter_compare
from napari_msunet.evaluation.evaluate import (
    OUTPUT_NAMES,
    EvaluationResult,
    evaluate,
    iter_evaluate,
)
from napari_msunet.evaluation.matching import (
    ClassMatch,
    EvaluationWarning,
    match_classes,
    remap_labels,
)
from napari_msunet.evaluation.metrics import (
    MAX_CLASSES,
    ClassMetrics,
    LabelValueError,
    SegmentationMetrics,
    block_confusion,
    compute_metrics,
    confusion_matrix,
)
from napari_msunet.evaluation.overlay import (
    FN,
    FP,
    OVERLAY_COLORS,
    OVERLAY_COLORS_RGBA8,
    OVERLAY_NAMES,
    TN,
    TP,
    render_overlay,
    tpfpfn_codes,
    tpfpfn_map,
    tpfpfn_pyramid,
    write_overlay_png,
)
from napari_msunet.evaluation.report import (
    build_report,
    write_csv_report,
    write_json_report,
)

__all__ = [
    "FN",
    "FP",
    "MAX_CLASSES",
    "OUTPUT_NAMES",
    "OVERLAY_COLORS",
    "OVERLAY_COLORS_RGBA8",
    "OVERLAY_NAMES",
    "TN",
    "TP",
    "ClassMatch",
    "ClassMetrics",
    "Comparison",
    "EvaluationResult",
    "EvaluationWarning",
    "LabelPyramid",
    "LabelValueError",
    "SegmentationMetrics",
    "block_confusion",
    "build_report",
    "compare",
    "compute_metrics",
    "confusion_matrix",
    "evaluate",
    "iter_compare",
    "iter_evaluate",
    "match_classes",
    "remap_labels",
    "render_overlay",
    "tpfpfn_codes",
    "tpfpfn_map",
    "tpfpfn_pyramid",
    "write_csv_report",
    "write_json_report",
    "write_overlay_png",
]
