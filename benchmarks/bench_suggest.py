"""Suggestions benchmark: do ``core.suggest``'s slices hold the errors, and does following them pay?

Usage::

    python benchmarks/bench_suggest.py --image IMG --labels GT [--seed 0] [--rounds 3]
        [--synthetic-lesion SEED] [--option threshold=0.2 ...] [--dump DIR] [--quick]

Two runs of the product's loop (the one ``bench_scribbles.py`` drives: a new net through
:class:`napari_cnnseg._session.Session`, ``finetune(scribbles, seconds=18, refresh=True)`` per
round) start from the same round-1 strokes of the simulated clinician (``_clinician.py``):

* **oracle**: the clinician's normal protocol, strokes on each class's 3 worst slices, which
  a real user cannot know;
* **following**: after each prediction ``core.suggest.suggest`` ranks the slices along the
  painting axis and the clinician paints there instead: each class c on the top 3 slices of
  ``suggest(per_class=True)`` for c (``--follow per-class``, the default: the oracle's
  protocol with the model's estimate of where c is missed instead of the truth), or every
  class on the top 3 of the combined ranking (``--follow combined``).

After each prediction of both runs: ``error_recall_at_3`` = the fraction of wrongly labelled
voxels (label map != ground truth) on the 3 top suggested slices; ``random_recall_at_3`` = the
same for 3 random slices (mean of 200 seeded draws); ``oracle_recall_at_3`` = for the 3
slices with the most errors (the ceiling). Headline values are means over the rounds of both
runs. ``dice_following_suggestions`` / ``dice_oracle`` are the last round's mean foreground
Dice of the two runs, ``dice_ratio`` their ratio (``dice_mean_ratio``: of the means over
rounds, less at the mercy of one round's leak). Targets (issue 15): recall >= 2x random,
ratio >= 0.95.

``--option KEY=VALUE`` passes ranking options to ``suggest`` (studies; ``labels=argmax``
ranks on the argmax instead of the label map the user sees). ``--dump DIR`` writes each
prediction (probabilities float16, labels, scribbles) and the ground truth as ``.npz`` for
offline studies of other rankings. ``--quick`` is a smoke test (numbers meaningless).
Prints ONE JSON line.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _clinician as clinician  # noqa: E402
from _common import emit, peak_rss_mb  # noqa: E402
from bench_scribbles import SECONDS_PER_ROUND, cnn_session, load_task  # noqa: E402

from napari_cnnseg._session import warm_up_training  # noqa: E402
from napari_cnnseg.core.metrics import mean_foreground_dice  # noqa: E402
from napari_cnnseg.core.suggest import suggest  # noqa: E402

log = logging.getLogger("bench_suggest")

TOP = 3
RANDOM_DRAWS = 200


def recalls(errors: np.ndarray, axis: int, chosen: list[int], seed: int) -> dict[str, float]:
    """Fraction of the error voxels on ``chosen`` slices, on 3 random ones, on the 3 worst."""
    other = tuple(a for a in range(3) if a != axis)
    per_slice = errors.sum(axis=other, dtype=np.float64)
    total = per_slice.sum()
    if total == 0:
        return {"suggested": float("nan"), "random": float("nan"), "oracle": float("nan")}
    rng = np.random.default_rng(seed)
    n = min(TOP, len(per_slice))
    draws = [per_slice[rng.choice(len(per_slice), n, replace=False)].sum()
             for _ in range(RANDOM_DRAWS)]
    return {"suggested": float(per_slice[chosen].sum() / total),
            "random": float(np.mean(draws) / total),
            "oracle": float(np.sort(per_slice)[::-1][:n].sum() / total)}


def suggest_options(pairs: list[str]) -> dict[str, Any]:
    """``KEY=VALUE`` pairs as keyword arguments (numbers parsed)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        try:
            out[key] = float(value) if "." in value or "e" in value else int(value)
        except ValueError:
            out[key] = value
    return out


def follow_slices(mode: str, res: Any, scribbles: np.ndarray, axis: int, chosen: list[int],
                  options: dict[str, Any]) -> Any:
    """Where the following user paints: the top 3 slices for every class (``combined``), or
    each class's own top 3 (``per-class``: ``suggest(per_class=True)``, the oracle's protocol
    with the model's estimate of the errors instead of the truth)."""
    if mode == "combined":
        return chosen
    ranked = suggest(res.probabilities, scribbles=scribbles, top=TOP, axis=axis,
                     labels=res.labels, per_class=True, **options)
    per_class: dict[int, list[int]] = {}
    for s in ranked:
        per_class.setdefault(int(s.label), []).append(s.index)
    return per_class


def run_loop(args: argparse.Namespace, volume: Any, gt: np.ndarray, follow: bool
             ) -> dict[str, Any]:
    """One run of the product's loop; the clinician follows the suggestions when ``follow``."""
    k = int(gt.max()) + 1
    spacing = tuple(float(s) for s in volume.spacing)
    axis = clinician.paint_axis(spacing)
    options = suggest_options(args.option)
    use_argmax = options.pop("labels", None) == "argmax"
    torch.manual_seed(args.seed)  # the same new net in both runs (warm-up done before)
    session = cnn_session(args, volume, k)
    scribbles = clinician.initial_strokes(gt, spacing, seed=args.seed)
    budget = ({"steps": args.steps_per_round} if args.steps_per_round
              else {"seconds": args.seconds_per_round})
    session.prepare_features()
    out: dict[str, Any] = {"dice": [], "recall": [], "random": [], "oracle": [],
                           "suggest_s": [], "train_s": [], "slices": []}
    name = "following" if follow else "oracle"
    for r in range(args.rounds):
        t0 = time.perf_counter()
        res = session.finetune(scribbles, refresh=True, device="cpu", seed=args.seed + r,
                               **budget).results
        out["train_s"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        ranked = suggest(res.probabilities, scribbles=scribbles, top=TOP, axis=axis,
                         labels=None if use_argmax else res.labels, **options)
        out["suggest_s"].append(time.perf_counter() - t0)
        chosen = [s.index for s in ranked]
        rec = recalls(res.labels != gt, axis, chosen, seed=args.seed + 1000 + r)
        out["dice"].append(mean_foreground_dice(res.labels, gt, k))
        for key, src in (("recall", "suggested"), ("random", "random"), ("oracle", "oracle")):
            out[key].append(rec[src])
        out["slices"].append(chosen)
        log.info("%s round %d: Dice %.3f, suggested %s recall %.3f (random %.3f, best %.3f)",
                 name, r + 1, out["dice"][-1], chosen, rec["suggested"], rec["random"],
                 rec["oracle"])
        if args.dump:
            np.savez_compressed(Path(args.dump) / f"{name}_round{r + 1}.npz",
                                probabilities=res.probabilities.astype(np.float16),
                                labels=res.labels, scribbles=scribbles, axis=axis)
        if r + 1 < args.rounds:
            scribbles = clinician.correction_strokes(
                gt, res.labels, scribbles, spacing, seed=args.seed + 100 + r,
                slices=follow_slices(args.follow, res, scribbles, axis, chosen, options)
                if follow else None)
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--image", required=True, help="image volume (any core.io format)")
    p.add_argument("--labels", default=None, help="ground-truth label map on the same grid")
    p.add_argument("--synthetic-lesion", type=int, default=None, metavar="SEED",
                   help="insert a synthetic lesion into the image and benchmark that lesion")
    p.add_argument("--rounds", type=int, default=None, help="default 3; 2 with --quick")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--seconds-per-round", type=float, default=SECONDS_PER_ROUND)
    p.add_argument("--steps-per-round", type=int, default=None,
                   help="fixed step budget per round instead of seconds")
    p.add_argument("--follow", choices=("per-class", "combined"), default="per-class",
                   help="the following user corrects each class on that class's top 3 "
                        "suggestions (default, as the oracle protocol), or every class on the "
                        "top 3 of the combined ranking")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="ranking option for core.suggest.suggest (repeatable)")
    p.add_argument("--dump", default=None, metavar="DIR",
                   help="write every prediction and the ground truth as .npz into DIR")
    p.add_argument("--quick", action="store_true", help="smoke test: 2 rounds x 2 steps")
    args = p.parse_args(argv)
    args.model, args.family = None, None  # what bench_scribbles.cnn_session reads: a new net
    if args.rounds is None:
        args.rounds = 2 if args.quick else 3
    if args.quick and args.steps_per_round is None:
        args.steps_per_round = 2
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(name)s: %(message)s")
    volume, gt = load_task(args)
    if args.dump:
        Path(args.dump).mkdir(parents=True, exist_ok=True)
        np.savez_compressed(Path(args.dump) / "truth.npz", labels=gt)
    warm_up_training()  # first calls draw from the torch RNG: done once here, both runs
    cnn_session(args, volume, int(gt.max()) + 1)  # then start from the same net and strokes
    t0 = time.perf_counter()
    oracle = run_loop(args, volume, gt, follow=False)
    following = run_loop(args, volume, gt, follow=True)
    wall = time.perf_counter() - t0

    def mean(key: str) -> float:
        vals = [v for v in oracle[key] + following[key] if np.isfinite(v)]
        return float(np.mean(vals)) if vals else float("nan")

    def r4(values: list[float]) -> list[float]:
        return [round(float(v), 4) for v in values]

    recall, rand = mean("recall"), mean("random")
    emit({
        "bench": "suggest", "image": str(args.image), "shape": list(gt.shape),
        "classes": int(gt.max()) + 1, "seed": args.seed, "rounds": args.rounds,
        "synthetic_lesion": args.synthetic_lesion, "options": suggest_options(args.option),
        "follow": args.follow,
        "budget": (f"{args.steps_per_round} steps" if args.steps_per_round
                   else f"{args.seconds_per_round:g} s"),
        "error_recall_at_3": round(recall, 4), "random_recall_at_3": round(rand, 4),
        "oracle_recall_at_3": round(mean("oracle"), 4),
        "recall_over_random": round(recall / rand, 3) if rand > 0 else None,
        "recall_rounds_oracle_run": r4(oracle["recall"]),
        "recall_rounds_following_run": r4(following["recall"]),
        "dice_following_suggestions": round(following["dice"][-1], 4),
        "dice_oracle": round(oracle["dice"][-1], 4),
        "dice_ratio": (round(following["dice"][-1] / oracle["dice"][-1], 4)
                       if oracle["dice"][-1] > 0 else None),
        "dice_rounds_following": r4(following["dice"]), "dice_rounds_oracle": r4(oracle["dice"]),
        "dice_mean_ratio": (round(float(np.mean(following["dice"]) / np.mean(oracle["dice"])), 4)
                            if np.mean(oracle["dice"]) > 0 else None),
        "suggested_slices": following["slices"],
        "suggest_seconds": round(float(np.mean(oracle["suggest_s"] + following["suggest_s"])), 3),
        "round_seconds": round(float(np.mean(oracle["train_s"] + following["train_s"])), 2),
        "wall_seconds": round(wall, 1), "peak_rss_mb": round(peak_rss_mb(), 1),
        "quick": bool(args.quick),
    })
    return 0


if __name__ == "__main__":
    from napari_cnnseg.core.errors import CnnsegError

    try:
        sys.exit(main())
    except CnnsegError as exc:  # bad input files: one clear line, no traceback
        sys.exit(f"bench_suggest: error: {exc}")
