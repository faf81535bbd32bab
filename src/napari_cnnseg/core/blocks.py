"""One volume larger than a machine: a chunked Zarr input cut into blocks run on dask workers.

:func:`segment_blocks` cuts the (Z, Y, X) grid of a Zarr / OME-Zarr input into blocks
(default 128^3 voxels, the last ones smaller where the grid does not divide evenly) and runs
each block as one task: :func:`~napari_cnnseg.core.inference.predict` with ``roi=`` the block
and ``exact_roi=True``, which reads the block plus the net's halo straight from the store:

* valid nets: each tile reads its output box plus the net's margin (real neighbouring voxels,
  mirrored only at the volume border), on the lattice of a whole-volume pass: **exact**;
* same-padded nets: the tiles of the whole-volume layout that touch the block, blended with
  the engine's Gaussian weights: the block equals the same box of the single-process result
  up to float rounding.

Normalisation statistics (and ``precision="auto"``) are decided once, here, on the whole
volume, as the single-process engine does. Each block writes whole chunks of Zarr outputs
(chunks = blocks) created in hidden temporary stores beside the destinations and committed
atomically when every block is written; no worker ever holds more than one block (+ halo).
Without a cluster (no ``client`` / ``workers`` / ``scheduler``) the blocks run one after
another in this process.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .errors import CnnsegError, InputError
from .jobs import CancelFn, ProgressFn, check_cancel, report

log = logging.getLogger(__name__)

DEFAULT_BLOCK = (128, 128, 128)

Box = tuple[tuple[int, int], tuple[int, int], tuple[int, int]]


def block_grid(shape: Sequence[int], block_shape: Sequence[int]) -> list[Box]:
    """Blocks ((z0, z1), (y0, y1), (x0, x1)) covering a (Z, Y, X) grid, z-major; the last
    block on an axis is smaller when the grid does not divide evenly."""
    axes = [[(a, min(a + b, n)) for a in range(0, n, b)] for n, b in zip(shape, block_shape, strict=True)]
    return [tuple(box) for box in itertools.product(*axes)]  # type: ignore[misc]


def _fixed_normalization(model: Any, image: Any) -> dict[str, Any]:
    """The model's normalisation as fixed (offset, scale), computed once on the whole image
    (a strided subsample, as :func:`~.inference.predict` does)."""
    from .netprep import network_spec
    from .normalization import DEFAULT_NORMALIZATION, compute_stats

    meta = getattr(model, "meta", None) or getattr(network_spec(model).net, "meta", None) or {}
    norm = meta.get("normalization") or DEFAULT_NORMALIZATION
    if norm.get("mode") in ("fixed", "none"):
        return dict(norm)
    stats = compute_stats(image, norm)
    if len(set(stats)) > 1:
        raise InputError("block mode takes one channel, or a model with fixed / no normalisation "
                         f"(this image's {len(stats)} channels have different statistics)")
    offset, scale = stats[0]
    return {"mode": "fixed", "offset": offset, "scale": scale}


def _resolve_precision(image: Any, model: Any, options: Any, norm: dict) -> str:
    """``precision="auto"`` decided once with the engine's probe on the first tile."""
    if str(options.precision).lower() != "auto":
        return options.precision
    import torch

    from . import inference as inf
    from .devices import resolve_device
    from .normalization import apply_stats, compute_stats
    from .tiling import read_region

    spec = inf.network_spec(model)
    img = inf._as_czyx(image)
    dev = resolve_device(options.device)
    tile = inf.default_tile_shape(spec, img.shape[1:], options.tile_shape)
    start = [-m for m in spec.margin] if spec.padding == "valid" else [0, 0, 0]
    probe = np.nan_to_num(apply_stats(read_region(img, start, tile), compute_stats(img, norm)))
    dtype = inf._choose_precision("auto", inf._Runner(model, spec, dev, None), model, dev, probe)
    return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]


def _block_task(box: Box, model: Any, image: Any, stores: dict[str, str], kwargs: dict) -> Any:
    """Predict one block, write it into the output stores; returns voxels per class (K,) or
    ``{"error": one line}`` (a bad block fails its volume, not the worker)."""
    import zarr

    from .distributed import worker_model
    from .inference import predict
    from .pipeline import labels_from_probabilities, normalized_entropy

    try:
        net = worker_model(model) if isinstance(model, str) else model
        roi = tuple(slice(a, b) for a, b in box)
        probs = predict(image, net, roi=roi, exact_roi=True, **kwargs)
        labels = labels_from_probabilities(probs)
        for kind, path in stores.items():
            arr = zarr.open_array(path, mode="r+")
            if kind == "labels":
                arr[roi] = labels
            elif kind == "probabilities":
                arr[(slice(None), *roi)] = probs
            else:
                arr[roi] = normalized_entropy(probs)
        return np.bincount(labels.ravel(), minlength=probs.shape[0])[:probs.shape[0]].tolist()
    except Exception as exc:  # noqa: BLE001 - reported by the driver as the volume's error
        return {"error": f"block {box}: {' '.join(str(exc).split()) or type(exc).__name__}"}


def _writers(stack: contextlib.ExitStack, volume: Any, path: Path, outdir: Path, options: Any,
             k: int, names: list[str], block: Sequence[int]) -> dict[str, Any]:
    """Temporary Zarr stores (chunks = blocks) for labels (+ probabilities, uncertainty)."""
    from .cohort import output_stem
    from .io import ZARR_SUFFIXES, ZarrVolumeWriter
    from .pipeline import labels_dtype

    stem, ext = output_stem(path)
    ext = "." + options.format if options.format else ext
    if ext.lower() not in ZARR_SUFFIXES:
        raise InputError(f"block mode writes Zarr outputs; use --format zarr or ome.zarr, not {ext}")
    grid, chunks = tuple(volume.spatial_shape), tuple(int(b) for b in block)
    kinds = {"labels": (grid, labels_dtype(k), chunks)}
    if options.probabilities:
        kinds["probabilities"] = ((k, *grid), np.float32, (1, *chunks))
    if options.uncertainty:
        kinds["uncertainty"] = (grid, np.float32, chunks)
    return {kind: stack.enter_context(ZarrVolumeWriter(
        outdir / f"{stem}_{kind}{ext}", like=volume, shape=shape, dtype=dtype, chunks=ch,
        class_names=names)) for kind, (shape, dtype, ch) in kinds.items()}


def segment_blocks(path: str | Path, model: Any, outdir: str | Path, options: Any = None, *,
                   block_shape: Sequence[int] | None = None, client: Any = None,
                   model_key: str | None = None, fingerprint: str | None = None,
                   progress: ProgressFn | None = None, cancel: CancelFn | None = None) -> dict:
    """Segment one Zarr volume block by block into Zarr outputs; returns its cohort record.

    Args:
        path: chunked Zarr / OME-Zarr input (Z, Y, X) or (C, Z, Y, X).
        model: the network (in this process); with ``client``, ``model_key`` names the copy
            installed on the workers (:func:`~.distributed.model_on_workers`).
        outdir: output folder: ``<stem>_labels.zarr`` (+ probabilities, uncertainty).
        options: :class:`~.cohort.CohortOptions` (format must be zarr / ome.zarr or None).
        block_shape: (Z, Y, X) voxels per block, also the output chunks; default 128^3.
        client: a ``distributed.Client`` to run the blocks on; None = here, one by one.
        progress: ``progress(blocks_done, blocks_total)``.

    Raises:
        InputError: not a Zarr input / output, several channels with different statistics.
        CnnsegError: a block failed (its one-line error).
    """
    from .cohort import CohortOptions, make_record, model_fingerprint, write_record
    from .cohort_io import read_input
    from .netprep import network_spec
    from .pipeline import class_names_for

    options = options or CohortOptions()
    path, outdir = Path(path), Path(outdir)
    start = time.perf_counter()
    volume = read_input(path, model, options.channel)
    if isinstance(volume.array, np.ndarray):
        raise InputError(f"{path.name}: block mode needs a chunked Zarr / OME-Zarr input; write "
                         "it with write_volume('scan.zarr', volume) first")
    block = tuple(min(int(b), n) for b, n in zip(block_shape or DEFAULT_BLOCK, volume.spatial_shape, strict=True))
    if len(block) != 3 or min(block) < 1:
        raise InputError(f"block shape must be 3 positive integers (Z, Y, X), got {block_shape}")
    k = network_spec(model).num_classes
    names = class_names_for(model, k)
    norm = _fixed_normalization(model, volume.array)
    kwargs = dict(options.predict_kwargs(), normalization=norm,
                  precision=_resolve_precision(volume.array, model, options, norm))
    boxes = block_grid(volume.spatial_shape, block)
    log.info("%s: %d blocks of %s voxels", path.name, len(boxes), "x".join(map(str, block)))
    with contextlib.ExitStack() as stack:
        writers = _writers(stack, volume, path, outdir, options, k, names, block)
        stores = {kind: str(w._tmp / "0") for kind, w in writers.items()}
        counts = _run_blocks(boxes, model if client is None else model_key, volume.array, stores,
                             kwargs, client, progress, cancel)
        outputs = [writers[kind].commit() for kind in writers]
    rec = make_record(path, volume, time.perf_counter() - start, counts, names, outputs,
                      fingerprint or model_fingerprint(model), options)
    write_record(path, outdir, rec)
    return rec


def _run_blocks(boxes: list[Box], model: Any, image: Any, stores: dict, kwargs: dict, client: Any,
                progress: ProgressFn | None, cancel: CancelFn | None) -> list[int]:
    """Every block here or on the cluster; returns the summed voxel counts per class."""
    done = 0
    total: np.ndarray | None = None
    report(progress, 0, len(boxes))

    def add(_i: int, res: Any) -> None:
        nonlocal done, total
        if not isinstance(res, list):
            err = res.get("error") if isinstance(res, dict) else f"{type(res).__name__}: {res}"
            raise CnnsegError(f"block mode failed: {err}")
        total = np.asarray(res, dtype=np.int64) + (0 if total is None else total)
        done += 1
        report(progress, done, len(boxes))

    if client is None:
        for i, box in enumerate(boxes):
            check_cancel(cancel, "block prediction")
            add(i, _block_task(box, model, image, stores, kwargs))
    else:
        from .distributed import run_tasks, task_resources

        run_tasks(client, _block_task, boxes, (model, image, stores, kwargs), on_result=add,
                  cancel=cancel, resources=task_resources(client), what="cnnseg-block")
    return [] if total is None else total.tolist()


def run_cohort_in_blocks(paths: Sequence[Path], model: Any, outdir: Path, options: Any,
                         fingerprint: str, engine: Any, *,
                         on_record: Callable[[dict], None] | None = None,
                         volume_progress: Callable[[str], ProgressFn | None] | None = None,
                         cancel: CancelFn | None = None) -> list[dict]:
    """:func:`segment_blocks` for each volume in turn (blocks in parallel); one record each,
    complete volumes skipped unless ``options.overwrite``, a failed one reported alone.
    ``engine``: a ``cohort.CohortEngine`` (blocks of ``engine.block_shape``, ``()`` = default;
    on dask workers when it names them)."""
    from .cohort import completed_record, failed_record
    from .errors import Cancelled

    records: list[dict] = []
    block_shape = engine.block_shape or None
    with contextlib.ExitStack() as stack:
        c, key = None, None
        if engine.on_dask:
            from .distributed import model_on_workers, open_client

            c = stack.enter_context(open_client(engine.workers, engine.scheduler, engine.client))
            key = stack.enter_context(model_on_workers(c, model))
        for path in paths:
            rec = None if options.overwrite else completed_record(path, outdir, options, fingerprint)
            if rec is not None:
                rec = {**rec, "status": "skipped"}
            else:
                try:
                    rec = segment_blocks(path, model, outdir, options, block_shape=block_shape,
                                         client=c, model_key=key, fingerprint=fingerprint,
                                         progress=volume_progress(path.name) if volume_progress else None,
                                         cancel=cancel)
                except Cancelled:
                    raise
                except Exception as exc:  # noqa: BLE001 - one bad volume must not stop the cohort
                    rec = failed_record(path, exc)
            records.append(rec)
            if on_record is not None:
                on_record(rec)
    return records
