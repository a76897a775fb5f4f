"""Take the screenshots of docs/user-guide.md from the real napari GUI.

Walks the guide's workflow on the EBHI-Seg sample slide with the real widgets, clicking their
buttons and waiting for their workers exactly as a user would: open the sample, Segment,
Compare, Review (start, suspected missing annotations, edit a region, Apply), Fine-tune, then
Import / export. Each step saves a window screenshot, downsized to at most 1200 px wide and
reduced to a 256-colour palette so that each PNG stays under 400 KB.

Run it under a virtual X server, from the repository root::

    xvfb-run -a -s "-screen 0 1920x1200x24" .venv/bin/python scripts/user_guide_screenshots.py

The sample slide and everything the widgets write go to a fresh temporary cache folder
(``NAPARI_MSUNET_CACHE``), so the run starts from scratch and touches nothing of the user's.
Takes a few minutes on a CPU (the fine-tune step dominates).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

WIDTH, HEIGHT = 1400, 880  # window size: room for a dock widget beside a useful canvas
MAX_WIDTH = 1200
MAX_BYTES = 400 * 1024


def _save(image, path: Path) -> None:
    """Write ``image`` (an RGB(A) array) as a small palette PNG."""
    import io

    from PIL import Image

    im = Image.fromarray(image[..., :3])
    if im.width > MAX_WIDTH:
        im = im.resize((MAX_WIDTH, round(im.height * MAX_WIDTH / im.width)), Image.LANCZOS)
    for colours in (256, 192, 128, 96, 64):
        # octree keeps small saturated features (plot lines, legend swatches) in their
        # colours; median cut would pull them towards the dominant pinks of H&E
        q = im.quantize(colors=colours, method=Image.Quantize.FASTOCTREE)
        buf = io.BytesIO()
        q.save(buf, "PNG", optimize=True)
        if buf.tell() <= MAX_BYTES:
            break
    path.write_bytes(buf.getvalue())
    print(f"  wrote {path} ({im.width}x{im.height}, {buf.tell() // 1024} KB, {colours} colours)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/images", help="folder for the PNGs")
    parser.add_argument("--steps", type=int, default=40, help="fine-tune steps")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="msunet-guide-"))
    os.environ["NAPARI_MSUNET_CACHE"] = str(work / "cache")

    import numpy as np
    from qtpy.QtCore import QPoint
    from qtpy.QtWidgets import QApplication

    import napari

    def pump(seconds: float = 0.3) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            QApplication.processEvents()
            time.sleep(0.01)

    def wait(what: str, done: Callable[[], bool], timeout: float = 900) -> None:
        start = time.monotonic()
        while not done():
            QApplication.processEvents()
            time.sleep(0.02)
            if time.monotonic() - start > timeout:
                sys.exit(f"timed out waiting for {what}")
        print(f"  {what}: {time.monotonic() - start:.1f} s")

    def close_notifications() -> None:
        from napari._qt.dialogs.qt_notification import NapariQtNotification

        for w in QApplication.topLevelWidgets() + viewer.window._qt_window.findChildren(
            NapariQtNotification
        ):
            if isinstance(w, NapariQtNotification):
                w.close()
        pump(0.1)

    def shot(name: str, *, keep_notes: bool = False) -> None:
        if not keep_notes:
            close_notifications()
        pump(0.8)
        _save(viewer.screenshot(canvas_only=False, flash=False), out / f"guide_{name}.png")

    def dock(name: str):
        dw, widget = viewer.window.add_plugin_dock_widget("napari-msunet", name)
        pump(0.5)
        return dw, widget

    def undock(dw) -> None:
        viewer.window.remove_dock_widget(dw)
        pump(0.2)

    def task_done(bar) -> bool:
        return bar.task is not None and bar.task.done

    viewer = napari.Viewer(title="napari-msunet")
    window = viewer.window._qt_window
    window.resize(WIDTH, HEIGHT)
    window.move(0, 0)
    window.show()
    camera = viewer.scene.camera
    pump(1.0)

    # 0. the menus: popups are windows of their own, so grab the screen ----------------------
    def action(menu, text):
        return next(a for a in menu.actions() if a.text().replace("&", "") == text)

    for top, sub, name in (
        ("File", "Open Sample", "open_sample"),
        ("Plugins", "MS U-Net", "plugins"),
    ):
        bar = window.menuBar()
        menu = action(bar, top).menu()
        bar.setActiveAction(action(bar, top))
        pump(0.5)
        item = action(menu, sub)
        menu.setActiveAction(item)
        pump(0.3)
        if not item.menu().isVisible():
            item.menu().popup(menu.pos() + QPoint(menu.width(), menu.actionGeometry(item).y()))
        pump(0.8)
        grab = QApplication.primaryScreen().grabWindow(0, 0, 0, 880, 420).toImage()
        grab = grab.convertToFormat(grab.Format.Format_RGB888)
        ptr = grab.constBits()
        ptr.setsize(grab.sizeInBytes())
        rows = np.frombuffer(ptr, np.uint8).reshape(grab.height(), grab.bytesPerLine())
        _save(
            rows[:, : grab.width() * 3].reshape(grab.height(), grab.width(), 3).copy(),
            out / f"guide_menu_{name}.png",
        )
        item.menu().hide()
        menu.hide()
        pump(0.3)

    # 1. the sample slide -------------------------------------------------------------
    print("open sample")
    viewer.open_sample("napari-msunet", "ebhi_mosaic")
    viewer.canvas.overlays.scale_bar.visible = True
    viewer.reset_view()
    slide = next(ly for ly in viewer.layers if ly.metadata["napari_msunet"]["kind"] == "slide")
    annotation = next(
        ly for ly in viewer.layers if ly.metadata["napari_msunet"]["kind"] == "annotation"
    )
    shot("open_sample")

    # 2. Segment --------------------------------------------------------------------------
    print("segment")
    dw, seg = dock("Segment")
    annotation.visible = False
    viewer.reset_view()
    seg.taskbar.button.click()
    task = seg.taskbar.task
    wait("first tiles", lambda: task.done or (task.last is not None and task.last.done >= 2))
    if not task.done:
        shot("segment_running")
    wait("segmentation", lambda: task.done)
    if task.error is not None:
        sys.exit(f"segmentation failed: {task.error}")
    prediction = seg.last_run.layer
    shot("segment_done")
    undock(dw)

    # 3. Compare --------------------------------------------------------------------------
    print("compare")
    dw, cmp = dock("Compare")
    cmp.run_bar.button.click()
    wait("comparison", lambda: task_done(cmp.run_bar))
    if cmp.run_bar.task.error is not None:
        sys.exit(f"comparison failed: {cmp.run_bar.task.error}")
    prediction.visible = False
    viewer.reset_view()
    shot("compare")
    # a closer look at the colours: one row of patches
    camera.center = (slide.scale[0] * 560, slide.scale[1] * 900)
    camera.zoom = camera.zoom * 2.6
    shot("compare_zoom")
    undock(dw)
    overlay = cmp.overlay_layer
    overlay.visible = False

    # 4. Review ---------------------------------------------------------------------------
    print("review")
    dw, rev = dock("Review and correct")
    rev.start_bar.button.click()
    wait("review start", lambda: rev.store is not None and not rev._busy_now())
    rev.missing.find_bar.button.click()
    wait("missing annotations", lambda: task_done(rev.missing.find_bar))
    if rev.missing.find_bar.task.error is not None:
        sys.exit(f"search failed: {rev.missing.find_bar.task.error}")
    if rev.candidates:
        rev.candidate_list.setCurrentRow(0)
        pump(0.5)
    shot("review_missing")
    # edit a region around the first candidate, paint, show it, Apply
    if rev.candidates:
        rev.missing.edit_button.click()
        wait("region open", lambda: rev.edit_layer is not None and not rev._busy_now())
        edit = rev.edit_layer
        # paint what a reviewer would: the glands the annotation missed (here the model's
        # outline of them; the store and the prediction share the model's grid)
        data = np.asarray(edit.data)
        y, x, h, w = edit.metadata["napari_msunet"]["window"]
        level0 = prediction.data[0] if prediction.multiscale else prediction.data
        found = np.asarray(level0[y : y + h, x : x + w])
        edit.data = np.maximum(data, (found > 0).astype(data.dtype))
        pump(0.3)
        shot("review_edit")
        rev.apply_button.click()
        wait("apply", lambda: rev.edit_layer is None and not rev._busy_now())
    # accept the next suspected missing annotation
    if rev.candidates:
        rev.candidate_list.setCurrentRow(0)
        pump(0.3)
        rev.missing.accept_button.click()
        wait("accept", lambda: not rev._busy_now())
        print("  after Accept:", rev.status.text())
        print("  start bar status:", rev.start_bar.status.text())
    # a rectangle drawn by hand, then Edit region
    rev.draw_button.click()
    pump(0.3)
    y0, x0 = 200, 1300
    rev.rect_layer.add_rectangles(np.array([[y0, x0], [y0 + 380, x0 + 420]], float))
    camera.center = (slide.scale[0] * (y0 + 190), slide.scale[1] * (x0 + 210))
    camera.zoom = min(
        viewer.canvas.size[0] / (700 * slide.scale[0]),
        viewer.canvas.size[1] / (700 * slide.scale[1]),
    )
    rev.edit_button.click()
    wait("rectangle region open", lambda: rev.edit_layer is not None and not rev._busy_now())
    shot("review_rectangle_open")
    rev.apply_button.click()
    wait("apply", lambda: rev.edit_layer is None and not rev._busy_now())
    shot("review_applied")
    undock(dw)
    for layer in list(viewer.layers):
        kind = layer.metadata.get("napari_msunet", {}).get("kind")
        if kind in ("candidates", "edit-rectangles"):
            layer.visible = False

    # 5. Fine-tune ------------------------------------------------------------------------
    print("fine-tune")
    dw, ft = dock("Fine-tune")
    ft.steps.setValue(args.steps)
    ft.batch.setValue(4)
    prediction.visible = True
    camera.center = (slide.scale[0] * 864, slide.scale[1] * 1088)
    camera.zoom = viewer.canvas.size[1] / (900 * slide.scale[1])
    pump(0.3)
    print("  annotation chosen by default:", ft.annotation_combo.currentText())
    for i in range(ft.annotation_combo.count()):  # the corrected one, as the guide says
        if ft.annotation_combo.itemText(i).endswith("(corrected)"):
            ft.annotation_combo.setCurrentIndex(i)
    print("  annotation used:", ft.annotation_combo.currentText())
    prediction.visible = False
    print("  parent model:", ft.model_combo.currentText())
    ft.taskbar.button.click()
    wait("half the steps", lambda: ft.task.done or len(ft.plot.losses) >= args.steps // 2)
    shot("finetune_running")
    wait("fine-tune", lambda: ft.task.done)
    if ft.task.error is not None:
        sys.exit(f"fine-tune failed: {ft.task.error}")
    if ft.predict_task is not None:
        wait("re-prediction", lambda: ft.predict_task.done)
    pump(1.0)
    keep = {slide.name, ft.predict_task.result.layer.name} if ft.predict_task else {slide.name}
    for layer in viewer.layers:
        layer.visible = layer.name in keep  # the new model's prediction alone on the slide
    print("  plotted steps:", ft.plot.steps)
    print("  status:", ft.taskbar.status.text(), "|", ft.info.text())
    shot("finetune_done")
    undock(dw)

    # 6. Import / export ------------------------------------------------------------------
    print("import / export")
    dw, io = dock("Import / export")
    io.export_layer.set_layer(prediction)
    io.export_format.setCurrentIndex(0)  # QuPath GeoJSON
    pump(0.2)
    io.export_bar.button.click()
    wait("export", lambda: task_done(io.export_bar))
    viewer.reset_view()
    shot("import_export")
    undock(dw)

    print(f"done; the widgets' files are in {work}")
    viewer.close()


if __name__ == "__main__":
    main()
