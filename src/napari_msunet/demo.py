"""The one-minute demo: a real-tissue sample slide, the bundled model, and its evaluation.

``msunet demo`` builds a mosaic slide from the EBHI-Seg pairs bundled with the package (from the
validation split the default model never trained on), predicts it with the bundled default
model, evaluates the prediction against the slide's annotation (slide-level IoU/Dice, TP/FP/FN
overlay) and, where there is a display, opens everything in napari.

Nothing a user made in the demo's folder is replaced without ``overwrite``: the sample files
and the ``prediction/`` and ``evaluation/`` folders count as the demo's when its record
``sample.msunet-demo.json`` names them (see :func:`build_sample_slide` and
:func:`claim_outputs`), so a rerun into its own folder simply redoes its work.

EBHI-Seg: Shi et al., Frontiers in Medicine 10:1114673 (2023), CC BY 4.0.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path

from napari_msunet._atomic import atomic_write_bytes, check_writable, write_error
from napari_msunet.errors import MsunetError, WriterError
from napari_msunet.models.bundled import bundled_model_path, sample_data_dir
from napari_msunet.progress import Progress, Stop, eager

__all__ = [
    "DemoFiles",
    "build_sample_slide",
    "claim_outputs",
    "default_model_path",
    "demo",
    "iter_demo",
    "sample_data_dir",
]

#: Layout of the demo mosaic: 6 rows x 8 columns of 224-px patches = the 48 bundled pairs.
_ROWS, _COLS = 6, 8

#: The demo's record of the sample files it wrote (see :func:`build_sample_slide`) and of the
#: output folders it writes (see :func:`claim_outputs`).
SAMPLE_RECORD = "sample.msunet-demo.json"
_RECORD_FORMAT = "napari-msunet-demo-sample"

#: The folders the demo writes in its ``out`` folder: the prediction and its evaluation.
OUTPUT_FOLDERS = ("prediction", "evaluation")


def default_model_path() -> Path:
    """The bundled default model (MS U-Net trained on the EBHI-Seg training split)."""
    return bundled_model_path()


@dataclass(frozen=True)
class DemoFiles:
    slide: Path
    annotation: Path
    mask: Path


def build_sample_slide(out_dir: str | Path, *, overwrite: bool = False) -> DemoFiles:
    """Write the demo slide (SVS-like, EBHI-Seg's ~1 µm/px), its QuPath GeoJSON and label mask.

    Files already there are reused when they are at the current scale (the demo is
    deterministic); a sample written by an older version at another µm/px is rebuilt.

    Only the demo's own files are ever replaced: after writing the three files it writes
    ``sample.msunet-demo.json``, naming them with their sizes, and a file counts as its own
    when that record names it at its present size. (Samples of versions before the record
    count as the demo's when ``sample.svs`` is a slide of
    :func:`~napari_msunet.io.synthetic.write_synthetic_slide`.) Anything else under these
    names -- a user's ``sample.svs`` in the folder given to ``msunet demo --out`` -- is
    refused unless ``overwrite``.

    Raises
    ------
    WriterError
        A file the sample would replace is not the demo's (the message names it).
    """
    from napari_msunet.io.mosaic import EBHI_UM_PER_PX, REGION, MosaicSpec
    from napari_msunet.io.ome_tiff import write_ome_tiff
    from napari_msunet.io.synthetic import write_synthetic_slide
    from napari_msunet.io.vectorise import export_mask

    out = Path(out_dir)
    check_writable(out, folder=True)  # a read-only or foreign folder: said before any work
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise write_error(out, exc, "cannot create the demo folder") from exc
    files_ = DemoFiles(out / "sample.svs", out / "sample.geojson", out / "sample_mask.ome.tif")
    paths = (files_.slide, files_.annotation, files_.mask)
    if not overwrite:
        own = _own_files(out, paths)
        foreign = [p for p in paths if p.exists() and p not in own]
        if foreign:
            raise WriterError(
                foreign[0],
                "exists and was not written by the demo; the demo would replace it. Move it "
                "away or choose another folder (msunet demo --out)",
            )
        if files_.slide.exists() and files_.annotation.exists():
            mpp = _slide_mpp(files_.slide)
            if mpp is not None and abs(mpp - EBHI_UM_PER_PX) < 1e-6:
                return files_
    claimed = _record(out).get("outputs")
    if claimed:  # the files change and are no longer recorded; the output folders still are
        _write_record(out, {"format": _RECORD_FORMAT, "outputs": claimed})
    else:
        (out / SAMPLE_RECORD).unlink(missing_ok=True)
    data = sample_data_dir()
    with (data / "index.csv").open(newline="") as f:
        stems = [row["stem"] for row in csv.DictReader(f)]
    spec = MosaicSpec(stems[: _ROWS * _COLS], data, _ROWS, _COLS, margin=192, mpp=EBHI_UM_PER_PX)
    write_synthetic_slide(files_.slide, spec, "svs", quality=90)
    mask = spec.mask()
    export_mask(mask, files_.annotation, [REGION], overwrite=True)
    write_ome_tiff(
        files_.mask,
        mask,
        kind="labels",
        mpp=EBHI_UM_PER_PX,
        class_names=["background", REGION.name],
        class_colors=[[0, 0, 0, 0], [*REGION.color, 255]],
        overwrite=True,
    )
    record = {
        "format": _RECORD_FORMAT,
        "mpp": EBHI_UM_PER_PX,
        "files": {p.name: p.stat().st_size for p in paths},
    }
    if claimed:
        record["outputs"] = claimed
    _write_record(out, record)
    return files_


def _record(out: Path) -> dict:
    """The demo's record in ``out`` (``{}``: none, or not the demo's, or unreadable)."""
    try:
        record = json.loads((out / SAMPLE_RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) and record.get("format") == _RECORD_FORMAT else {}


def _write_record(out: Path, record: dict) -> None:
    atomic_write_bytes(out / SAMPLE_RECORD, json.dumps(record, indent=2).encode(), overwrite=True)


def claim_outputs(out_dir: str | Path, *, overwrite: bool = False) -> None:
    """Refuse a ``prediction/`` or ``evaluation/`` folder the demo did not make; record both
    as the demo's before it writes them.

    The demo replaces its own prediction and evaluation on every run; a user's folder of
    that name (a prediction of their own slide, say) is refused unless ``overwrite``. A
    folder counts as the demo's when the record (``sample.msunet-demo.json``) lists it
    under ``outputs`` -- written here, before the first byte of it, so a demo killed while
    predicting still owns what it left -- or, for a folder of a version before that list,
    when the prediction's manifest names the demo's ``sample.svs`` (the evaluation's report,
    the demo's prediction). An absent or empty folder loses nothing and is always taken.

    Raises
    ------
    WriterError
        A folder the demo would replace is not its own (the message names it and says what
        to do).
    """
    out = Path(out_dir)
    record = _record(out)
    claimed = record.get("outputs")
    if not overwrite:
        for name in OUTPUT_FOLDERS:
            folder = out / name
            if isinstance(claimed, list) and name in claimed:
                continue
            if _is_empty(folder) or (claimed is None and _made_by_old_demo(out, name)):
                continue
            raise WriterError(
                folder,
                "exists and was not made by the demo, which would replace it. Pass --overwrite "
                "(msunet demo --overwrite) to replace it, or choose another folder (msunet demo "
                "--out)",
            )
    if claimed != list(OUTPUT_FOLDERS):
        _write_record(out, {**(record or {"format": _RECORD_FORMAT}), "outputs": [*OUTPUT_FOLDERS]})


def _is_empty(folder: Path) -> bool:
    """Whether nothing is there to lose: no such entry, or an empty folder."""
    if not os.path.lexists(folder):
        return True
    try:
        return folder.is_dir() and not folder.is_symlink() and not any(folder.iterdir())
    except OSError:
        return False


def _made_by_old_demo(out: Path, name: str) -> bool:
    """Whether ``out/name`` is a prediction or evaluation a demo wrote before the record
    listed its outputs: the manifest names the demo's slide, the report the demo's
    prediction."""
    try:
        if name == "prediction":
            made = json.loads((out / name / "prediction.json").read_text(encoding="utf-8"))
            used = made["slide"]["path"]
            ours = out / "sample.svs"
        else:
            made = json.loads((out / name / "report.json").read_text(encoding="utf-8"))
            used = made["prediction"]
            ours = out / "prediction" / "labels.ome.zarr"
        return Path(used).resolve() == ours.resolve()
    except (OSError, ValueError, TypeError, KeyError):
        return False


def _own_files(out: Path, paths: tuple[Path, ...]) -> set[Path]:
    """The files among ``paths`` that the demo wrote (see :func:`build_sample_slide`)."""
    try:
        record = json.loads((out / SAMPLE_RECORD).read_text(encoding="utf-8"))
        sizes = record["files"] if record.get("format") == _RECORD_FORMAT else {}
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        sizes = None  # none, unreadable, or only the output folders recorded (a rebuild)
    if isinstance(sizes, dict):
        return {p for p in paths if p.is_file() and sizes.get(p.name) == p.stat().st_size}
    return set(paths) if _is_synthetic(paths[0]) else set()


def _is_synthetic(path: Path) -> bool:
    """Whether ``path`` is an SVS written by the package's synthetic-slide writer."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            return "ScanScope ID = SYNTH" in (tif.pages[0].description or "")
    except Exception:  # not there, not a TIFF, damaged: not recognisably ours
        return False


def _slide_mpp(path: Path) -> float | None:
    """Level-0 µm/px of an existing sample slide (``None`` if it cannot be read)."""
    from napari_msunet.io.slide import open_slide

    try:
        with open_slide(path) as slide:
            return slide.mpp
    except (MsunetError, OSError):  # an unreadable leftover is rebuilt, not an error
        return None


def iter_demo(
    out_dir: str | Path,
    *,
    model: str | Path | None = None,
    device: str = "auto",
    overwrite: bool = False,
    stop: Stop = None,
) -> Generator[Progress, None, dict]:
    """Build, predict, evaluate, as a generator of :class:`~napari_msunet.progress.Progress`.

    Parameters
    ----------
    out_dir
        Folder for the sample slide, ``prediction/`` and ``evaluation/``.
    model
        A model file; ``None``: the bundled default model.
    device
        Inference device (``"auto"``, ``"cpu"``, ``"cuda"`` ...).
    overwrite
        Replace sample files and ``prediction/`` / ``evaluation/`` folders the demo did not
        make (``msunet demo --overwrite``); without it they are refused before any work.
    stop
        Checked by the prediction and the evaluation (see
        :func:`napari_msunet.progress.stopped`).

    Yields
    ------
    Progress
        Stage ``"build"`` (``0/1`` before the sample slide is built, ``1/1`` once it and the
        model are ready), then the records of
        :func:`~napari_msunet.inference.engine.iter_predict_slide` (``"tiles"``,
        ``"pyramid"``) and of :func:`~napari_msunet.evaluation.iter_evaluate`, passed through
        unchanged: each carries its own stage, so one driver shows them all.

    Returns
    -------
    dict
        ``files`` (:class:`DemoFiles`), ``model`` (its path), ``prediction`` (the
        :class:`~napari_msunet.inference.PredictionResult`) and ``evaluation`` (the
        evaluation's result; ``None`` when ``stop`` ended the run before it finished, and
        then ``prediction.completed`` says whether the prediction did).
    """
    from napari_msunet.evaluation import iter_evaluate
    from napari_msunet.inference import InferenceConfig, iter_predict_slide
    from napari_msunet.io.slide import open_slide
    from napari_msunet.models.checkpoint import load_model

    out = Path(out_dir)
    yield Progress(0, 1, "build", "building the sample slide from the bundled EBHI-Seg tiles")
    demo = build_sample_slide(out, overwrite=overwrite)
    claim_outputs(out, overwrite=overwrite)
    model_path = Path(model) if model is not None else default_model_path()
    net, header = load_model(model_path)
    yield Progress(1, 1, "build", f"sample slide {demo.slide.name} and model ready")
    config = InferenceConfig(target_mpp=header.input_um_per_px, device=device)
    pred_dir = out / "prediction"
    with open_slide(demo.slide) as slide:
        result = yield from iter_predict_slide(
            slide, net, header, config, pred_dir, overwrite=True, resume=False, stop=stop
        )
    results = {"files": demo, "model": model_path, "prediction": result, "evaluation": None}
    if not result.completed:
        return results
    results["evaluation"] = yield from iter_evaluate(
        result.outputs.labels,
        demo.annotation,
        out_dir=out / "evaluation",
        slide=demo.slide,
        overwrite=True,
        stop=stop,
    )
    return results


demo = eager(iter_demo)
