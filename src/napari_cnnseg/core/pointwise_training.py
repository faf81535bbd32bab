"""Fine-tuning of a net whose learned part is per-voxel (a ``FeatureNet`` without context layers).

Such a net is the dense form of a patch classifier whose first layer is a fixed filter bank:
every voxel's class depends only on its own precomputed features. So a training step needs no
crops: it draws painted voxels (the same number per painted class) and random voxels of the
whole volume, and runs the learned 1x1x1 layers on their feature vectors. Unpainted voxels
among the random ones are background targets weighted by ``prior_weight`` relative to the
painted term (as ``scribble_loss`` does for crops), so the net says "foreground" only where
the features look like painted foreground. The painted classes are balanced for one structure
on a background and weighted by :data:`CLASS_WEIGHT_POWER` in a tissue map. A step costs
milliseconds on a CPU, so a round converges in a few seconds instead of using a few dozen crop
steps. The learning rate decays
linearly over a round (:data:`FINAL_LR_FRACTION`), the same in every round.

Shapes: features (F, Z, Y, X) float32, scribbles (Z, Y, X) int (0 = unlabelled, k = class k-1).
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .jobs import CancelFn, ProgressFn, check_cancel, report

if TYPE_CHECKING:  # pragma: no cover
    from .trainer import FinetuneHistory, TrainConfig

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
#: with more than two painted classes (a tissue map) each class's painted term is weighted by
#: its painted voxels ** this (0 = class-balanced, 1 = by frequency, as a random forest does):
#: balanced, 41 painted voxels of a 126-voxel class took 44 k voxels of the ITK k-means map
CLASS_WEIGHT_POWER = 0.5


def pointwise_loss(logits: torch.Tensor, target: torch.Tensor, prior_weight: float,
                   class_weights: dict[int, float] | None = None) -> torch.Tensor:
    """Class-balanced cross-entropy on painted samples + background prior on unpainted ones.

    Args:
        logits: (N, K) scores.
        target: (N,) int64; 0 = unpainted (background target), k = class k-1.
        prior_weight: weight of the unpainted term relative to the painted one.
        class_weights: weight of each painted value k's mean term (default: equal).
    """
    logp = F.log_softmax(logits.float(), dim=1)
    painted = target > 0
    nll = -logp.gather(1, (target - 1).clamp(min=0)[:, None])[:, 0]
    present = torch.unique(target[painted])
    loss = logits.sum() * 0.0
    if present.numel():
        ks = present.tolist()
        w = torch.tensor([1.0 if class_weights is None else class_weights[k] for k in ks])
        terms = torch.stack([nll[target == k].mean() for k in ks])
        loss = loss + (terms * w.to(terms)).sum() / w.sum()
    if prior_weight > 0 and bool((~painted).any()):
        loss = loss + prior_weight * (-logp[~painted, 0]).mean()
    return loss


class PointwiseSampler:
    """Feature vectors of painted voxels (class-balanced) and of random voxels, per step.

    ``features``: float (F, Z, Y, X) (float16 is read as float32), or a
    ``feature_net.PooledFeatures`` of a big volume (random voxels come from its pool, the
    painted ones are computed by the slabs holding them)."""

    def __init__(self, features: Any, scribbles: np.ndarray, seed: int) -> None:
        self.labels = scribbles.reshape(-1)
        idx = np.flatnonzero(self.labels)
        values = self.labels[idx]
        self.classes = [int(c) for c in np.unique(values)]
        counts = {c: int((values == c).sum()) for c in self.classes}
        power = CLASS_WEIGHT_POWER if len(self.classes) > 2 else 0.0
        #: painted classes weighted by (painted voxels) ** power: a tissue map's rare painted
        #: class does not take as much of the volume as its common ones
        self.class_weights = {c: float(n) ** power for c, n in counts.items()}
        self.rng = np.random.default_rng(seed)
        self.pooled = not isinstance(features, np.ndarray)
        if self.pooled:
            self.pool, self.pool_idx = features.ensure_pool(), features.pool_idx
            self.painted, self.painted_labels = features.at(idx), values
            self.rows = {c: np.flatnonzero(values == c) for c in self.classes}
        else:
            self.flat = features.reshape(features.shape[0], -1)
            self.coords = {c: idx[values == c] for c in self.classes}

    def sample(self) -> tuple[np.ndarray, np.ndarray]:
        """(N, F) float32 features and (N,) int64 targets (0 = unpainted)."""
        if self.pooled:
            rows = np.concatenate([self.rng.choice(self.rows[c], PAINTED_PER_CLASS)
                                   for c in self.classes])
            rand = self.rng.integers(0, len(self.pool_idx), RANDOM_PER_STEP)
            x = np.concatenate([self.painted[rows], self.pool[rand]])
            y = np.concatenate([self.painted_labels[rows], self.labels[self.pool_idx[rand]]])
            return x, y.astype(np.int64)
        picks = [self.rng.choice(self.coords[c], PAINTED_PER_CLASS) for c in self.classes]
        picks.append(self.rng.integers(0, self.labels.size, RANDOM_PER_STEP))
        idx = np.concatenate(picks)
        return (np.ascontiguousarray(self.flat[:, idx].T, dtype=np.float32),
                self.labels[idx].astype(np.int64))


def train_pointwise(model: nn.Module, features: Any, scribbles: np.ndarray,
                    cfg: TrainConfig, *, start: float, device: torch.device, optimizer: Any,
                    progress: ProgressFn | None = None, cancel: CancelFn | None = None,
                    history: FinetuneHistory | None = None) -> int:
    """Train ``model.head_points`` on sampled voxels; returns the number of steps done.

    From ``cfg`` (a ``core.trainer.TrainConfig``): ``steps`` (None =
    :data:`DEFAULT_POINTWISE_STEPS`), ``seconds`` (counted from ``start``, a
    ``time.perf_counter()`` value; stops earlier, but not before :data:`MIN_POINTWISE_STEPS`),
    ``prior_weight`` and ``seed``. The lr of ``optimizer`` (built by the caller over the
    trainable parameters) decays linearly to :data:`FINAL_LR_FRACTION` of its value over the
    run. ``history`` gets losses and times.
    """
    sampler = PointwiseSampler(features, scribbles, cfg.seed)
    steps, seconds = cfg.steps, cfg.seconds
    total = int(steps) if steps is not None else DEFAULT_POINTWISE_STEPS
    log.debug("per-voxel training: %d painted voxels, %d classes, %d features",
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
        loss = pointwise_loss(logits, torch.from_numpy(y).to(device), cfg.prior_weight,
                              sampler.class_weights)
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


def finetune_pointwise(model: nn.Module, feats: Any, scr: np.ndarray, spec: dict[str, Any],
                       cfg: TrainConfig, *, start: float, device: torch.device,
                       progress: ProgressFn | None = None, cancel: CancelFn | None = None,
                       history: FinetuneHistory | None = None) -> FinetuneHistory:
    """``core.training.finetune`` for a net with a per-voxel head (this module's docstring):
    AdamW at ``cfg.lr`` / ``cfg.weight_decay``, :func:`train_pointwise` under the budget, then
    the model's meta (normalisation, strokes) as every round records it."""
    from .trainer import FinetuneHistory, adamw
    from .training import finish_training

    history = FinetuneHistory() if history is None else history
    model.to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = adamw(params, lr=cfg.lr, weight_decay=cfg.weight_decay, device=device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(cfg.seed)
        try:
            train_pointwise(model, feats, scr, cfg, start=start, device=device, optimizer=opt,
                            progress=progress, cancel=cancel, history=history)
        finally:
            model.eval()
    finish_training(model, scr, spec, cfg.seed)
    log.info("fine-tuned %d steps in %.1f s, last loss %.4f", history.steps,
             time.perf_counter() - start, history.losses[-1] if history.losses else float("nan"))
    return history
