"""Train widget and the model history's verdict, in a real viewer (issue 13, items 2 and 3).

- A model for new classes trained from two annotation layers (one slide for training, one
  held out), cancelled mid-run, resumed, and its held-out Dice shown against its start model.
- A version trained on swapped labels is flagged as worse in the history, and "Roll back to
  its parent" makes the parent the current model again.
"""

from __future__ import annotations

import json

import pytest
import torch
from finetune_case import NAMES, make_case, open_in_viewer
from qtpy.QtCore import Qt

from napari_msunet._napari._finetune import FinetuneWidget
from napari_msunet._napari._train import TrainWidget
from napari_msunet.models import build_model
from napari_msunet.models.checkpoint import ModelHeader, read_header, save_model
from napari_msunet.progress import run_to_end
from napari_msunet.training.finetune import iter_finetune
from napari_msunet.training.held_out_scores import HeldOutVerdict
from napari_msunet.training.slide_dataset import SlideSpec
from napari_msunet.training.trainer import TrainStep

TIMEOUT = 180_000  # ms; the machine is shared


def _gland_model(path):
    """A tiny two-class (gland) model: the annotations' classes are new to it."""
    torch.manual_seed(0)
    model = build_model("msunet", preset="lite", n_classes=2, widths=[8, 16, 32])
    header = ModelHeader.for_model(
        model,
        class_names=("Background", "Gland"),
        class_colours=((0, 0, 0), (200, 200, 0)),
        input_um_per_px=2.0,
        norm_mean=(0.5,) * 3,
        norm_std=(0.25,) * 3,
        tile_size=64,
    )
    return save_model(path, model, header)


def test_train_new_classes_cancel_resume_and_see_the_held_out_dice(
    make_napari_viewer, tmp_path, qtbot
):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a, b = make_case(tmp_path / "a"), make_case(tmp_path / "b")
    base = _gland_model(tmp_path / "gland.safetensors")
    viewer = make_napari_viewer()
    _slide_a, _ = open_in_viewer(viewer, a)
    slide_b, _ = open_in_viewer(viewer, b)
    widget = TrainWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Train")
    assert widget.table.rowCount() == 2
    widget.set_base_model(base)
    widget.set_role(slide_b, "held-out")
    # a layer added later keeps the rows' choices (the table is rebuilt)
    viewer.add_points([[0, 0]], name="a note")
    assert widget.table.rowCount() == 2
    assert widget._rows[1][2].currentData() == "held-out"
    widget.steps.setValue(40)
    widget.batch.setValue(2)
    widget.device.setCurrentText("cpu")
    out = tmp_path / "lymph-node.safetensors"
    widget.out.setText(str(out))
    widget._out_changed()
    assert widget.taskbar.button.text() == "Train"

    steps: list[int] = []
    widget.taskbar.button.click()
    widget.task.listeners.append(
        lambda task: steps.append(task.last.done) if isinstance(task.last, TrainStep) else None
    )
    qtbot.waitUntil(lambda: len(widget.plot.losses) >= 3 or widget.task.done, timeout=TIMEOUT)
    widget.taskbar.button.click()  # Cancel: pauses
    qtbot.waitUntil(lambda: widget.task.done, timeout=TIMEOUT)
    assert widget.task.error is None, widget.task.error
    paused = widget.result
    assert paused.model is None
    assert paused.stopped
    assert 0 < paused.steps < 40
    assert not out.exists()
    assert paused.run_dir.is_dir()
    assert widget.taskbar.button.text() == f"Resume (step {paused.steps})"
    assert "Paused at step" in widget.info.text()

    widget.taskbar.button.click()  # Resume
    first = len(widget.plot.losses)
    qtbot.waitUntil(lambda: widget.task.done, timeout=TIMEOUT)
    assert widget.task.error is None, widget.task.error
    assert len(widget.plot.losses) > 0
    assert first == 0
    result = widget.result
    assert result.model == out
    assert result.steps == 40
    header = read_header(out)
    assert header.class_names == NAMES
    assert header.training["start"] == "transfer"
    assert header.training["held_out"]["how"] == "user"
    verdict = HeldOutVerdict.from_header(header)
    assert verdict.parent is not None
    assert verdict.version is not None
    assert verdict.parent.mean_dice == 0  # the gland model knows none of the new classes
    # the model history shows the parent's and the new model's held-out Dice
    assert widget.history.list.count() == 1
    label = widget.history.list.item(0).text()
    assert "Dice on held-out regions: 0.00 → " in label
    assert label.startswith("lymph-node.safetensors · trained, 40 steps")
    assert "Dice on held-out regions" in widget.info.text()
    assert widget.taskbar.button.text() == "Train"


def _swapped(geojson, path):
    """The annotation with germinal centres and sinuses swapped: deliberately wrong labels."""
    data = json.loads(geojson.read_text())
    swap = {"Germinal centre": "Sinus", "Sinus": "Germinal centre"}
    for f in data["features"]:
        c = f["properties"]["classification"]
        c["name"] = swap.get(c["name"], c["name"])
    path.write_text(json.dumps(data))
    return path


@pytest.mark.slow
def test_a_worse_version_is_flagged_and_rollback_restores_the_parent(
    make_napari_viewer, tmp_path, qtbot
):
    case = make_case(tmp_path)
    good = SlideSpec(case.slide, case.geojson)
    settings = dict(batch_size=4, device="cpu", held_out_fraction=0)
    parent = tmp_path / "models" / "node.safetensors"
    run_to_end(iter_finetune(case.parent, [good], steps=150, lr=3e-3, out=parent, **settings))
    wrong = SlideSpec(case.slide, _swapped(case.geojson, tmp_path / "swapped.geojson"))
    child = tmp_path / "models" / "node-ft1.safetensors"
    result = run_to_end(
        iter_finetune(
            parent,
            [wrong],
            steps=60,
            lr=3e-3,
            out=child,
            held_out_slides=[good],  # scored on the right labels
            **{**settings, "held_out_fraction": 0.2},
        )
    )
    assert result.held_out.got_worse, result.held_out

    viewer = make_napari_viewer()
    open_in_viewer(viewer, case)
    widget = FinetuneWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Fine-tune")
    widget.set_model_file(child)
    paths = widget.history_paths()
    assert parent in paths
    assert child in paths
    item = widget.history.list.item(paths.index(child))
    assert "⚠" in item.text()
    assert "worse than its parent" in item.text()
    assert item.foreground().color().red() > item.foreground().color().green()
    assert "worse" not in widget.history.list.item(paths.index(parent)).text()
    widget.history.list.setCurrentItem(item)
    assert widget.history.rollback_button.isEnabled()
    widget.history.rollback_button.click()
    assert widget.parent_model() == parent  # the parent is the current model again
    qtbot.waitUntil(lambda: widget.predict_task.done, timeout=TIMEOUT)
    assert widget.predict_task.error is None, widget.predict_task.error
    assert parent.is_file()
    assert child.is_file()
    selected = widget.history.list.currentItem()
    assert selected.data(Qt.ItemDataRole.UserRole) == parent


def test_finetune_learns_new_classes_when_asked(make_napari_viewer, tmp_path, qtbot):
    case = make_case(tmp_path)
    gland = _gland_model(tmp_path / "models" / "gland.safetensors")
    viewer = make_napari_viewer()
    open_in_viewer(viewer, case)
    widget = FinetuneWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Fine-tune")
    widget.set_model_file(gland)
    widget.repredict.setChecked(False)  # no prediction left running after the test
    widget.steps.setValue(3)
    widget.batch.setValue(2)
    widget.device.setCurrentText("cpu")
    assert widget.classes.currentData() == "auto"
    widget.classes.setCurrentIndex(widget.classes.findData("keep"))
    widget.taskbar.button.click()
    qtbot.waitUntil(lambda: widget.task.done, timeout=TIMEOUT)
    assert "Add classes" in str(widget.task.error)  # keep refuses, naming the way out
    widget.classes.setCurrentIndex(widget.classes.findData("replace"))
    widget.taskbar.button.click()
    qtbot.waitUntil(lambda: widget.task.done, timeout=TIMEOUT)
    assert widget.task.error is None, widget.task.error
    header = read_header(widget.result.model)
    assert header.class_names == NAMES
    assert header.training["classes"] == "replace"
    assert header.training["parent"]["path"] == str(gland)
