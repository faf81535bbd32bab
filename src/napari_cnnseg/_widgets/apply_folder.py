"""**Apply to folder…** in the Segment dock: the current model over every volume of a folder.

A small panel (button, progress bar over the volumes, status line, Cancel) added to the Segment
dock by :func:`add_apply_folder`. The work is
:func:`napari_cnnseg.core.cohort.segment_cohort` in this process, in the background through
:func:`._worker.start_job`, on a frozen copy of the current model (shipped, loaded or just
fine-tuned: fine-tuning on meanwhile does not change the copy). Outputs, resume, failures and
``summary.csv`` follow docs/cohorts.md.

Scripting / tests: ``panel.run(folder, outdir)`` (returns the job), ``panel.cancel()``,
``panel.last_result`` (the :class:`~napari_cnnseg.core.cohort.CohortResult`).
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

from qtpy.QtWidgets import QFileDialog, QProgressBar, QVBoxLayout, QWidget

from ..core.errors import Cancelled, InputError
from . import _worker
from ._layout import button_row, progress_and_status
from ._shared import notify_error, notify_info

logger = logging.getLogger(__name__)


class ApplyFolderPanel(QWidget):
    """Apply to folder… / Cancel, a progress bar over the volumes and a status line.

    Args:
        segment_widget: the Segment dock; its session's model, device and precision are used.
    """

    def __init__(self, segment_widget: Any, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.segment_widget = segment_widget
        self.job: Any = None
        self.last_result: Any = None
        root = QVBoxLayout(self)
        root.setContentsMargins(0, 0, 0, 0)
        self.apply_btn, self.cancel_btn = button_row(root, "Apply to folder…", "Cancel")
        self.apply_btn.setToolTip("segment every volume of a folder with the current model, "
                                  "in the background (outputs + summary.csv in a folder you choose)")
        self.progress: QProgressBar
        self.progress, self.status = progress_and_status(root)
        self.cancel_btn.setEnabled(False)
        self.apply_btn.clicked.connect(lambda: self.run())
        self.cancel_btn.clicked.connect(self.cancel)

    # ------------------------------------------------------------------ what to run
    def _model(self) -> Any:
        session = getattr(self.segment_widget, "session", None)
        model = getattr(session, "model", None)
        if model is None:
            raise InputError("no model chosen: pick or load a model in the Segment dock first")
        frozen = copy.deepcopy(model).eval()
        if hasattr(model, "meta"):
            frozen.meta = dict(model.meta)
        return frozen

    def _options(self) -> Any:
        from ..core.cohort import CohortOptions

        def combo(name: str, default: str) -> str:
            box = getattr(self.segment_widget, name, None)
            text = box.currentText() if box is not None else ""
            return text or default

        return CohortOptions(device=combo("device_combo", "auto"),
                             precision=combo("precision_combo", "auto"))

    def _ask(self, folder: str | Path | None, outdir: str | Path | None) -> tuple[Path, Path] | None:
        if folder is None:
            folder = QFileDialog.getExistingDirectory(self, "Folder of volumes to segment")
            if not folder:
                return None
        if outdir is None:
            outdir = QFileDialog.getExistingDirectory(self, "Output folder (labels + summary.csv)",
                                                      str(Path(folder).parent))
            if not outdir:
                return None
        return Path(folder), Path(outdir)

    # ------------------------------------------------------------------ the job
    def run(self, folder: str | Path | None = None, outdir: str | Path | None = None) -> Any:
        """Segment every volume of ``folder`` into ``outdir`` (asks for both when None).

        Returns the job, or None when nothing started (no model, a dialog cancelled, busy).
        """
        if self.job is not None and self.job.running:
            notify_error("Apply to folder is already running: wait for it or press Cancel")
            return None
        try:
            model = self._model()
            options = self._options()
        except InputError as exc:
            notify_error(exc)
            return None
        where = self._ask(folder, outdir)
        if where is None:
            return None
        folder, outdir = where

        def work(ctx: _worker.JobContext) -> Any:
            from ..core.cohort import segment_cohort

            return segment_cohort(folder, model, outdir, options, progress=ctx.progress,
                                  cancel=ctx.cancel)

        self.status.setText(f"Segmenting the volumes of {folder} …")
        self.apply_btn.setEnabled(False)
        self.cancel_btn.setEnabled(True)
        return _worker.start_job(work, desc="Apply to folder", on_progress=self._on_progress,
                                 on_done=self._done, on_error=self._error,
                                 on_finally=self._finished, on_created=self._created)

    def _created(self, job: Any) -> None:
        self.job = job

    def _on_progress(self, done: int, total: int) -> None:
        self.progress.setRange(0, max(total, 1))
        self.progress.setValue(done)
        self.status.setText(f"{done} / {total} volumes")

    def _done(self, result: Any) -> None:
        self.last_result = result
        counts = {s: sum(r["status"] == s for r in result.records) for s in ("done", "skipped", "failed")}
        msg = (f"{counts['done']} segmented, {counts['skipped']} already done, "
               f"{counts['failed']} failed; summary: {result.summary_path}")
        for rec in result.failed:
            msg += f"\n{Path(rec['input']).name}: {rec['error']}"
        self.status.setText(msg)
        notify_info(msg.splitlines()[0])

    def _error(self, exc: BaseException) -> None:
        if isinstance(exc, Cancelled):
            self.status.setText("Cancelled (finished volumes are kept; run again to resume)")
            return
        self.status.setText(notify_error(exc))

    def _finished(self) -> None:
        self.apply_btn.setEnabled(True)
        self.cancel_btn.setEnabled(False)

    def cancel(self) -> None:
        """Stop after the current batch of tiles (finished volumes are kept)."""
        if self.job is not None:
            self.job.cancel()


def add_apply_folder(segment_widget: Any) -> ApplyFolderPanel:
    """Add the Apply to folder… panel to the Segment dock (once); returns it.

    The panel goes at the end of the dock's layout, above a trailing stretch if there is one,
    and is kept as ``segment_widget.apply_folder``.
    """
    panel = getattr(segment_widget, "apply_folder", None)
    if isinstance(panel, ApplyFolderPanel):
        return panel
    panel = ApplyFolderPanel(segment_widget)
    layout = getattr(segment_widget, "body", segment_widget).layout()  # inside the scroll area
    last = layout.itemAt(layout.count() - 1) if layout is not None and layout.count() else None
    if last is not None and last.spacerItem() is not None:
        layout.insertWidget(layout.count() - 1, panel)
    elif layout is not None:
        layout.addWidget(panel)
    segment_widget.apply_folder = panel
    return panel
