"""The one threading seam of the docks: run a long job off the GUI thread, or inline for tests.

A job is a plain function ``fn(ctx)`` that calls ``ctx.progress(done, total)``, polls
``ctx.cancel()`` and may ``ctx.call(fn, *args)`` (run ``fn(*args)`` on the GUI thread, e.g. to
show an intermediate result) or ``ctx.emit(obj)`` (hand ``obj`` to ``on_event``). :func:`start_job` runs it in a
napari worker thread (``napari.qt.threading.create_worker``) and delivers progress, emitted
objects, the return value and errors to callbacks **on the GUI thread**, and shows a bar in
napari's activity dock (``napari.utils.progress``).

Synchronous switch: with ``CNNSEG_SYNC=1`` in the environment, or ``_worker.SYNC = True``, the
job runs inline in the calling thread and the callbacks are called directly (tests, scripts).
"""

from __future__ import annotations

import ctypes
import logging
import os
import platform
import sys
import threading
from collections.abc import Callable
from typing import Any

from qtpy.QtCore import QObject, Signal

logger = logging.getLogger(__name__)

#: run jobs inline (no thread) when True; initialised from the environment variable CNNSEG_SYNC
SYNC: bool = os.environ.get("CNNSEG_SYNC", "").strip() not in ("", "0", "false", "False")


def _glibc_malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim`` (None elsewhere: macOS, Windows, musl)."""
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


_MALLOC_TRIM = _glibc_malloc_trim()


def release_freed_memory() -> None:
    """Give the heap pages freed by a job back to the system (glibc only; no-op elsewhere).

    glibc keeps freed pages of its heap for reuse, and with napari's, Qt's and torch's
    allocations interleaved it rarely can return them: resident memory of the docks climbed
    about 13 MB per Segment + Fine-tune + Undo cycle although nothing was kept
    (tests/test_load_gui.py). ``malloc_trim(0)`` after each job returns them.
    """
    if _MALLOC_TRIM is not None:
        try:
            _MALLOC_TRIM(0)
        except Exception:  # noqa: BLE001 - memory hygiene only
            logger.debug("malloc_trim failed", exc_info=True)


class _Failure:
    """An exception carried from the worker to the GUI thread as a return value."""

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


class _Call:
    """A function call the job hands to the GUI thread (:meth:`JobContext.call`)."""

    def __init__(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        self.fn = fn
        self.args = args


class JobContext:
    """What a job function receives: progress/cancel callables and an ``emit`` channel."""

    def __init__(self, job: Job) -> None:
        self._job = job

    def progress(self, done: int, total: int) -> None:
        """Report progress (``done`` of ``total`` units)."""
        self._job._progress(int(done), int(total))

    def cancel(self) -> bool:
        """True once the user asked to stop."""
        return self._job.cancel_event.is_set()

    def emit(self, obj: Any) -> None:
        """Send an intermediate result to the job's ``on_event`` (on the GUI thread)."""
        self._job._event(obj)

    def call(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` on the GUI thread (queued; inline when synchronous)."""
        self._job._event(_Call(fn, args))


class _Bridge(QObject):
    """Queued signals from the worker thread to the GUI thread."""

    progressed = Signal(int, int)
    emitted = Signal(object)


class Job:
    """Handle of a running (or finished) job.

    Attributes:
        cancel_event: set by :meth:`cancel`; the job polls it via ``ctx.cancel()``.
        running: True until the job finished (successfully or not).
    """

    def __init__(
        self,
        fn: Callable[[JobContext], Any],
        *,
        desc: str,
        on_progress: Callable[[int, int], None] | None,
        on_event: Callable[[Any], None] | None,
        on_done: Callable[[Any], None] | None,
        on_error: Callable[[BaseException], None] | None,
        on_finally: Callable[[], None] | None,
    ) -> None:
        self.fn = fn
        self.desc = desc
        self.cancel_event = threading.Event()
        self.running = False
        self.worker: Any = None
        self._on_progress = on_progress
        self._on_event = on_event
        self._on_done = on_done
        self._on_error = on_error
        self._on_finally = on_finally
        self._pbar: Any = None
        self._bridge: _Bridge | None = None

    # -- called from the job (any thread) --
    def _progress(self, done: int, total: int) -> None:
        if self._bridge is not None:
            self._bridge.progressed.emit(done, total)
        else:
            self._gui_progress(done, total)

    def _event(self, obj: Any) -> None:
        if self._bridge is not None:
            self._bridge.emitted.emit(obj)
        else:
            self._deliver(obj)

    def _deliver(self, obj: Any) -> None:
        """GUI thread: run a queued call, or hand an emitted object to ``on_event``."""
        if isinstance(obj, _Call):
            obj.fn(*obj.args)
        elif self._on_event is not None:
            self._on_event(obj)

    # -- GUI thread --
    def _gui_progress(self, done: int, total: int) -> None:
        if self._pbar is not None:
            try:
                if total > 0 and self._pbar.total != total:
                    self._pbar.total = total
                self._pbar.update(max(0, done - self._pbar.n))
            except Exception:  # noqa: BLE001 - the activity bar is cosmetic
                logger.debug("progress bar update failed", exc_info=True)
        if self._on_progress is not None:
            self._on_progress(done, total)

    def _run(self) -> Any:
        try:
            return self.fn(JobContext(self))
        except BaseException as exc:  # noqa: BLE001 - handed to on_error on the GUI thread
            return _Failure(exc)

    def _returned(self, value: Any) -> None:
        if isinstance(value, _Failure):
            if not isinstance(value.exc, Exception):  # KeyboardInterrupt, SystemExit
                raise value.exc
            if self._on_error is not None:
                self._on_error(value.exc)
            else:
                logger.error("job %r failed", self.desc, exc_info=value.exc)
        elif self._on_done is not None:
            self._on_done(value)

    def _finished(self) -> None:
        self.running = False
        if self._pbar is not None:
            try:
                self._pbar.close()
            except Exception:  # noqa: BLE001
                logger.debug("closing progress bar failed", exc_info=True)
            self._pbar = None
        try:
            if self._on_finally is not None:
                self._on_finally()
        finally:
            release_freed_memory()

    def cancel(self) -> None:
        """Ask the job to stop at its next cancellation check."""
        self.cancel_event.set()

    def start(self) -> Job:
        """Run the job (in a worker thread, or inline when :data:`SYNC`)."""
        self.running = True
        try:
            from napari.utils import progress

            self._pbar = progress(total=0, desc=self.desc)
        except Exception:  # noqa: BLE001 - no activity dock (e.g. no napari), keep going
            self._pbar = None
        if SYNC:
            try:
                self._returned(self._run())
            finally:
                self._finished()
            return self
        from napari.qt.threading import create_worker

        self._bridge = _Bridge()
        self._bridge.progressed.connect(self._gui_progress)
        self._bridge.emitted.connect(self._deliver)
        self.worker = create_worker(self._run, _start_thread=False)
        self.worker.returned.connect(self._returned)
        self.worker.finished.connect(self._finished)
        self.worker.start()
        return self


def start_job(
    fn: Callable[[JobContext], Any],
    *,
    desc: str = "cnnseg",
    on_progress: Callable[[int, int], None] | None = None,
    on_event: Callable[[Any], None] | None = None,
    on_done: Callable[[Any], None] | None = None,
    on_error: Callable[[BaseException], None] | None = None,
    on_finally: Callable[[], None] | None = None,
    on_created: Callable[[Job], None] | None = None,
) -> Job:
    """Start ``fn(ctx)`` as a job; all callbacks run on the GUI thread. Returns its handle.

    ``on_created(job)`` is called before the job starts, so the caller can store the handle
    (and e.g. cancel from a progress callback) even when the job runs synchronously.
    """
    job = Job(
        fn,
        desc=desc,
        on_progress=on_progress,
        on_event=on_event,
        on_done=on_done,
        on_error=on_error,
        on_finally=on_finally,
    )
    job.running = True  # busy from now on, also for listeners told in on_created
    if on_created is not None:
        on_created(job)
    return job.start()
