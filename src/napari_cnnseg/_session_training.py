"""Fine-tuning inside a :class:`~napari_cnnseg._session.Session` (Qt-free).

Two ways to train the session's model on the user's strokes, both over ``core.trainer``:

* :func:`run_finetune` - one round (the Fine-tune button): the weights before it go on the
  Undo stack, the visible region is previewed while training, the whole volume is predicted
  after it.
* :class:`LiveTraining` - training that keeps going while the user paints (the dock's Live
  toggle): new strokes are taken at the next chunk of steps, without a click; the whole live
  session is one Undo step.

Both take their settings from ``core.recipes`` by where the net started (new for this task, or
trained), so a round made here is the round ``cnnseg finetune`` and the benchmark make.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ._results import FinetuneOutcome, Roi
from .core.errors import Cancelled, InputError
from .core.jobs import CancelFn

if TYPE_CHECKING:  # pragma: no cover
    from ._session import Session

logger = logging.getLogger(__name__)

#: live previews during fine-tuning take at most this share of the training time
LIVE_REFRESH_MAX_SHARE = 0.2


def warm_up_training() -> None:
    """Pay torch's one-time optimiser start-up cost (it imports ``torch._dynamo``, ~1-3 s).

    The Fine-tune dock calls this in a background thread when it opens, so the first click on
    Fine-tune does not wait for it.
    """
    import torch

    from .core import inference, training  # noqa: F401 - imported for their start-up cost

    torch.optim.AdamW([torch.zeros(1, requires_grad=True)])


def training_options(session: Session, options: dict[str, Any]) -> dict[str, Any]:
    """The recipe for the session's model and image, overridden by explicit ``options``."""
    from .core.training import recommended_crop, recommended_settings, started_new

    new = session.model_started_new or started_new(session.model)
    return {"crop_shape": recommended_crop(session.spatial_shape, session.volume.spacing),
            **recommended_settings(new, session.model), **options}


@dataclass(frozen=True)
class Preview:
    """What a round previews while it trains: the region ``region()`` returns (e.g. the visible
    slice; None = nothing this time), after step 1 and then every ``seconds`` (the dock uses
    1.5), or every ``steps`` steps when ``seconds`` is None. The pause also stretches to
    1 / :data:`LIVE_REFRESH_MAX_SHARE` times the last preview's cost, so previews never take
    more than that share of the training time."""

    region: Callable[[], Roi | None]
    seconds: float | None = None
    steps: int = 5


@dataclass(frozen=True)
class Refreshing:
    """Progress of the whole-volume prediction that ends a round (tiles ``done`` of ``total``)."""

    done: int
    total: int


#: what :meth:`Session.finetune` hands to its one ``on_event`` callback (training thread):
#: ``core.trainer.StepDone`` after every step, a :class:`RegionUpdate` per preview, and
#: :class:`Refreshing` while the whole volume is predicted at the end
SessionEventFn = Callable[[Any], None]


class _Previews:
    """Runs a :class:`Preview`: predicts its region when due and hands it to ``on_event``."""

    def __init__(self, session: Session, preview: Preview | None,
                 on_event: SessionEventFn | None) -> None:
        self.session, self.preview, self.on_event = session, preview, on_event
        self.every = max(1, int(preview.steps)) if preview is not None else 1
        self.seconds = preview.seconds if preview is not None else None
        self.last, self.next_at, self.count = 0, 0.0, 0

    def _due(self, done: int) -> bool:
        if done == 1:
            return True
        if self.seconds is None:
            return done - self.last >= self.every
        return time.perf_counter() >= self.next_at

    def after_step(self, done: int) -> None:
        if self.preview is None or self.on_event is None or not self._due(done):
            return
        roi = self.preview.region()
        if roi is None:
            return
        self.last = done
        t0 = time.perf_counter()
        self.on_event(self.session.predict_region(roi))
        self.count += 1
        now = time.perf_counter()
        self.next_at = now + max(float(self.seconds or 0.0), (now - t0) / LIVE_REFRESH_MAX_SHARE)


def run_finetune(session: Session, scribbles: np.ndarray, *, preview: Preview | None,
                 on_event: SessionEventFn | None, refresh: bool, cancel: CancelFn | None,
                 options: dict[str, Any]) -> FinetuneOutcome:
    """One fine-tuning round of ``session.model`` (:meth:`Session.finetune`).

    The weights before training are pushed on the Undo stack. While training, ``preview``
    (a :class:`Preview`) says which region (e.g. the visible slice) to predict with the current
    weights and when, so the user sees the effect of the new strokes after one step. Stopping
    (``cancel()`` True) keeps the weights reached so far. With ``refresh`` the whole volume is
    predicted afterwards and stored in the session's results.

    Args:
        scribbles: (Z, Y, X) int array, 0 = unlabelled, k = class k-1.
        on_event: receives, in the training thread, ``core.trainer.StepDone`` after every step
            (step, total, loss), each preview's :class:`RegionUpdate`, and :class:`Refreshing`
            progress of the final whole-volume prediction.
        cancel: stop request, polled every step.
        options: ``core.training.finetune`` settings (steps, seconds, lr, batch_size,
            crop_shape, prior_weight, keep_best, device, precision, ...) over the recipe.
    """
    from .core.training import FinetuneHistory, StepDone, finetune

    options = training_options(session, options)
    scribbles = session.check_scribbles(scribbles)
    previews = _Previews(session, preview, on_event)
    outcome = FinetuneOutcome(history=FinetuneHistory())
    session.versions.push(session.model)
    model = session.model

    def trainer_event(event: Any) -> None:
        # after every optimisation step (weights consistent)
        if not isinstance(event, StepDone):
            return
        session.versions.step += 1
        outcome.steps = event.step
        if on_event is not None:
            on_event(event)
        previews.after_step(event.step)

    try:
        finetune(model, session.volume.array, scribbles, history=outcome.history,
                 on_event=trainer_event, cancel=cancel, **options)
    except Cancelled:
        outcome.stopped = True
        logger.info("fine-tuning stopped by the user; keeping the weights reached")
    except BaseException:
        session.versions.drop(session.model)  # nothing useful happened: the previous weights go back
        raise
    session.versions.round_done()
    outcome.region_updates = previews.count
    outcome.losses = [float(x) for x in outcome.history.losses]
    model.eval()
    if refresh:
        def refreshing(done: int, total: int) -> None:
            if on_event is not None:
                on_event(Refreshing(done, total))

        outcome.results = session.segment(progress=refreshing, scribbles=scribbles)
    return outcome


class LiveTraining:
    """Training that takes new strokes as they are painted (the Fine-tune dock's Live toggle).

    Made by :meth:`Session.start_live`, which pushes one Undo version (the weights before the
    live session). Then, from a worker thread, :meth:`train` makes a chunk of steps on the
    latest strokes; from the GUI thread :meth:`update_scribbles` hands over new strokes (taken
    at the next chunk); :meth:`stop` ends it as one fine-tuning round.

    Args:
        session: the session whose model trains.
        scribbles: (Z, Y, X) int strokes on the image grid (0 = unpainted, k = class k-1).
        **options: ``core.training.finetune`` settings over the recipe (lr, prior_weight,
            device, seed, ...); the step / time budget and keep-best do not apply.
    """

    def __init__(self, session: Session, scribbles: np.ndarray, **options: Any) -> None:
        from .core.training import TrainConfig, start_training

        self.session = session
        scr = session.check_scribbles(np.array(scribbles, copy=True))
        options = {**training_options(session, options), "steps": None, "seconds": None,
                   "keep_best": False}
        self.config = TrainConfig.of(**options)
        session.versions.push(session.model)
        try:
            self.trainer, self._scribbles, self._spec = start_training(
                session.model, session.volume.array, scr, self.config)
        except BaseException:
            session.versions.drop(session.model)
            raise
        self._pending: np.ndarray | None = None
        self._lock = threading.Lock()
        self.steps = 0
        self.active = True

    def update_scribbles(self, scribbles: np.ndarray) -> bool:
        """Train on these strokes (a copy is taken) from the next chunk of steps on.

        Returns:
            False (and keeps the previous strokes) when nothing is painted.

        Raises:
            InputError: the strokes are off the image grid or hold bad values.
        """
        scr = np.array(scribbles, copy=True)
        if not scr.any():
            return False
        scr = self.session.check_scribbles(scr)
        with self._lock:
            self._pending = scr
        return True

    def train(self, steps: int = 20, cancel: CancelFn | None = None) -> float:
        """Make ``steps`` optimisation steps on the latest strokes; returns the last loss.

        Raises:
            InputError: the live session was stopped.
            Cancelled: ``cancel()`` returned True (the weights reached so far stay).
        """
        if not self.active:
            raise InputError("live training was stopped; turn Live on again to go on")
        with self._lock:
            pending, self._pending = self._pending, None
        if pending is not None:
            self.trainer.set_scribbles(pending)
            self._scribbles = pending
        try:
            loss = self.trainer.train_steps(int(steps), cancel)
        finally:
            self.session.versions.step += 1
        self.steps += int(steps)
        return loss

    def stop(self) -> None:
        """End the live session: one fine-tuning round (Undo restores the weights before it)."""
        if not self.active:
            return
        from .core.training import finish_training

        self.active = False
        self.trainer.close()
        finish_training(self.session.model, self._scribbles, self._spec, self.config.seed)
        self.session.versions.round_done()
        logger.info("live training stopped after %d steps", self.steps)
