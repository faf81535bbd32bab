"""The "Fine-tune" dock: paint scribbles, fine-tune with live refresh, Undo, Save model.

Shares the viewer's :class:`~napari_cnnseg._widgets._shared.Controller` (session, chosen image,
running job) with the Segment dock. While training runs in a worker, after the first step and
then every "Refresh every" steps the **visible slice** (2D view) of the labels / response maps /
uncertainty layers is re-predicted and repainted; when training ends (or Stop is pressed) the
whole volume is.
Scribbles are autosaved on every stroke (see :mod:`napari_cnnseg._autosave`) and restored
when a scribbles layer is added for the same image.

Scripting / tests: :meth:`FinetuneWidget.add_scribbles_layer`, :meth:`~FinetuneWidget.finetune`,
:meth:`~FinetuneWidget.stop`, :meth:`~FinetuneWidget.undo`, :meth:`~FinetuneWidget.save_model`.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QLabel,
    QLayout,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from .._session import RegionUpdate, warm_up_training
from ..core.errors import Cancelled, InputError
from . import _worker
from ._layout import button_row, progress_and_status
from ._shared import (
    controller_for,
    geometry_kwargs,
    labels_colormap,
    labels_features,
    notify_error,
    notify_info,
    refresh_region,
    result_names,
    show_results,
)

logger = logging.getLogger(__name__)

#: default steps between live refreshes of the visible slice
DEFAULT_UPDATE_EVERY = 5
#: delay between a paint stroke and its autosave (merges bursts of strokes)
AUTOSAVE_DELAY_MS = 50


class FinetuneWidget(QWidget):
    """Dock widget: scribbles layer, Fine-tune / Stop, Undo, Save model.

    Args:
        napari_viewer: the viewer (injected by napari when opened from the Plugins menu).
    """

    def __init__(self, napari_viewer: Any, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.ctrl = controller_for(napari_viewer)
        self.session = self.ctrl.session
        self.last_error: str | None = None
        self.last_outcome: Any = None
        self.refresh_log: list[tuple[float, tuple[slice, ...]]] = []
        self._roi: tuple[slice, slice, slice] | None = None
        self._scribbles_layer: Any = None
        self._t0 = 0.0
        self._loss: float | None = None
        self._autosave_timer = QTimer(self)
        self._autosave_timer.setSingleShot(True)
        self._autosave_timer.setInterval(AUTOSAVE_DELAY_MS)
        self._autosave_timer.timeout.connect(self._save_now)
        self._build()
        self._connect()
        self._on_controller("model")
        threading.Thread(target=warm_up_training, name="cnnseg-warm-up", daemon=True).start()

    # ---------------------------------------------------------------- layout
    def _build(self) -> None:
        root = QVBoxLayout(self)
        # never squeeze the rows below their size hint (napari's stylesheet makes them taller)
        root.setSizeConstraint(QLayout.SizeConstraint.SetMinimumSize)
        self.info = QLabel("Choose an image and a model in the Segment dock.")
        self.info.setWordWrap(True)
        root.addWidget(self.info)
        self.add_btn = QPushButton("Add scribbles layer")
        self.add_btn.setToolTip("a Labels layer on the image grid; value k paints class k-1")
        root.addWidget(self.add_btn)
        form = QFormLayout()
        self.class_combo = QComboBox()
        self.class_combo.setToolTip("class painted by the brush")
        form.addRow("Paint class", self.class_combo)
        self.seconds_spin = QDoubleSpinBox()
        self.seconds_spin.setRange(0.0, 3600.0)
        self.seconds_spin.setValue(20.0)
        self.seconds_spin.setSuffix(" s")
        self.seconds_spin.setToolTip("training time budget (0 = use Steps)")
        form.addRow("Time budget", self.seconds_spin)
        self.steps_spin = QSpinBox()
        self.steps_spin.setRange(0, 100000)
        self.steps_spin.setValue(0)
        self.steps_spin.setToolTip("number of steps (0 = no step limit, use the time budget)")
        form.addRow("Steps", self.steps_spin)
        self.every_spin = QSpinBox()
        self.every_spin.setRange(1, 1000)
        self.every_spin.setValue(DEFAULT_UPDATE_EVERY)
        self.every_spin.setToolTip("steps between live refreshes of the visible slice")
        form.addRow("Refresh every", self.every_spin)
        root.addLayout(form)
        self.train_btn, self.stop_btn = button_row(root, "Fine-tune", "Stop")
        self.progress, self.status = progress_and_status(root)
        self.undo_btn, self.save_btn = button_row(root, "Undo", "Save model…")
        self.undo_btn.setToolTip("go back to the previous model version")
        self.autosave_label = QLabel("")
        self.autosave_label.setWordWrap(True)
        self.autosave_label.setStyleSheet("color: #a0a0a0;")
        root.addWidget(self.autosave_label)
        root.addStretch(1)

    def _connect(self) -> None:
        self.add_btn.clicked.connect(lambda: self.add_scribbles_layer())
        self.class_combo.currentIndexChanged.connect(self._on_class_chosen)
        self.train_btn.clicked.connect(lambda: self.finetune())
        self.stop_btn.clicked.connect(self.stop)
        self.undo_btn.clicked.connect(lambda: self.undo())
        self.save_btn.clicked.connect(lambda: self.save_model())
        self.viewer.dims.events.current_step.connect(self._update_roi)
        self.viewer.dims.events.ndisplay.connect(self._update_roi)
        self.viewer.dims.events.order.connect(self._update_roi)
        self.ctrl.subscribe(self._on_controller)

    # ---------------------------------------------------------------- state sync
    def _on_controller(self, what: str) -> None:
        s = self.session
        if s.model is not None and what in ("model", "image", "results", "busy"):
            names = s.class_names
            current = [self.class_combo.itemText(i) for i in range(self.class_combo.count())]
            if current != names:
                self.class_combo.blockSignals(True)
                self.class_combo.clear()
                self.class_combo.addItems(names)
                self.class_combo.setCurrentIndex(1 if len(names) > 1 else 0)
                self.class_combo.blockSignals(False)
                layer = self._existing_scribbles()
                if layer is not None:
                    layer.colormap = labels_colormap(names, scribbles=True)
                    layer.features = labels_features(names, scribbles=True)
        image = s.image_name if s.volume is not None else "—"
        model = s.describe_model().splitlines()[0] if s.model is not None else "—"
        self.info.setText(f"Image: {image}\nModel: {model}")
        self._update_buttons()

    def _update_buttons(self) -> None:
        busy = self.ctrl.busy
        ready = self.session.model is not None
        self.add_btn.setEnabled(not busy)
        self.train_btn.setEnabled(ready and not busy)
        self.stop_btn.setEnabled(busy)
        self.undo_btn.setEnabled(ready and not busy and self.session.can_undo)
        self.save_btn.setEnabled(ready and not busy)

    def _error(self, exc: BaseException | str) -> None:
        self.last_error = notify_error(exc)
        self.status.setText(f"Error: {self.last_error}")

    # ---------------------------------------------------------------- scribbles
    def _image_layer(self) -> Any:
        layer = self.ctrl.image_layer
        if layer is None or layer not in self.viewer.layers:
            raise InputError(
                "no image chosen: pick an image and a model in the Segment dock first"
            )
        return layer

    def _existing_scribbles(self) -> Any:
        img = self.ctrl.image_layer
        if img is None:
            return None
        layer = self._scribbles_layer
        if (
            layer is not None
            and layer in self.viewer.layers
            and ((layer.metadata or {}).get("cnnseg_role") or {}).get("source") == img.name
        ):
            return layer
        name = result_names(img.name, [])["scribbles"]
        if name in self.viewer.layers and type(self.viewer.layers[name]).__name__ == "Labels":
            self._watch(self.viewer.layers[name])
            return self._scribbles_layer
        return None

    def add_scribbles_layer(self) -> Any:
        """Create (or select) the scribbles Labels layer of the chosen image; returns it.

        The layer lies on the image grid (same shape, scale, translate), its colours and
        names follow the model's classes (value k = class k-1), the paint brush is selected,
        and scribbles autosaved for this image earlier are restored.
        """
        try:
            img = self._image_layer()
            self.ctrl.bind_image(img, self.ctrl.channel)
            names = self.session.class_names if self.session.model is not None else None
        except Exception as exc:  # noqa: BLE001
            self._error(exc)
            return None
        paint_index = self.class_combo.currentIndex()
        layer = self._existing_scribbles()
        if layer is None:
            shape = self.session.spatial_shape
            data = np.zeros(shape, dtype=np.uint8)
            restored = self.session.load_scribbles()
            if restored is not None:
                data = restored.astype(np.uint8, copy=False)
            layer = self.viewer.add_labels(
                data,
                name=result_names(img.name, [])["scribbles"],
                metadata={"cnnseg_role": {"role": "scribbles", "source": img.name}},
                **geometry_kwargs(img),
            )
            if restored is not None and restored.any():
                n = int(np.count_nonzero(restored))
                notify_info(f"restored {n} scribbled voxels from the autosave")
            self._watch(layer)
        if names:
            layer.colormap = labels_colormap(names, scribbles=True)
            layer.features = labels_features(names, scribbles=True)
        layer.brush_size = max(1, min(10, min(self.session.spatial_shape[-2:]) // 16))
        layer.mode = "paint"
        self.viewer.layers.selection.active = layer
        self.class_combo.setCurrentIndex(paint_index)
        self._on_class_chosen(paint_index)
        self.autosave_label.setText(f"Autosave: {self.session.store.path}")
        return layer

    def _watch(self, layer: Any) -> None:
        if self._scribbles_layer is layer:
            return
        self._scribbles_layer = layer
        layer.events.paint.connect(self._autosave)
        layer.events.data.connect(self._autosave)
        layer.events.selected_label.connect(self._on_selected_label)

    def _autosave(self, event: Any = None) -> None:
        # napari emits ``paint`` before it writes the new values: save once the stroke landed
        # (a short single-shot timer also merges bursts of programmatic paints into one save)
        self._autosave_timer.start()

    def flush_autosave(self) -> None:
        """Write a pending autosave now (called before training and by tests)."""
        if self._autosave_timer.isActive():
            self._autosave_timer.stop()
            self._save_now()

    def _save_now(self) -> None:
        layer = self._scribbles_layer
        if layer is None or self.session.volume is None:
            return
        try:
            if tuple(layer.data.shape) != self.session.spatial_shape:
                return
            self.session.autosave_scribbles(np.asarray(layer.data))
        except Exception as exc:  # noqa: BLE001 - never lose the painting over an autosave
            logger.warning("scribble autosave failed: %s", exc)
            self.autosave_label.setText(f"Autosave failed: {exc}")

    def _on_class_chosen(self, index: int) -> None:
        layer = self._scribbles_layer
        if layer is not None and index >= 0:
            layer.selected_label = index + 1

    def _on_selected_label(self, event: Any = None) -> None:
        value = int(self._scribbles_layer.selected_label)
        if 1 <= value <= self.class_combo.count():
            self.class_combo.blockSignals(True)
            self.class_combo.setCurrentIndex(value - 1)
            self.class_combo.blockSignals(False)

    # ---------------------------------------------------------------- visible slice
    def _update_roi(self, event: Any = None) -> None:
        self._roi = self.visible_roi()

    def visible_roi(self) -> tuple[slice, slice, slice] | None:
        """Roi (z, y, x) of the slice shown in a 2D view; None in a 3D view or without image."""
        s = self.session
        if s.volume is None or self.viewer.dims.ndisplay != 2:
            return None
        world_nd = self.viewer.dims.ndim
        spatial_world = [world_nd - 3 + a for a in range(3)]
        hidden = [a for a, w in enumerate(spatial_world) if w not in self.viewer.dims.displayed]
        if len(hidden) != 1:
            return None
        axis = hidden[0]
        img = self.ctrl.image_layer
        if img is None:
            return None
        point = np.asarray(self.viewer.dims.point)[-3:]
        scale = np.asarray(img.scale[-3:], dtype=float)
        translate = np.asarray(img.translate[-3:], dtype=float)
        index = int(round((point[axis] - translate[axis]) / scale[axis]))
        return s.slice_roi(axis, index)

    # ---------------------------------------------------------------- fine-tune
    def finetune(
        self, *, seconds: float | None = None, steps: int | None = None, **train_options: Any
    ) -> Any:
        """Start fine-tuning on the scribbles layer; returns the job (None if not started).

        Args:
            seconds, steps: training budget; default the dock's fields.
            **train_options: more ``core.training.finetune`` settings (lr, batch_size, ...).
        """
        if self.ctrl.busy:
            self._error("a job is running: wait for it or press Stop first")
            return None
        try:
            img = self._image_layer()
            self.ctrl.bind_image(img, self.ctrl.channel)
            layer = self._existing_scribbles()
            if layer is None:
                raise InputError("no scribbles layer: press 'Add scribbles layer' and paint first")
            self.flush_autosave()
            scribbles = np.array(layer.data, copy=True)
            self.session.check_scribbles(scribbles)
            fresh = self.session.results is None
            self.session.ensure_results()
            if fresh or result_names(img.name, [])["labels"] not in self.viewer.layers:
                show_results(self.viewer, img, self.session)
        except Exception as exc:  # noqa: BLE001
            self._error(exc)
            return None
        if seconds is None and steps is None:
            seconds = self.seconds_spin.value() or None
            steps = self.steps_spin.value() or None
            if seconds is None and steps is None:
                steps = 100
        session = self.session
        options = {
            "device": session.predict_options.get("device") or "auto",
            "precision": session.predict_options.get("precision") or "auto",
            **train_options,
        }
        refresh_every = self.every_spin.value()
        self._update_roi()
        self.refresh_log = []
        self._loss = None
        self.last_error = None
        self.last_outcome = None
        self._t0 = time.perf_counter()
        self.status.setText("Fine-tuning…")

        def work(ctx: _worker.JobContext) -> Any:
            started = []

            def refresh_progress(done: int, total: int) -> None:
                if not started:
                    started.append(True)
                    ctx.emit("refresh")
                ctx.progress(done, total)

            return session.finetune(
                scribbles,
                steps=steps,
                seconds=seconds,
                refresh_every=refresh_every,
                region=lambda: self._roi,
                on_region=ctx.emit,
                on_loss=lambda step, loss: ctx.emit(("loss", step, loss)),
                progress=ctx.progress,
                cancel=ctx.cancel,
                refresh_progress=refresh_progress,
                **options,
            )

        def on_event(obj: Any) -> None:
            if isinstance(obj, RegionUpdate):
                if refresh_region(self.viewer, img, session, obj):
                    self.refresh_log.append((time.perf_counter() - self._t0, obj.roi))
            elif obj == "refresh":
                self.status.setText("Training done; refreshing the whole volume…")
            elif isinstance(obj, tuple) and obj[:1] == ("loss",):
                self._loss = obj[2]

        def done(outcome: Any) -> None:
            self.last_outcome = outcome
            show_results(self.viewer, img, session)
            self.refresh_log.append((time.perf_counter() - self._t0, ()))
            n = outcome.steps
            loss = f", last loss {outcome.losses[-1]:.3f}" if outcome.losses else ""
            how = "stopped after" if outcome.stopped else "done:"
            self.status.setText(f"Fine-tuning {how} {n} steps{loss}. Undo goes back.")
            self.ctrl.changed("results")

        self.ctrl.job = _worker.start_job(
            work,
            desc="Fine-tune",
            on_progress=self._on_progress,
            on_event=on_event,
            on_done=done,
            on_error=self._error,
            on_finally=self._job_finished,
            on_created=self._register_job,
        )
        self._update_buttons()
        return self.ctrl.job

    def _on_progress(self, done: int, total: int) -> None:
        self.progress.setRange(0, max(total, 1))
        self.progress.setValue(min(done, max(total, 1)))
        if not self.status.text().startswith("Training done"):
            loss = f" · loss {self._loss:.3f}" if self._loss is not None else ""
            self.status.setText(f"Fine-tuning: step {done}/{total}{loss}")

    def _register_job(self, job: Any) -> None:
        self.ctrl.job = job
        self.ctrl.changed("busy")

    def _job_finished(self) -> None:
        self._update_buttons()
        self.ctrl.changed("busy")

    def stop(self) -> None:
        """Stop training now; the weights reached are kept and the whole volume refreshed."""
        job = self.ctrl.job
        if job is not None and job.running:
            job.cancel()
            self.status.setText("Stopping…")

    # ---------------------------------------------------------------- undo / save
    def undo(self) -> Any:
        """Go back to the previous model version and re-segment; returns the job or None."""
        if self.ctrl.busy:
            self._error("a job is running: wait for it or press Stop first")
            return None
        if not self.session.undo():
            self._error("nothing to undo: the model has not been fine-tuned yet")
            return None
        self.ctrl.changed("model")
        img = self.ctrl.image_layer
        if self.session.results is None or img is None or img not in self.viewer.layers:
            self.status.setText("Restored the previous model version.")
            return None
        session = self.session

        def done(results: Any) -> None:
            show_results(self.viewer, img, session)
            self.status.setText("Restored the previous model version; layers updated.")
            self.ctrl.changed("results")

        def failed(exc: BaseException) -> None:
            if isinstance(exc, Cancelled):
                self.status.setText("Previous model restored; refresh cancelled.")
            else:
                self._error(exc)

        self.ctrl.job = _worker.start_job(
            lambda ctx: session.segment(progress=ctx.progress, cancel=ctx.cancel),
            desc="Undo: re-segment",
            on_progress=self._on_progress,
            on_done=done,
            on_error=failed,
            on_finally=self._job_finished,
            on_created=self._register_job,
        )
        self._update_buttons()
        return self.ctrl.job

    def save_model(self, path: str | Path | None = None) -> Path | None:
        """Save the current model as a checkpoint (asks for a file if ``path`` is None)."""
        try:
            if self.session.model is None:
                raise InputError("no model to save: choose one in the Segment dock")
            if path is None:
                path, _ = QFileDialog.getSaveFileName(
                    self, "Save model", f"{self.session.image_name}_model.safetensors",
                    "Checkpoints (*.safetensors)",
                )
                if not path:
                    return None
            out = self.session.save_model(path)
        except Exception as exc:  # noqa: BLE001
            self._error(exc)
            return None
        self.status.setText(f"Saved model to {out}")
        return out
