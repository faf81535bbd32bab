"""Scribble benchmark: a simulated user's strokes, the product's fine-tuning loop vs a random forest.

Usage::

    python benchmarks/bench_scribbles.py --image IMG --labels GT [--user clinician|sparse]
        [--rounds 3] [--seed 0] [--model NAME_OR_CHECKPOINT] [--synthetic-lesion SEED] [--quick]

The CNN side is the product's own loop, driven through :class:`napari_cnnseg._session.Session`
(what the Fine-tune dock drives): a new net for the task (``Session.new_model("unet")``, which
picks the recommended network for the image's spacing) or ``--model``, fine-tuned for
``--seconds-per-round`` per round with the recipe the dock uses, then the whole volume is
predicted (the dock's refresh, timed as ``refresh_seconds``). The random forest (100 trees on
``multiscale_basic_features``, sigma up to 16, as ilastik's defaults span) is trained on its
own strokes: **each method is corrected on its own mistakes** by the same simulated user
(``--user clinician``, the default: ``_clinician.py``; ``--user sparse``: the older thin
strokes of ``_scribble_sim.py``).

``--synthetic-lesion SEED`` inserts one synthetic lesion (``_synthetic_lesions.py``) into the
image and benchmarks that lesion (``--labels`` is then not needed).

Prints one JSON line with ``dice_cnn_rounds``, ``dice_rf_rounds``, ``dice_cnn``, ``dice_rf``
(last round), ``mean_cnn``, ``mean_rf`` (mean over rounds), ``seconds_cnn`` (fine-tuning, all
rounds), ``refresh_seconds`` (whole-volume prediction per round), ``steps_cnn_rounds``,
``features_seconds`` (the fixed filters of a ``feature_net``, computed once per volume while
the user paints, not part of a round), ``seconds_rf``, ``labelled_voxels_cnn`` / ``_rf``,
``peak_rss_mb_cnn`` (after the CNN loop) and ``peak_rss_mb`` (after the RF too). Dice = mean over the
foreground classes of the ground truth. No setting depends on the dataset.

``--quick`` is a smoke test only (numbers meaningless): 2 rounds of 2 steps.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import emit, peak_rss_mb  # noqa: E402

from napari_cnnseg._session import Session, warm_up_training  # noqa: E402
from napari_cnnseg.core.io import read_volume  # noqa: E402
from napari_cnnseg.core.metrics import mean_foreground_dice  # noqa: E402

log = logging.getLogger("bench_scribbles")

#: fine-tuning budget per round (3 rounds fit the 60 s target)
SECONDS_PER_ROUND = 18.0


def compact_labels(labels: np.ndarray) -> np.ndarray:
    """Renumber label values to 0..K-1 in order (0 stays 0), e.g. {0, 3, 7} -> {0, 1, 2}.

    Ground truths often use sparse values (atlas codes); the net then needs K outputs, not
    ``max + 1``. Without a 0 in the map every class stays foreground: values map to 1..K.
    """
    values = np.unique(labels)
    start = 0 if values[0] == 0 else 1
    if np.array_equal(values, np.arange(start, start + len(values))):
        return labels
    log.info("label values %s renumbered to %d..%d", values.tolist(), start,
             start + len(values) - 1)
    return (np.searchsorted(values, labels) + start).astype(np.int64)


def user_for(name: str) -> Any:
    """The simulated user module: ``clinician`` or ``sparse``."""
    if name == "clinician":
        import _clinician as user
    else:
        import _scribble_sim as user
    return user


def cnn_session(args: argparse.Namespace, volume: Any, k: int) -> Session:
    """A Session on ``volume`` with the net the product starts a new task with (or --model)."""
    session = Session(autosave_folder=None)
    session.set_image(volume, name="bench")
    if args.model:
        session.load_model(args.model)
        if int(session.model.num_classes) != k:
            raise SystemExit(f"model {args.model} has {session.model.num_classes} classes, "
                             f"the labels {k}")
    else:
        from napari_cnnseg.core.models.registry import NEW_TASK_FAMILY

        names = ["background"] + [f"class {i}" for i in range(1, k)]
        session.new_model(args.family or NEW_TASK_FAMILY, names)
    return session


def train_options(args: argparse.Namespace) -> dict[str, Any]:
    """Overrides of the dock's recipe given on the command line (recipe studies only)."""
    out: dict[str, Any] = {"device": "cpu", "seed": args.seed}
    for key in ("lr", "prior", "prior_weight", "batch_size"):
        if getattr(args, key) is not None:
            out[key] = getattr(args, key)
    return out


def cnn_loop(args: argparse.Namespace, volume: Any, labels: np.ndarray, user: Any
             ) -> dict[str, Any]:
    """The product's loop: strokes, fine-tune + whole-volume refresh, corrections, per round."""
    k = int(labels.max()) + 1
    spacing = tuple(float(s) for s in volume.spacing)
    session = cnn_session(args, volume, k)
    scribbles = user.initial_strokes(labels, spacing, seed=args.seed)
    budget = ({"steps": args.steps_per_round} if args.steps_per_round
              else {"seconds": args.seconds_per_round})
    warm_up_training()  # the Fine-tune dock does both while the user paints
    features_s = session.prepare_features()
    dice, steps, train_s, refresh_s = [], [], [], []
    for r in range(args.rounds):
        opts = train_options(args)
        opts["seed"] = args.seed + r
        t0 = time.perf_counter()
        outcome = session.finetune(scribbles, refresh=False, **budget, **opts)
        train_s.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        labels_now = session.segment(scribbles=scribbles).labels
        refresh_s.append(time.perf_counter() - t0)
        steps.append(int(outcome.steps))
        dice.append(mean_foreground_dice(labels_now, labels, k))
        log.info("cnn round %d: %d steps in %.1f s, %d painted, Dice %.3f", r + 1, steps[-1],
                 train_s[-1], int((scribbles > 0).sum()), dice[-1])
        if r + 1 < args.rounds:
            scribbles = user.correction_strokes(labels, labels_now, scribbles, spacing,
                                                seed=args.seed + 100 + r)
    return {"dice": dice, "steps": steps, "train_s": train_s, "refresh_s": refresh_s,
            "labelled": int((scribbles > 0).sum()), "features_s": features_s,
            "peak_rss_mb": peak_rss_mb()}


def rf_loop(args: argparse.Namespace, image: np.ndarray, labels: np.ndarray,
            spacing: tuple[float, float, float], user: Any) -> dict[str, Any]:
    """The random forest corrected on its own mistakes by the same simulated user."""
    from _rf_baseline import RandomForestBaseline, rf_features  # scikit-learn: only here

    t0 = time.perf_counter()
    rf = RandomForestBaseline(rf_features(image), seed=args.seed)
    feature_s = time.perf_counter() - t0
    k = int(labels.max()) + 1
    scribbles = user.initial_strokes(labels, spacing, seed=args.seed)
    dice = []
    for r in range(args.rounds):
        pred = rf.fit_predict(scribbles)
        dice.append(mean_foreground_dice(pred, labels, k))
        log.info("rf round %d: %d painted, Dice %.3f", r + 1, int((scribbles > 0).sum()), dice[-1])
        if r + 1 < args.rounds:
            scribbles = user.correction_strokes(labels, pred, scribbles, spacing,
                                                seed=args.seed + 100 + r)
    return {"dice": dice, "seconds": rf.seconds + feature_s,
            "labelled": int((scribbles > 0).sum())}


def load_task(args: argparse.Namespace) -> tuple[Any, np.ndarray]:
    """The image Volume and its ground truth (compacted to 0..K-1)."""
    volume = read_volume(args.image)
    if volume.array.ndim != 3:
        raise SystemExit(f"expected a 3D image (Z, Y, X), got shape {volume.array.shape}")
    if args.synthetic_lesion is not None:
        from _synthetic_lesions import insert_lesion

        image, mask = insert_lesion(volume.array, volume.spacing, seed=args.synthetic_lesion)
        return dataclasses.replace(volume, array=image), mask.astype(np.int64)
    if not args.labels:
        raise SystemExit("--labels is required (or --synthetic-lesion SEED)")
    labels = np.asarray(read_volume(args.labels).array).astype(np.int64)
    if labels.shape != volume.array.shape:
        raise SystemExit(f"image {volume.array.shape} and labels {labels.shape} differ in shape")
    if labels.min() < 0:
        raise SystemExit("the label map has negative values; class labels must be 0, 1, 2, ...")
    return volume, compact_labels(labels)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--image", required=True, help="image volume (any core.io format)")
    p.add_argument("--labels", default=None, help="ground-truth label map on the same grid")
    p.add_argument("--synthetic-lesion", type=int, default=None, metavar="SEED",
                   help="insert a synthetic lesion into the image and benchmark that lesion")
    p.add_argument("--user", choices=("clinician", "sparse"), default="clinician",
                   help="simulated user (default clinician)")
    p.add_argument("--rounds", type=int, default=None, help="default 3; 2 with --quick")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model", default=None,
                   help="start from this shipped model or checkpoint (default: a new net)")
    p.add_argument("--family", default=None,
                   help="network family of the new net (default: the one the dock starts a new "
                        "task with; recipe studies)")
    p.add_argument("--seconds-per-round", type=float, default=SECONDS_PER_ROUND)
    p.add_argument("--steps-per-round", type=int, default=None,
                   help="fixed step budget per round instead of seconds (recipe studies on a "
                        "busy machine)")
    p.add_argument("--lr", type=float, default=None, help="override the recipe's learning rate")
    p.add_argument("--prior", choices=("background", "self", "voxel"), default=None,
                   help="override the recipe's prior on unpainted voxels")
    p.add_argument("--prior-weight", type=float, default=None, help="override its weight")
    p.add_argument("--batch", dest="batch_size", type=int, default=None,
                   help="crops per training step (recipe studies)")
    p.add_argument("--no-rf", action="store_true", help="skip the random forest")
    p.add_argument("--quick", action="store_true", help="smoke test: 2 rounds x 2 steps")
    args = p.parse_args(argv)
    if args.rounds is None:
        args.rounds = 2 if args.quick else 3
    if args.quick and args.steps_per_round is None:
        args.steps_per_round = 2
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(name)s: %(message)s")
    torch.manual_seed(args.seed)
    volume, labels = load_task(args)
    spacing = tuple(float(s) for s in volume.spacing)
    user = user_for(args.user)
    cnn = cnn_loop(args, volume, labels, user)
    rf = None if args.no_rf else rf_loop(
        args, np.asarray(volume.array, np.float32), labels, spacing, user)

    def r4(values: list[float]) -> list[float]:
        return [round(float(v), 4) for v in values]

    out: dict[str, Any] = {
        "bench": "scribbles", "image": str(args.image), "shape": list(labels.shape),
        "classes": int(labels.max()) + 1, "seed": args.seed, "user": args.user,
        "synthetic_lesion": args.synthetic_lesion,
        "cnn_start": f"model {args.model}" if args.model else "new net",
        "rounds": args.rounds,
        "dice_cnn_rounds": r4(cnn["dice"]),
        "dice_rf_rounds": r4(rf["dice"]) if rf else [],
        "dice_cnn": round(cnn["dice"][-1], 4),
        "dice_rf": round(rf["dice"][-1], 4) if rf else None,
        "mean_cnn": round(float(np.mean(cnn["dice"])), 4),
        "mean_rf": round(float(np.mean(rf["dice"])), 4) if rf else None,
        "seconds_cnn": round(sum(cnn["train_s"]), 2),
        "features_seconds": round(cnn["features_s"], 2),
        "steps_cnn_rounds": cnn["steps"],
        "refresh_seconds": [round(s, 2) for s in cnn["refresh_s"]],
        "seconds_rf": round(rf["seconds"], 2) if rf else None,
        "labelled_voxels_cnn": cnn["labelled"],
        "labelled_voxels_rf": rf["labelled"] if rf else None,
        "peak_rss_mb_cnn": round(cnn["peak_rss_mb"], 1),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "quick": bool(args.quick),
    }
    emit(out)
    return 0


if __name__ == "__main__":
    from napari_cnnseg.core.errors import CnnsegError

    try:
        sys.exit(main())
    except CnnsegError as exc:  # bad input files: one clear line, no traceback
        sys.exit(f"bench_scribbles: error: {exc}")
