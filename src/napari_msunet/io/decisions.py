"""Review decisions: every accept, reject or edit of a candidate, kept beside the annotation.

A reviewed cohort is a label-noise dataset: for each place where a confident model disagreed
with the annotation (a suspected *missing* or *wrong* annotation, see
:mod:`napari_msunet.evaluation.missing`), what the reviewer decided. The annotation store
keeps these records in ``decisions.jsonl`` in its folder, one JSON object a line, oldest
first. The file is the one source of truth for "not suggested again": the store derives its
rejected candidates from it (:meth:`AnnotationStore.rejected
<napari_msunet.io.annotation_store.AnnotationStore.rejected>`).

Appending rewrites the file through :func:`napari_msunet._atomic.atomic_write_bytes` (a
temporary sibling renamed over it): a crash leaves the file with or without the new record,
never half a line. The files stay small (a record per decision a person made by hand).

:func:`iter_export_decisions` turns the records of one or more stores into a QuPath GeoJSON
per slide (the decided outlines, with kind, decision and classes as properties) and one CSV of
all decisions.
"""

from __future__ import annotations

import csv
import io
import json
import os
import time
from collections.abc import Generator, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import shapely
from shapely.geometry import mapping, shape

from napari_msunet._atomic import atomic_write_bytes, check_new_file, write_error
from napari_msunet.errors import AnnotationError, MsunetError
from napari_msunet.progress import Progress, Stop, eager, stopped

__all__ = [
    "CSV_COLUMNS",
    "DECISIONS",
    "DECISIONS_NAME",
    "NOT_AGAIN",
    "Decision",
    "append_decision",
    "decisions_file",
    "export_decisions",
    "iter_export_decisions",
    "read_decisions",
]

DECISIONS_NAME = "decisions.jsonl"
"""The decisions file in an annotation store's folder."""

DECISIONS = ("accept", "reject", "edit")
"""What a reviewer can decide: take the model's answer, keep the annotation, or correct it
by hand."""

NOT_AGAIN = ("reject", "edit")
"""Decisions after which a candidate is not suggested again: the reviewer's own word stands
(an accepted candidate no longer disagrees, so it is not found again anyway)."""

KIND_NAMES = ("missing", "wrong")

CSV_COLUMNS = (
    "time",
    "slide",
    "kind",
    "decision",
    "annotated",
    "annotated_class",
    "predicted",
    "predicted_class",
    "area_um2",
    "area_px",
    "confidence",
    "y",
    "x",
    "height",
    "width",
    "store",
)
"""The columns of the exported CSV (bbox as level-0 ``y, x, height, width``)."""


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


@dataclass(frozen=True)
class Decision:
    """One reviewer decision about one candidate.

    Attributes
    ----------
    slide
        The slide's name (its file name).
    kind
        ``"missing"`` (annotated background, the model confident of a class) or ``"wrong"``
        (annotated class k > 0, the model confident of another class).
    annotated, annotated_class
        The annotated label and its class name (0, "Background", for a missing one).
    predicted, predicted_class
        The predicted label and its class name.
    decision
        ``"accept"``, ``"reject"`` or ``"edit"`` (see :data:`DECISIONS`).
    bbox
        Level-0 ``(y, x, h, w)`` of the candidate.
    area_px, area_um2, confidence
        The candidate's area (level-0 px; µm², ``None`` when the pixel size is unknown) and
        mean bootstrap confidence; ``None`` where not known (a rejection recorded from a
        bbox alone).
    outline
        The candidate's outline as a GeoJSON geometry in level-0 pixels ``(x, y)``
        (QuPath's convention); ``None`` when only the bbox is known.
    time
        When it was decided (UTC, ISO 8601).
    """

    slide: str
    kind: str
    annotated: int
    annotated_class: str
    predicted: int
    predicted_class: str
    decision: str
    bbox: tuple[int, int, int, int]
    area_px: float | None = None
    area_um2: float | None = None
    confidence: float | None = None
    outline: dict[str, Any] | None = None
    time: str = field(default_factory=_now)

    def __post_init__(self) -> None:
        if self.decision not in DECISIONS:
            raise ValueError(f"decision must be one of {DECISIONS}, got {self.decision!r}")
        if self.kind not in KIND_NAMES:
            raise ValueError(f"kind must be one of {KIND_NAMES}, got {self.kind!r}")
        bbox = tuple(int(v) for v in self.bbox)
        if len(bbox) != 4:
            raise ValueError(f"bbox must be (y, x, h, w), got {self.bbox!r}")
        object.__setattr__(self, "bbox", bbox)
        object.__setattr__(self, "annotated", int(self.annotated))
        object.__setattr__(self, "predicted", int(self.predicted))

    def geometry(self) -> Any:
        """The outline as a shapely geometry (the bbox rectangle when no outline is kept)."""
        if self.outline is not None:
            return shape(self.outline)
        y, x, h, w = self.bbox
        return shapely.box(x, y, x + w, y + h)

    def as_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["bbox"] = list(self.bbox)
        return out

    @classmethod
    def from_json(cls, item: dict[str, Any]) -> Decision:
        names = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in item.items() if k in names})


def outline_json(geometry: Any) -> dict[str, Any]:
    """A shapely geometry as a plain GeoJSON geometry (lists, JSON-serialisable)."""
    return json.loads(json.dumps(mapping(geometry)))


def decisions_file(path: str | os.PathLike[str]) -> Path:
    """The decisions file of a store folder (or the file itself)."""
    p = Path(path)
    return p if p.suffix == ".jsonl" else p / DECISIONS_NAME


def read_decisions(path: str | os.PathLike[str]) -> list[Decision]:
    """The decisions of a store folder (or a decisions file), oldest first; none if no file.

    Raises
    ------
    AnnotationError
        A line is not a decision record (naming the file and the line).
    """
    file = decisions_file(path)
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    except (OSError, UnicodeDecodeError) as exc:
        raise AnnotationError(file, f"cannot be read: {exc}") from exc
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            out.append(Decision.from_json(json.loads(line)))
        except (ValueError, TypeError, AttributeError) as exc:
            raise AnnotationError(file, f"line {n} is not a review decision: {exc}") from exc
    return out


def append_decision(path: str | os.PathLike[str], decision: Decision) -> Path:
    """Add a decision to a store folder's decisions file, atomically (see the module
    docstring). The caller holds the store (one program edits it at a time)."""
    file = decisions_file(path)
    try:
        old = file.read_bytes()
    except FileNotFoundError:
        old = b""
    except OSError as exc:
        raise AnnotationError(file, f"cannot be read: {exc}") from exc
    if old and not old.endswith(b"\n"):
        old += b"\n"
    line = json.dumps(decision.as_json(), ensure_ascii=False, separators=(",", ":"))
    return atomic_write_bytes(file, old + line.encode("utf-8") + b"\n", overwrite=True)


# ------------------------------------------------------------------------------------------
# export


def _source_file(path: Path) -> Path:
    """The decisions file of a store, a slide's workspace folder (or the slide beside it), or
    the file itself."""
    if path.is_file() and path.suffix == ".jsonl":
        return path
    if not path.is_dir():  # a slide: its workspace beside it
        path = path.with_name(path.name + ".msunet")
    for folder in (path, path / "annotation"):
        if (folder / DECISIONS_NAME).is_file() or (folder / "store.json").is_file():
            return folder / DECISIONS_NAME
    raise MsunetError(
        f"{path}: is neither an annotation store, a slide's workspace (<slide>.msunet) nor a "
        f"{DECISIONS_NAME} file"
    )


def _safe(name: str) -> str:
    keep = "".join(c if c.isalnum() or c in "._- " else "_" for c in name).strip()
    return keep or "slide"


def _feature_collection(decisions: Sequence[Decision]) -> dict[str, Any]:
    from napari_msunet.io.annotations import Annotation
    from napari_msunet.io.geojson import annotations_to_geojson

    anns = []
    for d in decisions:
        geom = d.geometry()
        name = f"suspected {d.kind}: {d.annotated_class} -> {d.predicted_class} ({d.decision})"
        anns.append(Annotation(geom, d.predicted_class or f"class {d.predicted}", name=name))
    data = annotations_to_geojson(anns)
    for feature, d in zip(data["features"], decisions, strict=True):
        measurements = {"confidence": d.confidence, "area µm²": d.area_um2}
        feature["properties"].update(
            {
                "kind": d.kind,
                "decision": d.decision,
                "annotated_class": d.annotated_class,
                "predicted_class": d.predicted_class,
                "annotated": d.annotated,
                "predicted": d.predicted,
                "slide": d.slide,
                "time": d.time,
                "measurements": {k: v for k, v in measurements.items() if v is not None},
            }
        )
    return data


def _csv(rows: Iterable[tuple[Decision, Path]]) -> bytes:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for d, store in rows:
        y, x, h, w = d.bbox
        values = {**d.as_json(), "y": y, "x": x, "height": h, "width": w, "store": store}
        writer.writerow(["" if values[c] is None else values[c] for c in CSV_COLUMNS])
    return buf.getvalue().encode("utf-8")


def iter_export_decisions(
    sources: Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    stop: Stop = None,
) -> Generator[Progress, None, list[Path] | None]:
    """Export the decisions of reviewed stores: a GeoJSON per slide and one CSV.

    Parameters
    ----------
    sources
        Annotation store folders, slides' workspace folders (``<slide>.msunet``, whose
        ``annotation`` store is taken), slides (their workspace beside them) or decisions
        files.
    out
        The folder to write ``<slide>.decisions.geojson`` (QuPath GeoJSON in level-0 pixels:
        one feature per decided candidate, its outline, the predicted class as its
        classification, and ``kind``, ``decision``, ``annotated_class``,
        ``predicted_class``, ... as properties) and ``decisions.csv`` (:data:`CSV_COLUMNS`).
    overwrite
        Replace those files when they exist (else refused before anything is written).
    stop
        Checked per source; when it asks to stop, nothing is written and ``None`` returned.

    Yields
    ------
    Progress
        Stage ``"read"``: one record per source.

    Returns
    -------
    list of Path
        The files written (the CSV last), or ``None`` when stopped.
    """
    out = Path(out)
    files = [_source_file(Path(s)) for s in sources]
    rows: list[tuple[Decision, Path]] = []
    started = time.monotonic()
    for i, file in enumerate(files, 1):
        if stopped(stop):
            return None
        rows.extend((d, file.parent) for d in read_decisions(file))
        yield Progress(
            i, len(files), "read", f"reading decisions {i}/{len(files)}", time.monotonic() - started
        )
    if stopped(stop):
        return None
    by_slide: dict[str, list[Decision]] = {}
    for d, _ in rows:
        by_slide.setdefault(d.slide, []).append(d)
    targets = [out / f"{_safe(s)}.decisions.geojson" for s in by_slide]
    targets.append(out / "decisions.csv")
    if len(set(targets)) != len(targets):
        raise MsunetError(f"{out}: two slides' names map to the same file name")
    for t in targets:  # all refused before any is written
        check_new_file(t, overwrite)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise write_error(out, exc, "cannot create the folder") from exc
    for t, decisions in zip(targets, by_slide.values(), strict=False):
        text = json.dumps(_feature_collection(decisions), ensure_ascii=False)
        atomic_write_bytes(t, text.encode("utf-8"), overwrite=overwrite)
    atomic_write_bytes(targets[-1], _csv(rows), overwrite=overwrite)
    return targets


export_decisions = eager(iter_export_decisions)
