"""The live-training loop of the Fine-tune dock's **Live** toggle, Qt-free.

:class:`LiveLoop` runs in the dock's worker thread (``benchmarks/bench_live.py`` drives it in a
thread exactly as the dock does) over the session's live API (``Session.start_live`` →
``LiveTraining``):

* it trains a chunk of steps at a time (chunks of about :attr:`LiveSettings.chunk_seconds`);
* new strokes reach it through :meth:`LiveLoop.push` (GUI thread, on the scribbles layer's
  paint / data events, no click) and are taken at the next chunk;
* after the first chunk trained on new strokes, and otherwise every
  :attr:`LiveSettings.slice_seconds` (never more than :attr:`LiveSettings.slice_share` of the
  time), the visible slice is predicted and handed to ``on_event``;
* when no stroke came for :attr:`LiveSettings.pause_seconds`, the whole volume is predicted
  (a new stroke interrupts that refresh: painting wins);
* after :attr:`LiveSettings.rest_after_steps` steps without a new stroke it rests (no CPU
  burnt on strokes it has learnt) until the next stroke;
* ``cancel()`` (Live off, Stop, closing the viewer) ends it: ``LiveTraining.stop()`` makes it
  one fine-tuning round, and Undo goes back to the weights from before Live was switched on.

The dock side (toggle, stroke hook, status) is :mod:`._live`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..core.errors import Cancelled

logger = logging.getLogger(__name__)


@dataclass
class LiveSettings:
    """Timing of the live loop (seconds are wall-clock)."""

    #: aim of one training chunk: new strokes wait at most about this for the running chunk
    chunk_seconds: float = 0.2
    #: most steps in one chunk (fast per-voxel heads)
    max_chunk_steps: int = 50
    #: seconds between visible-slice refreshes when no new stroke is waiting to be shown
    slice_seconds: float = 1.0
    #: most share of the time the slice refreshes may take
    slice_share: float = 0.25
    #: seconds without a new stroke before the whole volume is refreshed
    pause_seconds: float = 2.0
    #: steps after the last new stroke after which training rests until the next stroke
    rest_after_steps: int = 300
    #: end the loop once it rests (used when jobs run synchronously: nobody can paint then)
    stop_when_resting: bool = False


@dataclass
class LiveEvent:
    """What the loop hands to its callbacks (worker thread).

    Attributes:
        kind: "step", "slice" or "volume".
        steps: training steps so far in this live session.
        loss: last training loss (None before the first chunk).
        strokes: stroke version the weights were trained on (see :meth:`LiveLoop.push`).
        update: the ``RegionUpdate`` (slice) or ``Results`` (volume); None for "step".
        t: ``time.perf_counter()`` when the event was made.
    """

    kind: str
    steps: int
    loss: float | None
    strokes: int
    update: Any = None
    t: float = field(default_factory=time.perf_counter)


class LiveLoop:
    """Live training over ``session.start_live`` (see the module docstring).

    Args:
        session: the :class:`~napari_cnnseg._session.Session` (image and model set).
        scribbles: (Z, Y, X) strokes when Live is switched on (stroke version 0).
        region: returns the roi of the visible slice (or None: no slice refresh); worker thread.
        on_event: receives every :class:`LiveEvent` (worker thread).
        settings: the timing.
    """

    def __init__(self, session: Any, scribbles: np.ndarray, *,
                 region: Callable[[], Any], on_event: Callable[[LiveEvent], None],
                 settings: LiveSettings | None = None) -> None:
        self.session = session
        self.region = region
        self.on_event = on_event
        self.settings = settings or LiveSettings()
        self._lock = threading.Lock()
        self._scribbles = np.array(scribbles, copy=True)
        self._version = 0  # stroke version: +1 per push
        self._given = 0  # version handed to the LiveTraining
        self._last_stroke = time.perf_counter()
        self.live: Any = None
        self.steps = 0
        self.loss: float | None = None
        self._trained_on = -1  # stroke version of the last finished chunk
        self._shown_slice = -1  # stroke version of the last slice refresh
        self._shown_volume = (-1, -1)  # (stroke version, steps) of the last volume refresh
        self._steps_at_stroke = 0
        self._next_slice = 0.0
        self._step_seconds: float | None = None
        #: True while a whole-volume refresh runs (benchmarks: did a stroke land in one?)
        self.refreshing_volume = False

    # ---------------------------------------------------------------- GUI thread
    def push(self, scribbles: np.ndarray) -> int:
        """New strokes (a copy of the whole scribbles array); returns their stroke version.

        Validated here (``InputError`` for values that are no class); taken at the next step.
        """
        scribbles = self.session.check_scribbles(np.array(scribbles, copy=True))
        with self._lock:
            self._version += 1
            self._scribbles = scribbles
            self._last_stroke = time.perf_counter()
            if self.live is not None:
                self.live.update_scribbles(scribbles)
                self._given = self._version
            return self._version

    @property
    def scribbles(self) -> np.ndarray:
        """The newest strokes pushed (or those Live started with)."""
        with self._lock:
            return self._scribbles

    @property
    def version(self) -> int:
        """Stroke version of the newest strokes pushed."""
        return self._version

    # ---------------------------------------------------------------- worker thread
    def run(self, cancel: Callable[[], bool]) -> int:
        """Train until ``cancel()``; returns the steps done. Always ends the live session."""
        with self._lock:
            first = self._scribbles
            self._given = self._version
        self.live = self.session.start_live(first)
        try:
            with self._lock:  # strokes pushed while the trainer was being prepared
                if self._given != self._version:
                    self.live.update_scribbles(self._scribbles)
                    self._given = self._version
            while not cancel():
                if self._resting():  # learnt these strokes: one volume refresh, then wait
                    if (self._trained_on, self.steps) != self._shown_volume:
                        self._refresh_volume(cancel)
                    elif self.settings.stop_when_resting:
                        break
                    else:
                        time.sleep(0.05)
                    continue
                self._chunk(cancel)
                self._refresh_slice(cancel)
                if self._pause_done() and self._shown_volume[0] != self._trained_on:
                    self._refresh_volume(cancel)  # once per pause in painting
        except Cancelled:
            logger.debug("live training cancelled")
        finally:
            live, self.live = self.live, None
            live.stop()
        return self.steps

    def _resting(self) -> bool:
        """Learnt the strokes it has (no new one since) for ``rest_after_steps`` steps."""
        with self._lock:
            fresh = self._given != self._trained_on
        return not fresh and self.steps - self._steps_at_stroke >= self.settings.rest_after_steps

    def _pause_done(self) -> bool:
        return time.perf_counter() - self._last_stroke >= self.settings.pause_seconds

    def _chunk(self, cancel: Callable[[], bool]) -> None:
        s = self.settings
        per = self._step_seconds
        n = 1 if per is None else int(max(1, min(s.max_chunk_steps, s.chunk_seconds / per)))
        with self._lock:
            version = self._given  # what the trainer holds now: these steps train on it
        t0 = time.perf_counter()
        self.loss = float(self.live.train(steps=n, cancel=cancel))
        took = time.perf_counter() - t0
        self._step_seconds = took / n if per is None else 0.7 * per + 0.3 * took / n
        if version != self._trained_on:
            self._steps_at_stroke = self.steps  # new strokes: the rest counter restarts
        self.steps += n
        self._trained_on = version
        self.on_event(LiveEvent("step", self.steps, self.loss, version))

    def _refresh_slice(self, cancel: Callable[[], bool]) -> None:
        new = self._trained_on != self._shown_slice
        if not new and time.perf_counter() < self._next_slice:
            return
        roi = self.region()
        if roi is None:
            return
        t0 = time.perf_counter()
        # a per-voxel feature net reads its cached filters here (core.inference.predict)
        update = self.session.predict_region(roi, cancel=cancel)
        now = time.perf_counter()
        s = self.settings
        self._next_slice = now + max(s.slice_seconds, (now - t0) / s.slice_share)
        self._shown_slice = self._trained_on
        self.on_event(LiveEvent("slice", self.steps, self.loss, self._trained_on, update))

    def _refresh_volume(self, cancel: Callable[[], bool]) -> bool:
        """Predict the whole volume (a new stroke interrupts it); True if it was shown.

        The event's ``update`` is the session's new ``Results`` (a per-voxel feature net reads
        its cached filters: no filtering again).
        """
        state = (self._trained_on, self.steps)
        version = self._version
        scribbles = self.scribbles

        def stop() -> bool:  # a new stroke wins over the whole-volume refresh
            return cancel() or self._version != version

        self.refreshing_volume = True
        try:
            update = self.session.segment(scribbles=scribbles, cancel=stop)
        except Cancelled:
            if cancel():
                raise
            return False
        finally:
            self.refreshing_volume = False
        self._shown_volume = state
        self.on_event(LiveEvent("volume", self.steps, self.loss, state[0], update))
        return True
