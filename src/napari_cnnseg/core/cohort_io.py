"""Read one input and write its segmentation: the per-volume engine of cohorts and the CLI.

:func:`write_outputs` runs :func:`~napari_cnnseg.core.pipeline.segment_volume` and writes
``<stem>_labels`` (+ ``_probabilities``, ``_uncertainty``) atomically on the source geometry.
Zarr / OME-Zarr inputs, or a Zarr output format, are streamed: the probabilities go tile by
tile into a Zarr store in the output folder (the user's ``<stem>_probabilities.zarr`` when
asked for with a Zarr format, else a hidden scratch store removed afterwards), labels and
uncertainty slab by slab; peak memory is then bounded by the tiles.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputError
from .jobs import CancelFn, ProgressFn

log = logging.getLogger(__name__)


def read_input(path: Path, model: Any, channel: int | None) -> Any:
    """The input as a (lazy for Zarr) :class:`~.io.Volume` with the model's channel count.

    Raises:
        InputError: wrong channel count (the message says to pass a channel), a label map
            given as the image is only a warning (see :func:`check_image_values`).
    """
    from .io import read_volume

    in_channels = int(getattr(model, "in_channels", 1))
    if channel is not None:
        volume = read_volume(path, channel=channel, lazy=True)
    else:
        try:
            volume = read_volume(path, all_channels=in_channels > 1, lazy=True)
        except InputError as exc:
            if "channel" not in str(exc):  # a 2D image, an unsupported axis, ...: no hint
                raise
            raise InputError(f"{exc} (pass --channel N)") from None
    if volume.num_channels != in_channels:
        raise InputError(
            f"{path.name} has {volume.num_channels} channel(s) but the model takes {in_channels}"
            + ("; pass --channel N" if volume.num_channels > 1 else ""))
    check_image_values(volume.array, path.name)
    return volume


def check_image_values(array: Any, name: str, *, allow_nonfinite: bool = True) -> None:
    """Catch two likely mistakes in an in-memory image before any work is done.

    A label map given as the image (integers spanning at most 16 values) is a warning; NaN/inf
    voxels are a warning when ``allow_nonfinite`` (inference reads them as 0 after
    normalisation), else an :class:`~.errors.InputError`, as is an image without any finite
    voxel. Lazy (Zarr) arrays are not scanned.
    """
    if not isinstance(array, np.ndarray) or array.size == 0:
        return
    if array.dtype == bool or np.issubdtype(array.dtype, np.integer):
        lo, hi = int(array.min()), int(array.max())
        if hi - lo <= 15:
            log.warning("%s looks like a label map, not an image (integer values %d..%d only); "
                        "give the scan itself", name, lo, hi)
        return
    if not np.issubdtype(array.dtype, np.floating):
        return
    bad = int(array.size - np.count_nonzero(np.isfinite(array)))
    if bad == array.size:
        raise InputError(f"{name} holds no finite value (all voxels are NaN/inf); check the file")
    if bad and not allow_nonfinite:
        raise InputError(f"{name} has {bad} NaN/inf voxel(s) of {array.size}; replace them "
                         "(e.g. with 0 or the background intensity) first")
    if bad:
        log.warning("%s has %d NaN/inf voxel(s) of %d (%.2g%%); they are read as 0 after "
                    "normalisation, so their labels are not meaningful",
                    name, bad, array.size, 100.0 * bad / array.size)


def streams(volume: Any, ext: str) -> bool:
    """Stream through Zarr when the input is lazy / Zarr or the output format is Zarr."""
    from .io import ZARR_SUFFIXES

    return (not isinstance(volume.array, np.ndarray) or volume.metadata.get("format") == "zarr"
            or ext.lower() in ZARR_SUFFIXES)


def write_outputs(volume: Any, model: Any, path: Path, outdir: Path, options: Any, *,
                  progress: ProgressFn | None = None,
                  cancel: CancelFn | None = None) -> tuple[list[Path], list[int], list[str]]:
    """Segment ``volume`` (read from ``path``) and write its outputs into ``outdir``.

    Args:
        volume: (Z, Y, X) or (C, Z, Y, X) Volume (numpy or lazy Zarr).
        options: a :class:`~.cohort.CohortOptions`.

    Returns:
        (written paths, voxels per class, class names).
    """
    from .cohort import count_labels, output_stem
    from .io import write_volume
    from .pipeline import segment_volume

    stem, ext = output_stem(path)
    if options.format:
        ext = "." + options.format
    kwargs = dict(options.predict_kwargs(), progress=progress, cancel=cancel)
    if streams(volume, ext):
        written, labels = _segment_streaming(volume, model, outdir, stem, ext, options, kwargs)
    else:
        result = segment_volume(volume, model, probabilities=options.probabilities,
                                uncertainty=options.uncertainty, **kwargs)
        labels = result.labels
        written = [write_volume(outdir / f"{stem}_labels{ext}", result.labels)]
        if result.probabilities is not None:
            written.append(write_volume(outdir / f"{stem}_probabilities{ext}", result.probabilities))
        if result.uncertainty is not None:
            written.append(write_volume(outdir / f"{stem}_uncertainty{ext}", result.uncertainty))
    names = list(labels.metadata.get("class_names", []))
    return written, count_labels(labels.array, len(names)), names


def _segment_streaming(volume: Any, model: Any, outdir: Path, stem: str, ext: str, options: Any,
                       predict_kwargs: dict) -> tuple[list[Path], Any]:
    """Larger than memory: probabilities go tile by tile into a Zarr store in ``outdir``.

    Every store is committed atomically once complete and removed on any error. Returns the
    written paths and the labels Volume (lazy over the committed store for Zarr outputs).
    """
    from .inference import network_spec
    from .io import ZARR_SUFFIXES, ZarrVolumeWriter, read_volume, write_volume
    from .pipeline import class_names_for, labels_dtype, segment_volume

    k = network_spec(model).num_classes
    names = class_names_for(model, k)
    grid = tuple(volume.spatial_shape)
    zarr_out = ext.lower() in ZARR_SUFFIXES
    with contextlib.ExitStack() as stack:
        def store(kind: str, shape: tuple[int, ...], dtype: Any) -> ZarrVolumeWriter:
            name = f"{stem}_{kind}{ext if zarr_out else '.zarr'}"
            return stack.enter_context(ZarrVolumeWriter(outdir / name, like=volume, shape=shape,
                                                        dtype=dtype, class_names=names))

        probs = store("probabilities", (k, *grid), np.float32)
        labels = store("labels", grid, labels_dtype(k)) if zarr_out else None
        unc = store("uncertainty", grid, np.float32) if zarr_out and options.uncertainty else None
        where = "Zarr outputs" if zarr_out else f"a scratch Zarr store in {outdir}"
        log.info("%s: streaming tile by tile into %s", stem, where)
        result = segment_volume(
            volume, model, probabilities=options.probabilities, uncertainty=options.uncertainty,
            probabilities_out=probs.array, labels_out=labels.array if labels else None,
            uncertainty_out=unc.array if unc else None, **predict_kwargs)
        if zarr_out:
            written = [labels.commit()]
            if options.probabilities:
                written.append(probs.commit())
            if unc is not None:
                written.append(unc.commit())
            return written, read_volume(written[0], lazy=True)
        written = [write_volume(outdir / f"{stem}_labels{ext}", result.labels)]
        if result.probabilities is not None:
            size = k * 4 * float(np.prod(grid))
            if size >= (1 << 30):
                log.warning("writing %s probabilities as %s loads all %d channels into memory "
                            "(%.1f GB); use --format zarr to stream them", stem, ext, k, size / 1e9)
            written.append(write_volume(outdir / f"{stem}_probabilities{ext}",
                                        result.probabilities.with_array(probs.array[...])))
        if result.uncertainty is not None:
            written.append(write_volume(outdir / f"{stem}_uncertainty{ext}", result.uncertainty))
        return written, result.labels
