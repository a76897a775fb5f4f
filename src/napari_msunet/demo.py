"""The one-minute demo: a real-tissue sample slide, the bundled model, and its evaluation.

``msunet demo`` builds a mosaic slide from the EBHI-Seg pairs bundled with the package (from the
validation split the default model never trained on), predicts it with the bundled default
model, evaluates the prediction against the slide's annotation (slide-level IoU/Dice, TP/FP/FN
overlay) and, where there is a display, opens everything in napari.

EBHI-Seg: Shi et al., Frontiers in Medicine 10:1114673 (2023), CC BY 4.0.
"""

from __future__ import annotations

import csv
from collections.abc import Generator
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

from napari_msunet.errors import ModelFileError, MsunetError
from napari_msunet.progress import Progress, Stop, eager

__all__ = [
    "DemoFiles",
    "build_sample_slide",
    "default_model_path",
    "demo",
    "iter_demo",
    "sample_data_dir",
]

#: Layout of the demo mosaic: 6 rows x 8 columns of 224-px patches = the 48 bundled pairs.
_ROWS, _COLS = 6, 8


def _data(name: str) -> Path:
    return Path(str(files("napari_msunet") / "data" / name))


def sample_data_dir() -> Path:
    """Folder of the bundled EBHI-Seg sample (``images/``, ``masks/``, ``index.csv``)."""
    return _data("ebhi_sample")


def default_model_path() -> Path:
    """The bundled default model (MS U-Net trained on the EBHI-Seg training split)."""
    path = _data("default_model.safetensors")
    if not path.is_file():
        raise ModelFileError(path, "the bundled default model is missing from this install")
    return path


@dataclass(frozen=True)
class DemoFiles:
    slide: Path
    annotation: Path
    mask: Path


def build_sample_slide(out_dir: str | Path, *, overwrite: bool = False) -> DemoFiles:
    """Write the demo slide (SVS-like, EBHI-Seg's ~1 µm/px), its QuPath GeoJSON and label mask.

    Files already there are reused when they are at the current scale (the demo is
    deterministic); a sample written by an older version at another µm/px is rebuilt.
    """
    from napari_msunet.io.mosaic import EBHI_UM_PER_PX, REGION, MosaicSpec
    from napari_msunet.io.ome_tiff import write_ome_tiff
    from napari_msunet.io.synthetic import write_synthetic_slide
    from napari_msunet.io.vectorise import export_mask

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files_ = DemoFiles(out / "sample.svs", out / "sample.geojson", out / "sample_mask.ome.tif")
    if files_.slide.exists() and files_.annotation.exists() and not overwrite:
        mpp = _slide_mpp(files_.slide)
        if mpp is not None and abs(mpp - EBHI_UM_PER_PX) < 1e-6:
            return files_
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
    return files_


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
    demo = build_sample_slide(out)
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
