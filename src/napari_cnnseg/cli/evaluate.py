"""``cnnseg evaluate PREDICTION GROUND_TRUTH [--json]``: Dice and 95% Hausdorff per class.

Example::

    $ cnnseg evaluate out/head1_labels.nii.gz head1_gt.nii.gz
    class  name        dice    hd95_mm
    0      background  0.9952  1.41
    1      brain       0.9431  2.00
    mean foreground dice 0.9431

Both label maps must lie on the same grid. Distances are in physical units (mm) from the
ground truth's spacing. ``--json`` prints one JSON object instead (``hd95`` of a class missing
from exactly one map is ``null``, i.e. infinite).
"""

from __future__ import annotations

import argparse
import json
import logging
import math

log = logging.getLogger(__name__)

#: a label map with more distinct values than this gets a warning (an image given by mistake?)
LABEL_VALUES_WARN = 64


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``cnnseg evaluate``."""
    p = sub.add_parser(
        "evaluate",
        help="compare a label map with ground truth: Dice and 95%% Hausdorff (mm) per class",
        description="Dice and 95% Hausdorff distance (physical units) of every class.",
    )
    p.add_argument("prediction", metavar="PREDICTION", help="predicted label map")
    p.add_argument("ground_truth", metavar="GROUND_TRUTH", help="ground-truth label map, same grid")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--classes", type=int, default=None,
                   help="number of classes K (default: largest label in either map + 1)")
    p.add_argument("--class-names", nargs="+", default=None, help="names to print, background first")
    return p


def evaluate_volumes(pred, gt, num_classes: int | None = None) -> dict:
    """Metrics of two :class:`~napari_cnnseg.core.io.Volume` label maps on one grid."""
    import numpy as np

    from ..core.errors import InputError
    from ..core.metrics import dice_per_class, hausdorff95, mean_foreground_dice

    p, g = np.asarray(pred.array), np.asarray(gt.array)
    if not pred.same_grid(gt):
        raise InputError(
            f"prediction (shape {p.shape}, spacing {pred.spacing}, origin {pred.origin}) and "
            f"ground truth (shape {g.shape}, spacing {gt.spacing}, origin {gt.origin}) are on "
            "different grids; resample the prediction onto the ground truth first"
        )
    if num_classes is not None:
        labels = [a for a in (p, g) if a.size and (a.dtype == bool or np.issubdtype(a.dtype, np.integer))]
        found = max((int(a.max()) for a in labels), default=0) + 1
        if num_classes < max(found, 1):
            raise InputError(f"--classes {num_classes} is too small: the labels go up to {found - 1}; "
                             f"pass --classes {max(found, 2)} or more, or leave it out")
    dice = dice_per_class(p, g, num_classes)
    k = len(dice)
    hd = hausdorff95(p, g, spacing=gt.spacing, num_classes=k)
    return {
        "classes": k,
        "dice": {str(c): round(v, 6) for c, v in dice.items()},
        "hd95": {str(c): (None if math.isinf(v) else round(v, 4)) for c, v in hd.items()},
        "mean_foreground_dice": round(mean_foreground_dice(p, g, k), 6),
        "spacing": [float(s) for s in gt.spacing],
        "units": "mm",
    }


def _read_label_map(path: str, role: str):
    """A label map; a multi-channel file (e.g. probabilities) is one clear error."""
    from ..core.errors import InputError
    from ..core.io import read_volume

    vol = read_volume(path, all_channels=True)
    if vol.num_channels > 1:
        raise InputError(
            f"{role} {path} has {vol.num_channels} channels (shape {tuple(vol.shape)}), like a "
            "probability map; give a label map of class indices (cnnseg segment's *_labels file)"
        )
    import numpy as np

    n = int(np.unique(np.asarray(vol.array)).size)  # non-integer maps: core.metrics refuses them
    if n > LABEL_VALUES_WARN:
        log.warning("%s %s has %d distinct values: is it an image rather than a label map? "
                    "(each value is scored as a class)", role, path, n)
    return vol


def run(args: argparse.Namespace) -> int:
    """Print the metrics; returns 0."""
    res = evaluate_volumes(_read_label_map(args.prediction, "PREDICTION"),
                           _read_label_map(args.ground_truth, "GROUND_TRUTH"), args.classes)
    if args.json:
        print(json.dumps(res))
        return 0
    names = list(args.class_names or [])
    print(f"{'class':<6} {'name':<14} {'dice':>8} {'hd95_mm':>9}")
    for c in range(res["classes"]):
        name = names[c] if c < len(names) else ("background" if c == 0 else f"class {c}")
        hd = res["hd95"][str(c)]
        print(f"{c:<6} {name:<14} {res['dice'][str(c)]:>8.4f} "
              f"{('inf' if hd is None else f'{hd:.2f}'):>9}")
    print(f"mean foreground dice {res['mean_foreground_dice']:.4f}")
    return 0
