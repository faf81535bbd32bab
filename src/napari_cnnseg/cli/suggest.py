"""``cnnseg suggest IMAGE -m MODEL [--top 5] [--json] [--scribbles S]``: where to paint next.

Example::

    $ cnnseg suggest brain2_image.nrrd -m brain2_round1
    1. slice 13 of 23, region around (y 142, x 97)   box y 128-156 x 84-112   score 210.4
    2. slice 12 of 23, region around (y 140, x 99)   box y 131-150 x 88-109   score 96.2
    ...

Segments the image with the model (as ``cnnseg segment``) and ranks the axial slices by the
model's expected error there (``core.suggest``, docs/guided.md): the slices to paint next, best
first, each with the region of the slice that holds most of the error. Slice numbers are
0-based, as napari's dims slider shows them; boxes are half-open (y0-y1 means y0 <= y < y1).
With ``--scribbles`` (the strokes painted so far, 0 = unpainted, k = class k-1, on the image
grid) painted voxels count for nothing, slices that carry strokes are down-weighted, and a
two-class label map keeps only the regions that touch a stroke (what the dock shows); without
it, the strokes a fine-tuned checkpoint remembers (``stroke_seeds`` in its metadata) stand in.
``--per-class`` ranks each class on where it is probably missed and names the class to paint
on each line. ``--json`` prints one JSON document instead. Progress of the prediction goes to
stderr.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``cnnseg suggest``."""
    p = sub.add_parser(
        "suggest",
        help="rank the slices to paint next by the model's expected error",
        description=(
            "Segment IMAGE with MODEL and print the axial slices where the model is most likely "
            "wrong, best first, each with the region to look at (0-based slice numbers, as "
            "napari's slider shows them)."
        ),
    )
    p.add_argument("image", metavar="IMAGE", help="image volume (NIfTI, NRRD, TIFF, Zarr, DICOM...)")
    p.add_argument("-m", "--model", required=True,
                   help="checkpoint path or shipped model name (see `cnnseg models`)")
    p.add_argument("--top", type=int, default=5, help="how many suggestions (default 5)")
    p.add_argument("--scribbles", "-s", default=None, metavar="S",
                   help="strokes painted so far, on the image grid (0 = unpainted, k = class k-1)")
    p.add_argument("--per-class", action="store_true",
                   help="rank each class on where it is probably missed (up to --top per "
                        "class), each line naming the class to paint")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.add_argument("--channel", type=int, default=None, help="channel of a multi-channel image")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps")
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"))
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    return p


def _read_scribbles(path: str, image, num_classes: int):
    """The scribble array (Z, Y, X) int64, checked to lie on the image grid."""
    import numpy as np

    from ..core.errors import InputError
    from ..core.io import read_volume
    from ..core.scribbles import check_scribbles

    scrib = read_volume(path)
    if scrib.array.ndim != 3:
        raise InputError(f"scribbles must be one 3D label map, got shape {scrib.array.shape}")
    if not scrib.same_grid(image):
        raise InputError(
            f"scribbles (shape {scrib.array.shape}, spacing {scrib.spacing}) are not on the image "
            f"grid (shape {tuple(image.array.shape[-3:])}, spacing {image.spacing}); give the "
            "strokes painted on this image")
    return check_scribbles(np.asarray(scrib.array), tuple(image.array.shape[-3:]), num_classes,
                           require_painted=False,
                           what=f"scribbles {Path(path).name}").astype(np.int64)


def format_line(rank: int, suggestion, shape, class_names=()) -> str:
    """One plain line of the ranking (``paint <class>`` first with a per-class ranking)."""
    b = suggestion.bbox
    names = [n for i, n in enumerate("zyx") if i != suggestion.axis]
    what = ""
    if suggestion.label is not None:
        c = suggestion.label
        what = f"paint {class_names[c] if c < len(class_names) else f'class {c}'}: "
    return (f"{rank}. {what}{suggestion.describe(shape)}   box {names[0]} {b[0]}-{b[1]} "
            f"{names[1]} {b[2]}-{b[3]}   score {suggestion.score:.1f}")


def run(args: argparse.Namespace) -> int:
    """Segment, rank, print; returns 0."""
    import numpy as np

    from ..core.cohort_io import read_input
    from ..core.devices import resolve_device
    from ..core.errors import InputError
    from ..core.inference import network_spec
    from ..core.models import resolve_model
    from ..core.pipeline import segment_volume
    from ..core.suggest import seed_scribbles, suggest
    from .segment import ProgressBar

    if args.top < 1:
        raise InputError(f"--top must be >= 1, got {args.top}")
    resolve_device(args.device)  # fail early on a bad device
    model = resolve_model(args.model)
    volume = read_input(Path(args.image), model, args.channel)
    k = network_spec(model).num_classes
    scribbles = _read_scribbles(args.scribbles, volume, k) if args.scribbles else None
    bar = None if args.quiet else ProgressBar(Path(args.image).name)
    # with the strokes: the label map the dock shows after fine-tuning on them (graph cut and
    # stroke-connected components for one structure); without: the model's remembered strokes
    result = segment_volume(volume, model, uncertainty=False, device=args.device,
                            precision=args.precision, progress=bar, strokes=scribbles)
    probs = np.asarray(result.probabilities.array)
    labels = np.asarray(result.labels.array)
    if scribbles is None:  # the strokes a fine-tuned model remembers: what the dock knew
        scribbles = seed_scribbles(getattr(model, "meta", None), labels.shape)
    ranked = suggest(probs, scribbles=scribbles, top=args.top, labels=labels,
                     per_class=args.per_class)
    shape = tuple(int(s) for s in probs.shape[1:])
    if args.json:
        doc = {"image": str(args.image), "model": str(args.model), "shape": list(shape),
               "slice_numbers": "0-based", "suggestions": [
                   {"rank": i, **s.to_dict(), "description": s.describe(shape)}
                   for i, s in enumerate(ranked, start=1)]}
        print(json.dumps(doc), flush=True)
    elif not ranked:
        print("no suggestion: the model is confident on every voxel", flush=True)
    else:
        for i, s in enumerate(ranked, start=1):
            print(format_line(i, s, shape, result.class_names), flush=True)
    return 0
