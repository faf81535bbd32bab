"""The "Fine-tune" dock: paint scribbles, fine-tune with a live preview, Undo, Save model.

Shares the viewer's :class:`~napari_cnnseg._widgets._shared.Controller` (session, chosen image,
running job) with the Segment dock. While training runs in a worker, the **visible slice**
(2D view) of the labels / response maps / uncertainty layers is re-predicted after the first
step and then about every :data:`REFRESH_SECONDS` (never more than a fifth of the training
time, see ``Session.finetune``) and redrawn; when training ends (or Stop is pressed) the whole
volume is. The progress bar shows the share of the time budget used, then the whole-volume
update, and only moves forward; the status line ends with the real wall time.

Scribbles (layer, class chooser, autosave) are handled by :class:`._scribbles.ScribblesMixin`,
**Next suggestion** by :class:`._suggestions.SuggestionBox`, the **Live** toggle (training while
you paint) by :class:`._live.LiveMixin`.

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
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QLabel,
    QLayout,
    QPushButton,
    QSpinBox,
    QWidget,
)

from .._napari_io import default_output_path, find_layer
from .._session import Preview, Refreshing, RegionUpdate, warm_up_training
from ..core.errors import Cancelled, InputError
from ..core.trainer import StepDone
from . import _worker
from ._base import JobDock
from ._layers import refresh_region, show_results
from ._layout import button_row
from ._live import LiveMixin
from ._model_picker import plain_description, remember_model
from ._scribbles import ScribblesMixin
from ._suggestions import SuggestionBox

logger = logging.getLogger(__name__)

#: seconds between live previews of the visible slice while training
REFRESH_SECONDS = 1.5
#: delay between a paint stroke and its autosave (merges bursts of strokes)
AUTOSAVE_DELAY_MS = 50
#: voxels predicted beyond the part of the slice on screen (panning a little shows no seam)
VIEW_MARGIN = 16


class _Clock:
    """Wall-clock bookkeeping of one fine-tuning job (GUI thread, except ``preview_s``)."""

    def __init__(self, seconds: float | None, steps: int | None, volume_s: float | None) -> None:
        self.t0 = time.perf_counter()
        self.seconds, self.steps = seconds, steps
        self.train_end: float | None = None
        self.preview_s = 0.0
        self.loss: float | None = None
        self.step = 0
        # share of the bar for training: its budget against the last whole-volume Segment
        est_train = seconds if seconds else None
        self.train_share = (est_train / (est_train + volume_s)
                            if est_train and volume_s else 0.8)

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def train_fraction(self) -> float:
        by_time = self.elapsed() / self.seconds if self.seconds else 0.0
        by_steps = self.step / self.steps if self.steps else 0.0
        return min(1.0, max(by_time, by_steps))


class FinetuneWidget(LiveMixin, ScribblesMixin, JobDock):
    """Dock widget: scribbles layer, Fine-tune / Stop, Undo, Save model.

    Args:
        napari_viewer: the viewer or napari's proxy of it (what the Plugins menu hands over).
    """

    def __init__(self, napari_viewer: Any, parent: QWidget | None = None) -> None:
        super().__init__(napari_viewer, parent)
        self.last_outcome: Any = None
        self.refresh_log: list[tuple[float, tuple[slice, ...]]] = []
        #: seconds between live previews (tests may lower it)
        self.refresh_seconds = REFRESH_SECONDS
        self._roi: tuple[slice, slice, slice] | None = None
        self._clock: _Clock | None = None
        self._autosave_timer = QTimer(self)
        self._autosave_timer.setSingleShot(True)
        self._autosave_timer.setInterval(AUTOSAVE_DELAY_MS)
        self._autosave_timer.timeout.connect(self._save_now)
        self._ticker = QTimer(self)  # moves the time-based progress between training steps
        self._ticker.setInterval(250)
        self._ticker.timeout.connect(self.guarded(self._show_training))
        self._build()
        self._connect()
        self._on_state()
        threading.Thread(target=warm_up_training, name="cnnseg-warm-up", daemon=True).start()

    # ---------------------------------------------------------------- layout
    def _build(self) -> None:
        root = self.body_layout()
        # never squeeze the rows below their size hint (napari's stylesheet makes them taller)
        root.setSizeConstraint(QLayout.SizeConstraint.SetMinimumSize)
        self.info = QLabel("Choose an image and a model in the Segment dock.")
        self.info.setWordWrap(True)
        root.addWidget(self.info)
        self.add_btn = QPushButton("Add scribbles layer")
        self.add_btn.setToolTip("a Labels layer on the image grid, on top of the results")
        root.addWidget(self.add_btn)
        form = QFormLayout()
        self.class_combo = QComboBox()
        self.class_combo.setToolTip(
            "class the brush paints; its colour is the class colour in the result layers")
        form.addRow("Paint class", self.class_combo)
        root.addLayout(form)
        self.suggestion_box = SuggestionBox(self)
        root.addWidget(self.suggestion_box)
        form = QFormLayout()
        self.seconds_spin = QDoubleSpinBox()
        self.seconds_spin.setRange(0.0, 3600.0)
        self.seconds_spin.setValue(20.0)
        self.seconds_spin.setSuffix(" s")
        self.seconds_spin.setToolTip("training time (0 = use Steps); updating the whole volume "
                                     "afterwards takes about as long as Segment")
        form.addRow("Training time", self.seconds_spin)
        self.steps_spin = QSpinBox()
        self.steps_spin.setRange(0, 100000)
        self.steps_spin.setToolTip("number of training steps (0 = no limit, use the time)")
        form.addRow("Steps", self.steps_spin)
        root.addLayout(form)
        self.live_check = QCheckBox("Show progress on this slice while training")
        self.live_check.setChecked(True)
        self.live_check.setToolTip("re-predicts the slice you look at about every "
                                   f"{REFRESH_SECONDS:g} s (2D view; at most a fifth of the time)")
        root.addWidget(self.live_check)
        self.train_btn, self.stop_btn = button_row(root, "Fine-tune", "Stop")
        self._build_live(root)
        self.add_progress(root)
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
        for event in ("current_step", "ndisplay", "order"):
            getattr(self.viewer.dims.events, event).connect(self._update_roi)
        for signal in (self.ctrl.model_changed, self.ctrl.image_changed,
                       self.ctrl.results_changed):
            self.listen(signal, self._on_state)
        # suggestions follow every whole-volume prediction (Segment, Fine-tune, Undo, Live)
        self.listen(self.ctrl.results_changed, self.suggestion_box.refresh)

    # ---------------------------------------------------------------- state sync
    def _on_state(self) -> None:
        s = self.session
        if s.model is not None:
            self._fill_classes(s.class_names)
        image = s.image_name if s.volume is not None else "—"
        model = plain_description(s).splitlines()[0]
        self.info.setText(f"Image: {image}\nModel: {model}")
        self.update_buttons()

    def update_buttons(self) -> None:
        """Nothing that starts a job while one runs; Stop only then."""
        busy = self.ctrl.busy
        ready = self.session.model is not None
        self.add_btn.setEnabled(not busy)
        self.train_btn.setEnabled(ready and not busy)
        self.live_btn.setEnabled(ready and (not busy or self.live_running))
        self.stop_btn.setEnabled(busy)
        self.undo_btn.setEnabled(ready and not busy and self.session.can_undo)
        self.save_btn.setEnabled(ready and not busy)
        if not busy:
            self._ticker.stop()

    # ---------------------------------------------------------------- visible slice
    def _update_roi(self, event: Any = None) -> None:
        self._roi = self.visible_roi()

    def visible_roi(self) -> tuple[slice, slice, slice] | None:
        """Roi (z, y, x) of the slice shown in a 2D view; None in a 3D view or without image."""
        s, dims, img = self.session, self.viewer.dims, self.ctrl.image_layer
        if s.volume is None or img is None or dims.ndisplay != 2:
            return None
        spatial_world = [dims.ndim - 3 + a for a in range(3)]
        hidden = [a for a, w in enumerate(spatial_world) if w not in dims.displayed]
        if len(hidden) != 1:
            return None
        axis = hidden[0]
        point = np.asarray(dims.point)[-3:]
        scale = np.asarray(img.scale[-3:], dtype=float)
        translate = np.asarray(img.translate[-3:], dtype=float)
        return s.slice_roi(axis, int(round((point[axis] - translate[axis]) / scale[axis])))

    def preview_roi(self) -> tuple[slice, slice, slice] | None:
        """The visible slice cut to the part on screen (+ :data:`VIEW_MARGIN`) when zoomed in.

        A zoomed-in view of a 512 x 512 slice shows a small part of it: predicting only that
        part makes each live preview many times cheaper. Uses the image layer's
        ``corner_pixels`` (data coordinates of the canvas corners, updated on every draw).
        """
        roi, img = self._roi, self.ctrl.image_layer
        corners = np.asarray(getattr(img, "corner_pixels", np.zeros((2, 0))))
        if roi is None or corners.ndim != 2 or corners.shape[1] < 3:
            return roi
        corners = corners[:, -3:]
        out = list(roi)
        for a, whole in enumerate(roi):
            lo, hi = int(corners[0, a]), int(corners[1, a])
            if whole.stop - whole.start > 1 and hi > lo:
                part = slice(max(whole.start, lo - VIEW_MARGIN),
                             min(whole.stop, hi + 1 + VIEW_MARGIN))
                out[a] = part if part.stop > part.start else whole
        return tuple(out)  # type: ignore[return-value]

    # ---------------------------------------------------------------- fine-tune
    def _prepare(self) -> tuple[Any, np.ndarray]:
        """Check everything and make sure result layers exist; returns (image, scribbles)."""
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
        if fresh or find_layer(self.viewer.layers, "labels", img.name) is None:
            show_results(self.viewer, img, self.session)
        return img, scribbles

    def finetune(
        self, *, seconds: float | None = None, steps: int | None = None, **train_options: Any
    ) -> Any:
        """Start fine-tuning on the scribbles layer; returns the job (None if not started).

        Args:
            seconds, steps: training budget; default the dock's fields.
            **train_options: more ``core.training.finetune`` settings (lr, batch_size, ...).
        """
        if self.guard_busy():
            return None
        try:
            img, scribbles = self._prepare()
        except Exception as exc:  # noqa: BLE001
            self.report(exc)
            return None
        if seconds is None and steps is None:
            seconds = self.seconds_spin.value() or None
            steps = self.steps_spin.value() or None
            steps = 100 if seconds is None and steps is None else steps
        session = self.session
        options = {"device": session.predict_options.get("device") or "auto",
                   "precision": session.predict_options.get("precision") or "auto",
                   **train_options}
        self._update_roi()
        self.refresh_log, self.last_outcome = [], None
        clock = self._clock = _Clock(seconds, steps, self.ctrl.segment_seconds)
        live = self.live_check.isChecked()
        self.status.setText("Fine-tuning…")
        work = self._work(session, scribbles, clock, img, live, steps, seconds, options)
        job = self.start(work, desc="Fine-tune", on_done=lambda out: self._finished(img, out),
                         on_progress=self._on_train_step)
        if self.ctrl.busy:
            self._ticker.start()
        return job

    def _work(self, session: Any, scribbles: np.ndarray, clock: _Clock, img: Any, live: bool,
              steps: int | None, seconds: float | None, options: dict[str, Any]) -> Any:
        """The job function (runs in the worker thread; GUI work goes through ``ctx.call``)."""
        started: list[float] = []

        def work(ctx: _worker.JobContext) -> Any:
            def region() -> Any:
                started.append(time.perf_counter())
                return self.preview_roi()

            def on_step(event: StepDone) -> None:
                clock.loss = event.loss
                ctx.progress(event.step, event.total)

            def on_region(update: RegionUpdate) -> None:
                clock.preview_s += time.perf_counter() - started[-1]
                ctx.call(self.guarded(self._show_region), img, update)

            def on_refresh(event: Refreshing) -> None:
                ctx.call(self.guarded(self._on_volume_progress), event.done, event.total)

            handlers = {StepDone: on_step, RegionUpdate: on_region, Refreshing: on_refresh}
            preview = Preview(region, seconds=self.refresh_seconds) if live else None
            return session.finetune(
                scribbles, steps=steps, seconds=seconds, preview=preview,
                on_event=lambda event: handlers[type(event)](event), cancel=ctx.cancel,
                **options,
            )

        return work

    def _show_region(self, img: Any, update: RegionUpdate) -> None:
        if refresh_region(self.viewer, img, self.session, update):
            self.refresh_log.append((self._clock.elapsed(), update.roi))

    def _on_train_step(self, done: int, total: int) -> None:
        self._clock.step = done
        self._show_training()

    def _show_training(self) -> None:
        """Progress and status while training (after each step and on a 0.25 s tick)."""
        clock = self._clock
        if clock is None or clock.train_end is not None:
            return
        self.set_fraction(clock.train_share * clock.train_fraction())
        if clock.step == 0:
            self.status.setText(f"Preparing training… {clock.elapsed():.0f} s")
            return
        loss = f" · loss {clock.loss:.3f}" if clock.loss is not None else ""
        if clock.seconds:
            where = f"{min(clock.elapsed(), clock.seconds):.0f} s of {clock.seconds:g} s"
        else:
            where = f"{clock.step} of {clock.steps} steps"
        self.status.setText(f"Training: {where} · step {clock.step}{loss}")

    def _on_volume_progress(self, done: int, total: int) -> None:
        clock = self._clock
        if clock.train_end is None:
            clock.train_end = clock.elapsed()
            self.status.setText(f"Training done ({clock.step} steps); updating the whole volume…")
        share = clock.train_share
        self.set_fraction(share + (1.0 - share) * (done / total if total else 0.0))

    def _finished(self, img: Any, outcome: Any) -> None:
        clock = self._clock
        self.last_outcome = outcome
        show_results(self.viewer, img, self.session)
        self.refresh_log.append((clock.elapsed(), ()))
        total = clock.elapsed()
        train = clock.train_end if clock.train_end is not None else total
        how = "Stopped after" if outcome.stopped else "Done:"
        loss = f" Last loss {outcome.losses[-1]:.3f}." if outcome.losses else ""
        previews = f", {outcome.region_updates} previews {clock.preview_s:.1f} s" \
            if outcome.region_updates else ""
        self.status.setText(
            f"{how} {outcome.steps} step{'s' if outcome.steps != 1 else ''} in {train:.1f} s of training{previews}; whole volume "
            f"{total - train:.1f} s; {total:.1f} s in all.{loss} Undo goes back.")
        self.ctrl.results_changed.emit()
        self.ctrl.model_changed.emit()

    def stop(self) -> None:
        """Stop training now; the weights reached are kept and the whole volume refreshed."""
        self.cancel()

    # ---------------------------------------------------------------- undo / save
    def undo(self) -> Any:
        """Go back to the previous model version and re-segment; returns the job or None."""
        if self.guard_busy():
            return None
        if not self.session.undo():
            self.report("nothing to undo: the model has not been fine-tuned yet")
            return None
        self.ctrl.model_changed.emit()
        img = self.ctrl.image_layer
        if self.session.results is None or img is None or not self.ctrl.has_layer(img):
            self.status.setText("Restored the previous model version.")
            return None
        session = self.session

        def done(results: Any) -> None:
            show_results(self.viewer, img, session)
            self.status.setText("Restored the previous model version; layers updated.")
            self.ctrl.results_changed.emit()

        def failed(exc: BaseException) -> None:
            if isinstance(exc, Cancelled):
                self.status.setText("Previous model restored; refresh cancelled.")
            else:
                self.report(exc)

        return self.start(
            lambda ctx: session.segment(progress=ctx.progress, cancel=ctx.cancel),
            desc="Undo: re-segment", on_done=done, on_error=failed,
        )

    def save_model(self, path: str | Path | None = None) -> Path | None:
        """Save the current model as a checkpoint (asks for a file if ``path`` is None)."""
        try:
            s = self.session
            if s.model is None:
                raise InputError("no model to save: choose one in the Segment dock")
            if path is None:
                start = default_output_path(s.source_path, s.image_name, "model", ".safetensors")
                path, _ = QFileDialog.getSaveFileName(
                    self, "Save model", start, "Checkpoints (*.safetensors)")
                if not path:
                    return None
            out = s.save_model(path)
        except Exception as exc:  # noqa: BLE001
            self.report(exc)
            return None
        remember_model("checkpoint", str(Path(out).resolve()))  # the next image starts with it
        self.status.setText(f"Saved model to {out}")
        return out
