"""Fine-tuning of a net whose learned part is per-voxel (a ``FeatureNet`` without context layers).

Such a net is the dense form of a patch classifier whose first layer is a fixed filter bank:
every voxel's class depends only on its own precomputed features. So a training step needs no
crops: it draws painted voxels (the same number per painted class) and random voxels of the
whole volume, and runs the learned 1x1x1 layers on their feature vectors. Unpainted voxels
among the random ones are background targets weighted by ``prior_weight`` relative to the
painted term (as ``scribble_loss`` does for crops), so the net says "foreground" only where
the features look like painted foreground. A step costs milliseconds on a CPU, so a round
converges in a few seconds instead of using a few dozen crop steps. The learning rate decays
linearly over a round (:data:`FINAL_LR_FRACTION`), the same in every round.

Shapes: features (F, Z, Y, X) float32, scribbles (Z, Y, X) int (0 = unlabelled, k = class k-1).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .jobs import CancelFn, ProgressFn, check_cancel, report

log = logging.getLogger(__name__)

#: painted voxels drawn per painted class and step; random voxels drawn per step
PAINTED_PER_CLASS = 1024
RANDOM_PER_STEP = 4096
#: steps when the caller gives only a time budget (a round converges well before)
DEFAULT_POINTWISE_STEPS = 400
#: steps made even when the time budget is spent (milliseconds each on a quiet CPU): a round
#: on a machine busy for a moment still learns something
MIN_POINTWISE_STEPS = 40
#: the learning rate decays linearly to this fraction of its start over a round (by steps, or
#: by time when the time budget ends the round first): the weights a round ends with are not
#: the noisy last iterate of a constant-rate walk
FINAL_LR_FRACTION = 0.05


def pointwise_loss(logits: torch.Tensor, target: torch.Tensor, prior_weight: float
                   ) -> torch.Tensor:
    """Class-balanced cross-entropy on painted samples + background prior on unpainted ones.

    Args:
        logits: (N, K) scores.
        target: (N,) int64; 0 = unpainted (background target), k = class k-1.
        prior_weight: weight of the unpainted term relative to the painted one.
    """
    logp = F.log_softmax(logits.float(), dim=1)
    painted = target > 0
    nll = -logp.gather(1, (target - 1).clamp(min=0)[:, None])[:, 0]
    present = torch.unique(target[painted])
    loss = logits.sum() * 0.0
    if present.numel():
        loss = loss + torch.stack([nll[target == k].mean() for k in present.tolist()]).mean()
    if prior_weight > 0 and bool((~painted).any()):
        loss = loss + prior_weight * (-logp[~painted, 0]).mean()
    return loss


class PointwiseSampler:
    """Feature vectors of painted voxels (class-balanced) and of random voxels, per step."""

    def __init__(self, features: np.ndarray, scribbles: np.ndarray, seed: int) -> None:
        self.flat = features.reshape(features.shape[0], -1)
        self.labels = scribbles.reshape(-1)
        idx = np.flatnonzero(self.labels)
        values = self.labels[idx]
        self.classes = [int(c) for c in np.unique(values)]
        self.coords = {c: idx[values == c] for c in self.classes}
        self.rng = np.random.default_rng(seed)

    def sample(self) -> tuple[np.ndarray, np.ndarray]:
        """(N, F) float32 features and (N,) int64 targets (0 = unpainted)."""
        picks = [self.rng.choice(self.coords[c], PAINTED_PER_CLASS) for c in self.classes]
        picks.append(self.rng.integers(0, self.labels.size, RANDOM_PER_STEP))
        idx = np.concatenate(picks)
        return np.ascontiguousarray(self.flat[:, idx].T), self.labels[idx].astype(np.int64)


def train_pointwise(model: nn.Module, features: np.ndarray, scribbles: np.ndarray, *,
                    steps: int | None, seconds: float | None, start: float,
                    prior_weight: float, seed: int, device: torch.device, optimizer: Any,
                    progress: Any = None, cancel: Any = None, history: Any = None) -> int:
    """Train ``model.head_points`` on sampled voxels; returns the number of steps done.

    ``steps`` None = :data:`DEFAULT_POINTWISE_STEPS`; ``seconds`` (counted from ``start``, a
    ``time.perf_counter()`` value) stops earlier, but not before :data:`MIN_POINTWISE_STEPS`. ``optimizer`` is built by the caller over the
    trainable parameters; ``history`` (a ``FinetuneHistory``) gets losses and times.
    """
    sampler = PointwiseSampler(features, scribbles, seed)
    total = int(steps) if steps is not None else DEFAULT_POINTWISE_STEPS
    log.info("per-voxel training: %d painted voxels, %d classes, %d features",
             int((scribbles > 0).sum()), len(sampler.classes), features.shape[0])
    step = 0
    model.train()
    base_lrs = [group["lr"] for group in optimizer.param_groups]
    while step < total:
        elapsed = time.perf_counter() - start
        if (seconds is not None and step >= min(MIN_POINTWISE_STEPS, total)
                and elapsed >= float(seconds)):
            break
        check_cancel(cancel, "fine-tuning")
        done = step / total
        if seconds is not None:
            done = max(done, min(elapsed / float(seconds), 1.0))
        scale = 1.0 - (1.0 - FINAL_LR_FRACTION) * done
        for group, lr in zip(optimizer.param_groups, base_lrs, strict=True):
            group["lr"] = lr * scale
        x, y = sampler.sample()
        logits = model.head_points(torch.from_numpy(x).to(device))
        loss = pointwise_loss(logits, torch.from_numpy(y).to(device), prior_weight)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1
        if history is not None:
            history.losses.append(float(loss.detach()))
            history.times.append(time.perf_counter() - start)
            history.steps = step
        report(progress, step, total)
    model.eval()
    return step


def finetune_pointwise(model: nn.Module, feats: np.ndarray, scr: np.ndarray,
                        spec: dict[str, Any], steps: int | None, seconds: float | None,
                        start: float, *, lr: float, prior_weight: float, seed: int,
                        dev: torch.device, weight_decay: float, progress: ProgressFn | None,
                        cancel: CancelFn | None, history: FinetuneHistory | None
                        ) -> FinetuneHistory:
    """``core.training.finetune`` for a net with a per-voxel head (this module's docstring)."""
    from .postprocess import stroke_seeds
    from .training import FinetuneHistory, _adamw

    history = FinetuneHistory() if history is None else history
    model.to(dev)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = _adamw(params, lr=lr, weight_decay=weight_decay, device=dev)
    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
        torch.manual_seed(seed)
        try:
            train_pointwise(model, feats, scr, steps=steps, seconds=seconds, start=start,
                            prior_weight=prior_weight, seed=seed, device=dev, optimizer=opt,
                            progress=progress, cancel=cancel, history=history)
        finally:
            model.eval()
    model.meta = {**(getattr(model, "meta", None) or {}), "normalization": spec,
                  "stroke_seeds": stroke_seeds(scr, seed)}
    log.info("fine-tuned %d steps in %.1f s, last loss %.4f", history.steps,
             time.perf_counter() - start, history.losses[-1] if history.losses else float("nan"))
    return history
