"""The Segment widget end to end: real viewer, real worker, real engine, the Run/Cancel button.

A synthetic 1024 x 1536 slide at 0.5 µm/px and a tiny MS U-Net file at 1 µm/px (so the
prediction is 512 x 768 in µm at twice the slide's pixel size), tiles of 64: about 70 tiles
with tissue, a few seconds per run on two shared CPU cores. Every test copies the slide, so
each has its own workspace (predictions live beside the slide).
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
import zarr
from segment_case import make_case

from napari_msunet._napari._finetune import FinetuneWidget
from napari_msunet._napari._layer_info import Kind, LayerClass, layer_info
from napari_msunet._napari._layers import slide_mpp_of
from napari_msunet._napari._predict_run import prediction_layers, visible_region
from napari_msunet._napari._review import EMPTY_ENTRY, ReviewWidget
from napari_msunet._napari._segment import SegmentWidget
from napari_msunet._napari._workspace import workspace_dir
from napari_msunet.inference import InferenceConfig, iter_predict_slide
from napari_msunet.io.slide import open_slide
from napari_msunet.models.checkpoint import load_model
from napari_msunet.progress import run_to_end

CFG = InferenceConfig(target_mpp=1.0, tile=64, device="cpu")
TIMEOUT = 120_000


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """One intra-op thread: on two cores shared with other jobs, more threads only spin."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The slide, a tiny model file whose two classes both occur, and a direct engine run."""
    case = make_case(tmp_path_factory.mktemp("segment"))
    net, header = load_model(case.model)
    with open_slide(case.slide) as slide:
        direct = run_to_end(
            iter_predict_slide(slide, net, header, CFG, case.slide.parent / "direct")
        )
    reference = zarr.open_group(direct.outputs.labels, mode="r")["0"][...]
    assert (reference == 1).mean() > 0.05  # both classes occur on tissue
    return {"slide": case.slide, "model": case.model, "reference": reference, "direct": direct}


@pytest.fixture
def setup(make_napari_viewer, files, tmp_path):
    """A viewer with its own copy of the slide and a Segment widget set to the tiny model."""
    slide = shutil.copy(files["slide"], tmp_path / "case.svs")
    viewer = make_napari_viewer()
    (slide_layer,) = viewer.open(str(slide), plugin="napari-msunet")
    widget = SegmentWidget(viewer)
    widget.set_model(files["model"])
    widget.tile_spin.setValue(64)
    widget.device_combo.setCurrentText("cpu")
    return viewer, widget, slide_layer


def _run(qtbot, widget):
    widget.taskbar.button.click()
    task = widget.taskbar.task
    qtbot.waitUntil(lambda: task.done, timeout=TIMEOUT)
    assert task.error is None
    return task


def test_widget_defaults_to_the_bundled_model_and_lists_slides(make_napari_viewer, files):
    from napari_msunet.demo import default_model_path

    viewer = make_napari_viewer()
    widget = SegmentWidget(viewer)
    assert widget.model_edit.text() == str(default_model_path())
    assert "Gland" in widget.model_info.text()
    assert widget.mpp_spin.value() == pytest.approx(1.0)  # the model's own resolution (EBHI-Seg)
    assert widget.slide_combo.count() == 0
    assert widget.run() is None  # no slide: refused, with a message
    assert "Open a slide" in widget.taskbar.status.text()
    (layer,) = viewer.open(str(files["slide"]), plugin="napari-msunet")
    assert widget.slide_layer() is layer
    widget.set_model(files["slide"])  # not a model file
    assert widget.header is None
    assert widget.run() is None
    assert "Cannot use the model" in widget.taskbar.status.text()
    assert widget.config().device == "auto"


def test_run_fills_a_labels_layer_in_um_equal_to_the_engine(qtbot, setup, files):
    viewer, widget, slide_layer = setup
    assert widget.mpp_spin.value() == pytest.approx(1.0)
    seen = []  # (tiles done, foreground pixels shown at the coarsest level) while running

    def watch(task):
        layers = prediction_layers(viewer)
        if layers:
            seen.append((task.last.done, int(np.asarray(layers[0].data[-1]).sum())))

    widget.taskbar.button.click()
    task = widget.taskbar.task
    task.listeners.append(watch)
    qtbot.waitUntil(lambda: task.done, timeout=TIMEOUT)
    assert task.error is None
    run = task.result
    assert run.completed
    assert not run.reused
    (layer,) = prediction_layers(viewer)
    assert layer is run.layer
    # it filled in while tiles finished: shown before the end, growing, on the coarse level
    assert len(seen) >= 3
    final = int(np.asarray(layer.data[-1]).sum())
    assert any(0 < fg < final for _, fg in seen)  # part of it, before the end
    # multiscale Labels in µm on the slide, values equal to a direct engine run
    assert layer.multiscale
    assert layer.data[0].shape == (512, 768)
    assert tuple(layer.scale) == pytest.approx((1.0, 1.0))
    assert tuple(layer.translate) == pytest.approx((0.25, 0.25))  # pixel centres on the slide's
    np.testing.assert_array_equal(np.asarray(layer.data[0]), files["reference"])
    info = layer_info(layer)
    assert info.kind is Kind.PREDICTION
    assert info.mpp == pytest.approx(1.0)
    assert info.model == files["model"]
    assert info.classes == (LayerClass(1, "Region", (0, 160, 255)),)
    assert info.slide == layer_info(slide_layer).path
    folder = workspace_dir(layer_info(slide_layer).path) / "predictions" / "tiny"
    assert info.prediction_dir == folder
    assert info.region is None
    assert (folder / "labels.ome.zarr").is_dir()
    assert json.loads((folder / "prediction.json").read_text())["region"] is None
    assert "Done" in widget.output_label.text()

    # a second Run reuses the finished prediction (same layer, nothing recomputed) ...
    stamp = (folder / "prediction.json").stat().st_mtime_ns
    task = _run(qtbot, widget)
    assert task.result.reused
    assert prediction_layers(viewer) == [layer]
    assert (folder / "prediction.json").stat().st_mtime_ns == stamp
    # ... and recomputes it only when asked to
    widget.overwrite.setChecked(True)
    task = _run(qtbot, widget)
    assert not task.result.reused
    assert task.result.result.tiles_computed == files["direct"].tiles_computed
    assert prediction_layers(viewer) == [layer]
    np.testing.assert_array_equal(np.asarray(layer.data[0]), files["reference"])


def test_cancel_keeps_finished_tiles_and_rerun_resumes(qtbot, setup, files):
    viewer, widget, _ = setup
    widget.taskbar.button.click()
    task = widget.taskbar.task
    qtbot.waitUntil(lambda: task.last is not None and task.last.done >= 2, timeout=TIMEOUT)
    widget.taskbar.button.click()  # Cancel
    qtbot.waitUntil(lambda: task.done, timeout=TIMEOUT)
    assert task.error is None
    run = task.result
    assert not run.completed
    done = run.result.tiles_computed
    assert 2 <= done < files["direct"].tiles_computed
    assert "Cancelled" in widget.taskbar.status.text()
    assert "resume" in widget.output_label.text()
    # the layer shows exactly the finished tiles, equal to the whole run there
    (layer,) = prediction_layers(viewer)
    shown = np.asarray(layer.data[0])
    partial = zarr.open_group(f"{run.labels}.partial", mode="r")
    written = np.zeros(shown.shape, bool)
    for line in (run.labels.parent / "labels.ome.zarr.partial/msunet-done.jsonl").open():
        y, x, h, w = json.loads(line)
        written[y : y + h, x : x + w] = True
    assert written.sum() > 0
    np.testing.assert_array_equal(shown, partial["0"][...])
    np.testing.assert_array_equal(shown[written], files["reference"][written])
    assert shown[~written].max() == 0
    coarse = np.asarray(layer.data[-1])  # the coarse level shows them too
    step = shown.shape[0] // coarse.shape[0]
    np.testing.assert_array_equal(coarse, shown[::step, ::step])

    task = _run(qtbot, widget)  # Run again: resumes
    assert task.result.completed
    assert task.result.result.tiles_resumed == done
    assert task.result.result.tiles_computed == files["direct"].tiles_computed - done
    assert prediction_layers(viewer) == [layer]
    np.testing.assert_array_equal(np.asarray(layer.data[0]), files["reference"])


def test_current_view_only_computes_just_the_view(qtbot, setup, files):
    viewer, widget, slide_layer = setup
    camera = viewer.scene.camera
    camera.center = (0, 150.0, 200.0)  # µm: level-0 pixel (300, 400)
    camera.zoom = max(viewer.canvas.size) / 60.0  # about 60 µm across
    region = visible_region(viewer, slide_layer)
    y0, x0, h, w = region
    assert y0 <= 300 < y0 + h
    assert x0 <= 400 < x0 + w
    assert 0 < h * w < 0.1 * 1024 * 1536
    widget.view_only.setChecked(True)
    task = _run(qtbot, widget)
    run = task.result
    assert run.result.region == region
    assert run.folder.name.startswith("tiny-view-")
    assert run.result.tiles_total < files["direct"].tiles_total
    (layer,) = prediction_layers(viewer)
    assert layer.name == "case.svs — tiny prediction (view)"
    assert layer_info(layer).region == region
    shown = np.asarray(layer.data[0])
    ref = files["reference"]
    # the view (in prediction pixels, 2 slide pixels each) equals the whole-slide run ...
    view = np.s_[y0 // 2 : -(-(y0 + h) // 2), x0 // 2 : -(-(x0 + w) // 2)]
    np.testing.assert_array_equal(shown[view], ref[view])
    # ... and only the tiles meeting it (64 px) were computed
    computed = np.zeros(shown.shape, bool)
    ty, tx = (y0 // 2) // 64 * 64, (x0 // 2) // 64 * 64
    computed[ty : -(-(y0 + h) // 128) * 64, tx : -(-(x0 + w) // 128) * 64] = True
    assert shown[~computed].max() == 0
    probs = zarr.open_group(run.folder / "probabilities.ome.zarr", mode="r")["0"][...]
    assert probs[:, ~computed].max() == 0  # never written, not just background


def test_sample_data_opens_slide_and_annotation(make_napari_viewer, tmp_path, monkeypatch):
    monkeypatch.setenv("NAPARI_MSUNET_CACHE", str(tmp_path))
    viewer = make_napari_viewer()
    layers = viewer.open_sample("napari-msunet", "ebhi_mosaic")
    slide, annotation = layers
    assert layer_info(slide).kind is Kind.SLIDE
    assert layer_info(annotation).kind is Kind.ANNOTATION
    assert layer_info(annotation).slide == layer_info(slide).path
    assert slide.multiscale
    assert annotation.multiscale
    assert tuple(slide.scale) == pytest.approx((1.0, 1.0))  # EBHI-Seg's ~1 µm/px
    assert tuple(annotation.scale) == pytest.approx((1.0, 1.0))
    assert [a.shape for a in annotation.data] == [s.shape[:2] for s in slide.data]
    assert (np.asarray(annotation.data[-1]) > 0).mean() > 0.2  # glands annotated
    for layer in layers:
        assert "EBHI-Seg" in layer.name
        assert "CC BY 4.0" in layer_info(layer).details["credit"]
    assert str(tmp_path) in str(layer_info(slide).path)
    widget = SegmentWidget(viewer)  # the sample is ready to segment
    assert widget.slide_layer() is slide


def test_a_slide_without_its_pixel_size_asks_for_it_and_lines_up_in_pixels(
    qtbot, make_napari_viewer, files, tmp_path
):
    """A plain TIFF (no µm/px in the file): the widget asks; the prediction lies on it."""
    import tifffile

    with open_slide(files["slide"]) as slide:
        rgb = np.asarray(slide.levels[0])
    plain = tmp_path / "scan.tif"
    tifffile.imwrite(plain, rgb, photometric="rgb", tile=(256, 256))
    viewer = make_napari_viewer()
    (slide_layer,) = viewer.open(str(plain), plugin="napari-msunet")
    assert layer_info(slide_layer).mpp is None
    widget = SegmentWidget(viewer)
    widget.show()
    widget.set_model(files["model"])
    widget.tile_spin.setValue(64)
    widget.device_combo.setCurrentText("cpu")
    assert widget.slide_needs_mpp()
    assert widget.slide_mpp_spin.isVisible()
    assert widget.run() is None  # refused until the user says
    assert "Slide µm/px" in widget.taskbar.status.text()

    widget.slide_mpp_spin.setValue(0.5)
    task = _run(qtbot, widget)
    assert task.result.completed
    (layer,) = prediction_layers(viewer)
    # in the slide layer's units (pixels): one prediction pixel covers 2 x 2 slide pixels
    assert tuple(layer.scale) == pytest.approx((2.0, 2.0))
    assert tuple(layer.translate) == pytest.approx((0.5, 0.5))
    assert layer_info(layer).mpp == pytest.approx(1.0)  # real µm/px
    net, header = load_model(files["model"])
    with open_slide(plain) as slide:
        direct = run_to_end(
            iter_predict_slide(slide, net, header, CFG, tmp_path / "direct", mpp=0.5)
        )
    reference = zarr.open_group(direct.outputs.labels, mode="r")["0"][...]
    np.testing.assert_array_equal(np.asarray(layer.data[0]), reference)

    # the value entered is kept with the slide layer: Review and Fine-tune use it
    assert slide_mpp_of(slide_layer) == pytest.approx(0.5)
    review = ReviewWidget(viewer)
    review.annotation_combo.set_extra(EMPTY_ENTRY)
    task = review.start_review()
    qtbot.waitUntil(lambda: task.done, timeout=TIMEOUT)
    assert task.error is None, task.error
    assert review.store.slide_mpp == pytest.approx(0.5)
    assert review.store.downsample == 2  # the prediction's 1 µm/px on the 0.5 µm/px scan
    finetune = FinetuneWidget(viewer)
    assert finetune._given_slide_mpp() == pytest.approx(0.5)

    # a slide that states its size needs nothing more
    (svs_layer,) = viewer.open(str(files["slide"]), plugin="napari-msunet")
    widget.slide_combo.setCurrentIndex(widget.slide_combo.findText(svs_layer.name))
    assert not widget.slide_needs_mpp()
    assert not widget.slide_mpp_spin.isVisible()
    finetune.slide_combo.setCurrentIndex(finetune.slide_combo.findText(svs_layer.name))
    assert finetune._given_slide_mpp() is None  # its file's own value is used
    # back on the plain TIFF, the field shows what was entered
    widget.slide_combo.setCurrentIndex(widget.slide_combo.findText(slide_layer.name))
    assert widget.slide_mpp_spin.value() == pytest.approx(0.5)


def test_a_new_prediction_hides_the_earlier_one_of_the_slide(qtbot, setup):
    """Two outlined predictions of one slide would mix: the earlier one is hidden, kept."""
    viewer, widget, _slide_layer = setup
    first = _run(qtbot, widget).result.layer
    camera = viewer.scene.camera
    camera.center = (0, 150.0, 200.0)
    camera.zoom = max(viewer.canvas.size) / 60.0
    widget.view_only.setChecked(True)
    second = _run(qtbot, widget).result.layer
    assert second is not first
    assert prediction_layers(viewer) == [first, second]  # both kept: eyes compare them
    assert second.visible
    assert not first.visible
    # Before / after (Fine-tune's model history) swaps the two on the same view, and back
    from napari_msunet._napari._finetune import FinetuneWidget

    finetune = FinetuneWidget(viewer)
    finetune.history.before_after_button.click()
    assert first.visible
    assert not second.visible
    assert finetune.info.text() == f"Showing {first.name}."
    finetune.history.before_after_button.click()
    assert second.visible
    assert not first.visible
