"""Multi-scale feature net: fixed multi-scale filters, then a small learned convolutional head.

The net for a *new* structure learned from a few strokes. Its first layer is fixed
(:class:`~.features.InputFeatures`: Gaussian, gradient magnitude and Laplacian of Gaussian at
in-plane scales up to 16 voxels, what an ilastik-style random forest sees), so nothing has to be
learned before the strokes can be fitted; the learned part is small:

* ``point_layers`` 1x1x1 convolutions (``width`` channels): a per-voxel classifier of the
  features (the dense form of a patch classifier whose first layer is the filter bank);
* ``context_layers`` valid 1x3x3 (thick slices) or 3x3x3 convolutions (``context_width``
  channels): neighbouring voxels' evidence, so regions come out compact;
* a 1x1x1 head to ``num_classes`` logits.

Valid padding throughout: ``output = input - 2 * margin`` with margin = the filters' radius +
the context convolutions', lattice (1, 1, 1), so tiling reproduces a one-pass prediction
exactly. Training (``core.training``) computes the fixed features once per volume and trains
the learned part on crops of them (:meth:`FeatureNet.head`), which makes a step cheap.
Shapes are (Z, Y, X).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import InputError
from .base import SegNet, check_choice, check_int, conv_block
from .features import InputFeatures

log = logging.getLogger(__name__)

DEFAULT_SIGMAS = [[s, s, s] for s in (1.0, 2.0, 4.0, 8.0, 16.0)]
#: z slices per chunk when the fixed features of a whole volume are computed
FEATURE_CHUNK = 8


class FeatureNet(SegNet):
    """Fixed multi-scale features + learned 1x1x1 and context convolutions (valid padding).

    Args:
        in_channels: image channels C.
        num_classes: output classes K.
        sigmas: per-axis sigmas ``[[sz, sy, sx], ...]`` (voxels) of the fixed features.
        width: channels of the per-voxel (1x1x1) layers.
        point_layers: number of 1x1x1 layers (>= 1).
        context_width: channels of the context convolutions.
        context_layers: number of valid context convolutions (>= 0).
        context_kernel: "inplane" (1x3x3, thick slices) or "3d" (3x3x3).
        norm: "batch" | "none" (both tile exactly).
    """

    arch_name = "feature_net"
    padding = "valid"

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 2,
        sigmas: list[list[float]] | None = None,
        width: int = 32,
        point_layers: int = 2,
        context_width: int = 16,
        context_layers: int = 2,
        context_kernel: str = "inplane",
        norm: str = "batch",
    ) -> None:
        super().__init__()
        check_int("in_channels", in_channels, 1)
        check_int("num_classes", num_classes, 1)
        check_int("width", width, 1)
        check_int("point_layers", point_layers, 1)
        check_int("context_width", context_width, 1)
        check_int("context_layers", context_layers, 0)
        check_choice("context_kernel", context_kernel, ("inplane", "3d"))
        check_choice("norm", norm, ("batch", "none"))
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.features = InputFeatures(in_channels, sigmas or DEFAULT_SIGMAS, padding="valid")
        self._config = dict(
            in_channels=in_channels, num_classes=num_classes,
            sigmas=[list(s) for s in self.features.sigmas], width=width,
            point_layers=point_layers, context_width=context_width,
            context_layers=context_layers, context_kernel=context_kernel, norm=norm,
        )
        kernel = (1, 3, 3) if context_kernel == "inplane" else (3, 3, 3)
        layers: list[nn.Module] = []
        ch = self.features.out_channels
        for _ in range(point_layers):
            layers.append(conv_block(ch, width, (1, 1, 1), same=False, norm=norm))
            ch = width
        for _ in range(context_layers):
            layers.append(conv_block(ch, context_width, kernel, same=False, norm=norm))
            ch = context_width
        layers.append(nn.Conv3d(ch, num_classes, 1))
        self.learned = nn.Sequential(*layers)
        #: voxels the learned part loses per side (z, y, x)
        self.head_margin = tuple((k - 1) // 2 * context_layers for k in kernel)
        total = [f + h for f, h in zip(self.features.margin, self.head_margin, strict=True)]
        self._rules = tuple(self._rule(m) for m in total)  # type: ignore[assignment]
        self.lattice = (1, 1, 1)

    @staticmethod
    def _rule(margin: int):
        def rule(size: int) -> int | None:
            out = size - 2 * margin
            return out if out >= 1 else None
        return rule

    def describe(self) -> str:
        return "feature_net (valid padding)"

    def head(self, feats: torch.Tensor) -> torch.Tensor:
        """Logits from precomputed features (N, F, Z, Y, X) -> (N, K, Z - 2hz, Y - 2hy, X - 2hx)."""
        return self.learned(feats)

    def head_points(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (V, K) of V feature vectors (V, F): the per-voxel head (no context layers) as
        matrix products, with the same weights (a 1x1x1 Conv3d over V separate voxels is
        several times slower on a CPU)."""
        import torch.nn.functional as F

        if not is_per_voxel(self):
            raise InputError("head_points needs a per-voxel head (context_layers=0)")
        for mod in self.learned.modules():
            if isinstance(mod, nn.Conv3d):
                x = F.linear(x, mod.weight.reshape(mod.out_channels, -1), mod.bias)
            elif isinstance(mod, nn.BatchNorm3d):
                x = F.batch_norm(x, mod.running_mean, mod.running_var, mod.weight, mod.bias,
                                 mod.training, mod.momentum or 0.1, mod.eps)
            elif isinstance(mod, nn.ReLU):
                x = torch.relu(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, Z, Y, X) -> logits (N, K, Z - 2mz, Y - 2my, X - 2mx)."""
        self.check_input(x)
        return self.learned(self.features(x))

    def get_config(self) -> dict[str, Any]:
        return dict(self._config)


def has_fixed_features(model: nn.Module) -> bool:
    """A ``FeatureNet``: its fixed filters are computed once per volume for training."""
    return hasattr(model, "head_margin") and hasattr(model, "head_points")


def is_per_voxel(model: nn.Module) -> bool:
    """A ``FeatureNet`` without context layers: each voxel's class from its own features."""
    return has_fixed_features(model) and not any(model.head_margin)


def volume_features(model: FeatureNet, image: np.ndarray, device: torch.device | str = "cpu"
                    ) -> np.ndarray:
    """The fixed features of a whole normalised volume, as inference sees them.

    Args:
        model: a :class:`FeatureNet`.
        image: (C, Z, Y, X) float32, normalised as the net expects.
        device: unused (the filters run on the CPU with scipy: a separable FIR filter costs
            O(taps) per voxel there, while a 1-channel torch convolution with a 97-tap kernel
            is ~50x slower); kept for a uniform signature.

    Returns:
        float32 (F, Z, Y, X): the features of every voxel of the mirror-padded volume (the
        padding the tiled inference uses), equal to the network's own filter layer to float
        rounding, computed in slabs of ``FEATURE_CHUNK`` slices on two threads.
    """
    from concurrent.futures import ThreadPoolExecutor

    from ..tiling import read_region

    feats = model.features
    mz, my, mx = feats.margin
    c, z, y, x = image.shape
    out = np.empty((feats.out_channels, z, y, x), np.float32)

    def slab(z0: int) -> None:
        n = min(FEATURE_CHUNK, z - z0)
        block = read_region(image, (z0 - mz, -my, -mx), (n + 2 * mz, y + 2 * my, x + 2 * mx))
        full = _numpy_features(feats, np.asarray(block, np.float32))
        out[:, z0:z0 + n] = full[:, mz:mz + n, my:my + y, mx:mx + x]

    with ThreadPoolExecutor(2) as pool:
        list(pool.map(slab, range(0, z, FEATURE_CHUNK)))
    return out


def _numpy_features(feats: InputFeatures, block: np.ndarray) -> np.ndarray:
    """``InputFeatures`` (same padding) of a (C, Z, Y, X) block with scipy's FIR filters."""
    from scipy import ndimage

    from .features import MIN_SIGMA

    chans = []
    for ch in block:
        chans.append(ch)
        for i, trip in enumerate(feats.sigmas):
            g = ch.astype(np.float32)
            for axis, sig in enumerate(trip):
                k = getattr(feats, f"k{i}_{axis}", None)
                if k is not None:
                    g = ndimage.correlate1d(g, k.numpy(), axis=axis, mode="nearest")
            sq = np.zeros_like(g)
            lap = np.zeros_like(g)
            for axis in range(3):
                if trip[axis] < MIN_SIGMA or g.shape[axis] < 2:
                    continue
                p = np.pad(g, [(1, 1) if a == axis else (0, 0) for a in range(3)], mode="edge")
                lo = np.take(p, range(0, g.shape[axis]), axis=axis)
                hi = np.take(p, range(2, g.shape[axis] + 2), axis=axis)
                sq += (0.5 * (hi - lo)) ** 2
                lap += hi + lo - 2 * g
            s = max(trip)
            chans += [g, s * np.sqrt(sq + 1e-12), s * s * lap]
    return np.stack(chans).astype(np.float32, copy=False)


#: the fixed features of the last volume seen (training rounds and refreshes reuse them)
_CACHE: dict[tuple, np.ndarray] = {}


def cached_features(model: FeatureNet, raw: Any, spec: dict[str, Any],
                    device: torch.device | str = "cpu", norm: np.ndarray | None = None
                    ) -> np.ndarray:
    """:func:`volume_features` of ``raw`` normalised by ``spec``, cached for the last volume.

    The key is the image (shape, dtype, a checksum of a strided sample), the normalisation and
    the filters, so the next round of fine-tuning and the whole-volume refresh after it reuse
    the features instead of filtering the volume again.

    Args:
        raw: the image, (Z, Y, X) or (C, Z, Y, X), raw intensities.
        spec: normalisation spec (``core.normalization``).
        norm: the normalised (C, Z, Y, X) float32 image if the caller has it already.
    """
    import hashlib
    import json

    from ..normalization import apply_stats, compute_stats

    arr = np.asarray(raw)
    sample = np.ascontiguousarray(arr.reshape(-1)[:: max(1, arr.size // 65536)])
    key = (arr.shape, arr.dtype.str, hashlib.sha1(sample.tobytes()).hexdigest(),
           json.dumps(spec, sort_keys=True, default=str), json.dumps(model.features.sigmas))
    if key not in _CACHE:
        _CACHE.clear()  # one volume at a time: the features are large
        if norm is None:
            img = arr[None] if arr.ndim == 3 else arr
            norm = apply_stats(img, compute_stats(img, spec))
        t0 = time.perf_counter()
        _CACHE[key] = volume_features(model, np.asarray(norm, np.float32), device)
        log.info("fixed features of a %s volume computed in %.1f s", "x".join(map(str, arr.shape)),
                 time.perf_counter() - t0)
    return _CACHE[key]


def predict_features(model: FeatureNet, feats: np.ndarray, out: np.ndarray | None = None,
                     device: torch.device | str = "cpu") -> np.ndarray:
    """Softmax probabilities (K, Z, Y, X) of a per-voxel ``model`` from its volume features."""
    if not is_per_voxel(model):
        raise ValueError("predict_features needs a per-voxel head (context_layers=0)")
    k = int(model.num_classes)
    shape = feats.shape[1:]
    if out is None:
        out = np.empty((k, *shape), np.float32)
    model.eval()
    with torch.inference_mode():
        for z0 in range(0, shape[0], FEATURE_CHUNK):
            block = feats[:, z0:z0 + FEATURE_CHUNK]
            points = torch.from_numpy(np.ascontiguousarray(block.reshape(block.shape[0], -1).T))
            probs = torch.softmax(model.head_points(points.to(device)).float(), 1)
            out[:, z0:z0 + FEATURE_CHUNK] = probs.T.reshape(k, *block.shape[1:]).cpu().numpy()
    return out
