"""Tiled dense prediction: class probabilities of a 3D volume, on CPU or GPU, in bounded memory.

:func:`predict` runs any network of :mod:`napari_cnnseg.core.models` (or a foreign module
wrapped with :func:`wrap_module`) over a (Z, Y, X) or (C, Z, Y, X) image in tiles:

* valid-convolution nets: exact overlap-tile with mirror padding (equals one pass over the
  whole mirror-padded volume, no blending) - see :mod:`napari_cnnseg.core.tiling`;
* same-padding nets: overlapping tiles whose logits are blended with MONAI's Gaussian map at
  MONAI's scan positions (equals ``sliding_window_inference`` up to float rounding);
  probabilities are the softmax of the blended logits.

Speed: tiles are batched, weights and tiles use ``channels_last_3d``, eval-mode BatchNorm is
folded into convolutions, ``torch.inference_mode()``; reduced precision (bf16 on CPUs with
native bf16, fp16/bf16 on GPUs) runs under autocast. The output is allocated once (or given
as ``out=``, e.g. a zarr array) and filled batch by batch; blended nets accumulate into a
slab of one tile row only, so memory is bounded by the tiles, not the volume.

``precision="auto"`` uses reduced precision only where the device runs it natively AND a
probe tile agrees with fp32: argmax agreement >= :data:`AUTO_MIN_ARGMAX_AGREEMENT` and mean
absolute probability difference <= :data:`AUTO_MAX_MEAN_ABS_DIFF` (decision cached per model
weights, device and tile shape).
"""

from __future__ import annotations

import logging
import math
import weakref
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from . import tiling
from .devices import precision_dtype, reduced_precision_dtype, resolve_device
from .errors import DeviceError, InputError
from .jobs import CancelFn, ProgressFn, check_cancel, report
from .models.feature_net import is_per_voxel
from .netprep import NetSpec, WrappedNet, inference_copy, network_spec, wrap_module
from .normalization import DEFAULT_NORMALIZATION, apply_stats, compute_stats

log = logging.getLogger(__name__)

__all__ = ["predict", "wrap_module", "WrappedNet", "default_tile_shape", "softmax_"]

#: default tile edge (input voxels per axis) on CPU and GPU
DEFAULT_TILE = 96
#: valid nets: default tile output edge (the tile input adds 2 * margin)
DEFAULT_VALID_OUTPUT = 80
#: default overlap of blended (same-padding) tiles, fraction of the tile
DEFAULT_OVERLAP = 0.25
#: precision="auto": minimum fraction of probe voxels whose argmax matches fp32
AUTO_MIN_ARGMAX_AGREEMENT = 0.999
#: precision="auto": maximum mean |p_reduced - p_fp32| over the probe tile
AUTO_MAX_MEAN_ABS_DIFF = 0.005

_AUTO_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class _ChannelView:
    """(1, Z, Y, X) view of a lazy 3D array (zarr) without reading it."""

    def __init__(self, array: Any) -> None:
        self.array = array
        self.shape = (1, *array.shape)
        self.dtype = array.dtype
        self.ndim = 4

    def __getitem__(self, key: tuple) -> np.ndarray:
        return np.asarray(self.array[key[1:]])[None]


def _as_czyx(image: Any) -> Any:
    if not hasattr(image, "shape") or not hasattr(image, "ndim"):
        image = np.asarray(image)
    if image.ndim == 3:
        return image[None] if isinstance(image, np.ndarray) or hasattr(image, "dask") else _ChannelView(image)
    if image.ndim == 4:
        return image
    raise InputError(
        f"expected a 3D image (Z, Y, X) or (C, Z, Y, X), got shape {tuple(image.shape)}"
    )


def _region(roi: Any, shape: Sequence[int]) -> list[tuple[int, int]]:
    if roi is None:
        return [(0, int(n)) for n in shape]
    if len(roi) != 3:
        raise InputError(f"roi must be 3 slices (z, y, x), got {roi!r}")
    out = []
    for sl, n in zip(roi, shape, strict=True):
        if not isinstance(sl, slice):
            raise InputError(f"roi must be 3 slices (z, y, x), got {roi!r}")
        start, stop, step = sl.indices(int(n))
        if step != 1 or stop <= start:
            raise InputError(f"roi slice {sl} selects nothing on an axis of {n} voxels (step must be 1)")
        out.append((start, stop))
    return out


def default_tile_shape(spec: NetSpec, region_shape: Sequence[int],
                       tile_shape: Sequence[int] | int | None = None) -> tuple[int, int, int]:
    """Tile input shape (Z, Y, X) the net accepts: the requested one, or the default.

    Default: 96^3 for same nets; for valid nets outputs of at least ``max(96 - 2 * margin, 80)``
    per axis (so that a net losing 44 voxels per side still gets >= 80^3 outputs per tile),
    evened out over the tiles the region needs (160 voxels -> 2 tiles of 80, not 68 + 68 + 24). Never
    larger than needed to cover ``region_shape`` in one tile; for valid nets the tile output is
    at least one lattice step.
    """
    m, p = spec.margin, spec.lattice
    if tile_shape is None and spec.padding == "valid":
        # big enough that most of the tile is output; then as few tiles as that needs, evened
        # out so that the last one is not mostly wasted
        req = []
        for n, mi, pi in zip(region_shape, m, p, strict=True):
            target = max(DEFAULT_TILE - 2 * mi, DEFAULT_VALID_OUTPUT)
            count = max(1, math.ceil(n / target))
            out_edge = -(-math.ceil(n / count) // pi) * pi
            req.append(out_edge + 2 * mi)
        req = tuple(req)
    elif tile_shape is None:
        req = (DEFAULT_TILE,) * 3
    elif isinstance(tile_shape, (int, np.integer)):
        req = (int(tile_shape),) * 3
    else:
        req = tuple(int(t) for t in tile_shape)
    if len(req) != 3 or min(req) < 1:
        raise InputError(f"tile shape must be 3 positive integers (z, y, x), got {tile_shape!r}")
    if spec.padding == "valid":
        lo = spec.valid_input_shape([2 * mi + pi for mi, pi in zip(m, p, strict=True)])
        need = spec.valid_input_shape([n + 2 * mi for n, mi in zip(region_shape, m, strict=True)])
        want = spec.valid_input_shape([max(r, low) for r, low in zip(req, lo, strict=True)])
    else:
        need = spec.valid_input_shape(region_shape)
        want = spec.valid_input_shape(req)
    return tuple(min(w, n) for w, n in zip(want, need, strict=True))  # type: ignore[return-value]


#: more tiles than this in one prediction gets a warning (tiles far below the default size)
MANY_TILES = 2000


def _overlap3(overlap: Any) -> tuple[float, float, float]:
    ov = DEFAULT_OVERLAP if overlap is None else overlap
    ov = (float(ov),) * 3 if isinstance(ov, (int, float)) else tuple(float(o) for o in ov)
    if len(ov) != 3 or not all(0.0 <= o < 1.0 for o in ov):
        raise InputError(f"overlap must be in [0, 1) (fraction of the tile), got {overlap!r}")
    return ov  # type: ignore[return-value]


def softmax_(logits: np.ndarray) -> np.ndarray:
    """In-place softmax over axis 0 of a float32 (K, ...) array; returns it."""
    logits -= logits.max(axis=0, keepdims=True)
    np.exp(logits, out=logits)
    logits /= logits.sum(axis=0, keepdims=True)
    return logits


def _autocast(device: torch.device, dtype: torch.dtype | None):
    return torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None)


def _weights_key(model: nn.Module) -> tuple:
    """Identity + in-place version of every parameter and buffer: changes when training steps."""
    return tuple((id(t), t._version) for t in (*model.parameters(), *model.buffers()))


_FAST_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _fast_copy(model: nn.Module, spec: NetSpec, device: torch.device) -> nn.Module:
    """The fast evaluation copy of ``model`` on ``device``, rebuilt only when its weights change.

    Interactive use predicts the same model over and over (visible slice, whole volume); one
    copy per model is kept (weakly: it goes with the model).
    """
    key = (str(device), _weights_key(model))
    hit = _FAST_CACHE.get(model)
    if hit is not None and hit[0] == key:
        return hit[1]
    fast = inference_copy(spec.net, device)
    try:
        _FAST_CACHE[model] = (key, fast)
    except TypeError:  # pragma: no cover - not weak-referenceable
        pass
    return fast


class _Runner:
    """Runs batches of normalised tiles through the fast copy of a net on one device."""

    def __init__(self, model: nn.Module, spec: NetSpec, device: torch.device,
                 dtype: torch.dtype | None) -> None:
        self.device = device
        self.dtype = dtype
        self.net = _fast_copy(model, spec, device)

    def __call__(self, batch: np.ndarray) -> torch.Tensor:
        """(B, C, Z, Y, X) float32 numpy -> logits (B, K, Z', Y', X') float32 CPU tensor."""
        x = torch.from_numpy(batch).to(self.device, non_blocking=True)
        x = x.contiguous(memory_format=torch.channels_last_3d)
        with torch.inference_mode(), _autocast(self.device, self.dtype):
            y = self.net(x)
        with torch.inference_mode():  # one pass: to CPU, float32 and contiguous together
            return y.to("cpu", torch.float32, memory_format=torch.contiguous_format)


def _is_oom(exc: BaseException) -> bool:
    oom = getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", ())
    return isinstance(exc, oom) or (isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower())


def _free_device_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps" and hasattr(torch, "mps"):
        torch.mps.empty_cache()


class _TileTooLarge(Exception):
    """Internal: even one tile does not fit on the device."""


def _read_tile(image: Any, tile: tiling.Tile, shape: Sequence[int], stats) -> np.ndarray:
    """Normalised float32 tile (C, *shape); NaN/inf voxels (masked scans) become 0."""
    block = apply_stats(tiling.read_region(image, tile.in_start, shape), stats)
    if not np.isfinite(block).all():
        np.nan_to_num(block, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
    return block


def _choose_precision(precision: str, runner_fp32: _Runner, model: nn.Module,
                      device: torch.device, probe: np.ndarray) -> torch.dtype | None:
    if str(precision).lower() != "auto":
        return precision_dtype(precision, device)
    reduced = reduced_precision_dtype(device)
    if reduced is None:
        return None
    key = (str(device), _weights_key(model), probe.shape[1:], str(reduced))
    cache = _AUTO_CACHE.setdefault(model, {})
    if key in cache:
        return cache[key]
    ref = torch.softmax(runner_fp32(probe[None])[0], 0).numpy()
    runner_fp32.dtype = reduced
    try:
        low = torch.softmax(runner_fp32(probe[None])[0], 0).numpy()
    finally:
        runner_fp32.dtype = None
    agree = float((ref.argmax(0) == low.argmax(0)).mean())
    diff = float(np.abs(ref - low).mean())
    ok = agree >= AUTO_MIN_ARGMAX_AGREEMENT and diff <= AUTO_MAX_MEAN_ABS_DIFF
    log.info("precision auto: %s vs fp32 on a probe tile: argmax agreement %.5f, mean |dp| %.2e -> %s",
             str(reduced).replace("torch.", ""), agree, diff, "use it" if ok else "stay in fp32")
    cache[key] = reduced if ok else None
    return cache[key]


def _default_batch(n_tiles: int, tile_in: Sequence[int], device: torch.device) -> int:
    vox = math.prod(tile_in)
    cap = 4 if vox <= 96**3 else (2 if vox <= 144**3 else 1)
    if device.type != "cpu":
        cap = max(1, min(8, (8 * 96**3) // max(vox, 1)))
    return max(1, min(n_tiles, cap))


def predict(
    image: Any,
    model: nn.Module,
    *,
    tile_shape: Sequence[int] | int | None = None,
    overlap: float | Sequence[float] | None = None,
    batch_size: int | None = None,
    device: str | torch.device = "auto",
    precision: str = "auto",
    normalization: dict | None = None,
    roi: Sequence[slice] | None = None,
    progress: ProgressFn | None = None,
    cancel: CancelFn | None = None,
    out: Any = None,
    exact_roi: bool = False,
) -> Any:
    """Class probabilities of a volume by tiled dense prediction.

    Args:
        image: (Z, Y, X) or (C, Z, Y, X) numpy, zarr or dask array (read tile by tile).
        model: a network of ``core.models`` (patch classifiers are made dense), or any module
            wrapped with :func:`wrap_module`. Never modified (a fast copy runs).
        tile_shape: tile input (Z, Y, X) or one int; default 96^3 (valid nets: outputs of at
            least 80^3, see :func:`default_tile_shape`), rounded up to a shape the net accepts and shrunk to the volume
            when smaller.
        overlap: blended (same-padding) nets only: fraction of the tile shared with each
            neighbour, scalar or per axis, default 0.25. Valid nets tile exactly, no overlap.
        batch_size: tiles per forward pass; default 4 on the CPU (2 for tiles over 96^3, 1 over
            144^3); on GPUs up to 8 96^3 tiles' worth (OOM halves it).
        device: "auto" | "cpu" | "cuda" | "cuda:N" | "mps".
        precision: "auto" | "fp32" | "bf16" | "fp16" (see module docstring).
        normalization: normalisation spec (``core.normalization``); None -> the model's
            ``meta["normalization"]`` or the default. Statistics are always computed on the
            whole image, so an ``roi`` prediction sees the same intensities.
        roi: 3 slices (z, y, x), step 1: predict only this box. Valid nets: exactly the same
            values as the box of a whole prediction. Same nets: tiles are laid out for the box
            (differences to a whole prediction are seam-sized, see docs/inference.md).
        progress: ``progress(done_tiles, total_tiles)`` after every batch.
        cancel: ``cancel() -> bool`` polled between batches; raises ``Cancelled``.
        out: optional preallocated (K, *region) array (numpy, zarr, ...) to fill (float32 or
            float16); written tile row by tile row.
        exact_roi: same nets with an ``roi``: lay the tiles out over the whole image (the
            default tile of the whole image too) and run only those touching the box, so the
            box equals the same box of a whole prediction up to float rounding (block-wise
            prediction, :mod:`~napari_cnnseg.core.blocks`). Valid nets are always exact.

    Returns:
        ``out`` or a new float32 numpy array (K, Z, Y, X) (or (K, *roi shape)) of softmax
        probabilities on the input grid.

    Raises:
        InputError: bad shapes / options (message says what to pass instead).
        DeviceError: unknown or unavailable device.
        Cancelled: ``cancel()`` returned True.
    """
    img = _as_czyx(image)
    spec = network_spec(model)
    if img.shape[0] != spec.in_channels:
        raise InputError(
            f"the model expects {spec.in_channels} channel(s) but the image has {img.shape[0]} "
            f"(shape {tuple(image.shape)}); pass a (C, Z, Y, X) image with C = {spec.in_channels}"
        )
    if min(img.shape[1:]) < 1:
        raise InputError(f"the image is empty (shape {tuple(image.shape)})")
    region = _region(roi, img.shape[1:])
    region_shape = tuple(b - a for a, b in region)
    out_shape = (spec.num_classes, *region_shape)
    if out is not None and tuple(out.shape) != out_shape:
        raise InputError(f"out has shape {tuple(out.shape)}; it must be (K, Z, Y, X) = {out_shape}")
    if batch_size is not None and (int(batch_size) < 1):
        raise InputError(f"batch_size must be >= 1, got {batch_size}")
    ov = _overlap3(overlap)
    if overlap is not None and spec.padding == "valid":
        log.info("overlap is not used for valid-padding networks: their tiles fit together "
                 "exactly, with no blending")
    meta = getattr(model, "meta", None) or getattr(spec.net, "meta", None) or {}
    norm = normalization or meta.get("normalization") or DEFAULT_NORMALIZATION
    dev = resolve_device(device)
    if is_per_voxel(model) and roi is None and isinstance(image, np.ndarray):
        # fixed filters + per-voxel head: filter the whole volume once (cached; no statistics
        # pass when the features are there already), no tiles
        from .models.feature_net import cached_features, predict_features

        feats = cached_features(model, image, norm, dev)
        report(progress, 0, 1)
        result = predict_features(model, feats, out, dev)
        report(progress, 1, 1)
        return result
    stats = compute_stats(image, norm)
    # exact_roi: a same net's tiles (and default tile) are those of the whole image
    tile_region = tuple(img.shape[1:]) if exact_roi and spec.padding != "valid" else region_shape
    tile = default_tile_shape(spec, tile_region, tile_shape)
    if out is None:
        out = np.empty(out_shape, dtype=np.float32)

    while True:
        try:
            _predict_on(img, model, spec, dev, precision, tile, ov, batch_size, stats, region,
                        progress, cancel, out, exact_roi)
            return out
        except _TileTooLarge:
            smaller = _shrink_tile(spec, tile)
            if smaller is not None:
                log.warning("out of memory on %s with tile %s: retrying with tile %s", dev, tile, smaller)
                tile = smaller
                continue
            if dev.type == "cpu":
                raise DeviceError(
                    "out of memory on the CPU even with the smallest tile; free memory or use a "
                    "smaller model"
                ) from None
            log.warning("out of memory on %s even with tile %s: falling back to the CPU", dev, tile)
            dev = torch.device("cpu")
            tile = default_tile_shape(spec, tile_region, tile_shape)
            precision = "fp32" if str(precision).lower() == "fp16" else precision


def _shrink_tile(spec: NetSpec, tile: Sequence[int]) -> tuple[int, int, int] | None:
    if spec.padding == "valid":
        lo = spec.valid_input_shape([2 * m + p for m, p in zip(spec.margin, spec.lattice, strict=True)])
    else:
        lo = spec.valid_input_shape((16, 16, 16))
    half = spec.valid_input_shape([max(low, t // 2) for low, t in zip(lo, tile, strict=True)])
    half = tuple(min(h, t) for h, t in zip(half, tile, strict=True))
    return None if tuple(half) == tuple(tile) else half  # type: ignore[return-value]


def _predict_on(img, model: nn.Module, spec: NetSpec, dev: torch.device, precision: str, tile: Sequence[int],
                overlap, batch_size, stats, region, progress, cancel, out, exact_roi=False) -> None:
    """One attempt on one device with one tile shape; raises _TileTooLarge on OOM at batch 1."""
    if spec.padding == "valid":
        layout = tiling.valid_layout(region, tile, spec.output_shape(tile), spec.margin, spec.lattice)
    else:
        layout = tiling.same_layout(region, tile, overlap, img.shape[1:], whole_image=exact_roi)
    tiles = layout.tiles
    total = len(tiles)
    if total > MANY_TILES:
        log.warning("%d tiles of %s voxels: tiles this small are slow (each pays the network's "
                    "margin again); leave the tile size to the default or raise it", total,
                    "x".join(str(v) for v in layout.in_shape))
    batch = int(batch_size) if batch_size else _default_batch(total, layout.in_shape, dev)
    log.debug("predict: %d tiles of %s on %s, batch %d", total, layout.in_shape, dev, batch)
    try:
        runner = _Runner(model, spec, dev, None)
        first = _read_tile(img, tiles[0], layout.in_shape, stats)
        runner.dtype = _choose_precision(precision, runner, model, dev, first)
    except Exception as exc:
        if _is_oom(exc):
            _free_device_memory(dev)
            raise _TileTooLarge from exc
        raise
    sink = _BlendSink(out, region, layout) if layout.blend else _DirectSink(out)
    report(progress, 0, total)
    done = 0
    while done < total:
        check_cancel(cancel, "prediction")
        chunk = tiles[done:done + batch]
        inputs = np.stack([_read_tile(img, t, layout.in_shape, stats) for t in chunk])
        try:
            logits = runner(inputs)
        except Exception as exc:
            if not _is_oom(exc):
                raise
            _free_device_memory(dev)
            if batch == 1:
                raise _TileTooLarge from exc
            batch = max(1, batch // 2)
            log.warning("out of memory on %s: retrying with batch size %d", dev, batch)
            continue
        for t, lg in zip(chunk, logits, strict=True):
            sink.add(t, lg)
        done += len(chunk)
        report(progress, done, total)
    sink.close()


def _to_out(out: Any, key: tuple, probs: torch.Tensor) -> None:
    out[key] = probs.numpy().astype(out.dtype, copy=False)


class _DirectSink:
    """Valid nets: each output voxel comes from exactly one tile; write probabilities."""

    def __init__(self, out: Any) -> None:
        self.out = out

    def add(self, tile: tiling.Tile, logits: torch.Tensor) -> None:
        with torch.inference_mode():
            probs = torch.softmax(logits[(slice(None), *tile.write)], 0)
        _to_out(self.out, (slice(None), *tile.dest), probs)

    def close(self) -> None:
        pass


class _BlendSink:
    """Same nets: Gaussian-weighted logits accumulated in a slab of one tile row.

    Tiles arrive in z-major order, so when a tile starts at region row z0, every row above z0
    is final: it is normalised, soft-maxed and written to ``out``, and the slab moves down.
    Arithmetic runs in torch (multi-threaded) on CPU tensors.
    """

    def __init__(self, out: Any, region, layout: tiling.Layout) -> None:
        self.out = out
        k = out.shape[0]
        ry, rx = (region[1][1] - region[1][0]), (region[2][1] - region[2][0])
        self.depth = min(layout.in_shape[0], region[0][1] - region[0][0])
        self.acc = torch.zeros((k, self.depth, ry, rx), dtype=torch.float32)
        self.wsum = torch.zeros((self.depth, ry, rx), dtype=torch.float32)
        self.z0 = 0  # region row held in slab row 0
        self.zend = region[0][1] - region[0][0]
        self.weights = torch.from_numpy(tiling.gaussian_weights(layout.in_shape))

    def _flush(self, upto: int) -> None:
        n = min(upto, self.zend, self.z0 + self.depth) - self.z0
        if n <= 0:
            return
        with torch.inference_mode():
            probs = torch.softmax(self.acc[:, :n] / self.wsum[:n].clamp_min(1e-12), 0)
            _to_out(self.out, (slice(None), slice(self.z0, self.z0 + n)), probs)
            keep = self.depth - n
            if keep > 0:
                self.acc[:, :keep] = self.acc[:, n:].clone()
                self.wsum[:keep] = self.wsum[n:].clone()
            self.acc[:, keep:] = 0
            self.wsum[keep:] = 0
        self.z0 += n

    def add(self, tile: tiling.Tile, logits: torch.Tensor) -> None:
        dz, dy, dx = tile.dest
        self._flush(dz.start)
        rows = slice(dz.start - self.z0, dz.stop - self.z0)
        with torch.inference_mode():
            w = self.weights[tile.write]
            self.acc[:, rows, dy, dx].addcmul_(logits[(slice(None), *tile.write)], w)
            self.wsum[rows, dy, dx] += w

    def close(self) -> None:
        self._flush(self.zend)
