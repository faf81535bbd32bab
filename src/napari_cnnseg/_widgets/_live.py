"""The **Live** toggle of the Fine-tune dock: the model keeps training while the user paints.

:class:`LiveMixin` is the dock side (toggle, stroke hook, status line, redraws); the loop that
runs in the worker thread is :class:`._live_loop.LiveLoop` (Qt-free; its docstring has the
timing rules). Names of the loop module are re-exported here.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np

from ._live_loop import LiveEvent, LiveLoop, LiveSettings

__all__ = ["LiveEvent", "LiveLoop", "LiveMixin", "LiveSettings"]

logger = logging.getLogger(__name__)

#: delay between a paint event and handing the strokes to the loop (napari emits ``paint``
#: before it writes the values; a burst of events becomes one hand-over)
STROKE_DELAY_MS = 50
LIVE_TIP = ("keep training while you paint: new strokes are used at the next step, the slice "
            "you look at is redrawn every few steps and the whole volume when you pause "
            "painting for about 2 s. Switch off to stop; Undo then goes back to the weights "
            "from before Live.")


class LiveMixin:
    """The **Live** toggle of the Fine-tune dock (uses its ``ctrl``, ``session``, ``start``,
    ``status``, ``_prepare``, ``preview_roi``, ``suggestion_box``)."""

    live_loop: LiveLoop | None = None
    #: timing of the next live session (tests may shorten it)
    live_settings: LiveSettings | None = None

    def _build_live(self, root: Any) -> None:
        from qtpy.QtCore import QTimer
        from qtpy.QtWidgets import QPushButton

        self.live_btn = QPushButton("Live")
        self.live_btn.setCheckable(True)
        self.live_btn.setToolTip(LIVE_TIP)
        self.live_btn.toggled.connect(self._on_live_toggled)
        root.addWidget(self.live_btn)
        self._stroke_timer = QTimer(self)
        self._stroke_timer.setSingleShot(True)
        self._stroke_timer.setInterval(STROKE_DELAY_MS)
        self._stroke_timer.timeout.connect(self.guarded(self._push_strokes))
        #: (stroke version, perf_counter) of each hand-over; (kind, event) of each live event
        self.stroke_log: list[tuple[int, float]] = []
        self.live_log: list[LiveEvent] = []
        self._live_layer: Any = None

    @property
    def live_running(self) -> bool:
        return self.live_loop is not None

    def _on_live_toggled(self, on: bool) -> None:
        if on and not self.live_running:
            self.start_live()
        elif not on and self.live_running:
            self.stop_live()

    def _set_live_checked(self, on: bool) -> None:
        self.live_btn.blockSignals(True)
        self.live_btn.setChecked(on)
        self.live_btn.blockSignals(False)

    def start_live(self) -> Any:
        """Switch Live on; returns the job (None if it could not start)."""
        from . import _worker

        if self.live_running or self.guard_busy():
            self._set_live_checked(self.live_running)
            return None
        try:
            img, scribbles = self._prepare()
        except Exception as exc:  # noqa: BLE001
            self._set_live_checked(False)
            self.report(exc)
            return None
        self._update_roi()
        settings = self.live_settings or LiveSettings()
        settings.stop_when_resting = bool(_worker.SYNC)  # nobody can paint during a sync job
        self.live_log, self.stroke_log = [], []
        job_ctx: list[Any] = []

        def on_event(event: LiveEvent) -> None:  # worker thread
            job_ctx[0].call(self.guarded(self._on_live_event), img, event)

        loop = self.live_loop = LiveLoop(self.session, scribbles, region=self.preview_roi,
                                         on_event=on_event, settings=settings)
        self._hook_strokes(self._existing_scribbles())

        def work(ctx: Any) -> Any:
            job_ctx.append(ctx)
            steps = loop.run(ctx.cancel)
            # the final weights everywhere, with the stroke-connected labels of a Segment
            self.session.segment(scribbles=loop.scribbles)
            return steps

        self._set_live_checked(True)
        self.status.setText("Live: preparing training… paint, it learns as you go.")
        job = self.start(work, desc="Live training", on_error=self._live_failed,
                         on_done=lambda steps: self._live_ended(img, steps))
        if self.live_running:
            self.progress.setRange(0, 0)  # busy bar: Live has no end to show progress to
            # a dock deleted while Live runs (viewer closed) must not leave the loop running
            self.destroyed.connect(lambda *_: job.cancel())
        return job

    def stop_live(self) -> None:
        """Switch Live off: the loop ends at its next check (one fine-tuning round)."""
        if self.live_running:
            self.status.setText("Live: stopping…")
            self.cancel()

    def _hook_strokes(self, layer: Any) -> None:
        self._live_layer = layer
        if layer is not None:
            layer.events.paint.connect(self._on_stroke_event)
            layer.events.data.connect(self._on_stroke_event)

    def _unhook_strokes(self) -> None:
        layer, self._live_layer = self._live_layer, None
        self._stroke_timer.stop()
        if layer is not None:
            layer.events.paint.disconnect(self._on_stroke_event)
            layer.events.data.disconnect(self._on_stroke_event)

    def _on_stroke_event(self, event: Any = None) -> None:
        self._stroke_timer.start()  # (re)start: the strokes go over once the burst landed

    def _push_strokes(self) -> None:
        """GUI thread: hand the scribbles to the running loop (no click)."""
        loop, layer = self.live_loop, self._live_layer
        if loop is None or layer is None:
            return
        try:
            version = loop.push(np.asarray(layer.data))
        except Exception as exc:  # noqa: BLE001 - a bad stroke value is reported, Live goes on
            self.report(exc)
            return
        self.stroke_log.append((version, time.perf_counter()))

    def flush_strokes(self) -> None:
        """Hand pending strokes to the loop now (tests, and before switching off)."""
        if self._stroke_timer.isActive():
            self._stroke_timer.stop()
            self._push_strokes()

    def _on_live_event(self, img: Any, event: LiveEvent) -> None:
        from ._layers import refresh_region, show_results

        if self.live_loop is None:
            return
        self.live_log.append(event)
        loss = f" · loss {event.loss:.3f}" if event.loss is not None else ""
        waiting = self.live_loop.version - event.strokes
        news = f" · {waiting} new stroke(s) coming" if waiting > 0 else " · up to date"
        self.status.setText(f"Live: step {event.steps}{loss}{news}")
        if event.kind == "slice":
            refresh_region(self.viewer, img, self.session, event.update)
        elif event.kind == "volume" and self.ctrl.has_layer(img):
            if not hasattr(event.update, "roi") or self.session.apply_region(event.update):
                show_results(self.viewer, img, self.session)
                self.suggestion_box.refresh()

    def _live_ended(self, img: Any, steps: int) -> None:
        from ._layers import show_results

        self._unhook_strokes()
        self.live_loop = None
        self._set_live_checked(False)
        if self.ctrl.has_layer(img) and self.session.results is not None:
            show_results(self.viewer, img, self.session)
        self.status.setText(f"Live off after {steps} steps (one fine-tuning round). "
                            "Undo goes back to the weights from before Live.")
        self.ctrl.results_changed.emit()
        self.ctrl.model_changed.emit()

    def _live_failed(self, exc: BaseException) -> None:
        self.progress.setRange(0, 1)  # no busy bar left behind
        self.progress.setValue(0)
        self._unhook_strokes()
        self.live_loop = None
        self._set_live_checked(False)
        self.report(exc)
        self.ctrl.model_changed.emit()
