"""The run of the 3D Slicer module: Slicer's progress protocol, scribbles and the segmentation.

Public names are re-exported by :mod:`napari_cnnseg.cli.slicer`. numpy, SimpleITK, torch and
the engine are imported inside the functions only, so that ``cnnseg-slicer --xml`` stays fast.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO
from xml.sax.saxutils import escape

from ..core.precisions import TRAIN_PRECISION_CHOICES as FINETUNE_PRECISIONS
from ._slicer_params import MODULE_NAME, NO_SHIPPED_MODEL

#: records keep the public module's logger name (what users configure and filter on)
log = logging.getLogger("napari_cnnseg.cli.slicer")

#: precisions core.training.finetune accepts (fp16 is an inference-only choice)


# ---------- Progress in Slicer's protocol ---------------------------------------------------
class SlicerProgress:
    """Writes Slicer's progress lines (flushed) on a stream: overall progress is monotone 0..1.

    Args:
        stages: ``(key, weight)`` pairs in running order; weights are normalised.
        stream: text stream, stdout by default.
    """

    def __init__(self, stages: Sequence[tuple[str, float]], stream: TextIO | None = None):
        total = sum(w for _, w in stages)
        self._start: dict[str, float] = {}
        self._weight: dict[str, float] = {}
        acc = 0.0
        for key, weight in stages:
            self._start[key], self._weight[key] = acc, weight / total
            acc += weight / total
        self._stream = stream if stream is not None else sys.stdout
        self._stage = stages[0][0]
        self._last = -1.0
        self._t0 = time.perf_counter()

    def _write(self, text: str) -> None:
        self._stream.write(text + "\n")
        self._stream.flush()

    def _progress(self, value: float, stage_fraction: float) -> None:
        value = min(1.0, max(value, self._last, 0.0))
        if round(value, 3) == round(self._last, 3) and 0.0 < stage_fraction < 1.0:
            return  # unchanged at the printed precision
        self._last = value
        self._write(f"<filter-progress>{value:.4f}</filter-progress>")
        self._write(f"<filter-stage-progress>{stage_fraction:.4f}</filter-stage-progress>")

    def begin(self, comment: str) -> None:
        """Open the filter block and report 0."""
        self._write(f"<filter-start>\n<filter-name>{MODULE_NAME}</filter-name>\n"
                    f"<filter-comment>{escape(comment)}</filter-comment>\n</filter-start>")
        self._progress(0.0, 0.0)

    def stage(self, key: str, comment: str) -> None:
        """Start stage ``key`` (a key given to the constructor) with a status comment."""
        self._stage = key
        self._write(f"<filter-comment>{escape(comment)}</filter-comment>")
        self._progress(self._start[key], 0.0)

    def __call__(self, done: int, total: int) -> None:
        """``progress(done, total)`` callback of the engine for the current stage."""
        frac = min(1.0, max(0.0, done / total)) if total > 0 else 1.0
        self._progress(self._start[self._stage] + frac * self._weight[self._stage], frac)

    def end(self) -> None:
        """Report 1 and close the filter block."""
        if self._last < 1.0:
            self._progress(1.0, 1.0)
        self._write(f"<filter-end>\n<filter-name>{MODULE_NAME}</filter-name>\n"
                    f"<filter-time>{time.perf_counter() - self._t0:.1f}</filter-time>\n</filter-end>")


# ---------- The run itself ------------------------------------------------------------------
def scribbles_on_grid(scribbles: Any, image: Any) -> Any:
    """Scribble values (Z, Y, X) on the image's voxel grid.

    A scribble label map on another grid (Slicer crops label maps exported from a segmentation
    to their extent) is resampled onto the image grid with nearest-neighbour interpolation in
    physical (LPS) space; voxels outside it are unpainted (0).

    Args:
        scribbles: scribble :class:`~napari_cnnseg.core.io.Volume` (Z, Y, X), integer values.
        image: image Volume (Z, Y, X) or (C, Z, Y, X) whose grid is the target.

    Returns:
        int64 array with the image's (Z, Y, X) shape.
    """
    import numpy as np

    from ..core.errors import InputError
    from ..core.io import Volume, volume_to_sitk

    if scribbles.array.ndim != 3:
        raise InputError(
            f"the scribbles must be a 3D label map, got shape {scribbles.array.shape}; "
            "export the scribble segment(s) as one label map volume"
        )
    from ..core.scribbles import check_scribbles

    # whole numbers >= 0 (the grid and the class range are checked once, on the image grid)
    values = check_scribbles(scribbles.array, require_painted=False)
    if scribbles.same_grid(image):
        return values.astype(np.int64, copy=False)
    import SimpleITK as sitk

    log.warning("scribbles are on another voxel grid than the input: resampling them onto it")
    ref = volume_to_sitk(image.with_array(np.zeros(image.array.shape[-3:], dtype=np.uint8)))
    moving = volume_to_sitk(Volume(values.astype(np.int32), scribbles.spacing, scribbles.origin,
                                   scribbles.direction))
    moved = sitk.Resample(moving, ref, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkInt32)
    return sitk.GetArrayFromImage(moved).astype(np.int64)


def keep_largest_components(labels: Any) -> Any:
    """Keep only the largest 26-connected component of each foreground class; the rest becomes 0.

    Args:
        labels: integer label map (Z, Y, X).

    Returns:
        The filtered label map (new array, same dtype).
    """
    import numpy as np
    from scipy import ndimage

    out = np.array(labels, copy=True)
    for k in np.unique(out):
        if k == 0:
            continue
        comp, n = ndimage.label(out == k, structure=np.ones((3, 3, 3), dtype=bool))
        if n > 1:
            sizes = np.bincount(comp.ravel())
            sizes[0] = 0
            out[(comp != 0) & (comp != int(np.argmax(sizes)))] = 0
    return out


def _warn_spacing(trained: Any, spacing: Sequence[float]) -> None:
    """Warn (stdout) when the voxel size differs by more than 1.5x from the model's training."""
    if not trained or len(trained) != 3:
        return
    ratios = [max(a / b, b / a) for a, b in zip(spacing, trained, strict=True) if a > 0 and b > 0]
    if ratios and max(ratios) > 1.5:
        log.warning(
            "the model was trained on %s mm voxels (z,y,x), the input has %s mm: results may "
            "suffer; paint a few scribbles to fine-tune it on this volume",
            "x".join(f"{v:g}" for v in trained), "x".join(f"{v:g}" for v in spacing),
        )


def _check_paths(args: argparse.Namespace) -> None:
    from ..core.errors import InputError

    for name in ("inputVolume", "modelFile", "scribbles"):
        path = getattr(args, name)
        if path and not Path(path).exists():
            raise InputError(f"{name}: file not found: {path}")
    if args.model == NO_SHIPPED_MODEL and not args.modelFile:
        raise InputError("no model is shipped with this installation: choose a Model file")


def _finetune(args: argparse.Namespace, model: Any, image: Any, scribbles: Any,
              progress: SlicerProgress) -> None:
    """The fine-tuning stage: the recipe of the Fine-tune dock and ``cnnseg finetune`` for
    where the model started (a checkpoint of a net that started new for its task goes on with
    the new-task recipe; a shipped or trained model is adapted gently), then the optional
    output model."""
    from ..core.models import model_meta
    from ..core.training import finetune, recommended_crop, recommended_settings, started_new

    progress.stage("finetune", f"Fine-tuning on scribbles ({args.finetuneSeconds:g} s)")
    train_precision = args.precision
    if train_precision not in FINETUNE_PRECISIONS:
        log.warning("fine-tuning does not run in %s; it uses precision auto", train_precision)
        train_precision = "auto"
    finetune(model, image.array, scribbles, seconds=float(args.finetuneSeconds),
             progress=progress, device=args.device, precision=train_precision,
             crop_shape=recommended_crop(image.array.shape[-3:], image.spacing),
             **recommended_settings(started_new(model), model))
    if args.outputModel:
        from ..core.models import save_model

        meta = dict(model_meta(model))
        note = f"fine-tuned in 3D Slicer on scribbles of {Path(args.inputVolume).name}"
        meta["description"] = "; ".join(t for t in (meta.get("description"), note) if t)
        save_model(args.outputModel, model, **meta)


def run_segmentation(args: argparse.Namespace, stream: TextIO | None = None) -> None:
    """Read, (fine-tune,) segment and write as the parsed arguments say, reporting progress.

    Args:
        args: namespace from :func:`build_parser` (dests are the XML parameter names).
        stream: where progress lines go (stdout by default).

    Raises:
        CnnsegError: bad input, model or option; the message says what to do.
    """
    _check_paths(args)
    import numpy as np

    from ..core.errors import InputError
    from ..core.io import read_volume, write_volume
    from ..core.models import model_meta, resolve_model
    from ..core.pipeline import segment_volume

    finetuning = bool(args.scribbles)
    stages = [("read", 0.05)]
    stages += [("finetune", 0.45), ("segment", 0.45)] if finetuning else [("segment", 0.85)]
    stages += [("write", 0.05)]
    progress = SlicerProgress(stages, stream)
    progress.begin("Reading the input volume and the model")

    image = read_volume(args.inputVolume, all_channels=True)
    model = resolve_model(args.modelFile or args.model)
    num_classes = int(getattr(model, "num_classes", 0) or len(model_meta(model)["class_names"]))
    if args.outputProbability and not 0 <= args.probabilityClass < num_classes:
        raise InputError(
            f"probability class {args.probabilityClass} does not exist: the model has "
            f"{num_classes} classes (0..{num_classes - 1}, 0 = background)"
        )
    _warn_spacing(model_meta(model).get("spacing"), image.spacing)
    scribbles = None
    if finetuning:
        from ..core.scribbles import check_scribbles

        scribbles = check_scribbles(scribbles_on_grid(read_volume(args.scribbles), image),
                                    image.array.shape[-3:], num_classes,
                                    what="the scribbles")
    progress(1, 1)

    if finetuning:
        _finetune(args, model, image, scribbles, progress)
    progress.stage("segment", "Segmenting")
    result = segment_volume(
        image, model, probabilities=bool(args.outputProbability), uncertainty=False,
        tile_shape=args.tileSize, overlap=args.overlap, batch_size=args.batchSize or None,
        device=args.device, precision=args.precision, progress=progress,
    )
    progress.stage("write", "Writing the label map")
    labels = result.labels
    if args.largestComponent:
        labels = labels.with_array(keep_largest_components(labels.array))
    write_volume(args.outputLabelmap, labels)
    progress(1, 2)
    if args.outputProbability:
        prob = np.asarray(result.probabilities.array[args.probabilityClass], dtype=np.float32)
        write_volume(args.outputProbability, result.labels.with_array(prob))
    progress(2, 2)
    progress.end()


@contextlib.contextmanager
def _quiet_stderr(redirect_fd: bool) -> Iterator[None]:
    """Route warnings and log records to stdout: Slicer reports any stderr output as an error.

    Args:
        redirect_fd: also point file descriptor 2 at stdout for the duration, so that native
            libraries' messages (e.g. torch's C++ warnings) cannot reach stderr either.
    """
    root = logging.getLogger()
    handler = logging.StreamHandler(sys.stdout)
    handler.setLevel(logging.WARNING)
    handler.setFormatter(logging.Formatter("cnnseg-slicer: %(levelname)s: %(message)s"))
    root.addHandler(handler)
    logging.captureWarnings(True)
    saved_fd = None
    if redirect_fd:
        with contextlib.suppress(OSError, ValueError, AttributeError):
            sys.stdout.flush()
            sys.stderr.flush()
            saved_fd = os.dup(2)
            os.dup2(sys.stdout.fileno(), 2)
    try:
        yield
    finally:
        if saved_fd is not None:
            sys.stdout.flush()
            os.dup2(saved_fd, 2)
            os.close(saved_fd)
        logging.captureWarnings(False)
        root.removeHandler(handler)
