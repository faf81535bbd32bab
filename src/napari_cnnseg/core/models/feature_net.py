"""Multi-scale feature net: fixed multi-scale filters, then a small learned convolutional head.

The net for a *new* structure learned from a few strokes. Its first layer is fixed
(:class:`~.features.InputFeatures`: Gaussian, gradient magnitude and Laplacian of Gaussian at
in-plane scales up to 16 voxels, what an ilastik-style random forest sees), so nothing has to be
learned before the strokes can be fitted; the learned part is small:

* ``point_layers`` 1x1x1 convolutions (``width`` channels): a per-voxel classifier of the
  features (the dense form of a patch classifier whose first layer is the filter bank);
* ``context_layers`` valid 1x3x3 (thick slices) or 3x3x3 convolutions (``context_width``
  channels): neighbouring voxels' evidence, so regions come out compact;
* a 1x1x1 head to ``num_classes`` logits; ``heads`` > 1: that many independent per-voxel heads
  (grouped 1x1x1 layers) with their logits averaged, an ensemble steadier from round to round.

Shapes are (Z, Y, X). Valid padding: ``output = input - 2 * margin`` (the filters' radius + the
context convolutions'), lattice (1, 1, 1), so tiling reproduces a one-pass prediction exactly.
Training (``core.training``) computes the fixed features once per volume and trains only the
learned part on them (:meth:`FeatureNet.head`, :meth:`FeatureNet.head_points`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import InputError
from .base import SegNet, check_choice, check_int, conv_block, make_norm
from .features import InputFeatures

log = logging.getLogger(__name__)

DEFAULT_SIGMAS = [[s, s, s] for s in (1.0, 2.0, 4.0, 8.0, 16.0)]
#: z slices per chunk when the fixed features of a whole volume are computed
FEATURE_CHUNK = 8
#: voxels per call of the per-voxel head (a 512x512 slab at once held +1.3 GB of activations)
HEAD_POINTS = 1 << 18
#: the fixed features of a volume are cached whole (float16) up to this size; beyond, pooled
FULL_CACHE_BYTES = 1 << 30
#: random voxels whose features a :class:`PooledFeatures` keeps for training
POOL_VOXELS = 1 << 20


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
        heads: independent per-voxel heads averaged (needs ``context_layers=0`` when > 1).
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
        heads: int = 1,
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
        check_int("heads", heads, 1)
        if heads > 1 and context_layers:
            raise InputError("heads > 1 needs a per-voxel net (context_layers=0)")
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.features = InputFeatures(in_channels, sigmas or DEFAULT_SIGMAS, padding="valid")
        self._config = dict(
            in_channels=in_channels, num_classes=num_classes,
            sigmas=[list(s) for s in self.features.sigmas], width=width,
            point_layers=point_layers, context_width=context_width,
            context_layers=context_layers, context_kernel=context_kernel, norm=norm,
            heads=heads,
        )
        kernel = (1, 3, 3) if context_kernel == "inplane" else (3, 3, 3)
        layers: list[nn.Module] = []
        ch = self.features.out_channels
        for i in range(point_layers):
            layers.append(_grouped_block(ch, width * heads, heads if i else 1, norm))
            ch = width * heads
        for _ in range(context_layers):
            layers.append(conv_block(ch, context_width, kernel, same=False, norm=norm))
            ch = context_width
        layers.append(nn.Conv3d(ch, num_classes * heads, 1, groups=heads))
        if heads > 1:
            layers.append(MeanOfHeads(heads))
        self.learned = nn.Sequential(*layers)
        #: voxels the learned part loses per side (z, y, x)
        self.head_margin = tuple((k - 1) // 2 * context_layers for k in kernel)
        total = [f + h for f, h in zip(self.features.margin, self.head_margin, strict=True)]
        self._rules = tuple(self._rule(m) for m in total)  # type: ignore[assignment]
        self.lattice = (1, 1, 1)

    @staticmethod
    def _rule(margin: int) -> Callable[[int], int | None]:
        return lambda size: size - 2 * margin if size - 2 * margin >= 1 else None

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
            if isinstance(mod, nn.Conv3d):  # grouped: one block-diagonal product (fastest)
                w = mod.weight.reshape(mod.groups, mod.out_channels // mod.groups, -1)
                x = F.linear(x, torch.block_diag(*w), mod.bias)
            elif isinstance(mod, nn.BatchNorm3d):
                x = F.batch_norm(x, mod.running_mean, mod.running_var, mod.weight, mod.bias,
                                 mod.training, mod.momentum or 0.1, mod.eps)
            elif isinstance(mod, (nn.ReLU, MeanOfHeads)):
                x = mod(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, Z, Y, X) -> logits (N, K, Z - 2mz, Y - 2my, X - 2mx)."""
        self.check_input(x)
        return self.learned(self.features(x))

    def get_config(self) -> dict[str, Any]:
        return dict(self._config)


class MeanOfHeads(nn.Module):
    """(N, H*K, ...) -> (N, K, ...): the mean of H heads' logits."""
    def __init__(self, heads: int) -> None:
        super().__init__()
        self.heads = heads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(1, (self.heads, -1)).mean(1)


def _grouped_block(in_ch: int, out_ch: int, groups: int, norm: str) -> nn.Sequential:
    """``conv_block`` 1x1x1 in ``groups`` independent groups (the same layout when 1)."""
    conv = nn.Conv3d(in_ch, out_ch, 1, groups=groups, bias=(norm == "none"))
    return nn.Sequential(conv, make_norm(norm, out_ch), nn.ReLU(inplace=True))


def has_fixed_features(model: nn.Module) -> bool:
    """A ``FeatureNet``: its fixed filters are computed once per volume for training."""
    return hasattr(model, "head_margin") and hasattr(model, "head_points")


def is_per_voxel(model: nn.Module) -> bool:
    """A ``FeatureNet`` without context layers: each voxel's class from its own features."""
    return has_fixed_features(model) and not any(model.head_margin)


def _band_matrix(kernel: np.ndarray, n_out: int) -> np.ndarray:
    """(n_out, n_out + 2r) float32 matrix whose row j is ``kernel`` at columns j .. j + 2r."""
    r = (kernel.size - 1) // 2
    m = np.zeros((n_out, n_out + 2 * r), np.float32)
    for j in range(n_out):
        m[j, j:j + 2 * r + 1] = kernel
    return m


def _slab_features(feats: InputFeatures, block: np.ndarray, inner: tuple[int, int, int],
                   out: np.ndarray) -> None:
    """The filter bank at the centre ``inner`` (n, y, x) of a normalised block.

    Args:
        feats: the net's :class:`InputFeatures`.
        block: (C, n + 2mz, y + 2my, x + 2mx) float32, mirror-padded by the filters' margin.
        inner: (n, y, x) voxels wanted (the block minus its margin).
        out: (F, n, y, x) array of any float dtype, filled in place.

    The same values as filtering the whole block and cropping (to float rounding), but only
    the voxels the crop needs are filtered: along z a banded matrix product gives only the
    n + 2 slices the derivatives need (not all n + 2mz), in-plane ``correlate1d`` runs on those.
    """
    from scipy import ndimage

    from .features import MIN_SIGMA

    m, size = feats.margin, inner
    f = 0
    for ch in block:
        out[f] = ch[m[0]:m[0] + size[0], m[1]:m[1] + size[1], m[2]:m[2] + size[2]]
        f += 1
        for i, trip in enumerate(feats.sigmas):
            ks = [getattr(feats, f"k{i}_{a}", None) for a in range(3)]
            r = [0 if k is None else (k.numel() - 1) // 2 for k in ks]
            d = [1 if trip[a] >= MIN_SIGMA else 0 for a in range(3)]
            box = tuple(slice(m[a] - d[a] - r[a], m[a] + size[a] + d[a] + r[a]) for a in range(3))
            g = ch[box]
            if ks[0] is not None:
                nz = size[0] + 2 * d[0]
                g = _band_matrix(ks[0].numpy(), nz) @ np.ascontiguousarray(g).reshape(g.shape[0], -1)
                g = g.reshape(nz, *ch[box].shape[1:])
            else:
                g = np.array(g, np.float32)
            for a in (1, 2):
                if ks[a] is not None:
                    g = ndimage.correlate1d(g, ks[a].numpy(), axis=a, mode="nearest")
                    g = g[(slice(None),) * a + (slice(r[a], g.shape[a] - r[a]),)]
            centre = g[tuple(slice(d[a], d[a] + size[a]) for a in range(3))]
            sq = np.zeros(size, np.float32)
            lap = np.zeros(size, np.float32)
            for a in range(3):
                if not d[a]:
                    continue
                hi = g[tuple(slice(d[b] + (b == a), d[b] + size[b] + (b == a)) for b in range(3))]
                lo = g[tuple(slice(d[b] - (b == a), d[b] + size[b] - (b == a)) for b in range(3))]
                sq += (0.5 * (hi - lo)) ** 2
                lap += hi + lo - 2 * centre
            s = max(trip)
            out[f], out[f + 1], out[f + 2] = centre, s * np.sqrt(sq + 1e-12), s * s * lap
            f += 3


def feature_slabs(model: FeatureNet, raw: Any, spec: dict[str, Any],
                  starts: list[int] | None = None, threads: int = 2):
    """Yield ``(z0, float32 (F, n, Y, X))``: the fixed features of z slabs of ``raw``.

    ``raw`` (Z, Y, X) or (C, Z, Y, X) is normalised by ``spec`` slab by slab (no float copy of
    the whole volume); slabs of :data:`FEATURE_CHUNK` slices start at ``starts`` (default: all,
    in order), computed on ``threads`` threads with at most ``threads`` slabs in memory.
    """
    from concurrent.futures import ThreadPoolExecutor

    from ..normalization import apply_stats, compute_stats
    from ..tiling import read_region

    arr = np.asarray(raw)
    img = arr[None] if arr.ndim == 3 else arr
    stats = compute_stats(img, spec)
    feats = model.features
    mz, my, mx = feats.margin
    z, y, x = img.shape[1:]

    def one(z0: int) -> tuple[int, np.ndarray]:
        n = min(FEATURE_CHUNK, z - z0)
        block = apply_stats(read_region(img, (z0 - mz, -my, -mx), (n + 2 * mz, y + 2 * my, x + 2 * mx)), stats)
        if not np.isfinite(block).all():
            np.nan_to_num(block, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
        out = np.empty((feats.out_channels, n, y, x), np.float32)
        _slab_features(feats, block, (n, y, x), out)
        return z0, out

    todo = list(range(0, z, FEATURE_CHUNK)) if starts is None else list(starts)
    with ThreadPoolExecutor(threads) as pool:
        pending = []
        for z0 in todo:
            pending.append(pool.submit(one, z0))
            if len(pending) >= threads:
                yield pending.pop(0).result()
        for job in pending:
            yield job.result()


def volume_features(model: FeatureNet, raw: Any, spec: dict[str, Any],
                    dtype: Any = np.float16) -> np.ndarray:
    """The fixed features (F, Z, Y, X) of a whole volume, as inference sees them (the volume
    mirror-padded as tiles are), in a preallocated array of ``dtype``: float16 by default,
    2 bytes per value (a relative rounding of 2^-11, probabilities move by ~1e-5)."""
    arr = np.asarray(raw)
    out = np.empty((model.features.out_channels, *arr.shape[-3:]), dtype)
    for z0, block in feature_slabs(model, raw, spec):
        out[:, z0:z0 + block.shape[1]] = block
    return out


class PooledFeatures:
    """The fixed features of a volume too big to cache whole (:data:`FULL_CACHE_BYTES`).

    Never held whole: a fixed random pool of :data:`POOL_VOXELS` voxels (per-voxel training's
    "random voxels"; filled by the first pass over the volume), the painted voxels (computed by
    the slabs holding them, remembered), and whole-volume prediction streamed slab by slab
    (:meth:`stream`). Shapes: ``shape`` = (F, Z, Y, X).
    """

    def __init__(self, model: FeatureNet, raw: Any, spec: dict[str, Any]) -> None:
        self.model, self.raw, self.spec = model, raw, spec
        self.shape = (model.features.out_channels, *np.asarray(raw).shape[-3:])
        n = int(np.prod(self.shape[1:]))
        rng = np.random.default_rng(12345)
        self.pool_idx = np.sort(rng.choice(n, min(POOL_VOXELS, n), replace=False))
        self.pool: np.ndarray | None = None  # (P, F) float32
        self._known = (np.zeros(0, np.int64), np.zeros((0, self.shape[0]), np.float32))

    def stream(self, starts: list[int] | None = None):
        """Yield ``(z0, float32 (F, n, Y, X))`` slabs; fills the pool on a whole pass."""
        fill = self.pool is None and starts is None
        pool = np.empty((len(self.pool_idx), self.shape[0]), np.float32) if fill else None
        plane = self.shape[2] * self.shape[3]
        for z0, block in feature_slabs(self.model, self.raw, self.spec, starts):
            if pool is not None:
                a = z0 * plane
                lo, hi = np.searchsorted(self.pool_idx, [a, a + block.shape[1] * plane])
                pool[lo:hi] = block.reshape(block.shape[0], -1)[:, self.pool_idx[lo:hi] - a].T
            yield z0, block
        if pool is not None:
            self.pool = pool

    def ensure_pool(self) -> np.ndarray:
        """(P, F) features of the random pool (one pass over the volume the first time)."""
        if self.pool is None:
            for _ in self.stream():
                pass
        return self.pool  # type: ignore[return-value]

    def at(self, flat_idx: np.ndarray) -> np.ndarray:
        """(V, F) float32 features of the voxels ``flat_idx`` (flat indices into (Z, Y, X))."""
        idx, rows = self._known
        missing = np.setdiff1d(flat_idx, idx)
        if missing.size:
            plane = self.shape[2] * self.shape[3]
            starts = np.unique(missing // plane // FEATURE_CHUNK * FEATURE_CHUNK).tolist()
            new = np.empty((missing.size, self.shape[0]), np.float32)
            for z0, block in self.stream(starts):
                a = z0 * plane
                lo, hi = np.searchsorted(missing, [a, a + block.shape[1] * plane])
                new[lo:hi] = block.reshape(block.shape[0], -1)[:, missing[lo:hi] - a].T
            idx, rows = np.concatenate([idx, missing]), np.concatenate([rows, new])
            order = np.argsort(idx)
            self._known = idx, rows = idx[order], rows[order]
        return rows[np.searchsorted(idx, flat_idx)]


#: the fixed features of the last volume seen (training rounds and refreshes reuse them)
_CACHE: dict[tuple, Any] = {}


def _cache_key(model: FeatureNet, arr: np.ndarray, spec: dict[str, Any]) -> tuple:
    import hashlib
    import json

    sample = np.ascontiguousarray(arr.reshape(-1)[:: max(1, arr.size // 65536)])
    return (arr.shape, arr.dtype.str, hashlib.sha1(sample.tobytes()).hexdigest(),
            json.dumps(spec, sort_keys=True, default=str), json.dumps(model.features.sigmas))


def features_if_cached(model: FeatureNet, raw: Any, spec: dict[str, Any]
                       ) -> np.ndarray | PooledFeatures | None:
    """The cached fixed features of ``raw`` (see :func:`cached_features`), or None; computes
    nothing (a one-slice preview should not filter the whole volume)."""
    return _CACHE.get(_cache_key(model, np.asarray(raw), spec))


def cached_features(model: FeatureNet, raw: Any, spec: dict[str, Any],
                    device: torch.device | str = "cpu") -> np.ndarray | PooledFeatures:
    """The fixed features of ``raw`` normalised by ``spec``, cached for the last volume.

    The key is the image (shape, dtype, a checksum of a strided sample), the normalisation and
    the filters, so the next round of fine-tuning and the whole-volume refresh after it reuse
    the features instead of filtering the volume again. Up to :data:`FULL_CACHE_BYTES` they are
    one float16 (F, Z, Y, X) array (:func:`volume_features`); beyond, for a per-voxel net, a
    :class:`PooledFeatures` (a pool of voxels for training, prediction streamed slab by slab).

    Args:
        raw: the image, (Z, Y, X) or (C, Z, Y, X), raw intensities.
        spec: normalisation spec (``core.normalization``).
        device: unused (the filters run on the CPU); kept for a uniform signature.
    """
    arr = np.asarray(raw)
    key = _cache_key(model, arr, spec)
    if key not in _CACHE:
        _CACHE.clear()  # one volume at a time: the features are large
        t0 = time.perf_counter()
        nbytes = 2 * model.features.out_channels * int(np.prod(arr.shape[-3:]))
        if nbytes <= FULL_CACHE_BYTES or not is_per_voxel(model):  # crops need them whole
            _CACHE[key] = volume_features(model, arr, spec)
        else:
            _CACHE[key] = PooledFeatures(model, arr, spec)
        log.info("fixed features of a %s volume: %s in %.1f s", "x".join(map(str, arr.shape)),
                 type(_CACHE[key]).__name__, time.perf_counter() - t0)
    return _CACHE[key]


def predict_features(model: FeatureNet, feats: np.ndarray | PooledFeatures,
                     out: np.ndarray | None = None, device: torch.device | str = "cpu", *,
                     roi: tuple[slice, slice, slice] | None = None,
                     cancel: Callable[[], bool] | None = None) -> np.ndarray:
    """Softmax probabilities (K, Z, Y, X) of a per-voxel ``model`` from its volume features
    (a float (F, Z, Y, X) array, or a :class:`PooledFeatures` streamed slab by slab).

    Args:
        out: (K, *region) array to fill (float32 or float16); a new float32 one if None.
        roi: three slices (z, y, x, step 1) of an (F, Z, Y, X) array: only that box (e.g. the
            visible slice while training: milliseconds instead of filtering a slab again).
        cancel: polled between slabs of :data:`FEATURE_CHUNK` slices; raises ``Cancelled``.
    """
    from ..jobs import check_cancel

    if not is_per_voxel(model):
        raise ValueError("predict_features needs a per-voxel head (context_layers=0)")
    k = int(model.num_classes)
    if roi is None:
        roi = tuple(slice(0, n) for n in feats.shape[1:])  # type: ignore[assignment]
    elif isinstance(feats, PooledFeatures):
        raise ValueError("a box of a PooledFeatures volume is predicted by the tiled path")
    z0, z1 = roi[0].start, roi[0].stop
    if out is None:
        out = np.empty((k, *(s.stop - s.start for s in roi)), np.float32)
    model.eval()
    if isinstance(feats, PooledFeatures):
        slabs = feats.stream()
    else:
        slabs = ((a, feats[:, a:min(a + FEATURE_CHUNK, z1), roi[1], roi[2]])
                 for a in range(z0, z1, FEATURE_CHUNK))
    with torch.inference_mode():
        for a, block in slabs:
            check_cancel(cancel, "prediction")
            cols = block.reshape(block.shape[0], -1)  # (F, V); points transposed chunk by chunk
            probs = np.empty((k, cols.shape[1]), np.float32)
            for b in range(0, cols.shape[1], HEAD_POINTS):
                chunk = np.ascontiguousarray(cols[:, b:b + HEAD_POINTS].T, dtype=np.float32)
                x = torch.from_numpy(chunk).to(device)
                probs[:, b:b + HEAD_POINTS] = torch.softmax(model.head_points(x).float(), 1).T.cpu().numpy()
            out[:, a - z0:a - z0 + block.shape[1]] = probs.reshape(k, *block.shape[1:])
    return out
