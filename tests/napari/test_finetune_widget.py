"""Fine-tune widget end to end: real viewer, real workers, a tiny model on a small slide.

(Named ``test_finetune_widget.py``: ``tests/training/test_finetune.py`` already holds the
module name ``test_finetune`` and the test folders are not packages.)
"""

from __future__ import annotations

import numpy as np
import pytest
from finetune_case import NAMES, make_case, open_in_viewer

from napari_msunet._napari._finetune import FinetuneWidget
from napari_msunet._napari._layer_info import Kind, LayerInfo, layer_info, prediction_layers
from napari_msunet._napari._model_history import is_bundled, model_history, version_target
from napari_msunet._napari._reader import slide_layer
from napari_msunet._napari._workspace import workspace_dir
from napari_msunet.demo import default_model_path
from napari_msunet.errors import AnnotationError
from napari_msunet.io.slide import open_slide
from napari_msunet.models.checkpoint import load_model, read_header

TIMEOUT = 180_000  # ms; the machine is shared with a long training job


@pytest.fixture
def case(tmp_path):
    return make_case(tmp_path)


def _widget(make_napari_viewer, case, qtbot, steps):
    viewer = make_napari_viewer()
    slide, annotation = open_in_viewer(viewer, case)
    widget = FinetuneWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Fine-tune")
    widget.set_model_file(case.parent)
    widget.steps.setValue(steps)
    widget.batch.setValue(2)
    widget.device.setCurrentText("cpu")
    return viewer, widget, slide, annotation


def _run(widget, qtbot):
    widget.taskbar.button.click()
    assert widget.taskbar.running
    qtbot.waitUntil(lambda: widget.task.done, timeout=TIMEOUT)
    assert widget.task.error is None, widget.task.error


def test_inputs_default_to_the_annotation_and_the_prediction_model(make_napari_viewer, case, qtbot):
    viewer = make_napari_viewer()
    slide, annotation = open_in_viewer(viewer, case)
    widget = FinetuneWidget(viewer)
    assert widget.slide_combo.currentData() is slide
    assert widget.annotation_combo.currentData() is annotation
    assert widget.parent_model() == default_model_path()  # no prediction layer yet
    # a prediction layer made with another model becomes the default parent
    viewer.add_labels(
        annotation.data,
        name="prediction",
        metadata=LayerInfo(kind=Kind.PREDICTION, model=case.parent, slide=case.slide).as_metadata(),
    )
    assert widget.parent_model() == case.parent
    # a GeoJSON file can be the annotation too
    widget.set_annotation_file(case.geojson)
    assert widget.annotation_combo.currentData() == case.geojson
    assert not widget.advanced.isVisible()


def test_bundled_model_versions_go_to_the_slide_workspace(case):
    default = default_model_path()
    assert is_bundled(default)
    assert not is_bundled(case.parent)
    target = version_target(default, case.slide)
    assert target == workspace_dir(case.slide) / "models" / "default_model-ft1.safetensors"
    assert version_target(case.parent, case.slide) == case.parent.with_name("tiny-ft1.safetensors")


def test_finetune_saves_a_new_version_and_repredicts_the_view(make_napari_viewer, case, qtbot):
    viewer, widget, _, _ = _widget(make_napari_viewer, case, qtbot, steps=6)
    before = case.parent.read_bytes()
    _run(widget, qtbot)
    result = widget.result
    new = case.parent.with_name("tiny-ft1.safetensors")
    assert result.model == new
    assert result.steps == 6
    assert not result.stopped
    assert case.parent.read_bytes() == before  # the parent is never touched
    _, header = load_model(new)
    assert header.training["kind"] == "fine-tune"
    assert header.training["parent"]["path"] == str(case.parent)
    assert header.training["slides"][0]["regions"] == str(case.regions)
    assert widget.plot.steps == list(range(1, 7))
    qtbot.waitUntil(lambda: widget.plot.redraws > 0, timeout=5_000)
    assert "6 steps, last loss" in widget.taskbar.status.text()
    # the view is predicted again with the new version
    assert widget.parent_model() == new
    assert widget.predict_task is not None
    qtbot.waitUntil(lambda: widget.predict_task.done, timeout=TIMEOUT)
    assert widget.predict_task.error is None
    models = [layer_info(ly).model for ly in prediction_layers(viewer)]
    assert new in models
    assert widget.info.text().startswith("Saved tiny-ft1.safetensors (6 steps).")
    assert "Dice on the corrected regions it learnt from" in widget.info.text()  # stays in view
    assert widget.info.text().endswith("The current view is predicted with tiny-ft1.safetensors.")
    # history: the parent and its version, with what their headers say
    assert widget.history_paths() == [case.parent, new]
    assert "6 steps" in widget.history.list.item(1).text()
    assert "from tiny.safetensors" in widget.history.list.item(1).text()
    # switch back to the parent: the view is predicted with it again
    widget.history.list.setCurrentRow(0)
    task = widget.use_selected()
    assert task is widget.predict_task
    qtbot.waitUntil(lambda: task.done, timeout=TIMEOUT)
    assert task.error is None
    assert widget.parent_model() == case.parent
    models = [layer_info(ly).model for ly in prediction_layers(viewer)]
    assert case.parent in models
    # a second fine-tune from the parent gets the next number; nothing is overwritten
    widget.repredict.setChecked(False)
    widget.steps.setValue(2)
    _run(widget, qtbot)
    assert widget.result.model == case.parent.with_name("tiny-ft2.safetensors")
    assert widget.history_paths() == [case.parent, new, widget.result.model]
    assert case.parent.read_bytes() == before


def test_cancel_mid_run_keeps_a_valid_version_and_no_broken_file(make_napari_viewer, case, qtbot):
    _, widget, _, _ = _widget(make_napari_viewer, case, qtbot, steps=10_000)
    before = case.parent.read_bytes()
    widget.taskbar.button.click()
    qtbot.waitUntil(lambda: len(widget.plot.steps) >= 2, timeout=TIMEOUT)
    widget.taskbar.button.click()  # Cancel
    qtbot.waitUntil(lambda: widget.task.done, timeout=TIMEOUT)
    assert widget.task.cancelled
    assert widget.task.error is None
    result = widget.result
    assert result.stopped
    assert 2 <= result.steps < 10_000
    _, header = load_model(result.model)  # complete and loadable
    assert header.training["steps"] == result.steps
    assert case.parent.read_bytes() == before
    folder = case.parent.parent
    assert sorted(p.name for p in folder.iterdir()) == [
        "tiny-ft1.run",
        "tiny-ft1.safetensors",
        "tiny.safetensors",
    ]  # no temporary or half-written file
    assert widget.predict_task is None  # a stopped run is not shown automatically
    assert "saved as a new version" in widget.taskbar.status.text()
    assert "stopped early" in widget.info.text()
    versions = model_history(case.parent)
    assert [v.path for v in versions] == [case.parent, result.model]
    assert versions[1].stopped_early
    assert "(stopped)" in widget.history.list.item(1).text()
    assert read_header(result.model).training["parent"]["path"] == str(case.parent)


def test_cancel_before_the_first_step_saves_nothing(make_napari_viewer, case, qtbot):
    """The core writes no version that trained zero steps; the widget says so."""
    _, widget, _, _ = _widget(make_napari_viewer, case, qtbot, steps=10_000)
    widget.taskbar.button.click()
    widget.taskbar.button.click()  # Cancel, long before the worker has trained a step
    qtbot.waitUntil(lambda: widget.task.done, timeout=TIMEOUT)
    assert widget.task.error is None
    assert widget.result.model is None
    assert widget.result.steps == 0
    assert widget.plot.steps == []
    assert "no new version was saved" in widget.info.text()
    assert [p.name for p in case.parent.parent.iterdir()] == ["tiny.safetensors"]
    assert widget.predict_task is None


def test_finetune_on_the_review_widgets_store(make_napari_viewer, case, qtbot):
    """The corrected annotation as the Review widget keeps and shows it."""
    from napari_msunet._napari._review_layers import store_layer_kwargs
    from napari_msunet.io.annotation_store import AnnotationStore

    viewer = make_napari_viewer()
    data, kwargs, _ = slide_layer(open_slide(case.slide))
    slide = viewer.add_image(data, **kwargs)
    with open_slide(case.slide) as s:
        store = AnnotationStore.create(
            workspace_dir(case.slide) / "annotation", case.geojson, s, mpp=2.0, classes=NAMES
        )
    window = store.read_region(256, 256, 512, 512)
    store.apply(256, 256, np.zeros_like(window))  # a corrected region: nothing there
    levels = store.levels()
    layer = viewer.add_labels(levels, multiscale=True, **store_layer_kwargs(store, slide))
    widget = FinetuneWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Fine-tune")
    assert widget.annotation_combo.currentData() is layer
    widget.set_model_file(case.parent)
    widget.steps.setValue(3)
    widget.batch.setValue(2)
    widget.device.setCurrentText("cpu")
    widget.repredict.setChecked(False)
    _run(widget, qtbot)
    assert widget.result.steps == 3
    used = read_header(widget.result.model).training["slides"][0]
    assert used["annotation"] == str(store.mask_path)
    assert used["regions"] == str(store.regions_path)
    assert widget.info.text().startswith("Saved tiny-ft1.safetensors (3 steps)")
    # the figure a pathologist asks for first: did it take the corrections? Here the
    # correction says "nothing here": the score is the foreground each model predicts there
    learnt = widget.result.corrected
    assert learnt.version.mean_dice is None
    assert 0 <= learnt.parent.false_foreground <= 1
    shown = (
        "The corrected regions it learnt from hold no annotated foreground; predicted "
        f"foreground there: {learnt.parent.false_foreground:.0%} → "
        f"{learnt.version.false_foreground:.0%}."
    )
    assert shown in widget.info.text()
    assert shown[:-1] in widget.history.list.item(1).text()


def test_a_failing_run_is_shown_and_writes_no_model(make_napari_viewer, case, qtbot):
    """The bundled model knows Background/Gland; this GeoJSON has other classes, and the
    user asked to keep the model's classes."""
    viewer = make_napari_viewer()
    data, kwargs, _ = slide_layer(open_slide(case.slide))
    viewer.add_image(data, **kwargs)
    widget = FinetuneWidget(viewer)
    widget.set_annotation_file(case.geojson)
    widget.classes.setCurrentIndex(widget.classes.findData("keep"))
    assert widget.parent_model() == default_model_path()
    widget.device.setCurrentText("cpu")
    widget.taskbar.button.click()
    qtbot.waitUntil(lambda: widget.task.done, timeout=TIMEOUT)
    assert isinstance(widget.task.error, AnnotationError)
    assert widget.taskbar.status.text().startswith("Failed:")
    assert "Germinal centre" in widget.info.text() or "Sinus" in widget.info.text()
    assert not list((workspace_dir(case.slide) / "models").glob("*.safetensors"))
    assert widget.result is None


def test_missing_inputs_are_reported_not_raised(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    widget = FinetuneWidget(viewer)
    widget.taskbar.button.click()
    assert widget.task is None
    assert not widget.taskbar.running
    assert "slide" in widget.taskbar.status.text()


def test_nothing_corrected_yet_is_explained_not_run(make_napari_viewer, case, qtbot):
    """A review store without any corrected region: say what to do, start nothing."""
    from napari_msunet._napari._review_layers import store_layer_kwargs
    from napari_msunet.io.annotation_store import AnnotationStore

    viewer = make_napari_viewer()
    data, kwargs, _ = slide_layer(open_slide(case.slide))
    slide = viewer.add_image(data, **kwargs)
    with open_slide(case.slide) as s:
        store = AnnotationStore.create(
            workspace_dir(case.slide) / "annotation", case.geojson, s, mpp=2.0, classes=NAMES
        )
    viewer.add_labels(store.levels(), multiscale=True, **store_layer_kwargs(store, slide))
    widget = FinetuneWidget(viewer)
    widget.set_model_file(case.parent)
    widget.taskbar.button.click()
    assert widget.task is None
    assert not widget.taskbar.running
    assert "No region has been corrected yet" in widget.taskbar.status.text()
    assert list(case.parent.parent.glob("*-ft*.safetensors")) == []


def test_a_new_session_continues_from_the_newest_version(make_napari_viewer, case, qtbot):
    """The slide's fine-tuned versions are found again: '-ft2' follows '-ft1', not the original."""
    import shutil

    models = workspace_dir(case.slide) / "models"
    models.mkdir(parents=True, exist_ok=True)
    ft1 = models / "default_model-ft1.safetensors"
    shutil.copy(default_model_path(), ft1)  # a version made in an earlier session
    try:
        viewer = make_napari_viewer()
        open_in_viewer(viewer, case)
        widget = FinetuneWidget(viewer)
        assert widget.parent_model() == ft1
        assert "Continuing from default_model-ft1.safetensors" in widget.info.text()
        assert version_target(widget.parent_model(), case.slide).name == (
            "default_model-ft2.safetensors"
        )
    finally:
        ft1.unlink()
