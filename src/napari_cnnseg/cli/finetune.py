"""``cnnseg finetune IMAGE --scribbles S [-m MODEL] -o NEWMODEL``: fine-tune a model on scribbles.

Example::

    $ cnnseg finetune head.nii.gz --scribbles head_scribbles.nii.gz -m brain-t1-unet \\
          -o brain_head1 --seconds 30
    step 40/120 loss 0.3121 12.1s
    ...
    brain_head1.safetensors

Scribbles are a label map on the image grid: 0 = unlabelled, k = class k-1 (1 = background).
Without ``-m`` a new net for a new structure is built (the Fine-tune dock's default: a
``feature_net`` for the image's spacing, as many classes as the scribbles use); ``-m`` takes a
checkpoint path or shipped model name to go on from (a checkpoint saved from a new net goes on
with the new-net recipe, as the dock's later rounds do), or an architecture name (``unet``,
``multiscale``, ...) for a fresh net of that family. The recipe (lr, prior on unpainted voxels)
follows the start: ``core.training.recommended_settings``.
Progress goes to stderr; the checkpoint (``NEWMODEL.safetensors`` + ``.json``) is written
atomically and its path printed on stdout.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

from ..core.precisions import TRAIN_PRECISION_CHOICES


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``cnnseg finetune``."""
    p = sub.add_parser(
        "finetune",
        help="fine-tune a model on brush scribbles (sparse labels) and save a new checkpoint",
        description=(
            "Train a model on the painted voxels of a scribble volume (0 = unlabelled, "
            "k = class k-1) over an image, then save it as NEWMODEL.safetensors + .json."
        ),
    )
    p.add_argument("image", metavar="IMAGE", help="image volume (NIfTI, NRRD, TIFF, Zarr, DICOM...)")
    p.add_argument("--scribbles", "-s", required=True, metavar="S",
                   help="scribble label map on the image grid (0 = unlabelled, k = class k-1)")
    p.add_argument("-m", "--model", default=None,
                   help="checkpoint path or shipped model name to go on from, or an architecture "
                        "name for a fresh net of that family (default: the recommended new net for "
                        "a new structure, as the Fine-tune dock's default)")
    p.add_argument("-o", "--output", required=True, metavar="NEWMODEL",
                   help="output checkpoint stem (.safetensors/.json added)")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--seconds", type=float, default=None, help="training time budget")
    budget.add_argument("--steps", type=int, default=None, help="optimisation steps (default 100)")
    p.add_argument("--lr", type=float, default=None,
                   help="AdamW learning rate (default 5e-4 for a trained model, 2e-3 for a fresh "
                        "architecture)")
    p.add_argument("--batch", type=int, default=4, help="crops per step (default 4)")
    p.add_argument("--crop", nargs=3, type=int, metavar=("Z", "Y", "X"),
                   help="output crop per sample (default: 64 in-plane, the same width in mm "
                        "along z within 4..16 slices, clipped to the image)")
    p.add_argument("--prior-weight", type=float, default=None,
                   help="weight of the background prior on unpainted voxels (0 = off)")
    p.add_argument("--prior", choices=("background", "self", "voxel"), default=None,
                   help="what unpainted voxels are pulled towards: class 0 (background: "
                        "class-balanced; voxel: each unpainted voxel a weak background target), "
                        "or the starting model's own predictions (default: the recipe of the "
                        "start, see docs/training.md)")
    p.add_argument("--channel", type=int, default=None, help="channel of a multi-channel image")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps")
    p.add_argument("--precision", default="auto", choices=TRAIN_PRECISION_CHOICES)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--class-names", nargs="+", default=None,
                   help="class names (background first) stored in the new checkpoint")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    return p


class _Progress:
    """``progress(done, total)`` writing a few lines on stderr.

    With a seconds budget (``estimated``) the total is only an estimate that catches up with
    the step count near the end: lines then read ``step 10/~40`` (step 1, then every ``every``
    steps), and :meth:`finish` prints the last step once training returns.
    """

    def __init__(self, history, every: int = 10, estimated: bool = False) -> None:
        self.start = time.perf_counter()
        self.every = every
        self.history = history
        self.estimated = estimated
        self.last = 0

    def __call__(self, done: int, total: int) -> None:
        if done % self.every and done != 1 and (self.estimated or done != total):
            return  # the first step (set-up is over), every `every` steps, the last one
        self._line(done, f"~{total}" if self.estimated else str(total))

    def finish(self, done: int) -> None:
        """Print the final step (seconds budget: its total is known only now)."""
        if self.estimated and done != self.last:
            self._line(done, str(done))

    def _line(self, done: int, total: str) -> None:
        self.last = done
        loss = self.history.losses[-1] if self.history.losses else float("nan")
        print(f"step {done}/{total} loss {loss:.4f} {time.perf_counter() - self.start:.1f}s",
              file=sys.stderr, flush=True)


def _check_options(args: argparse.Namespace) -> None:
    """Option values the training would reject only later, named as the user typed them."""
    from ..core.errors import InputError

    if args.steps is not None and args.steps < 1:
        raise InputError(f"--steps must be >= 1, got {args.steps}")
    if args.seconds is not None and not (math.isfinite(args.seconds) and args.seconds > 0):
        raise InputError(f"--seconds must be > 0, got {args.seconds}")
    if args.lr is not None and not (math.isfinite(args.lr) and args.lr > 0):
        raise InputError(f"--lr must be > 0 (e.g. 5e-4), got {args.lr}")
    if args.batch < 1:
        raise InputError(f"--batch must be >= 1, got {args.batch}")
    if args.crop is not None and min(args.crop) < 1:
        raise InputError(f"--crop must be 3 positive integers (Z Y X), got {args.crop}")
    if args.prior_weight is not None and not (math.isfinite(args.prior_weight)
                                              and args.prior_weight >= 0):
        raise InputError(f"--prior-weight must be >= 0, got {args.prior_weight}")
    out = Path(args.output)
    if args.output.endswith(("/", os.sep)) or out.is_dir():
        raise InputError(f"-o {args.output} is a folder; give a checkpoint name such as "
                         f"{out / 'my_model'} (writes my_model.safetensors + .json)")
    parent = out.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent  # save_model creates the missing folders below this one
    if not parent.is_dir():
        raise InputError(f"cannot write -o {args.output}: {parent} is a file, not a folder; "
                         "choose another -o")
    if not _can_write_in(parent):
        raise InputError(f"cannot write -o {args.output}: folder {parent} is not writable; "
                         "choose another -o")


def _can_write_in(folder: Path) -> bool:
    """Whether a file can be created in ``folder``: tried for real with a probe file (as root,
    ``os.access`` says yes even on a read-only mount, and training would be lost at save)."""
    import tempfile

    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".cnnseg-write-test-"):
            return True
    except OSError:
        return False


def _load_model(spec: str | None, num_classes: int, in_channels: int, spacing):
    """(model, new_task): a checkpoint / shipped model, or a new net (``spec`` None = the
    recommended family, or an architecture name). ``new_task``: the net started untrained
    for this task (also a checkpoint saved from such a net), so its recipe applies."""
    from ..core.models import (
        architecture_names,
        build_model,
        interactive_config,
        list_pretrained,
        resolve_model,
    )
    from ..core.models.registry import NEW_TASK_FAMILY
    from ..core.training import started_new

    if spec is None:
        spec = NEW_TASK_FAMILY
    elif not (spec in architecture_names() and spec not in list_pretrained()
              and not Path(spec).exists()):
        model = resolve_model(spec)
        return model, started_new(model)
    num_classes = max(2, num_classes)
    model = build_model(spec, in_channels=in_channels, num_classes=num_classes,
                        **interactive_config(spec, spacing, num_classes))
    model.meta = {**(getattr(model, "meta", None) or {}), "new_task": True}
    return model, True


def run(args: argparse.Namespace) -> int:
    """Fine-tune and save; returns 0."""
    import numpy as np

    from ..core.errors import InputError
    from ..core.io import read_volume
    from ..core.models import model_meta, save_model
    from ..core.training import (
        FinetuneHistory,
        finetune,
        recommended_crop,
        recommended_settings,
    )
    from .segment import check_image_values

    _check_options(args)
    image = read_volume(args.image, channel=args.channel)
    check_image_values(image.array, Path(args.image).name, allow_nonfinite=False)
    scrib = read_volume(args.scribbles)
    if scrib.array.ndim != 3:
        raise InputError(f"scribbles must be one 3D label map, got shape {scrib.array.shape}")
    if not scrib.same_grid(image):
        raise InputError(
            f"scribbles (shape {scrib.array.shape}, spacing {scrib.spacing}, origin {scrib.origin}) "
            f"are not on the image grid (shape {image.array.shape[-3:]}, spacing {image.spacing}, "
            f"origin {image.origin}); paint them on the image (same shape, spacing, origin and "
            "direction)"
        )
    from ..core.scribbles import check_scribbles  # the one scribble check (integers, >= 0, painted)

    scribbles = check_scribbles(scrib.array, image.array.shape[-3:],
                                what=f"scribbles {Path(args.scribbles).name}").astype(np.int64)
    in_ch = 1 if image.array.ndim == 3 else image.array.shape[0]
    model, fresh = _load_model(args.model, int(scribbles.max()), in_ch,
                               tuple(float(v) for v in image.spacing))
    k = int(getattr(getattr(model, "source_model", None) or model, "num_classes", 0) or 0)
    if args.class_names and k and len(args.class_names) != k:
        raise InputError(f"--class-names gives {len(args.class_names)} name(s) but the model has "
                         f"{k} classes; give {k} names, background first")
    recipe = recommended_settings(fresh, model)  # what docs/training.md measured for this start
    prior = args.prior or recipe["prior"]
    live = FinetuneHistory()
    progress = None if args.quiet else _Progress(live, estimated=args.steps is None
                                                 and args.seconds is not None)
    history = finetune(
        model, np.asarray(image.array), scribbles, steps=args.steps, seconds=args.seconds,
        lr=recipe["lr"] if args.lr is None else args.lr, batch_size=args.batch,
        crop_shape=tuple(args.crop) if args.crop else recommended_crop(
            image.array.shape[-3:], image.spacing),
        prior_weight=recipe["prior_weight"] if args.prior_weight is None else args.prior_weight,
        prior=prior,
        device=args.device, precision=args.precision, seed=args.seed, progress=progress,
        history=live,
    )
    if progress is not None:
        progress.finish(history.steps)
    meta = model_meta(model)
    if args.class_names:
        meta["class_names"] = list(args.class_names)
    meta["spacing"] = [float(s) for s in image.spacing]
    meta["description"] = (
        f"fine-tuned by cnnseg finetune on {Path(args.image).name} "
        f"({int((scribbles > 0).sum())} painted voxels, {history.steps} steps)"
    )
    out = save_model(args.output, model, **meta)
    print(out, flush=True)
    return 0
