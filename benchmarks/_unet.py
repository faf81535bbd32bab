"""The small valid U-Net and its training crop, shared by ``bench_finetune.py`` and
``scripts/train_pretrained.py`` (the shipped models and the training-throughput benchmark)."""

from __future__ import annotations

import numpy as np
import torch


def make_net(num_classes: int, spacing: tuple[float, float, float], width: int = 16,
             norm: str = "batch", depth: int = 2) -> torch.nn.Module:
    """Small valid U-Net (depth 2); 1x3x3 convolutions and 1x2x2 pooling at the top level.

    The in-plane top level is what makes training fast on a CPU (about 5x faster than 3x3x3
    at full resolution); the lower level is fully 3D, so isotropic volumes work as well.
    """
    from napari_cnnseg.core.models import build_model, interactive_config

    config = {**interactive_config("unet"), "depth": depth, "base_width": width, "norm": norm}
    return build_model("unet", in_channels=1, num_classes=num_classes, **config)


def crop_for(shape: tuple[int, int, int], spacing: tuple[float, float, float]
             ) -> tuple[int, int, int]:
    """Output crop (Z, Y, X): 40 voxels in-plane; along z 40 / anisotropy, within 4..16."""
    ratio = spacing[0] / max(min(spacing[1], spacing[2]), 1e-6)
    z = int(np.clip(round(40 / max(ratio, 1.0)), 4, 16))
    return (min(z, shape[0]), min(40, shape[1]), min(40, shape[2]))
