"""Import / export widget: QuPath GeoJSON in and out, label layers to OME-Zarr and OME-TIFF.

Import puts a QuPath GeoJSON on a chosen slide layer as a multiscale Labels layer rasterised
lazily on the slide's own pyramid (as the reader does for a GeoJSON lying next to its slide),
after checking that the file belongs to a slide of that size. Export writes a Labels layer
(prediction or annotation, its finest level) as QuPath GeoJSON in level-0 slide pixels, or as
a pyramidal OME-Zarr or OME-TIFF label image with its µm/px and class names.

Every read and write runs in a worker through :func:`~napari_msunet._napari._tasks.start_task`;
the core does the work (:mod:`napari_msunet.io.vectorise`, :mod:`~napari_msunet.io.ome_zarr`,
:mod:`~napari_msunet.io.ome_tiff`), whose writer generators take Cancel as their ``stop`` and
delete what they had made, so a cancelled export leaves no file. An existing file is never
replaced unless "Replace an existing file" is ticked: the default name (the layer's, in the
slide's workspace folder ``<slide>.msunet/exports/``) stays the same, so exporting the same
layer twice is refused the second time instead of writing a duplicate.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from napari.layers import Labels, Layer
from napari.utils.notifications import show_error, show_info
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLineEdit,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from napari_msunet._napari._layer_info import Kind, kind_of, layer_info
from napari_msunet._napari._layers import (
    LayerCombo,
    is_slide,
    layer_classes,
    layer_levels,
    layer_mpp,
    slide_path_of,
)
from napari_msunet._napari._scroll import make_scrollable
from napari_msunet._napari._tasks import Task, TaskBar, one_step, start_task
from napari_msunet._napari._viewer_setup import prepare_viewer
from napari_msunet._napari._workspace import workspace_dir

if TYPE_CHECKING:
    import napari

__all__ = ["FORMATS", "ImportExportWidget", "export_classes"]

#: Export formats: combo text -> (key, file suffix).
FORMATS: dict[str, tuple[str, str]] = {
    "QuPath GeoJSON (.geojson)": ("geojson", ".geojson"),
    "OME-Zarr labels (.ome.zarr)": ("ome-zarr", ".ome.zarr"),
    "OME-TIFF labels (.ome.tif)": ("ome-tiff", ".ome.tif"),
}


def _kind_rank(layer: Layer) -> int:
    return {Kind.PREDICTION: 0, Kind.ANNOTATION: 1, Kind.LABELS: 2}.get(kind_of(layer), 3)


def _file_stem(name: str) -> str:
    """A file name made from a layer name (no folders, no odd characters)."""
    for suffix in (".ome.zarr", ".ome.tif", ".geojson", ".json", ".zarr", ".tif"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._")
    return stem or "labels"


def export_classes(layer: Labels) -> tuple[Any, list[str], list[list[int]]]:
    """The layer's classes for the writers: ``ClassInfo`` items (GeoJSON) and the names and
    RGBA colours of label values 0..max (OME metadata); background transparent."""
    from napari_msunet.io.annotations import ClassInfo, default_color

    info = layer_info(layer)
    colours = {c.label: c.color for c in info.classes if c.color} if info is not None else {}
    names = layer_classes(layer)
    infos = [
        ClassInfo(name, label, colours.get(label, default_color(label)))
        for label, name in sorted(names.items())
    ]
    top = max(names, default=0)
    all_names = ["background"] + [names.get(i, f"class {i}") for i in range(1, top + 1)]
    all_colours = [[0, 0, 0, 0]] + [
        [*colours.get(i, default_color(i)), 255] for i in range(1, top + 1)
    ]
    return infos or None, all_names, all_colours


def _source(level: Any) -> Any:
    """The layer's level as the writers' source: lazy and unsigned (a painted layer may be
    int32/int64, which the label writers do not take)."""
    import dask.array as da

    arr = level if isinstance(level, da.Array) else da.from_array(level, chunks=1024)
    dtype = np.dtype(arr.dtype)
    if dtype.kind != "u":
        arr = arr.astype(np.uint32 if dtype.itemsize >= 4 else np.dtype(f"u{dtype.itemsize}"))
    return arr


class _PathRow(QWidget):
    """A path field with a Browse button."""

    def __init__(self, placeholder: str, browse: Any) -> None:
        super().__init__()
        self.edit = QLineEdit()
        self.edit.setPlaceholderText(placeholder)
        self.button = QPushButton("Browse…")
        self.button.clicked.connect(browse)
        row = QHBoxLayout(self)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.edit, 1)
        row.addWidget(self.button)


class ImportExportWidget(QWidget):
    """QuPath GeoJSON in and out; label layers to OME-Zarr and OME-TIFF.

    Parameters
    ----------
    napari_viewer
        The viewer whose layers are exported and which receives imported annotations.
    """

    def __init__(self, napari_viewer: napari.viewer.Viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer
        prepare_viewer(napari_viewer)  # outlines, short notifications (_viewer_setup)
        self.imported: list[Labels] = []
        self.exported: list[Path] = []

        # ---- import
        self.import_path = _PathRow("QuPath GeoJSON export (level-0 pixels)", self._browse_import)
        self.import_slide = LayerCombo(napari_viewer, is_slide)
        self.import_bar = TaskBar("Import", self._run_import)
        box_in = QGroupBox("Import QuPath GeoJSON onto a slide")
        form_in = QFormLayout(box_in)
        form_in.addRow("GeoJSON", self.import_path)
        form_in.addRow("Slide", self.import_slide)
        form_in.addRow(self.import_bar)

        # ---- export
        self.export_layer = LayerCombo(napari_viewer, lambda ly: isinstance(ly, Labels), _kind_rank)
        self.export_slide = LayerCombo(napari_viewer, is_slide, none_text="(none)")
        self.export_format = QComboBox()
        self.export_format.addItems(list(FORMATS))
        self.export_path = _PathRow("output file", self._browse_export)
        self.replace = QCheckBox("Replace an existing file")
        self.export_bar = TaskBar(
            "Export", self._run_export, cancelled_text="Cancelled; nothing was written."
        )
        self._custom_path = False
        self.export_path.edit.textEdited.connect(self._path_edited)
        for combo in (self.export_layer, self.export_slide, self.export_format):
            combo.currentIndexChanged.connect(self._update_default_path)
        self.export_layer.currentIndexChanged.connect(self._choose_slide_of_layer)
        box_out = QGroupBox("Export a label layer")
        form_out = QFormLayout(box_out)
        form_out.addRow("Layer", self.export_layer)
        form_out.addRow("Slide", self.export_slide)
        form_out.addRow("Format", self.export_format)
        form_out.addRow("File", self.export_path)
        form_out.addRow("", self.replace)
        form_out.addRow(self.export_bar)

        outer = QVBoxLayout(self)
        outer.addWidget(box_in)
        outer.addWidget(box_out)
        outer.addStretch(1)
        self._choose_slide_of_layer()
        self._update_default_path()
        make_scrollable(self)  # stacked docks scroll instead of clipping

    # ------------------------------------------------------------------ import

    def _browse_import(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self, "QuPath GeoJSON", "", "GeoJSON (*.geojson *.json);;All files (*)"
        )
        if path:
            self.import_path.edit.setText(path)

    def _run_import(self) -> Task | None:
        text = self.import_path.edit.text().strip()
        slide_layer = self.import_slide.current_layer()
        if not text:
            return self._refuse(self.import_bar, "Choose the QuPath GeoJSON file to import.")
        path = Path(text).expanduser()
        if not path.is_file():
            return self._refuse(self.import_bar, f"{path}: no such file.")
        if slide_layer is None:
            return self._refuse(self.import_bar, "Open the slide the annotation belongs to first.")
        slide_path = slide_path_of(slide_layer)
        if slide_path is None:
            return self._refuse(self.import_bar, f"{slide_layer.name}: not a slide file.")

        def read():
            from napari_msunet._napari._annotation_layers import annotation_layers
            from napari_msunet.io.geojson_fit import read_geojson_for_slide
            from napari_msunet.io.slide import open_slide

            with open_slide(slide_path) as slide:
                read_geojson_for_slide(path, slide.shape)  # refuse another slide's file
                return annotation_layers(path, slide)

        def add(layers: list[Any]) -> None:
            for data, kwargs, _kind in layers:
                # exactly on the chosen slide layer, wherever it is placed
                kwargs = dict(kwargs)
                kwargs["scale"] = tuple(slide_layer.scale[-2:])
                kwargs["translate"] = tuple(slide_layer.translate[-2:])
                layer = self.viewer.add_labels(data, **kwargs)  # its record names the slide
                self.imported.append(layer)
                info = layer_info(layer)
                n = len(info.classes) if info is not None else 0
                classes = "1 class" if n == 1 else f"{n} classes"
                self.import_bar.status.setText(f"Imported {path.name} ({classes}).")

        return start_task(
            one_step(read, f"reading {path.name}"), f"Importing {path.name}", on_return=add
        )

    # ------------------------------------------------------------------ export

    def _browse_export(self) -> None:
        key, suffix = FORMATS[self.export_format.currentText()]
        start = self.export_path.edit.text() or str(Path.home())
        if key == "ome-zarr":
            path, _ = QFileDialog.getSaveFileName(self, "Export as OME-Zarr", start)
        else:
            path, _ = QFileDialog.getSaveFileName(
                self,
                "Export",
                start,
                f"*{suffix}",
                options=QFileDialog.Option.DontConfirmOverwrite,  # we ask, below
            )
        if path:
            if not path.endswith(suffix):
                path += suffix
            self.export_path.edit.setText(path)
            self._custom_path = True

    def _path_edited(self, _text: str) -> None:
        self._custom_path = True

    def _choose_slide_of_layer(self, _index: int = 0) -> None:
        wanted = slide_path_of(self.export_layer.current_layer())
        if wanted is None:
            return
        for layer in self.export_slide.layers():
            if slide_path_of(layer) == wanted:
                self.export_slide.set_layer(layer)
                return

    def _export_folder(self, create: bool) -> Path:
        layer = self.export_layer.current_layer()
        slide = slide_path_of(self.export_slide.current_layer()) or slide_path_of(layer)
        if slide is not None:
            return workspace_dir(slide, create=create) / "exports"
        info = layer_info(layer)
        return info.path.parent if info is not None and info.path is not None else Path.home()

    def default_path(self, create: bool = False) -> Path | None:
        """The file in the slide's ``exports`` folder named after the layer.

        Always the same name for the same layer and format: a second export of it is refused
        unless "Replace an existing file" is ticked (a name that moved on to "-2", "-3"...
        after each export wrote silent duplicates, issue 15).
        """
        layer = self.export_layer.current_layer()
        if layer is None:
            return None
        _key, suffix = FORMATS[self.export_format.currentText()]
        return self._export_folder(create) / f"{_file_stem(layer.name)}{suffix}"

    def _update_default_path(self, _index: int = 0) -> None:
        if self._custom_path:
            # keep the user's folder and name; follow the format's suffix
            text = self.export_path.edit.text()
            _key, suffix = FORMATS[self.export_format.currentText()]
            for other in (s for _k, s in FORMATS.values()):
                if text.endswith(other) and other != suffix:
                    self.export_path.edit.setText(text[: -len(other)] + suffix)
            return
        path = self.default_path()
        self.export_path.edit.setText("" if path is None else str(path))

    def _downsample(self, layer: Labels, slide_layer: Layer | None) -> float:
        """Level-0 slide pixels per pixel of the layer's finest level (1 without a slide)."""
        if slide_layer is None:
            return 1.0
        mine, theirs = layer_mpp(layer), layer_mpp(slide_layer)
        if mine and theirs:
            return mine / theirs
        # no µm on one side: napari's own scales place the two, so they give the ratio
        return float(layer.scale[-1] / slide_layer.scale[-1])

    def _offset(self, layer: Labels, slide_layer: Layer | None, d: float) -> tuple[float, float]:
        """Level-0 ``(y, x)`` of the layer's top-left pixel corner on the slide.

        napari puts pixel ``i``'s centre at ``i * scale + translate``; a layer made on the
        slide's grid (pixel ``i`` covering level-0 ``[i d, (i + 1) d)``) is translated by
        ``(d - 1) / 2`` slide pixels, so anything beyond that is a real offset (an edited
        region). A layer left at the origin covers the slide from its corner.
        """
        t = np.asarray(layer.translate[-2:], dtype=float)
        if slide_layer is None or not np.any(t):
            return 0.0, 0.0
        s0 = np.asarray(slide_layer.scale[-2:], dtype=float)
        t0 = np.asarray(slide_layer.translate[-2:], dtype=float)
        oy, ox = np.round((t - t0) / s0 - (d - 1) / 2, 6)
        return float(oy), float(ox)

    def _run_export(self) -> Task | None:
        layer = self.export_layer.current_layer()
        if layer is None:
            return self._refuse(self.export_bar, "Choose the Labels layer to export.")
        key, suffix = FORMATS[self.export_format.currentText()]
        text = self.export_path.edit.text().strip()
        if not self._custom_path:
            path = self.default_path(create=True)  # makes the workspace folder now
        elif not text:
            return self._refuse(self.export_bar, "Choose the file to write.")
        else:
            path = Path(text).expanduser()
        assert path is not None
        if not path.name.endswith(suffix):
            path = path.with_name(path.name + suffix)
        overwrite = self.replace.isChecked()
        if path.exists() and not overwrite:
            return self._refuse(
                self.export_bar,
                f"{path} already exists: choose another name, or tick 'Replace an existing "
                "file' to replace it.",
                error=True,
            )
        slide_layer = self.export_slide.current_layer()
        level0 = layer_levels(layer)[0]
        infos, names, colours = export_classes(layer)
        mpp = layer_mpp(layer)
        downsample = self._downsample(layer, slide_layer)
        offset = self._offset(layer, slide_layer, downsample)
        meta = {"mpp": mpp, "class_names": names, "class_colors": colours, "overwrite": overwrite}

        def make(stop):
            # the core's writer generator: Cancel is its `stop`, and a stopped writer deletes
            # what it had made and returns None (nothing is published)
            path.parent.mkdir(parents=True, exist_ok=True)
            source = _source(level0)
            if key == "geojson":
                from napari_msunet.io.vectorise import iter_export_mask

                return (
                    yield from iter_export_mask(
                        source,
                        path,
                        infos,
                        downsample,
                        overwrite=overwrite,
                        offset=offset,
                        stop=stop,
                    )
                )
            if key == "ome-zarr":
                from napari_msunet.io.ome_zarr import iter_write_ome_zarr

                return (
                    yield from iter_write_ome_zarr(
                        path, source, kind="labels", resume=False, stop=stop, **meta
                    )
                )
            from napari_msunet.io.ome_tiff import iter_write_ome_tiff

            return (yield from iter_write_ome_tiff(path, source, kind="labels", stop=stop, **meta))

        def done(written: Path | None) -> None:
            if written is None:
                self.export_bar.status.setText(f"Cancelled; {path.name} was not written.")
                return
            self.exported.append(written)
            self.export_bar.status.setText(f"Wrote {written}")
            show_info(f"Exported {layer.name} to {written}")

        return start_task(make, f"Exporting {layer.name}", on_return=done)

    # ------------------------------------------------------------------ helpers

    def _refuse(self, bar: TaskBar, message: str, *, error: bool = False) -> None:
        bar.status.setText(message)
        (show_error if error else show_info)(message)
        return None
