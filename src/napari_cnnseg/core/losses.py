"""Losses of sparse-scribble fine-tuning (see ``core.training`` for how they are used)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .recipes import DEFAULT_PRIOR_WEIGHT


def scribble_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    prior_weight: float = DEFAULT_PRIOR_WEIGHT,
    dice_weight: float = 0.0,
    prior_target: torch.Tensor | None = None,
    voxel_prior: bool = False,
) -> torch.Tensor:
    """Loss of a batch of predictions against sparse scribbles.

    Args:
        logits: (N, K, Z, Y, X) class scores.
        target: (N, Z, Y, X) int64; 0 = unpainted, k = class k-1.
        prior_weight: weight of the background prior on unpainted voxels relative to the
            painted cross-entropy (0 = unpainted voxels do not count at all).
        dice_weight: weight of a soft Dice term over painted voxels (0 = off).
        prior_target: (N, K, Z, Y, X) class probabilities the unpainted voxels are pulled
            towards (the "self" prior: the model's own predictions before fine-tuning);
            None = background (class 0).
        voxel_prior: instead of class-balanced terms, one voxel-weighted cross-entropy: painted
            voxels weigh 1, unpainted ones weigh ``prior_weight`` with class 0 as target.

    Returns:
        Scalar loss (float32). Zero (with a gradient) when nothing counts.
    """
    logits = logits.float()
    painted = target > 0
    cls = (target - 1).clamp(min=0)
    logp = F.log_softmax(logits, dim=1)
    nll = -logp.gather(1, cls.unsqueeze(1)).squeeze(1)  # (N, Z, Y, X)
    loss = logits.sum() * 0.0
    present = torch.unique(target[painted])
    if present.numel():
        per_class = [nll[target == k].mean() for k in present.tolist()]
        loss = loss + torch.stack(per_class).mean()
        if dice_weight > 0:
            k = logits.shape[1]
            probs = logp.exp().movedim(1, -1)[painted]  # (P, K)
            onehot = F.one_hot(cls[painted], k).to(probs.dtype)
            inter = (probs * onehot).sum(0)
            denom = probs.sum(0) + onehot.sum(0)
            used = onehot.sum(0) > 0
            dice = (2 * inter[used] + 1e-5) / (denom[used] + 1e-5)
            loss = loss + dice_weight * (1 - dice.mean())
    if prior_weight > 0 and prior_target is None and voxel_prior:
        # every voxel counts once: painted ones with weight 1, unpainted ones as background
        # with weight ``prior_weight`` (so the prior's pull shrinks as more is painted)
        w = torch.where(painted, 1.0, float(prior_weight))
        vox_nll = torch.where(painted, nll, -logp[:, 0])
        return (w * vox_nll).sum() / w.sum().clamp(min=1e-6)
    if prior_weight > 0:
        unpainted = ~painted
        if bool(unpainted.any()):
            if prior_target is None:
                prior_nll = -logp[:, 0]
            else:
                prior_nll = -(prior_target.float() * logp).sum(1)
            loss = loss + prior_weight * prior_nll[unpainted].mean()
    return loss
