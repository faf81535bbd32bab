"""What both docks share: the viewer's controller, job start / progress / errors, busy buttons.

A dock subclasses :class:`JobDock`, builds its rows, calls :meth:`JobDock.add_progress` once
and implements :meth:`JobDock.update_buttons`. :meth:`JobDock.start` runs one job at a time per
viewer (through :mod:`._worker`); every dock of the viewer re-evaluates its buttons when a job
starts or ends (the controller's ``busy_changed`` signal), so no button can start a job that
conflicts with a running one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from qtpy.QtCore import QSize, Qt
from qtpy.QtWidgets import QBoxLayout, QFrame, QScrollArea, QStyle, QVBoxLayout, QWidget

from ..core.errors import Cancelled, InputError
from . import _worker
from ._layout import progress_and_status
from ._shared import controller_for, notify_error, notify_info

logger = logging.getLogger(__name__)

#: resolution of the progress bars (they show fractions, never step counts that can shrink)
BAR_MAX = 1000
BUSY_MESSAGE = "a job is running: wait for it or press Cancel / Stop first"


class JobDock(QWidget):
    """Base of the docks: controller, session, one-job-at-a-time plumbing, forward-only progress.

    Args:
        napari_viewer: what napari hands the dock (the viewer or its ``PublicOnlyProxy``).
    """

    def __init__(self, napari_viewer: Any, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.ctrl = controller_for(napari_viewer)
        self.last_error: str | None = None
        self.listen(self.ctrl.busy_changed, self.update_buttons)

    def body_layout(self) -> QVBoxLayout:
        """The layout the dock's controls go in (``self.body``), inside a frameless scroll area.

        napari lets a dock be squeezed to 50 px when several share a side of the window, and a
        layout squeezed below its minimum overlaps its widgets (the Fine-tune dock's buttons
        came out cut in half under the Segment dock at 1280 x 1000); scrolling keeps every
        control whole.
        """
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        scroll = QScrollArea(self)
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QFrame.Shape.NoFrame)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.body = QWidget()
        scroll.setWidget(self.body)
        outer.addWidget(scroll)
        return QVBoxLayout(self.body)

    def _with_scrollbar(self, hint: QSize, height: int) -> QSize:
        bar = self.style().pixelMetric(QStyle.PixelMetric.PM_ScrollBarExtent)
        return QSize(hint.width() + bar + 2, height)

    def sizeHint(self) -> QSize:  # noqa: N802 - Qt's name
        """The controls' own size (plus a scroll bar's width): the dock opens as wide as
        before the scroll area, which alone would hint a narrow widget."""
        body = getattr(self, "body", None)
        if body is None:
            return super().sizeHint()
        return self._with_scrollbar(body.sizeHint(), body.sizeHint().height())

    def minimumSizeHint(self) -> QSize:  # noqa: N802 - Qt's name
        """As narrow as the controls allow, as short as napari wants (the body scrolls)."""
        body = getattr(self, "body", None)
        if body is None:
            return super().minimumSizeHint()
        return self._with_scrollbar(body.minimumSizeHint(), 80)

    # ---------------------------------------------------------------- lifetime
    def alive(self) -> bool:
        """False once Qt deleted the widget (e.g. the viewer was closed while a job ran)."""
        try:
            self.objectName()
        except RuntimeError:
            return False
        return True

    def guarded(self, fn: Callable[..., Any]) -> Callable[..., None]:
        """``fn`` that does nothing once the widget is gone (callbacks of a job or a signal)."""

        def call(*args: Any) -> None:
            if self.alive():
                fn(*args)

        return call

    def listen(self, signal: Any, slot: Callable[[], None]) -> None:
        """Connect a controller signal to ``slot``, ignored after the widget is deleted."""
        signal.connect(self.guarded(slot))

    @property
    def session(self) -> Any:
        """The viewer's Qt-free :class:`~napari_cnnseg._session.Session`."""
        return self.ctrl.session

    def add_progress(self, root: QBoxLayout) -> None:
        """Add the progress bar and status line (``self.progress``, ``self.status``)."""
        self.progress, self.status = progress_and_status(root)

    def update_buttons(self) -> None:  # pragma: no cover - every dock overrides it
        """Enable exactly the buttons that can act now (called when a job starts or ends)."""
        raise NotImplementedError

    # ---------------------------------------------------------------- progress
    def set_fraction(self, fraction: float) -> None:
        """Show ``fraction`` (0..1) of the job done; the bar never moves backwards in a job."""
        value = int(round(BAR_MAX * min(max(float(fraction), 0.0), 1.0)))
        if self.progress.maximum() != BAR_MAX:
            self.progress.setRange(0, BAR_MAX)
            self.progress.setValue(0)
        if value > self.progress.value():
            self.progress.setValue(value)

    def _on_progress(self, done: int, total: int) -> None:
        """Default job progress: ``done`` of ``total`` units."""
        self.set_fraction(done / total if total > 0 else 0.0)

    # ---------------------------------------------------------------- jobs
    def guard_busy(self) -> bool:
        """True (and an error message) if a job is running."""
        if self.ctrl.busy:
            self.report(InputError(BUSY_MESSAGE))
            return True
        return False

    def start(
        self,
        work: Callable[[_worker.JobContext], Any],
        *,
        desc: str,
        on_done: Callable[[Any], None],
        on_error: Callable[[BaseException], None] | None = None,
        on_progress: Callable[[int, int], None] | None = None,
    ) -> Any:
        """Run ``work(ctx)`` as the viewer's job; callbacks on the GUI thread. Returns the job."""
        self.last_error = None
        self.progress.setRange(0, BAR_MAX)
        self.progress.setValue(0)  # a new job starts at 0, not at the last job's 100 %
        job = _worker.start_job(
            work,
            desc=desc,
            on_progress=self.guarded(on_progress or (lambda d, t: self._on_progress(d, t))),
            on_done=self.guarded(lambda value: self._done(on_done, value)),
            on_error=self.guarded(on_error or self.report),
            on_finally=self._job_finished,
            on_created=self._register_job,
        )
        self.update_buttons()
        return job

    def _done(self, on_done: Callable[[Any], None], value: Any) -> None:
        self.set_fraction(1.0)
        on_done(value)

    def _register_job(self, job: Any) -> None:
        self.ctrl.job = job
        self.ctrl.busy_changed.emit()

    def _job_finished(self) -> None:
        self.ctrl.busy_changed.emit()  # listeners of deleted docks are guarded

    def cancel(self) -> None:
        """Ask the running job to stop at its next check."""
        job = self.ctrl.job
        if job is not None and job.running:
            job.cancel()
            self.status.setText("Stopping…")

    def report(self, exc: BaseException | str) -> None:
        """Show an error (a notification + the status line); a cancel is not an error."""
        if isinstance(exc, Cancelled):
            self.last_error = None
            self.status.setText("Cancelled; no layer was changed.")
            notify_info(str(exc))
            return
        self.last_error = notify_error(exc)
        self.status.setText(f"Error: {self.last_error}")

    # older name, used by scripts and tests
    _error = report
