"""The "Segment" dock: image + model + device -> labels, per-class response maps, uncertainty.

Thin over :class:`~napari_cnnseg._session.Session` (shared with the Fine-tune dock through the
viewer's :class:`~napari_cnnseg._widgets._shared.Controller`). Long work runs through
:mod:`._worker` (a napari worker thread, or inline with ``CNNSEG_SYNC=1``).

The dock is a :class:`._base.JobDock` (job, progress, errors and busy buttons shared with the
Fine-tune dock); layers are found and updated by :mod:`._layers`.

Scripting / tests use the same methods the buttons call: :meth:`SegmentWidget.set_image_layer`,
:meth:`~SegmentWidget.choose_pretrained`, :meth:`~SegmentWidget.choose_new`,
:meth:`~SegmentWidget.load_checkpoint`, :meth:`~SegmentWidget.segment`,
:meth:`~SegmentWidget.cancel`, :meth:`~SegmentWidget.export_labels`,
:meth:`~SegmentWidget.export_probabilities`.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from qtpy.QtWidgets import (
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QLabel,
    QLayout,
    QLineEdit,
    QSizePolicy,
    QSpinBox,
    QWidget,
)

from .._napari_io import default_output_path, layer_role, unwrap
from ..core.errors import CnnsegError, InputError
from ..core.precisions import TRAIN_PRECISION_CHOICES
from . import _worker
from ._base import JobDock
from ._layers import show_results
from ._layout import button_row
from ._model_picker import ModelPicker, plain_description

logger = logging.getLogger(__name__)

_ALL_CHANNELS = "all channels"


def _available_devices() -> list[str]:
    try:
        from ..core.devices import available_devices

        return list(available_devices())
    except Exception:  # noqa: BLE001
        return ["auto", "cpu"]


class SegmentWidget(ModelPicker, JobDock):
    """Dock widget: pick image, model, device; Segment / Cancel; export results.

    Args:
        napari_viewer: the viewer or napari's proxy of it (what the Plugins menu hands over).
    """

    def __init__(self, napari_viewer: Any, parent: QWidget | None = None) -> None:
        super().__init__(napari_viewer, parent)
        # take only the height it needs: the Fine-tune dock below gets the rest
        self.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Maximum)
        self.last_layers: dict[str, Any] = {}
        self._build()
        self._connect()
        self._refresh_image_choices()
        self._refresh_model_choices()
        self._on_model_changed()  # a reopened dock shows the session's model (or the prompt)
        self.preselect_model()  # one click: a sample's shipped model, or the last one used
        from .apply_folder import add_apply_folder

        add_apply_folder(self)  # "Apply to folder…": the current model over a folder (docs/cohorts.md)

    # ---------------------------------------------------------------- layout
    def _build(self) -> None:
        root = self.body_layout()
        # never squeeze the rows below their size hint (napari's stylesheet makes them taller)
        root.setSizeConstraint(QLayout.SizeConstraint.SetMinimumSize)
        form = QFormLayout()
        self.image_combo = QComboBox()
        self.image_combo.setToolTip("3D image layer to segment")
        form.addRow("Image", self.image_combo)
        self.channel_combo = QComboBox()
        self.channel_combo.setToolTip("for a (C, Z, Y, X) layer: one channel, or all as inputs")
        self.channel_label = QLabel("Channel")
        form.addRow(self.channel_label, self.channel_combo)

        self.model_combo = QComboBox()
        self.model_combo.setToolTip("shipped model, a checkpoint file, or a new untrained network")
        form.addRow("Model", self.model_combo)
        self.classes_spin = QSpinBox()
        self.classes_spin.setRange(2, 64)
        self.classes_spin.setValue(2)
        self.names_edit = QLineEdit("background, foreground")
        self.names_edit.setToolTip("class names, comma separated, background first")
        self.classes_label = QLabel("Classes")
        self.names_label = QLabel("Names")
        form.addRow(self.classes_label, self.classes_spin)
        form.addRow(self.names_label, self.names_edit)
        root.addLayout(form)

        self.description = QLabel("No model chosen.")
        self.description.setWordWrap(True)
        self.description.setStyleSheet("color: #a0a0a0;")
        root.addWidget(self.description)

        form2 = QFormLayout()
        self.device_combo = QComboBox()
        self.device_combo.addItems(_available_devices())
        form2.addRow("Device", self.device_combo)
        self.precision_combo = QComboBox()
        self.precision_combo.addItems(list(TRAIN_PRECISION_CHOICES))  # the one table
        self.precision_combo.setToolTip("auto = bf16 where the device supports it, else fp32")
        form2.addRow("Precision", self.precision_combo)
        root.addLayout(form2)

        self.advanced = QGroupBox("Advanced (0 = automatic)")
        self.advanced.setCheckable(True)
        self.advanced.setChecked(False)
        adv = QFormLayout(self.advanced)
        self.tile_spin = QSpinBox()
        self.tile_spin.setRange(0, 1024)
        self.tile_spin.setToolTip("tile edge in voxels (z, y, x); 0 = chosen from the model")
        self.overlap_spin = QSpinBox()
        self.overlap_spin.setRange(0, 256)
        self.overlap_spin.setToolTip("tile overlap in voxels (same-padding nets); 0 = automatic")
        self.batch_spin = QSpinBox()
        self.batch_spin.setRange(0, 64)
        self.batch_spin.setToolTip("tiles per batch; 0 = automatic")
        adv.addRow("Tile size", self.tile_spin)
        adv.addRow("Overlap", self.overlap_spin)
        adv.addRow("Batch size", self.batch_spin)
        root.addWidget(self.advanced)
        self._advanced_rows = [w for w in self.advanced.findChildren(QWidget)]
        self.advanced.toggled.connect(self._show_advanced)
        self._show_advanced(False)

        self.segment_btn, self.cancel_btn = button_row(root, "Segment", "Cancel")
        self.add_progress(root)
        self.export_labels_btn, self.export_probs_btn = button_row(
            root, "Export labels…", "Export probabilities…"
        )
        root.addStretch(1)

    def _show_advanced(self, on: bool) -> None:
        """Advanced settings take room only while they are switched on."""
        for w in self._advanced_rows:
            w.setVisible(on)

    def _connect(self) -> None:
        layers = self.viewer.layers
        layers.events.inserted.connect(self._refresh_image_choices)
        layers.events.removed.connect(self._refresh_image_choices)
        layers.events.renamed.connect(self._refresh_image_choices)
        self.image_combo.currentIndexChanged.connect(self._on_image_changed)
        self.channel_combo.currentIndexChanged.connect(self._on_image_changed)
        self.model_combo.activated.connect(self._on_model_activated)
        self.classes_spin.valueChanged.connect(self._on_classes_changed)
        self.names_edit.editingFinished.connect(self._on_names_edited)
        self.segment_btn.clicked.connect(self.segment)
        self.cancel_btn.clicked.connect(self.cancel)
        self.export_labels_btn.clicked.connect(lambda: self.export_labels())
        self.export_probs_btn.clicked.connect(lambda: self.export_probabilities())
        self.listen(self.ctrl.model_changed, self._on_model_changed)
        self.listen(self.ctrl.results_changed, self.update_buttons)

    # ---------------------------------------------------------------- image choice
    def _image_layers(self) -> list[Any]:
        from napari.layers import Image

        return [layer for layer in self.viewer.layers if isinstance(layer, Image)]

    def _refresh_image_choices(self, event: Any = None) -> None:
        current = self.image_combo.currentText()
        names = [layer.name for layer in self._image_layers() if not layer_role(layer)]
        self.image_combo.blockSignals(True)
        self.image_combo.clear()
        self.image_combo.addItems(names)
        if current in names:
            self.image_combo.setCurrentText(current)
        self.image_combo.blockSignals(False)
        self._on_image_changed()

    def _selected_layer(self) -> Any:
        name = self.image_combo.currentText()
        return unwrap(self.viewer.layers[name]) if name and name in self.viewer.layers else None

    def _on_image_changed(self, *args: Any) -> None:
        layer = self._selected_layer()
        is4d = layer is not None and layer.data.ndim == 4 and not getattr(layer, "rgb", False)
        self.channel_combo.setVisible(is4d)
        self.channel_label.setVisible(is4d)
        if is4d:
            n = layer.data.shape[0]
            wanted = [_ALL_CHANNELS] + [f"channel {i}" for i in range(n)]
            if [self.channel_combo.itemText(i) for i in range(self.channel_combo.count())] != wanted:
                self.channel_combo.blockSignals(True)
                self.channel_combo.clear()
                self.channel_combo.addItems(wanted)
                self.channel_combo.blockSignals(False)
        self._bind_quietly(layer)
        if self.model_combo.count():  # (not while the dock is still being built)
            self.preselect_model()

    def _bind_quietly(self, layer: Any) -> None:
        """Share the picked image with the Fine-tune dock; problems are reported on Segment."""
        if self.ctrl.busy:
            return  # never swap the image under a running job; Segment re-binds later
        if layer is None:
            self.ctrl.unbind()
            return
        try:
            self.ctrl.bind_image(layer, self._selected_channel())
        except CnnsegError:
            self.ctrl.unbind()

    def _selected_channel(self) -> int | None:
        text = self.channel_combo.currentText()
        if not self.channel_combo.isVisibleTo(self) or not text.startswith("channel "):
            return None
        return int(text.split()[1])

    def set_image_layer(self, layer: Any, channel: int | None = None) -> None:
        """Choose the image layer (and channel of a 4D layer) to segment."""
        self.image_combo.setCurrentText(layer.name)
        self._on_image_changed()
        if channel is not None:
            self.channel_combo.setCurrentText(f"channel {channel}")

    # ---------------------------------------------------------------- segment
    def _predict_options(self) -> dict[str, Any]:
        tile = self.tile_spin.value() if self.advanced.isChecked() else 0
        overlap = self.overlap_spin.value() if self.advanced.isChecked() else 0
        batch = self.batch_spin.value() if self.advanced.isChecked() else 0
        return {
            "device": self.device_combo.currentText() or "auto",
            "precision": self.precision_combo.currentText() or "auto",
            "tile_shape": (tile, tile, tile) if tile else None,
            "overlap": overlap or None,
            "batch_size": batch or None,
        }

    def prepare(self) -> Any:
        """Bind the chosen image to the session and check everything; returns the image layer."""
        layer = self._selected_layer()
        if layer is None:
            raise InputError("no image layer: open a 3D image (File > Open) or a sample first")
        self.ctrl.bind_image(layer, self._selected_channel())
        self.session.predict_options.update(self._predict_options())
        self.session.check_ready()
        return layer

    def segment(self) -> Any:
        """Run Segment on the chosen image; returns the job (None if it could not start)."""
        if self.guard_busy():
            return None
        try:
            layer = self.prepare()
        except Exception as exc:  # noqa: BLE001
            self.report(exc)
            return None
        session = self.session
        self.status.setText(f"Segmenting {layer.name}…")
        t0 = time.perf_counter()

        def work(ctx: _worker.JobContext) -> Any:
            return session.segment(progress=ctx.progress, cancel=ctx.cancel)

        def done(results: Any) -> None:
            self.ctrl.segment_seconds = time.perf_counter() - t0
            self.last_layers = show_results(self.viewer, layer, session)
            self.status.setText(
                f"Done in {self.ctrl.segment_seconds:.1f} s: {layer.name} labels + "
                f"{len(session.class_names)} response maps."
            )
            self.ctrl.results_changed.emit()

        return self.start(work, desc=f"Segment {layer.name}", on_done=done)

    def _on_model_changed(self) -> None:
        self._sync_model_entry()
        self.description.setText(plain_description(self.session))
        chosen = self.session.model is not None
        tip = self.session.describe_model() if chosen else ""
        self.description.setToolTip(tip)
        # the prompt to choose a model stands out; a model's description is quiet grey
        self.description.setStyleSheet("color: #a0a0a0;" if chosen else "color: #f0c040;")
        self.update_buttons()

    def update_buttons(self) -> None:
        """Segment / model choice / export only while no job runs; Cancel only while one does."""
        busy = self.ctrl.busy
        chosen = self.session.model is not None
        self.segment_btn.setEnabled(not busy and chosen)
        self.segment_btn.setToolTip("" if chosen else "choose a model above first")
        self.cancel_btn.setEnabled(busy)
        self.model_combo.setEnabled(not busy)
        has = self.session.results is not None
        self.export_labels_btn.setEnabled(has and not busy)
        self.export_probs_btn.setEnabled(has and not busy)

    # ---------------------------------------------------------------- export
    def _export(self, what: str, path: str | Path | None) -> Path | None:
        try:
            res = self.session.results
            if res is None:
                raise InputError("nothing to export: run Segment first")
            if path is None:
                path, _ = QFileDialog.getSaveFileName(
                    self,
                    f"Export {what}",
                    self.default_path(what),
                    "Volumes (*.nii.gz *.nii *.nrrd *.mha *.tif *.zarr)",
                )
                if not path:
                    return None
            from ..core.io import write_volume

            array = res.labels if what == "labels" else res.probabilities
            meta: dict[str, Any] = {"class_names": self.session.class_names}
            volume = self.session.volume.with_array(array, **meta)
            out = write_volume(path, volume)
        except Exception as exc:  # noqa: BLE001
            self.report(exc)
            return None
        self.status.setText(f"Saved {what} to {out}")
        return Path(out)

    def default_path(self, what: str) -> str:
        """Where the export dialog starts: beside the source file, in its format."""
        return default_output_path(self.session.source_path, self.session.image_name, what)

    def export_labels(self, path: str | Path | None = None) -> Path | None:
        """Write the label map (uint8 class indices) on the source geometry; asks if no path."""
        return self._export("labels", path)

    def export_probabilities(self, path: str | Path | None = None) -> Path | None:
        """Write the (K, Z, Y, X) probabilities on the source geometry; asks if no path."""
        return self._export("probabilities", path)
