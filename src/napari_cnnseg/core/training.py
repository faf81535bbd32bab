"""Sparse-scribble fine-tuning: train a segmentation net on a few painted voxels.

``finetune(model, image, scribbles)`` is the one entry point (dock, CLI, Slicer module,
benchmarks): it checks the inputs, builds the trainer of ``core.trainer`` for the net and runs
it under a step / time budget. Scribbles are an integer array on the image grid: 0 =
unlabelled, value k = model class k-1 (1 = background, 2 = class 1, ...).

A dense net trains on crops sampled around the painted voxels (``core.sampling``), with
:func:`~napari_cnnseg.core.losses.scribble_loss` (class-balanced cross-entropy on painted
voxels, a weak prior on unpainted ones: towards class 0, or towards the model's own predictions
before fine-tuning for a trained start). A ``feature_net`` (fixed filters + per-voxel head)
trains on sampled voxels of its precomputed features instead (``core.pointwise_training``).
Which settings a round uses is ``core.recipes`` (re-exported here). Speed on CPU: batch >= 2,
``channels_last_3d``, bf16 autocast where the device runs it natively, fused AdamW.
Deterministic for a given ``seed`` on a given machine and thread count. With ``keep_best`` the
weights scoring lowest on a fixed set of scribble crops are kept, so a round never ends on a
spike.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import torch
from torch import nn

from .errors import InputError
from .jobs import CancelFn, ProgressFn, check_cancel, report
from .models.feature_net import has_fixed_features, is_per_voxel
from .normalization import DEFAULT_NORMALIZATION, apply_stats, compute_stats
from .postprocess import stroke_seeds
from .recipes import (  # noqa: F401 - re-exported: callers import the recipe from here too
    DEFAULT_CROP,
    DEFAULT_PRIOR_WEIGHT,
    DEFAULT_STEPS,
    NEW_TASK_SETTINGS,
    PRIORS,
    TRAINED_NET_SETTINGS,
    recommended_crop,
    recommended_settings,
    started_new,
)
from .trainer import (  # noqa: F401 - re-exported: the run's pieces live in core.trainer
    PATCHES_PER_CROP,
    CropTrainer,
    Evaluated,
    EventFn,
    FinetuneHistory,
    PointwiseTrainer,
    StepDone,
    TrainConfig,
    adamw,
    crop_geometry,
    use_bf16,
)

log = logging.getLogger(__name__)


def _model_normalization(model: nn.Module) -> dict[str, Any]:
    meta = getattr(model, "meta", None) or {}
    return dict(meta.get("normalization") or DEFAULT_NORMALIZATION)


def _checked_inputs(model: nn.Module, image: Any, scribbles: Any,
                    normalization: dict[str, Any] | None
                    ) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """(C, Z, Y, X) raw image, checked scribbles (uint8 when K < 255) and normalisation spec."""
    img = np.asarray(image)
    if img.ndim == 3:
        img = img[None]
    if img.ndim != 4:
        raise InputError(f"expected an image (Z, Y, X) or (C, Z, Y, X), got shape {img.shape}")
    in_ch = int(getattr(model, "in_channels", img.shape[0]))
    if img.shape[0] != in_ch:
        raise InputError(
            f"the model takes {in_ch} channel(s) but the image has {img.shape[0]}; "
            "pick the matching channel(s) or another model"
        )
    from .scribbles import check_scribbles  # the one scribble check (grid, integers, 0..K)

    k = getattr(model, "num_classes", None)
    scr = check_scribbles(scribbles, img.shape[1:], None if k is None else int(k))
    spec = dict(normalization) if normalization is not None else _model_normalization(model)
    return img, scr, spec


def start_training(model: nn.Module, image: Any, scribbles: Any, config: TrainConfig
                   ) -> tuple[CropTrainer | PointwiseTrainer, np.ndarray, dict[str, Any]]:
    """Check the inputs and build the trainer for ``model`` (crops, or sampled voxels).

    For a ``feature_net`` the fixed features are computed here (cached per volume:
    ``feature_net.cached_features``), before any training budget starts.

    Returns:
        The trainer, the checked scribbles (Z, Y, X) and the normalisation spec used.
    """
    img, scr, spec = _checked_inputs(model, image, scribbles, config.normalization)
    from .devices import resolve_device

    dev = resolve_device(str(config.device))
    use_bf16(dev, config.precision)  # refuse an impossible precision before any work
    if has_fixed_features(model):
        from .models.feature_net import cached_features

        data = cached_features(model, image, spec, dev)
        if is_per_voxel(model):
            return PointwiseTrainer(model, data, scr, config, dev), scr, spec
    else:
        data = apply_stats(img, compute_stats(img, spec))
    return CropTrainer(model, data, scr, config, dev), scr, spec


def finish_training(model: nn.Module, scribbles: np.ndarray, spec: dict[str, Any],
                    seed: int) -> None:
    """Record in ``model.meta`` the normalisation used and the strokes' seeds (postprocess)."""
    model.meta = {**(getattr(model, "meta", None) or {}), "normalization": spec,
                  "stroke_seeds": stroke_seeds(scribbles, seed)}


def _step_reporter(progress: ProgressFn | None, on_event: EventFn | None,
                   history: FinetuneHistory) -> ProgressFn:
    """``progress(step, total)`` that also sends a :class:`StepDone` event."""
    def _report(step: int, total: int) -> None:
        report(progress, step, total)
        if on_event is not None:
            loss = history.losses[-1] if history.losses else float("nan")
            secs = history.times[-1] if history.times else 0.0
            on_event(StepDone(int(step), int(total), float(loss), float(secs)))
    return _report


def _run_crops(trainer: CropTrainer, cfg: TrainConfig, start: float, history: FinetuneHistory,
               step_done: ProgressFn, cancel: CancelFn | None, on_event: EventFn | None) -> int:
    """The budgeted loop of a crop trainer, with keep-best; returns the steps made."""
    steps, every = cfg.step_budget, int(cfg.eval_every)

    def evaluate(step: int, final: bool = False) -> None:
        cur = trainer.keep_best(step, final=final)
        history.eval_losses.append((step, cur))
        history.best_step = trainer.best_step
        if on_event is not None:
            on_event(Evaluated(step, cur, int(trainer.best_step or 0)))

    if cfg.keep_best:
        evaluate(0)
    step = 0
    while steps is None or step < steps:
        if cfg.seconds is not None and step > 0 and time.perf_counter() - start >= cfg.seconds:
            break  # (at least one step: a budget spent on set-up still trains)
        check_cancel(cancel, "fine-tuning")
        loss = trainer.step()
        if loss is None:  # a bf16 step skipped: the same step again in fp32
            continue
        step += 1
        history.losses.append(loss)
        history.times.append(time.perf_counter() - start)
        history.steps = step
        total = steps if steps is not None else max(
            step, int(step * float(cfg.seconds) / max(history.times[-1], 1e-9)))
        step_done(step, total)
        if cfg.keep_best and step % every == 0:
            evaluate(step)
    if cfg.keep_best and step % every != 0:
        evaluate(step, final=True)
    if cfg.keep_best:
        trainer.restore_best(step)
    return step


def finetune(model: nn.Module, image: Any, scribbles: Any, config: TrainConfig | None = None,
             *, progress: ProgressFn | None = None, cancel: CancelFn | None = None,
             on_event: EventFn | None = None, history: FinetuneHistory | None = None,
             **options: Any) -> FinetuneHistory:
    """Fine-tune ``model`` in place on scribbles painted over ``image``.

    Args:
        model: segmentation net of ``core.models`` (any family; a patch classifier trains on
            patches centred on painted voxels). Trained in place, left in eval mode on the
            device; its ``meta["normalization"]`` is set to the one used and
            ``meta["stroke_seeds"]`` to the strokes (``core.postprocess``).
        image: (Z, Y, X) or (C, Z, Y, X) array, raw intensities.
        scribbles: int array (Z, Y, X) on the image grid; 0 = unlabelled, k = class k-1.
        config: a :class:`~napari_cnnseg.core.trainer.TrainConfig`; ``options`` (any of its
            fields as keywords) override it:

            - ``steps``: optimisation steps (default 100 when ``seconds`` is not given).
            - ``seconds``: wall-clock budget of the whole call (set-up included, except the
              fixed features of a ``feature_net``, computed once per volume); training stops
              after the step that crosses it and always makes at least one step.
            - ``lr``, ``weight_decay``: AdamW; ``batch_size``: crops per step (a patch
              classifier draws ``batch_size * 16`` patches); ``crop_shape``: output crop
              (Z, Y, X), None = (16, 48, 48) clipped to the image.
            - ``prior_weight`` (default 0.3; 0 = unpainted voxels ignored) and ``prior``:
              "background" (class 0, for a fresh net), "self" (the model's own predictions
              before this call: keeps what a trained model got right where nobody painted)
              or "voxel"; ``dice_weight``: soft Dice on painted voxels (default off).
            - ``normalization`` (None = the model's own or the default), ``device``,
              ``precision`` ("auto" | "bf16" | "fp32"), ``seed``, ``augment`` (flips and
              intensity jitter), ``keep_best`` (evaluate fixed crops every ``eval_every``
              steps and keep the best weights seen).
        progress: ``progress(step, total)``; total is ``steps`` or, with a time budget only,
            the estimated number of steps.
        cancel: polled every step; when it returns True, raises ``Cancelled`` (the model
            keeps the weights of the last finished step).
        on_event: receives a :class:`StepDone` after every step and an :class:`Evaluated`
            after every keep-best evaluation.
        history: a :class:`FinetuneHistory` to fill as training goes; a new one if None.

    Returns:
        The :class:`FinetuneHistory`.

    Raises:
        InputError: bad shapes, values or settings (an unknown setting is named); no painted
            voxel.
        Cancelled: ``cancel()`` returned True.
    """
    start = time.perf_counter()  # the time budget covers the whole call, set-up included
    cfg = TrainConfig.of(config, **options)
    history = FinetuneHistory() if history is None else history
    step_done = _step_reporter(progress, on_event, history)
    trainer, scr, spec = start_training(model, image, scribbles, cfg)
    if has_fixed_features(model):  # its features were computed once per volume (the Session
        start = time.perf_counter()  # does it ahead): not part of a round's training budget
    if isinstance(trainer, PointwiseTrainer):
        from .pointwise_training import finetune_pointwise

        return finetune_pointwise(model, trainer.features, scr, spec, cfg, start=start,
                                  device=trainer.dev, progress=step_done, cancel=cancel,
                                  history=history)
    log.info("fine-tuning on %d painted voxels (%d classes), crops in %s out %s, bf16=%s",
             int((scr > 0).sum()), trainer.classes, trainer.geometry.in_shape,
             trainer.geometry.out_shape, trainer.bf16)
    dev = trainer.dev
    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
        torch.manual_seed(cfg.seed)
        try:
            step = _run_crops(trainer, cfg, start, history, step_done, cancel, on_event)
        finally:
            trainer.close()
    finish_training(model, scr, spec, cfg.seed)
    log.info("fine-tuned %d steps in %.1f s, last loss %.4f", step,
             history.times[-1] if history.times else 0.0,
             history.losses[-1] if history.losses else float("nan"))
    return history
