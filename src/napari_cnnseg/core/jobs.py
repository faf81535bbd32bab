"""Progress and cancellation conventions for long jobs (inference, training, I/O).

Compute functions take two optional plain callables instead of GUI objects:

* ``progress(done: int, total: int) -> None`` called as work advances;
* ``cancel() -> bool`` polled between units of work; when it returns True the job raises
  :class:`~napari_cnnseg.core.errors.Cancelled` promptly.

A :class:`threading.Event` works as ``cancel`` via ``event.is_set``.
"""

from __future__ import annotations

from collections.abc import Callable

from .errors import Cancelled

ProgressFn = Callable[[int, int], None]
CancelFn = Callable[[], bool]


def report(progress: ProgressFn | None, done: int, total: int) -> None:
    """Call ``progress(done, total)`` if a callback was given."""
    if progress is not None:
        progress(int(done), int(total))


def check_cancel(cancel: CancelFn | None, what: str = "job") -> None:
    """Raise :class:`Cancelled` if ``cancel()`` returns True.

    Args:
        cancel: callable polled for a stop request, or None.
        what: short name of the job for the exception message.
    """
    if cancel is not None and cancel():
        raise Cancelled(f"{what} cancelled by the user")
