"""Small Qt building blocks shared by the docks (rows of buttons, progress + status line)."""

from __future__ import annotations

from qtpy.QtWidgets import QBoxLayout, QHBoxLayout, QLabel, QProgressBar, QPushButton


def button_row(root: QBoxLayout, *labels: str) -> list[QPushButton]:
    """Add a row of push buttons to ``root``; returns them in the order of ``labels``."""
    row = QHBoxLayout()
    buttons = [QPushButton(text) for text in labels]
    for button in buttons:
        row.addWidget(button)
    root.addLayout(row)
    return buttons


def progress_and_status(root: QBoxLayout) -> tuple[QProgressBar, QLabel]:
    """Add an idle progress bar and a word-wrapped status label to ``root``."""
    progress = QProgressBar()
    progress.setRange(0, 1)
    progress.setValue(0)
    root.addWidget(progress)
    status = QLabel("")
    status.setWordWrap(True)
    root.addWidget(status)
    return progress, status
