"""The fine-tuning recipe: which settings a round uses, by where the net started.

``recommended_settings(new_task)`` is what the Fine-tune dock, ``cnnseg finetune``, the 3D
Slicer module and ``benchmarks/bench_scribbles.py`` use, so what users get is what the benchmark
measured (docs/training.md); explicit settings override it. ``recommended_crop`` gives the
training crop for an image's spacing.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from torch import nn

#: default weight of the background prior on unpainted voxels, relative to the painted term
DEFAULT_PRIOR_WEIGHT = 0.3
#: default output crop (Z, Y, X) of a training sample (clipped to the image size)
DEFAULT_CROP = (16, 48, 48)
DEFAULT_STEPS = 100
#: what unpainted voxels are pulled towards (see ``finetune``)
PRIORS = ("background", "self", "voxel")
#: the recipe measured in docs/training.md, by starting point. A net that started untrained for
#: this task (``new_task`` in its meta: the dock's "New ...", ``cnnseg finetune`` without -m, and
#: checkpoints saved from those) keeps the same recipe in every round: unpainted voxels are
#: background targets (weight 0.3 relative to the painted term), not the net's own earlier
#: predictions, so a round-1 mistake nobody painted over is not locked in. A trained model
#: (shipped, or a checkpoint of one) is adapted gently and keeps its own predictions where
#: nobody painted (the background prior cost 0.14 Dice there).
NEW_TASK_SETTINGS: dict[str, Any] = {"lr": 2e-3, "prior": "background",
                                     "prior_weight": DEFAULT_PRIOR_WEIGHT}
#: a new per-voxel ``feature_net``: its fixed filters already describe the tissue, and every
#: unpainted voxel sampled as background would pull a large structure's unpainted part down
#: (brain mask: 25 k of 128 k voxels kept at weight 0.3), so the prior is only a tie-breaker;
#: look-alikes elsewhere are removed by the stroke-connected components (``core.postprocess``)
NEW_FEATURE_NET_SETTINGS: dict[str, Any] = {"lr": 2e-3, "prior": "background",
                                            "prior_weight": 0.01}
TRAINED_NET_SETTINGS: dict[str, Any] = {"lr": 5e-4, "prior": "self",
                                        "prior_weight": DEFAULT_PRIOR_WEIGHT}


def started_new(model: nn.Module) -> bool:
    """True when ``model`` started untrained for its task (``meta["new_task"]``)."""
    return bool((getattr(model, "meta", None) or {}).get("new_task"))


def recommended_settings(new_task: bool, model: nn.Module | None = None) -> dict[str, Any]:
    """``finetune`` settings (lr, prior, prior_weight) for a net that started untrained for this
    task (``new_task``, every round; ``model`` tells a per-voxel ``feature_net``) or a trained
    one.

    The GUI, ``cnnseg finetune``, the Slicer module and ``benchmarks/bench_scribbles.py`` all use
    these, so what users get is what the benchmark measured; explicit settings override them.
    """
    if not new_task:
        return dict(TRAINED_NET_SETTINGS)
    from .models.feature_net import is_per_voxel

    per_voxel = model is not None and is_per_voxel(model)
    return dict(NEW_FEATURE_NET_SETTINGS if per_voxel else NEW_TASK_SETTINGS)


def recommended_crop(shape: tuple[int, int, int], spacing: tuple[float, float, float] | None
                     ) -> tuple[int, int, int]:
    """Output crop (Z, Y, X) of a training sample for an image of ``shape`` and ``spacing`` (mm).

    64 voxels in-plane; along z the same physical extent (64 / anisotropy), within 4..16 voxels;
    clipped to the image. Without a spacing: ``DEFAULT_CROP`` clipped to the image.
    """
    if spacing is None:
        return tuple(min(c, s) for c, s in zip(DEFAULT_CROP, shape, strict=True))  # type: ignore[return-value]
    sp = [float(v) for v in spacing]
    ratio = sp[0] / max(min(sp[1], sp[2]), 1e-9)
    z = int(np.clip(round(64 / max(ratio, 1.0)), 4, 16))
    return (min(z, int(shape[0])), min(64, int(shape[1])), min(64, int(shape[2])))
