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
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from . import tiling
from ._sinks import _BlendSink, _DirectSink
from .devices import precision_dtype, reduced_precision_dtype, resolve_device
from .errors import DeviceError, InputError
from .jobs import CancelFn, ProgressFn, check_cancel, report
from .models.feature_net import is_per_voxel
from .netprep import NetSpec, WrappedNet, inference_copy, network_spec, wrap_module
from .normalization import DEFAULT_NORMALIZATION, apply_stats, compute_stats
from .settings import with_options
from .tile_policy import (  # noqa: F401 - re-exported: callers read the defaults from here
    DEFAULT_OVERLAP,
    DEFAULT_TILE,
    DEFAULT_VALID_OUTPUT,
    MANY_TILES,
    default_batch,
    default_tile_shape,
    overlap3,
    shrink_tile,
)

log = logging.getLogger(__name__)

__all__ = ["PredictSettings", "predict", "wrap_module", "WrappedNet", "default_tile_shape", "softmax_"]

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


@dataclass(frozen=True)
class PredictSettings:
    """How :func:`predict` runs (each setting is described there)."""

    tile_shape: Sequence[int] | int | None = None
    overlap: float | Sequence[float] | None = None
    batch_size: int | None = None
    device: str | torch.device = "auto"
    precision: str = "auto"
    normalization: dict | None = None
    exact_roi: bool = False

    @classmethod
    def of(cls, settings: PredictSettings | None = None, **options: Any) -> PredictSettings:
        """``settings`` (or the defaults) with ``options`` applied; an unknown name is refused."""
        cfg = with_options(cls, settings, options, "prediction")
        if cfg.batch_size is not None and int(cfg.batch_size) < 1:
            raise InputError(f"batch_size must be >= 1, got {cfg.batch_size}")
        return cfg


@dataclass
class _Attempt:
    """One try of a prediction: a device, a precision and a tile shape (OOM retries change
    them), with the run's overlap, batch size, normalisation statistics and ``exact_roi``."""

    dev: torch.device
    precision: str
    tile: tuple[int, int, int]
    overlap: tuple[float, float, float]
    batch_size: int | None
    stats: Any
    exact_roi: bool


def predict(image: Any, model: nn.Module, settings: PredictSettings | None = None, *,
            roi: Sequence[slice] | None = None, out: Any = None,
            progress: ProgressFn | None = None, cancel: CancelFn | None = None,
            **options: Any) -> Any:
    """Class probabilities of a volume by tiled dense prediction.

    Args:
        image: (Z, Y, X) or (C, Z, Y, X) numpy, zarr or dask array (read tile by tile).
        model: a network of ``core.models`` (patch classifiers are made dense), or any module
            wrapped with :func:`wrap_module`. Never modified (a fast copy runs).
        settings: a :class:`PredictSettings`; ``options`` (its fields as keywords) override it:

            - ``tile_shape``: tile input (Z, Y, X) or one int; default 96^3 (valid nets:
              outputs of at least 80^3, see :func:`default_tile_shape`), rounded up to a shape
              the net accepts and shrunk to the volume when smaller.
            - ``overlap``: blended (same-padding) nets only: fraction of the tile shared with
              each neighbour, scalar or per axis, default 0.25. Valid nets tile exactly.
            - ``batch_size``: tiles per forward pass; default 4 on the CPU (2 for tiles over
              96^3, 1 over 144^3); on GPUs up to 8 96^3 tiles' worth (OOM halves it).
            - ``device``: "auto" | "cpu" | "cuda" | "cuda:N" | "mps".
            - ``precision``: "auto" | "fp32" | "bf16" | "fp16" (see module docstring).
            - ``normalization``: normalisation spec (``core.normalization``); None -> the
              model's ``meta["normalization"]`` or the default. Statistics are always
              computed on the whole image, so an ``roi`` prediction sees the same intensities.
            - ``exact_roi``: same nets with an ``roi``: lay the tiles out over the whole image
              (the default tile of the whole image too) and run only those touching the box,
              so the box equals the same box of a whole prediction up to float rounding
              (block-wise prediction, :mod:`~napari_cnnseg.core.blocks`). Valid nets are
              always exact.
        roi: 3 slices (z, y, x), step 1: predict only this box. Valid nets: exactly the same
            values as the box of a whole prediction. Same nets: tiles are laid out for the box
            (differences to a whole prediction are seam-sized, see docs/inference.md).
        out: optional preallocated (K, *region) array (numpy, zarr, ...) to fill (float32 or
            float16); written tile row by tile row.
        progress: ``progress(done_tiles, total_tiles)`` after every batch.
        cancel: ``cancel() -> bool`` polled between batches; raises ``Cancelled``.

    Returns:
        ``out`` or a new float32 numpy array (K, Z, Y, X) (or (K, *roi shape)) of softmax
        probabilities on the input grid.

    Raises:
        InputError: bad shapes / options (message says what to pass instead).
        DeviceError: unknown or unavailable device.
        Cancelled: ``cancel()`` returned True.
    """
    cfg = PredictSettings.of(settings, **options)
    img = _as_czyx(image)
    spec = network_spec(model)
    region = _check_request(image, img, spec, roi, out)
    region_shape = tuple(b - a for a, b in region)
    ov = overlap3(cfg.overlap)
    if cfg.overlap is not None and spec.padding == "valid":
        log.info("overlap is not used for valid-padding networks: their tiles fit together "
                 "exactly, with no blending")
    meta = getattr(model, "meta", None) or getattr(spec.net, "meta", None) or {}
    norm = cfg.normalization or meta.get("normalization") or DEFAULT_NORMALIZATION
    dev = resolve_device(cfg.device)
    if is_per_voxel(model) and isinstance(image, np.ndarray):
        # fixed filters + per-voxel head: the whole volume is filtered once (cached; no
        # statistics pass when the features are there already), no tiles; a box (the visible
        # slice while training) reads the cached features when they are there
        from .models.feature_net import cached_features, features_if_cached, predict_features

        feats = cached_features(model, image, norm, dev) if roi is None \
            else features_if_cached(model, image, norm)
        if feats is not None:
            report(progress, 0, 1)
            box = None if roi is None else tuple(slice(a, b) for a, b in region)
            if box is not None and not isinstance(feats, np.ndarray):
                result = _pooled_box(model, image, norm, box, out, dev, cancel)
            else:
                result = predict_features(model, feats, out, dev, roi=box, cancel=cancel)
            report(progress, 1, 1)
            return result
    # exact_roi: a same net's tiles (and default tile) are those of the whole image
    tile_region = tuple(img.shape[1:]) if cfg.exact_roi and spec.padding != "valid" \
        else region_shape
    attempt = _Attempt(dev, cfg.precision, default_tile_shape(spec, tile_region, cfg.tile_shape),
                       ov, cfg.batch_size, compute_stats(image, norm), cfg.exact_roi)
    if out is None:
        out = np.empty((spec.num_classes, *region_shape), dtype=np.float32)
    while True:
        try:
            _predict_on(img, model, spec, attempt, region, progress, cancel, out)
            return out
        except _TileTooLarge:
            _after_oom(spec, attempt, tile_region, cfg.tile_shape)


def _check_request(image: Any, img: Any, spec: NetSpec, roi: Any, out: Any
                   ) -> list[tuple[int, int]]:
    """The region (z, y, x) bounds to predict; InputError for channels, empty image, ``out``."""
    if img.shape[0] != spec.in_channels:
        raise InputError(
            f"the model expects {spec.in_channels} channel(s) but the image has {img.shape[0]} "
            f"(shape {tuple(image.shape)}); pass a (C, Z, Y, X) image with C = {spec.in_channels}"
        )
    if min(img.shape[1:]) < 1:
        raise InputError(f"the image is empty (shape {tuple(image.shape)})")
    region = _region(roi, img.shape[1:])
    out_shape = (spec.num_classes, *(b - a for a, b in region))
    if out is not None and tuple(out.shape) != out_shape:
        raise InputError(f"out has shape {tuple(out.shape)}; it must be (K, Z, Y, X) = {out_shape}")
    return region


def _after_oom(spec: NetSpec, attempt: _Attempt, tile_region: Sequence[int],
               tile_shape: Any) -> None:
    """Out of memory at batch 1: a smaller tile, else (GPU) the CPU, else DeviceError."""
    smaller = shrink_tile(spec, attempt.tile)
    if smaller is not None:
        log.warning("out of memory on %s with tile %s: retrying with tile %s", attempt.dev,
                    attempt.tile, smaller)
        attempt.tile = smaller
        return
    if attempt.dev.type == "cpu":
        raise DeviceError(
            "out of memory on the CPU even with the smallest tile; free memory or use a "
            "smaller model"
        ) from None
    log.warning("out of memory on %s even with tile %s: falling back to the CPU", attempt.dev,
                attempt.tile)
    attempt.dev = torch.device("cpu")
    attempt.tile = default_tile_shape(spec, tile_region, tile_shape)
    if str(attempt.precision).lower() == "fp16":
        attempt.precision = "fp32"


def _pooled_box(model: nn.Module, image: np.ndarray, norm: dict, box: tuple[slice, slice, slice],
                out: np.ndarray | None, dev: torch.device, cancel: CancelFn | None) -> np.ndarray:
    """Probabilities (K, *box) of a per-voxel net on a volume whose features are too big to
    cache (``PooledFeatures``): the fixed filters of the box's z slabs only (a few hundred MB
    for a 512 x 512 slice), then the head. The tiled path would run the filter bank as 3D
    convolutions over tiles (1.3 GB and a minute for one slice of a 600 x 512 x 512 CT)."""
    from .models.feature_net import FEATURE_CHUNK, feature_slabs, predict_features

    z0, z1 = box[0].start, box[0].stop
    if out is None:
        out = np.empty((int(model.num_classes), *(s.stop - s.start for s in box)), np.float32)
    for a, block in feature_slabs(model, image, norm, list(range(z0, z1, FEATURE_CHUNK)),
                                  threads=1):
        n = min(block.shape[1], z1 - a)
        predict_features(model, block, out[:, a - z0:a - z0 + n], dev,
                         roi=(slice(0, n), box[1], box[2]), cancel=cancel)
    return out


def _predict_on(img: Any, model: nn.Module, spec: NetSpec, attempt: _Attempt, region: Any,
                progress: ProgressFn | None, cancel: CancelFn | None, out: Any) -> None:
    """One attempt on one device with one tile shape; raises _TileTooLarge on OOM at batch 1."""
    dev, tile = attempt.dev, attempt.tile
    if spec.padding == "valid":
        layout = tiling.valid_layout(region, tile, spec.output_shape(tile), spec.margin, spec.lattice)
    else:
        layout = tiling.same_layout(region, tile, attempt.overlap, img.shape[1:],
                                    whole_image=attempt.exact_roi)
    tiles = layout.tiles
    total = len(tiles)
    if total > MANY_TILES:
        log.warning("%d tiles of %s voxels: tiles this small are slow (each pays the network's "
                    "margin again); leave the tile size to the default or raise it", total,
                    "x".join(str(v) for v in layout.in_shape))
    batch = int(attempt.batch_size) if attempt.batch_size else \
        default_batch(total, layout.in_shape, dev)
    log.debug("predict: %d tiles of %s on %s, batch %d", total, layout.in_shape, dev, batch)
    try:
        runner = _Runner(model, spec, dev, None)
        first = _read_tile(img, tiles[0], layout.in_shape, attempt.stats)
        runner.dtype = _choose_precision(attempt.precision, runner, model, dev, first)
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
        inputs = np.stack([_read_tile(img, t, layout.in_shape, attempt.stats) for t in chunk])
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
