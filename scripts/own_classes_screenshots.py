"""Screenshots of docs/user-guide.md "Your own classes", from the real napari GUI.

Two real-tissue slides are built from the bundled EBHI-Seg sample patches (24 each), each
annotated with a class scheme the bundled model never had: glands of Normal and Polyp patches
are "Benign gland", glands of intraepithelial neoplasia, adenocarcinoma and serrated adenoma
patches are "Neoplastic gland" (written as QuPath GeoJSON, as a pathologist's export would
be). Both are opened in napari; the Train widget trains a model for the two classes on the
first slide with the second held out (transfer from the bundled model), is cancelled, resumed
and finished; then the Fine-tune widget shows the new model's history.

Run it under a virtual X server, from the repository root::

    xvfb-run -a -s "-screen 0 1920x1200x24" .venv/bin/python scripts/own_classes_screenshots.py

Everything is written to a fresh temporary folder; the PNGs go to ``--out``.
EBHI-Seg: Shi et al., Frontiers in Medicine 10:1114673 (2023), CC BY 4.0.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from user_guide_screenshots import _save

from napari_msunet.demo import sample_data_dir
from napari_msunet.io.annotations import ClassInfo
from napari_msunet.io.mosaic import EBHI_UM_PER_PX, PATCH, MosaicSpec
from napari_msunet.io.synthetic import write_synthetic_slide
from napari_msunet.io.vectorise import export_mask

WIDTH, HEIGHT = 1920, 1080
BENIGN = {"Normal", "Polyp"}
CLASSES = [
    ClassInfo("Benign gland", 1, (0, 114, 178)),  # Okabe-Ito blue
    ClassInfo("Neoplastic gland", 2, (213, 94, 0)),  # Okabe-Ito vermillion
]
ROWS, COLS, MARGIN = 4, 6, 160


def build_slide(folder: Path, name: str, stems: list[str], diagnosis: dict[str, str]) -> Path:
    """A mosaic slide of ``stems`` and its two-class QuPath GeoJSON (same stem)."""
    spec = MosaicSpec(stems, sample_data_dir(), ROWS, COLS, margin=MARGIN, mpp=EBHI_UM_PER_PX)
    slide = write_synthetic_slide(folder / f"{name}.svs", spec, "svs", quality=90)
    gland = spec.mask() > 0
    classes = np.zeros(gland.shape, np.uint8)
    for i, stem in enumerate(stems):
        r, c = divmod(i, COLS)
        y0, x0 = MARGIN + r * PATCH, MARGIN + c * PATCH
        cls = 1 if diagnosis[stem] in BENIGN else 2
        classes[y0 : y0 + PATCH, x0 : x0 + PATCH] = cls
    export_mask(np.where(gland, classes, 0), folder / f"{name}.geojson", CLASSES)
    return slide


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/images", help="folder for the PNGs")
    parser.add_argument("--steps", type=int, default=300, help="training steps")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="msunet-classes-"))
    os.environ["NAPARI_MSUNET_CACHE"] = str(work / "cache")

    with (sample_data_dir() / "index.csv").open(newline="") as f:
        diagnosis = {row["stem"]: row["diagnosis"] for row in csv.DictReader(f)}
    stems = sorted(diagnosis)
    rng = np.random.default_rng(0)
    rng.shuffle(stems)
    n = ROWS * COLS
    slides = [
        build_slide(work, "node-01", stems[:n], diagnosis),
        build_slide(work, "node-02", stems[n : 2 * n], diagnosis),
    ]

    from qtpy.QtWidgets import QApplication

    import napari

    def pump(seconds: float = 0.3) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            QApplication.processEvents()
            time.sleep(0.01)

    def wait(what: str, done, timeout: float = 1800) -> None:
        start = time.monotonic()
        while not done():
            QApplication.processEvents()
            time.sleep(0.02)
            if time.monotonic() - start > timeout:
                sys.exit(f"timed out waiting for {what}")
        print(f"  {what}: {time.monotonic() - start:.1f} s")

    def close_notifications() -> None:
        from napari._qt.dialogs.qt_notification import NapariQtNotification

        for w in window.findChildren(NapariQtNotification):
            w.close()
        pump(0.1)

    def shot(name: str) -> None:
        close_notifications()
        pump(0.8)
        _save(viewer.screenshot(canvas_only=False, flash=False), out / f"guide_{name}.png")

    viewer = napari.Viewer(title="napari-msunet")
    window = viewer.window._qt_window
    window.resize(WIDTH, HEIGHT)
    window.move(0, 0)
    window.show()
    pump(1.0)
    for slide in slides:
        viewer.open([slide, slide.with_suffix(".geojson")], plugin="napari-msunet")
    viewer.canvas.overlays.scale_bar.visible = True
    slide_layers = [ly for ly in viewer.layers if ly.metadata["napari_msunet"]["kind"] == "slide"]
    for layer in slide_layers[1:]:
        layer.visible = False
    for layer in viewer.layers:
        if layer.metadata["napari_msunet"]["kind"] == "annotation":
            layer.visible = layer.metadata["napari_msunet"].get("slide") == str(slides[0])
    viewer.reset_view()

    print("train")
    _dw, train = viewer.window.add_plugin_dock_widget("napari-msunet", "Train")
    pump(0.5)
    train.set_role(slide_layers[1], "held-out")
    train.steps.setValue(args.steps)
    train.out.setText(str(work / "models" / "lymph-demo.safetensors"))
    train._out_changed()
    shot("classes_train_form")
    train.taskbar.button.click()
    task = train.task
    wait("some steps", lambda: task.done or len(train.plot.losses) >= 40)
    train.taskbar.button.click()  # Cancel: pauses
    wait("pause", lambda: task.done)
    shot("classes_train_paused")
    train.taskbar.button.click()  # Resume
    task = train.task
    wait("training", lambda: task.done)
    if task.error is not None:
        sys.exit(f"training failed: {task.error}")
    train.history.list.setCurrentRow(0)
    close_notifications()
    shot("classes_train_done")
    print(train.info.text())

    print("fine-tune form")
    viewer.window.remove_dock_widget(_dw)
    _dw, fine = viewer.window.add_plugin_dock_widget("napari-msunet", "Fine-tune")
    pump(0.5)
    fine.set_model_file(train.result.model)
    fine.classes.setCurrentIndex(fine.classes.findData("add"))
    shot("classes_finetune_form")


if __name__ == "__main__":
    main()
