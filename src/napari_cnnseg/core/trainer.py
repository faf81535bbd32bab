"""The pieces of one fine-tuning run: its settings, its events, and the trainer objects.

* :class:`TrainConfig` - every setting of a run (the recipe of ``core.recipes`` plus budget,
  device and seed), validated in one place; ``TrainConfig.of(**options)`` turns keyword
  options into one and names an unknown setting.
* Typed events: :class:`StepDone` after every optimisation step and :class:`Evaluated` after
  every keep-best evaluation; one ``on_event`` callback receives them (trainer -> session ->
  dock), instead of a callback per kind.
* :class:`CropTrainer` - a dense net (or a patch classifier) trained on crops around the
  strokes: ``step()``, ``evaluate()``, ``keep_best()``, ``set_scribbles()`` (new strokes
  at the next step, for live training).
* :class:`PointwiseTrainer` - a ``FeatureNet`` with a per-voxel head, trained on sampled
  voxels of its precomputed features (``core.pointwise_training``).

``core.training.finetune`` is the one entry point that builds a trainer and runs it under a
step / time budget; the Session's live training drives a trainer step by step.
Shapes: images (C, Z, Y, X) normalised float32, scribbles (Z, Y, X) int (0 = unpainted,
k = class k-1).
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from torch import nn

from .errors import InputError
from .jobs import CancelFn
from .losses import scribble_loss
from .models.feature_net import has_fixed_features
from .precisions import TRAIN_PRECISION_CHOICES
from .recipes import DEFAULT_CROP, DEFAULT_PRIOR_WEIGHT, DEFAULT_STEPS, PRIORS
from .sampling import CropGeometry, ScribbleSampler
from .settings import with_options

log = logging.getLogger(__name__)

#: patches per step for a patch classifier (one output voxel each) at ``batch_size`` 4
PATCHES_PER_CROP = 16
#: precisions a training run accepts ("auto" = bf16 where the device runs it natively)
TRAIN_PRECISIONS = TRAIN_PRECISION_CHOICES


@dataclass(frozen=True)
class TrainConfig:
    """Settings of one fine-tuning run (see ``core.training.finetune`` for each one)."""

    steps: int | None = None
    seconds: float | None = None
    lr: float = 5e-4
    batch_size: int = 4
    crop_shape: tuple[int, int, int] | None = None
    prior_weight: float = DEFAULT_PRIOR_WEIGHT
    prior: str = "background"
    dice_weight: float = 0.0
    weight_decay: float = 1e-4
    normalization: dict[str, Any] | None = None
    device: str | torch.device = "auto"
    precision: str = "auto"
    seed: int = 0
    augment: bool = True
    keep_best: bool = True
    eval_every: int = 10

    @classmethod
    def of(cls, config: TrainConfig | None = None, **options: Any) -> TrainConfig:
        """``config`` (or the defaults) with ``options`` applied, validated.

        Raises:
            InputError: an unknown setting name or a bad value.
        """
        cfg = with_options(cls, config, options, "training")
        cfg.check()
        return cfg

    def check(self) -> None:
        """Raise :class:`InputError` naming the first bad setting."""
        if self.steps is not None and int(self.steps) < 0:
            raise InputError(f"steps must be >= 0, got {self.steps}")
        if self.seconds is not None and not float(self.seconds) > 0:
            raise InputError(f"seconds must be > 0, got {self.seconds}")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise InputError(f"lr must be a positive number (e.g. 5e-4), got {self.lr!r}")
        if int(self.batch_size) < 1:
            raise InputError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.prior not in PRIORS:
            raise InputError(f"prior must be one of {', '.join(PRIORS)}, got {self.prior!r}")
        if self.prior_weight < 0 or self.dice_weight < 0:
            raise InputError("prior_weight and dice_weight must be >= 0")
        if self.precision not in TRAIN_PRECISIONS:
            raise InputError(f"precision must be one of {', '.join(TRAIN_PRECISIONS)}, "
                             f"got {self.precision!r}")
        if int(self.eval_every) < 1:
            raise InputError(f"eval_every must be >= 1, got {self.eval_every}")

    @property
    def step_budget(self) -> int | None:
        """Steps to make: ``steps``, or ``DEFAULT_STEPS`` when no time budget is given either."""
        if self.steps is None and self.seconds is None:
            return DEFAULT_STEPS
        return None if self.steps is None else int(self.steps)


@dataclass(frozen=True)
class StepDone:
    """One optimisation step finished (weights consistent). ``seconds`` since the start."""

    step: int
    total: int
    loss: float
    seconds: float


@dataclass(frozen=True)
class Evaluated:
    """A keep-best evaluation on the fixed crops; ``best_step`` is the step kept so far."""

    step: int
    loss: float
    best_step: int


TrainEvent = StepDone | Evaluated
EventFn = Callable[[TrainEvent], None]


@dataclass
class FinetuneHistory:
    """What happened during one fine-tuning run.

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
def is_patch_classifier(model: nn.Module) -> bool:
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
    if is_patch_classifier(model):
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


def use_bf16(device: torch.device, precision: str) -> bool:
    """Whether a run at ``precision`` ("auto" | "bf16" | "fp32") uses bf16 autocast on ``device``.

    "auto" takes bf16 only where the device runs it natively (``core.devices``' one table).

    Raises:
        InputError: an unknown precision, or "bf16" where the device has none.
    """
    from .devices import reduced_precision_dtype

    if precision not in TRAIN_PRECISIONS:
        raise InputError(f"precision must be one of {', '.join(TRAIN_PRECISIONS)}, "
                         f"got {precision!r}")
    if precision == "fp32":
        return False
    ok = device.type in ("cpu", "cuda") and reduced_precision_dtype(device) == torch.bfloat16
    if precision == "bf16" and not ok:
        raise InputError(f"bf16 is not supported on {device}; use precision='fp32' or 'auto'")
    return ok


def adamw(params: list[torch.nn.Parameter], *, lr: float, weight_decay: float,
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


def _forward(model: nn.Module, x: torch.Tensor, patch: bool) -> torch.Tensor:
    if has_fixed_features(model):
        return model.head(x)
    out = model(x)
    if patch and out.ndim == 2:
        out = out[:, :, None, None, None]
    return out


def _grads_finite(model: nn.Module) -> bool:
    """True when every parameter gradient is finite (no NaN/inf)."""
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    return all(bool(torch.isfinite(g).all()) for g in grads)


# --------------------------------------------------------------------------- trainers
class CropTrainer:
    """Trains a dense net (or a patch classifier) on crops sampled around the strokes.

    Args:
        model: trained in place on ``device`` (channels-last while training).
        norm: (C, Z, Y, X) float32 normalised image, or the fixed features of a ``FeatureNet``.
        scribbles: (Z, Y, X) int on the image grid, already checked.
        config: the run's settings.
        device: where to train.
    """

    def __init__(self, model: nn.Module, norm: np.ndarray, scribbles: np.ndarray,
                 config: TrainConfig, device: torch.device) -> None:
        self.model, self.cfg, self.dev, self.norm = model, config, device, norm
        self.patch = is_patch_classifier(model)
        self.bf16 = use_bf16(device, config.precision)
        self.geometry = crop_geometry(model, config.crop_shape, tuple(scribbles.shape))  # type: ignore[arg-type]
        self.batch = int(config.batch_size) * (PATCHES_PER_CROP if self.patch else 1)
        self.fmt = torch.channels_last_3d
        model.to(device)
        if not self.patch:
            model.to(memory_format=self.fmt)
        self.teacher = None
        if config.prior == "self" and config.prior_weight > 0:
            self.teacher = copy.deepcopy(model).eval()
            for p in self.teacher.parameters():
                p.requires_grad_(False)
        self.opt = adamw([p for p in model.parameters() if p.requires_grad], lr=config.lr,
                         weight_decay=config.weight_decay, device=device)
        self.loss_kw = {"prior_weight": float(config.prior_weight),
                        "dice_weight": float(config.dice_weight),
                        "voxel_prior": config.prior == "voxel"}
        self.best_loss, self.best_state, self.best_step = float("inf"), None, None
        self.set_scribbles(scribbles)

    def set_scribbles(self, scribbles: np.ndarray) -> None:
        """Train on these strokes from the next step on (the optimiser state is kept)."""
        cfg = self.cfg
        self.sampler = ScribbleSampler(self.norm, scribbles, self.geometry, seed=cfg.seed,
                                       augment=cfg.augment)
        self.classes = len(self.sampler.classes)
        self.eval_chunks: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]] = []
        if cfg.keep_best:  # fixed crops on the device once (with the teacher's view of them)
            ev = ScribbleSampler(self.norm, scribbles, self.geometry, seed=cfg.seed + 7919,
                                 augment=False).sample(max(2 * self.batch, 2 * self.classes))
            for i in range(0, len(ev.image), self.batch):
                xb = self._tensor(ev.image[i:i + self.batch], True)
                yb = self._tensor(ev.target[i:i + self.batch], False)
                self.eval_chunks.append((xb, yb, self._prior(xb)))

    def _tensor(self, arr: np.ndarray, is_image: bool) -> torch.Tensor:
        t = torch.from_numpy(arr).to(self.dev)
        return t.contiguous(memory_format=self.fmt) if is_image and not self.patch else t

    def _prior(self, xb: torch.Tensor) -> torch.Tensor | None:
        if self.teacher is None:
            return None
        with torch.no_grad(), torch.autocast(self.dev.type, torch.bfloat16, enabled=self.bf16):
            return torch.softmax(_forward(self.teacher, xb, self.patch).float(), dim=1)

    def step(self) -> float | None:
        """One optimisation step; the loss, or None when a bf16 step was skipped (non-finite:
        the run goes on in fp32).

        Raises:
            InputError: the loss or gradients are not finite in fp32.
        """
        model = self.model
        model.train()
        batch = self.sampler.sample(self.batch)
        xb, yb = self._tensor(batch.image, True), self._tensor(batch.target, False)
        with torch.autocast(self.dev.type, torch.bfloat16, enabled=self.bf16):
            logits = _forward(model, xb, self.patch)
        loss = scribble_loss(logits, yb, prior_target=self._prior(xb), **self.loss_kw)
        finite = bool(torch.isfinite(loss))
        self.opt.zero_grad(set_to_none=True)
        if finite:
            loss.backward()
            finite = _grads_finite(model)
        if not finite:
            self.opt.zero_grad(set_to_none=True)  # never apply a non-finite update
            if self.bf16:  # bf16's 8-bit mantissa overflowed somewhere: go on in fp32
                log.warning("bf16 gave a non-finite loss or gradient; skipping the step and "
                            "continuing in fp32")
                self.bf16 = False
                return None
            raise InputError("the training loss became NaN/inf; lower the learning rate or "
                             "check the image for NaN values")
        self.opt.step()
        return float(loss.detach())

    def evaluate(self) -> float:
        """Mean loss on the fixed evaluation crops (eval mode, no gradients)."""
        self.model.eval()
        total, n = 0.0, 0
        with torch.no_grad(), torch.autocast(self.dev.type, torch.bfloat16, enabled=self.bf16):
            for xb, yb, pb in self.eval_chunks:
                lo = scribble_loss(_forward(self.model, xb, self.patch), yb, prior_target=pb,
                                   **self.loss_kw)
                total += float(lo) * len(xb)
                n += len(xb)
        return total / max(n, 1)

    def keep_best(self, step: int, *, final: bool = False) -> float:
        """Evaluate; remember these weights (as of ``step``) if they are the best so far.

        ``final``: the last evaluation of a run - the weights stay in the model, no copy.
        """
        cur = self.evaluate()
        if cur <= self.best_loss:
            self.best_loss, self.best_step = cur, step
            self.best_state = None if final else {
                k: v.detach().clone() for k, v in self.model.state_dict().items()}
        return cur

    def restore_best(self, step: int) -> None:
        """Load the best weights seen, unless they are those of ``step`` (the current ones)."""
        if self.best_state is not None and self.best_step != step:
            self.model.load_state_dict(self.best_state)
            log.info("kept the weights of step %s (eval loss %.4f)", self.best_step,
                     self.best_loss)

    def train_steps(self, steps: int, cancel: CancelFn | None = None,
                    history: FinetuneHistory | None = None) -> float:
        """Make ``steps`` steps (live training); returns the last loss (NaN when none)."""
        from .jobs import check_cancel

        loss, done = float("nan"), 0
        while done < int(steps):
            check_cancel(cancel, "fine-tuning")
            value = self.step()
            if value is None:
                continue
            loss, done = value, done + 1
            if history is not None:
                history.losses.append(value)
                history.steps += 1
        self.model.eval()
        return loss

    def close(self) -> None:
        """Leave the model in eval mode, in the plain memory format."""
        self.model.eval()
        if not self.patch:
            self.model.to(memory_format=torch.contiguous_format)


class PointwiseTrainer:
    """Trains the per-voxel head of a ``FeatureNet`` on sampled voxels of its fixed features.

    The steps are ``core.pointwise_training.train_pointwise`` (the one per-voxel loop); this
    object keeps the optimiser between calls, so live training can take new strokes between
    chunks of steps without starting over.

    Args:
        model: a per-voxel ``FeatureNet`` (trained in place on ``device``).
        features: (F, Z, Y, X) float32 fixed features of the whole volume.
        scribbles: (Z, Y, X) int, already checked.
    """

    def __init__(self, model: nn.Module, features: np.ndarray, scribbles: np.ndarray,
                 config: TrainConfig, device: torch.device) -> None:
        self.model, self.cfg, self.dev, self.features = model, config, device, features
        model.to(device)
        self.opt = adamw([p for p in model.parameters() if p.requires_grad], lr=config.lr,
                         weight_decay=config.weight_decay, device=device)
        self.scribbles = scribbles
        self.chunks = 0

    def set_scribbles(self, scribbles: np.ndarray) -> None:
        """Train on these strokes from the next chunk of steps on."""
        self.scribbles = scribbles

    def train_steps(self, steps: int, cancel: CancelFn | None = None,
                    history: FinetuneHistory | None = None) -> float:
        """Make ``steps`` steps; returns the last loss (NaN when none was made)."""
        from .pointwise_training import train_pointwise

        history = FinetuneHistory() if history is None else history
        seed = self.cfg.seed + 104729 * self.chunks  # new voxels each chunk, still seeded
        self.chunks += 1
        for group in self.opt.param_groups:  # each chunk starts from the run's lr (the
            group["lr"] = self.cfg.lr        # per-voxel steps decay it within a chunk)
        cfg = replace(self.cfg, steps=int(steps), seconds=None, seed=seed)
        train_pointwise(self.model, self.features, self.scribbles, cfg,
                        start=time.perf_counter(), device=self.dev, optimizer=self.opt,
                        cancel=cancel, history=history)
        return history.losses[-1] if history.losses else float("nan")

    def close(self) -> None:
        """Leave the model in eval mode."""
        self.model.eval()
