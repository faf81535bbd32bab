"""Sparse-scribble fine-tuning: train a segmentation net on a few painted voxels.

``finetune(model, image, scribbles)`` trains ``model`` in place on crops sampled around the
painted voxels (see :mod:`napari_cnnseg.core.sampling`). Scribbles are an integer array on
the image grid: 0 = unlabelled, value k = model class k-1 (1 = background, 2 = class 1, ...).

Loss: :func:`~napari_cnnseg.core.losses.scribble_loss` (class-balanced cross-entropy on painted
voxels, a weak prior on unpainted ones: towards class 0, or towards the model's own predictions
before fine-tuning for a trained start; unpainted voxels are never a foreground target).

A ``feature_net`` (fixed filters + per-voxel head) trains on sampled voxels of its
precomputed features instead (``core.pointwise_training``). Which settings a round uses is
``core.recipes`` (re-exported here). Speed on CPU: batch >= 2, ``channels_last_3d``, bf16
autocast where the CPU supports it, AdamW. Deterministic for a given ``seed`` on a given machine and thread count.
With ``keep_best`` the weights scoring lowest on a fixed set of scribble crops are kept, so a
round never ends on a spike.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from .errors import InputError
from .jobs import CancelFn, ProgressFn, check_cancel, report
from .losses import scribble_loss
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
from .sampling import CropGeometry, ScribbleSampler

log = logging.getLogger(__name__)

@dataclass
class FinetuneHistory:
    """What happened during one :func:`finetune` call.

    Attributes:
        losses: training loss of every step.
        times: seconds since the start at the end of every step.
        steps: number of optimisation steps done.
        best_step: step whose weights were kept (0 = the initial weights) when ``keep_best``.
        eval_losses: ``(step, loss)`` of the fixed evaluation crops, when ``keep_best``.
    """

    losses: list[float] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    steps: int = 0
    best_step: int | None = None
    eval_losses: list[tuple[int, float]] = field(default_factory=list)


# --------------------------------------------------------------------------- model glue
#: patches per step for a patch classifier (one output voxel each) at ``batch_size`` 4
PATCHES_PER_CROP = 16


def _is_patch_classifier(model: nn.Module) -> bool:
    """A per-patch classifier (``(N, C, p, p, p) -> (N, K)``), not yet converted to dense."""
    return hasattr(model, "to_dense") and hasattr(model, "patch_size")


def crop_geometry(model: nn.Module, crop_shape: tuple[int, int, int] | None,
                  image_shape: tuple[int, int, int]) -> CropGeometry:
    """Input/output crop shapes for ``model``.

    Args:
        model: a dense net (network protocol of ``core.models``) or a patch classifier.
        crop_shape: wanted output crop (Z, Y, X); None = ``DEFAULT_CROP`` clipped to the image.
        image_shape: (Z, Y, X) of the training volume.
    """
    if _is_patch_classifier(model):
        p = model.patch_size
        patch = tuple(int(v) for v in (p if isinstance(p, (tuple, list)) else (p, p, p)))
        return CropGeometry(patch, (1, 1, 1), tuple(p // 2 for p in patch))  # type: ignore[arg-type]
    if crop_shape is None:
        crop_shape = tuple(min(c, s) for c, s in zip(DEFAULT_CROP, image_shape, strict=True))
    if len(crop_shape) != 3 or any(int(c) < 1 for c in crop_shape):
        raise InputError(f"crop_shape must be three positive sizes (z, y, x), got {crop_shape}")
    if has_fixed_features(model):  # crops of the precomputed features: the head's margin only
        hm = tuple(int(m) for m in model.head_margin)
        out = tuple(int(c) for c in crop_shape)
        return CropGeometry(tuple(o + 2 * m for o, m in zip(out, hm, strict=True)), out, hm)  # type: ignore[arg-type]
    margin = tuple(int(m) for m in getattr(model, "margin", (0, 0, 0)))
    want = tuple(int(c) + 2 * m for c, m in zip(crop_shape, margin, strict=True))
    in_shape = tuple(int(v) for v in model.valid_input_shape(want))
    out_shape = tuple(int(v) for v in model.output_shape(in_shape))
    if getattr(model, "padding", "valid") == "same":
        margin = (0, 0, 0)
    return CropGeometry(in_shape, out_shape, margin)  # type: ignore[arg-type]


def _forward(model: nn.Module, x: torch.Tensor, patch: bool) -> torch.Tensor:
    if has_fixed_features(model):
        return model.head(x)
    out = model(x)
    if patch and out.ndim == 2:
        out = out[:, :, None, None, None]
    return out


def _resolve_device(spec: str | torch.device) -> torch.device:
    from .devices import resolve_device

    return resolve_device(str(spec))


def _use_bf16(device: torch.device, precision: str) -> bool:
    if precision not in ("auto", "bf16", "fp32"):
        raise InputError(f"precision must be 'auto', 'bf16' or 'fp32', got {precision!r}")
    if precision == "fp32":
        return False
    if device.type == "cuda":
        ok = torch.cuda.is_bf16_supported()
    elif device.type == "cpu":
        ok = bool(torch.backends.mkldnn.is_available()
                  and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    else:
        ok = False
    if precision == "bf16" and not ok:
        raise InputError(f"bf16 is not supported on {device}; use precision='fp32' or 'auto'")
    return ok


def _grads_finite(model: nn.Module) -> bool:
    """True when every parameter gradient is finite (no NaN/inf)."""
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    return all(bool(torch.isfinite(g).all()) for g in grads)


def _adamw(params: list[torch.nn.Parameter], *, lr: float, weight_decay: float,
           device: torch.device) -> torch.optim.Optimizer:
    """AdamW with the fused (one kernel for all parameters) step where the build has it.

    The textbook per-parameter loop launches a dozen small ops per tensor and step; the fused
    step does the same update in one pass (falls back to the multi-tensor one, then the loop).
    """
    if device.type in ("cpu", "cuda") and all(p.dtype.is_floating_point for p in params):
        for kw in ({"fused": True}, {"foreach": True}):
            try:
                return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, **kw)
            except (RuntimeError, TypeError, ValueError):
                continue
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


def _model_normalization(model: nn.Module) -> dict[str, Any]:
    meta = getattr(model, "meta", None) or {}
    return dict(meta.get("normalization") or DEFAULT_NORMALIZATION)


def _prepare_inputs(model: nn.Module, image: Any, scribbles: Any,
                    normalization: dict[str, Any] | None) -> tuple[np.ndarray, np.ndarray, dict]:
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
    scr = check_scribbles(scribbles, img.shape[1:], None if k is None else int(k)).astype(np.int64)
    spec = dict(normalization) if normalization is not None else _model_normalization(model)
    norm = apply_stats(img, compute_stats(img, spec))
    return norm, scr, spec


# --------------------------------------------------------------------------- main loop
def finetune(
    model: nn.Module,
    image: Any,
    scribbles: Any,
    *,
    steps: int | None = None,
    seconds: float | None = None,
    lr: float = 5e-4,
    batch_size: int = 4,
    crop_shape: tuple[int, int, int] | None = None,
    prior_weight: float = DEFAULT_PRIOR_WEIGHT,
    prior: str = "background",
    dice_weight: float = 0.0,
    weight_decay: float = 1e-4,
    normalization: dict[str, Any] | None = None,
    device: str | torch.device = "auto",
    precision: str = "auto",
    seed: int = 0,
    augment: bool = True,
    keep_best: bool = True,
    progress: ProgressFn | None = None,
    cancel: CancelFn | None = None,
    on_update: Callable[[nn.Module], None] | None = None,
    update_every: int | None = None,
    history: FinetuneHistory | None = None,
) -> FinetuneHistory:
    """Fine-tune ``model`` in place on scribbles painted over ``image``.

    Args:
        model: segmentation net of ``core.models`` (any family; a patch classifier trains on
            patches centred on painted voxels). Trained in place, left in eval mode on
            ``device``; its ``meta["normalization"]`` is set to the one used.
        image: (Z, Y, X) or (C, Z, Y, X) array, raw intensities.
        scribbles: int array (Z, Y, X) on the image grid; 0 = unlabelled, k = class k-1.
        steps: number of optimisation steps (default 100 when ``seconds`` is not given).
        seconds: wall-clock budget of the whole call (set-up included, except the fixed
            features of a ``feature_net``, computed once per volume); training stops after the
            step that crosses it, and always makes at least one step.
            With both given, whichever comes first.
        lr: AdamW learning rate.
        batch_size: crops per step (>= 1; 2 or more keeps the CPU on its fast path). A patch
            classifier draws ``batch_size * 16`` patches per step (one output voxel each).
        crop_shape: output crop (Z, Y, X) in voxels; None = (16, 48, 48) clipped to the image.
        prior_weight: background prior on unpainted voxels relative to the painted loss
            (default 0.3; 0 = unpainted voxels are ignored).
        prior: what unpainted voxels are pulled towards: "background" (class 0; for a fresh
            net) or "self" (the model's own predictions before this call, a frozen copy;
            recommended when starting from a trained model: it keeps what the model already
            got right where nobody painted).
        dice_weight: soft Dice on painted voxels added to the cross-entropy (default off).
        weight_decay: AdamW weight decay.
        normalization: intensity normalisation spec; None = the model's own or the default.
        device: "auto", "cpu", "cuda", ... .
        precision: "auto" (bf16 autocast where supported), "bf16" or "fp32".
        seed: seeds crop sampling, augmentation and dropout (the global RNG is restored).
        augment: random flips and intensity jitter.
        keep_best: evaluate a fixed set of scribble crops and keep the best weights seen.
        progress: ``progress(step, total)``; total is ``steps`` or, with a time budget only,
            the estimated number of steps.
        cancel: polled every step; when it returns True, raises ``Cancelled`` (the model
            keeps the weights of the last finished step).
        on_update: called with the model (eval mode, no grad needed) every ``update_every``
            steps, e.g. to refresh a preview.
        update_every: steps between ``on_update`` calls (default 10).
        history: a :class:`FinetuneHistory` to fill as training goes (read
            ``history.losses[-1]`` from ``progress`` to show the live loss); a new one if None.

    Returns:
        The :class:`FinetuneHistory`.

    Raises:
        InputError: bad shapes, values or settings; no painted voxel.
        Cancelled: ``cancel()`` returned True.
    """
    start = time.perf_counter()  # the time budget covers the whole call, set-up included
    asked_steps = steps
    if steps is None and seconds is None:
        steps = DEFAULT_STEPS
    if steps is not None and int(steps) < 0:
        raise InputError(f"steps must be >= 0, got {steps}")
    if seconds is not None and not float(seconds) > 0:
        raise InputError(f"seconds must be > 0, got {seconds}")
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise InputError(f"lr must be a positive number (e.g. 5e-4), got {lr!r}")
    if int(batch_size) < 1:
        raise InputError(f"batch_size must be >= 1, got {batch_size}")
    if prior not in PRIORS:
        raise InputError(f"prior must be one of {', '.join(PRIORS)}, got {prior!r}")
    if prior_weight < 0 or dice_weight < 0:
        raise InputError("prior_weight and dice_weight must be >= 0")
    update_every = max(1, int(update_every or 10))
    norm, scr, spec = _prepare_inputs(model, image, scribbles, normalization)
    dev = _resolve_device(device)
    bf16 = _use_bf16(dev, precision)
    patch = _is_patch_classifier(model)
    if has_fixed_features(model):
        from .models.feature_net import cached_features

        norm = cached_features(model, image, spec, dev, norm=norm)
        # the fixed features are computed once per volume (the Session does it ahead, while
        # the user paints): not part of a round's training budget
        start = time.perf_counter()
        if is_per_voxel(model):  # per-voxel head: sampled voxels, no crops
            from .pointwise_training import finetune_pointwise

            return finetune_pointwise(model, norm, scr, spec, asked_steps, seconds, start,
                                       lr=lr, prior_weight=prior_weight, seed=seed, dev=dev,
                                       weight_decay=weight_decay, progress=progress,
                                       cancel=cancel, history=history)
    geometry = crop_geometry(model, crop_shape, tuple(scr.shape))  # type: ignore[arg-type]
    sampler = ScribbleSampler(norm, scr, geometry, seed=seed, augment=augment)
    if patch:  # one output voxel per sample: draw many more samples per step
        batch_size = int(batch_size) * PATCHES_PER_CROP
    log.info("fine-tuning on %d painted voxels (%d classes), crops in %s out %s, bf16=%s",
             int((scr > 0).sum()), len(sampler.classes), geometry.in_shape,
             geometry.out_shape, bf16)

    fmt = torch.channels_last_3d
    model.to(dev)
    if not patch:
        model.to(memory_format=fmt)
    teacher = None
    if prior == "self" and prior_weight > 0:
        teacher = copy.deepcopy(model).eval()
        for p in teacher.parameters():
            p.requires_grad_(False)

    def prior_of(xb: torch.Tensor) -> torch.Tensor | None:
        if teacher is None:
            return None
        with torch.no_grad(), torch.autocast(dev.type, torch.bfloat16, enabled=bf16):
            return torch.softmax(_forward(teacher, xb, patch).float(), dim=1)

    params = [p for p in model.parameters() if p.requires_grad]
    opt = _adamw(params, lr=lr, weight_decay=weight_decay, device=dev)
    history = FinetuneHistory() if history is None else history
    loss_kw = {"prior_weight": float(prior_weight), "dice_weight": float(dice_weight),
               "voxel_prior": prior == "voxel"}

    def to_tensor(arr: np.ndarray, is_image: bool) -> torch.Tensor:
        t = torch.from_numpy(arr).to(dev)
        return t.contiguous(memory_format=fmt) if is_image and not patch else t

    # keep_best: fixed evaluation crops, moved to the device once (with the frozen teacher's
    # predictions on them, which never change) instead of at every evaluation
    eval_chunks: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]] = []
    if keep_best:
        eval_sampler = ScribbleSampler(norm, scr, geometry, seed=seed + 7919, augment=False)
        eval_batch = eval_sampler.sample(max(2 * int(batch_size), 2 * len(sampler.classes)))
        for i in range(0, len(eval_batch.image), int(batch_size)):
            xb = to_tensor(eval_batch.image[i:i + int(batch_size)], True)
            yb = to_tensor(eval_batch.target[i:i + int(batch_size)], False)
            eval_chunks.append((xb, yb, prior_of(xb)))

    def evaluate() -> float:
        model.eval()
        total, n = 0.0, 0
        with torch.no_grad(), torch.autocast(dev.type, torch.bfloat16, enabled=bf16):
            for xb, yb, pb in eval_chunks:
                lo = scribble_loss(_forward(model, xb, patch), yb, prior_target=pb, **loss_kw)
                total += float(lo) * len(xb)
                n += len(xb)
        return total / n

    def snapshot() -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in model.state_dict().items()}

    best_loss, best_state = float("inf"), None
    if keep_best:
        best_loss = evaluate()
        best_state = snapshot()
        history.best_step = 0
        history.eval_losses.append((0, best_loss))

    step = 0
    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
        torch.manual_seed(seed)
        try:
            while True:
                if steps is not None and step >= int(steps):
                    break
                if (seconds is not None and step > 0
                        and time.perf_counter() - start >= float(seconds)):
                    break  # (at least one step: a budget spent on set-up still trains)
                check_cancel(cancel, "fine-tuning")
                model.train()
                batch = sampler.sample(int(batch_size))
                xb, yb = to_tensor(batch.image, True), to_tensor(batch.target, False)
                with torch.autocast(dev.type, torch.bfloat16, enabled=bf16):
                    logits = _forward(model, xb, patch)
                loss = scribble_loss(logits, yb, prior_target=prior_of(xb), **loss_kw)
                finite = bool(torch.isfinite(loss))
                opt.zero_grad(set_to_none=True)
                if finite:
                    loss.backward()
                    finite = _grads_finite(model)
                if not finite:
                    opt.zero_grad(set_to_none=True)  # never apply a non-finite update
                    if bf16:  # bf16's 8-bit mantissa overflowed somewhere: go on in fp32
                        log.warning("bf16 gave a non-finite loss or gradient at step %d; "
                                    "skipping it and continuing in fp32", step)
                        bf16 = False
                        continue
                    raise InputError(
                        "the training loss became NaN/inf; lower the learning rate or check "
                        "the image for NaN values"
                    )
                opt.step()
                step += 1
                history.losses.append(float(loss.detach()))
                history.times.append(time.perf_counter() - start)
                history.steps = step
                total = int(steps) if steps is not None else max(
                    step, int(step * float(seconds) / max(history.times[-1], 1e-9)))
                report(progress, step, total)
                if step % update_every == 0:
                    if keep_best:
                        cur = evaluate()
                        history.eval_losses.append((step, cur))
                        if cur <= best_loss:
                            best_loss, best_state = cur, snapshot()
                            history.best_step = step
                    if on_update is not None:
                        model.eval()
                        on_update(model)
            if keep_best and step % update_every != 0:
                cur = evaluate()
                history.eval_losses.append((step, cur))
                if cur <= best_loss:
                    best_loss, best_state = cur, None
                    history.best_step = step
            if keep_best and best_state is not None and history.best_step != step:
                model.load_state_dict(best_state)
                log.info("kept the weights of step %d (eval loss %.4f)",
                         history.best_step, best_loss)
        finally:
            model.eval()
            if not patch:
                model.to(memory_format=torch.contiguous_format)
    meta = dict(getattr(model, "meta", None) or {})
    meta["normalization"] = spec
    meta["stroke_seeds"] = stroke_seeds(scr, seed)  # see core.postprocess
    model.meta = meta
    log.info("fine-tuned %d steps in %.1f s, last loss %.4f", step,
             history.times[-1] if history.times else 0.0,
             history.losses[-1] if history.losses else float("nan"))
    return history
