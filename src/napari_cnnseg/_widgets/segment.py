"""The "Segment" dock: image + model + device -> labels, per-class response maps, uncertainty.

Thin over :class:`~napari_cnnseg._session.Session` (shared with the Fine-tune dock through the
viewer's :class:`~napari_cnnseg._widgets._shared.Controller`). Long work runs through
:mod:`._worker` (a napari worker thread, or inline with ``CNNSEG_SYNC=1``).

Scripting / tests use the same methods the buttons call: :meth:`SegmentWidget.set_image_layer`,
:meth:`~SegmentWidget.choose_pretrained`, :meth:`~SegmentWidget.choose_new`,
:meth:`~SegmentWidget.load_checkpoint`, :meth:`~SegmentWidget.segment`,
:meth:`~SegmentWidget.cancel`, :meth:`~SegmentWidget.export_labels`,
:meth:`~SegmentWidget.export_probabilities`.
"""

from __future__ import annotations

import logging
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
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from .._session import FAMILIES
from ..core.errors import Cancelled, CnnsegError, InputError
from . import _worker
from ._layout import button_row, progress_and_status
from ._shared import controller_for, notify_error, notify_info, show_results

logger = logging.getLogger(__name__)

_ALL_CHANNELS = "all channels"
PRECISIONS = ("auto", "fp32", "bf16")


def _list_pretrained() -> list[str]:
    try:
        from ..core.models import list_pretrained

        return list(list_pretrained())
    except Exception:  # noqa: BLE001 - no shipped models yet is not an error
        logger.debug("no shipped models", exc_info=True)
        return []


def _available_devices() -> list[str]:
    try:
        from ..core.devices import available_devices

        return list(available_devices())
    except Exception:  # noqa: BLE001
        return ["auto", "cpu"]


class SegmentWidget(QWidget):
    """Dock widget: pick image, model, device; Segment / Cancel; export results.

    Args:
        napari_viewer: the viewer (injected by napari when opened from the Plugins menu).
    """

    def __init__(self, napari_viewer: Any, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.ctrl = controller_for(napari_viewer)
        self.session = self.ctrl.session
        self.last_error: str | None = None
        self.last_layers: dict[str, Any] = {}
        self._build()
        self._connect()
        self._refresh_image_choices()
        self._refresh_model_choices()
        self._update_buttons()

    # ---------------------------------------------------------------- layout
    def _build(self) -> None:
        root = QVBoxLayout(self)
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
        self.precision_combo.addItems(PRECISIONS)
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

        self.segment_btn, self.cancel_btn = button_row(root, "Segment", "Cancel")
        self.progress, self.status = progress_and_status(root)
        self.export_labels_btn, self.export_probs_btn = button_row(
            root, "Export labels…", "Export probabilities…"
        )
        root.addStretch(1)

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
        self.ctrl.subscribe(self._on_controller)

    # ---------------------------------------------------------------- image choice
    def _image_layers(self) -> list[Any]:
        from napari.layers import Image

        return [layer for layer in self.viewer.layers if isinstance(layer, Image)]

    def _refresh_image_choices(self, event: Any = None) -> None:
        current = self.image_combo.currentText()
        names = [
            layer.name
            for layer in self._image_layers()
            if (layer.metadata or {}).get("cnnseg_role") is None
        ]
        self.image_combo.blockSignals(True)
        self.image_combo.clear()
        self.image_combo.addItems(names)
        if current in names:
            self.image_combo.setCurrentText(current)
        self.image_combo.blockSignals(False)
        self._on_image_changed()

    def _selected_layer(self) -> Any:
        name = self.image_combo.currentText()
        return self.viewer.layers[name] if name and name in self.viewer.layers else None

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

    # ---------------------------------------------------------------- model choice
    def _refresh_model_choices(self) -> None:
        self.model_combo.blockSignals(True)
        self.model_combo.clear()
        self.model_combo.addItem("— choose a model —", ("none", ""))
        for name in _list_pretrained():
            self.model_combo.addItem(f"Shipped: {name}", ("pretrained", name))
        self.model_combo.addItem("Load checkpoint…", ("checkpoint", ""))
        for family, label in FAMILIES.items():
            self.model_combo.addItem(f"New untrained {label}", ("new", family))
        self.model_combo.blockSignals(False)
        self._show_class_editors(False)

    def _show_class_editors(self, show: bool) -> None:
        for w in (self.classes_spin, self.names_edit, self.classes_label, self.names_label):
            w.setVisible(show)

    def _on_model_activated(self, index: int) -> None:
        kind, value = self.model_combo.itemData(index) or ("none", "")
        if kind == "pretrained":
            self.choose_pretrained(value)
        elif kind == "checkpoint":
            path, _ = QFileDialog.getOpenFileName(
                self, "Load checkpoint", "", "Checkpoints (*.safetensors *.json);;All files (*)"
            )
            if path:
                self.load_checkpoint(path)
            else:  # dialog cancelled: show the model still in use
                self._sync_model_entry()
        elif kind == "new":
            self.choose_new(value)

    def _class_names(self) -> list[str]:
        k = self.classes_spin.value()
        names = [n.strip() for n in self.names_edit.text().split(",") if n.strip()]
        names = names[:k] + [f"class {i}" for i in range(len(names), k)]
        if names:
            names[0] = names[0] or "background"
        return names

    def _on_classes_changed(self, value: int) -> None:
        names = self._class_names()
        self.names_edit.setText(", ".join(names))
        self._rebuild_new()

    def _on_names_edited(self) -> None:
        names = [n.strip() for n in self.names_edit.text().split(",") if n.strip()]
        if len(names) >= 2 and len(names) != self.classes_spin.value():
            self.classes_spin.blockSignals(True)
            self.classes_spin.setValue(len(names))
            self.classes_spin.blockSignals(False)
        self._rebuild_new()

    def _rebuild_new(self) -> None:
        kind, value = self.model_combo.currentData() or ("none", "")
        if kind == "new":
            self.choose_new(value)

    def _select_entry(self, kind: str, value: str) -> None:
        for i in range(self.model_combo.count()):
            if self.model_combo.itemData(i) == (kind, value):
                self.model_combo.setCurrentIndex(i)
                return
        if kind == "checkpoint":
            self.model_combo.addItem(f"Checkpoint: {Path(value).name}", (kind, value))
            self.model_combo.setCurrentIndex(self.model_combo.count() - 1)

    def _guard_busy(self) -> bool:
        if self.ctrl.busy:
            self._error(InputError("a job is running: wait for it or press Cancel / Stop first"))
            return True
        return False

    def choose_pretrained(self, name: str) -> bool:
        """Use the shipped model ``name``; returns False (and notifies) on failure."""
        return self._set_model(lambda: self.session.load_model(name), ("pretrained", name))

    def load_checkpoint(self, path: str | Path) -> bool:
        """Use the checkpoint at ``path``; a corrupt file gives a notification, not a crash."""
        return self._set_model(lambda: self.session.load_model(path), ("checkpoint", str(path)))

    def choose_new(
        self,
        family: str,
        class_names: list[str] | None = None,
        **config: Any,
    ) -> bool:
        """Use a new untrained network of ``family`` with ``class_names`` (default: the dock's)."""
        if class_names is not None:
            self.classes_spin.blockSignals(True)
            self.classes_spin.setValue(len(class_names))
            self.classes_spin.blockSignals(False)
            self.names_edit.setText(", ".join(class_names))
        names = class_names or self._class_names()
        in_channels = int(config.pop("in_channels", 0)) or self._probe_channels()
        return self._set_model(
            lambda: self.session.new_model(family, names, in_channels=in_channels, **config),
            ("new", family),
        )

    def _probe_channels(self) -> int:
        layer = self._selected_layer()
        if layer is None or layer.data.ndim != 4 or self._selected_channel() is not None:
            return 1
        return int(layer.data.shape[0])

    def _set_model(self, make: Any, entry: tuple[str, str]) -> bool:
        if self._guard_busy():
            return False
        try:
            make()
        except Exception as exc:  # noqa: BLE001 - every failure becomes a notification
            self._error(exc)
            return False
        self._select_entry(*entry)
        self._show_class_editors(entry[0] == "new")
        self.ctrl.changed("model")
        return True

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
        if self._guard_busy():
            return None
        try:
            layer = self.prepare()
        except Exception as exc:  # noqa: BLE001
            self._error(exc)
            return None
        self.last_error = None
        session = self.session
        self.status.setText(f"Segmenting {layer.name}…")

        def work(ctx: _worker.JobContext) -> Any:
            return session.segment(progress=ctx.progress, cancel=ctx.cancel)

        def done(results: Any) -> None:
            self.last_layers = show_results(self.viewer, layer, session)
            self.status.setText(
                f"Done: {layer.name} labels + {len(session.class_names)} response maps."
            )
            self.ctrl.changed("results")

        self.ctrl.job = _worker.start_job(
            work,
            desc=f"Segment {layer.name}",
            on_progress=self._on_progress,
            on_done=done,
            on_error=self._error,
            on_finally=self._job_finished,
            on_created=self._register_job,
        )
        self._update_buttons()
        return self.ctrl.job

    def cancel(self) -> None:
        """Stop the running job (Segment, fine-tune refresh) at its next check."""
        if self.ctrl.job is not None and self.ctrl.job.running:
            self.ctrl.job.cancel()
            self.status.setText("Cancelling…")

    def _on_progress(self, done: int, total: int) -> None:
        self.progress.setRange(0, max(total, 1))
        self.progress.setValue(min(done, max(total, 1)))

    def _register_job(self, job: Any) -> None:
        self.ctrl.job = job
        self.ctrl.changed("busy")

    def _job_finished(self) -> None:
        self._update_buttons()
        self.ctrl.changed("busy")

    def _error(self, exc: BaseException | str) -> None:
        if isinstance(exc, Cancelled):
            self.last_error = None
            self.status.setText("Cancelled; no layer was changed.")
            notify_info(str(exc))
            return
        self.last_error = notify_error(exc)
        self.status.setText(f"Error: {self.last_error}")

    def _on_controller(self, what: str) -> None:
        if what == "model":
            self._sync_model_entry()
        if what in ("model", "results", "busy"):
            self.description.setText(self.session.describe_model())
            if self.session.model is not None:
                self.description.setToolTip(str(self.session.meta.get("description") or ""))
            self._update_buttons()

    def _sync_model_entry(self) -> None:
        """Show the session's model in the picker (also when set by script or the other dock)."""
        source = self.session.model_source
        if self.session.model is None or not source:
            self.model_combo.setCurrentIndex(0)
            return
        if source.startswith("new "):
            entry = ("new", source[4:])
        elif any(self.model_combo.itemData(i) == ("pretrained", source)
                 for i in range(self.model_combo.count())):
            entry = ("pretrained", source)
        else:
            entry = ("checkpoint", source)
        if self.model_combo.currentData() != entry:
            self.model_combo.blockSignals(True)
            self._select_entry(*entry)
            self.model_combo.blockSignals(False)
        self._show_class_editors(entry[0] == "new")

    def _update_buttons(self) -> None:
        busy = self.ctrl.busy
        self.segment_btn.setEnabled(not busy)
        self.cancel_btn.setEnabled(busy)
        has = self.session.results is not None
        self.export_labels_btn.setEnabled(has and not busy)
        self.export_probs_btn.setEnabled(has and not busy)
        if not busy:
            self.progress.setRange(0, 1)
            self.progress.setValue(1 if has else 0)

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
                    f"{self.session.image_name}_{what}.nii.gz",
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
            self._error(exc)
            return None
        self.status.setText(f"Saved {what} to {out}")
        return Path(out)

    def export_labels(self, path: str | Path | None = None) -> Path | None:
        """Write the label map (uint8 class indices) on the source geometry; asks if no path."""
        return self._export("labels", path)

    def export_probabilities(self, path: str | Path | None = None) -> Path | None:
        """Write the (K, Z, Y, X) probabilities on the source geometry; asks if no path."""
        return self._export("probabilities", path)
