"""Scribble benchmark: simulated user strokes, CNN fine-tuning vs an ilastik-like random forest.

Usage::

    python benchmarks/bench_scribbles.py --image IMG --labels GT [--rounds 3] [--seed 0] [--quick]

Round 1 paints thin strokes inside each class on a few slices; each later round adds strokes
inside the largest errors of the CNN's current prediction (see ``_scribble_sim``). After each
round the CNN is fine-tuned (continuing from the previous round) and a random forest (100
trees on ``multiscale_basic_features`` with sigma up to 16) is trained on exactly the same
strokes; both predict the whole volume. Dice = mean over the foreground classes present in
the ground truth. Prints one JSON line with the keys ``dice_cnn_rounds``, ``dice_rf_rounds``,
``dice_cnn``, ``dice_rf``, ``dice_cnn_scratch`` (only when the CNN starts from a shipped
model), ``seconds_cnn`` (total fine-tuning time), ``seconds_rf``, ``rounds``,
``labelled_voxels``.

No setting depends on the dataset: the network (anisotropic first level when the slices are
in-plane first level), crop shape, stroke lengths and training budget are derived from the volume itself.

``--quick`` is a smoke test only (numbers meaningless): 2 rounds of 2 fine-tuning steps at
batch 2 (unless ``--rounds`` / ``--steps-per-round`` are given), and a fresh net of base width 8.
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

from _common import emit  # noqa: E402
from _scribble_sim import correction_strokes, initial_strokes  # noqa: E402

from napari_cnnseg.core.io import read_volume  # noqa: E402
from napari_cnnseg.core.metrics import mean_foreground_dice  # noqa: E402
from napari_cnnseg.core.training import finetune, recommended_settings  # noqa: E402

log = logging.getLogger("bench_scribbles")

#: fine-tuning budget per round (3 rounds fit the 60 s target)
SECONDS_PER_ROUND = 18.0


def make_net(num_classes: int, spacing: tuple[float, float, float], width: int = 16,
             norm: str = "batch", depth: int = 2) -> torch.nn.Module:
    """Small valid U-Net (depth 2); 1x3x3 convolutions and 1x2x2 pooling at the top level.

    The in-plane top level is what makes training fast on a CPU (about 5x faster than 3x3x3
    at full resolution); the lower level is fully 3D, so isotropic volumes work as well.
    """
    from napari_cnnseg.core.models import build_model, interactive_config

    config = {**interactive_config("unet"), "depth": depth, "base_width": width, "norm": norm}
    return build_model("unet", in_channels=1, num_classes=num_classes, **config)


def crop_for(shape: tuple[int, int, int], spacing: tuple[float, float, float]) -> tuple[int, int, int]:
    """Output crop (Z, Y, X): 40 voxels in-plane; along z 40 / anisotropy, within 4..16."""
    ratio = spacing[0] / max(min(spacing[1], spacing[2]), 1e-6)
    z = int(np.clip(round(40 / max(ratio, 1.0)), 4, 16))
    return (min(z, shape[0]), min(40, shape[1]), min(40, shape[2]))


def predict_labels(model: torch.nn.Module, image: np.ndarray) -> np.ndarray:
    """Whole-volume argmax (Z, Y, X) uint8 through ``core.inference.predict``."""
    from napari_cnnseg.core.inference import predict

    probs = predict(image, model, device="cpu")
    return probs.argmax(0).astype(np.uint8)


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


def recipe(args: argparse.Namespace, fresh: bool) -> dict[str, Any]:
    """lr and prior for a fresh or trained net (``core.training.recommended_settings``, the
    recipe the GUI and ``cnnseg finetune`` use), with ``--lr`` / ``--prior`` / ``--batch`` on top
    if given (``--batch`` applies to every round)."""
    out = recommended_settings(fresh)
    if args.batch is not None:
        out["batch_size"] = args.batch
    if args.lr is not None:
        out["lr"] = args.lr
    if args.prior:
        out["prior"] = args.prior
    return out


def later_round_settings(args: argparse.Namespace) -> dict[str, Any]:
    """Settings of rounds 2+: by then the net has been fine-tuned, so the trained recipe
    applies (lr 5e-4 + self prior), as in the Fine-tune dock (``Session.model_is_fresh``).
    Explicit ``--lr`` / ``--prior`` win; ``--fresh-recipe-every-round`` keeps round 1's."""
    return {} if args.fresh_recipe_every_round else recipe(args, fresh=False)


def run_loop(model: torch.nn.Module, image: np.ndarray, labels: np.ndarray,
             spacing: tuple[float, float, float], rounds: int, seed: int,
             seconds: float, rf: Any, later: dict[str, Any] | None = None,
             **ft: Any) -> dict[str, Any]:
    """The simulated annotate / fine-tune loop; returns per-round Dice and timings.

    ``ft`` are the ``finetune`` settings of round 1; ``later`` overrides some of them from
    round 2 on (a net fine-tuned once is a trained net: see :func:`later_round_settings`).
    """
    k = int(labels.max()) + 1
    crop = crop_for(labels.shape, spacing)
    scribbles = initial_strokes(labels, spacing, seed=seed)
    dice_cnn, dice_rf, secs = [], [], 0.0
    for r in range(rounds):
        t0 = time.perf_counter()
        budget = {} if "steps" in ft else {"seconds": seconds}
        settings = {**ft, **(later or {})} if r > 0 else ft
        finetune(model, image, scribbles, crop_shape=crop, seed=seed + r, device="cpu",
                 **budget, **settings)
        secs += time.perf_counter() - t0
        pred = predict_labels(model, image)
        dice_cnn.append(mean_foreground_dice(pred, labels, k))
        if rf is not None:
            dice_rf.append(mean_foreground_dice(rf.fit_predict(scribbles), labels, k))
        log.info("round %d: %d painted voxels, cnn %.3f rf %s", r + 1, int((scribbles > 0).sum()),
                 dice_cnn[-1], f"{dice_rf[-1]:.3f}" if dice_rf else "-")
        if r + 1 < rounds:
            scribbles = correction_strokes(labels, pred, scribbles, spacing, seed=seed + 100 + r)
    return {"dice_cnn_rounds": dice_cnn, "dice_rf_rounds": dice_rf, "seconds_cnn": secs,
            "labelled_voxels": int((scribbles > 0).sum())}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--image", required=True, help="image volume (any core.io format)")
    p.add_argument("--labels", required=True, help="ground-truth label map on the same grid")
    p.add_argument("--rounds", type=int, default=None, help="default 3; 2 with --quick")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model", default=None,
                   help="start from this shipped model name or checkpoint (default: a fresh U-Net)")
    p.add_argument("--init-from", default=None, metavar="NAME_OR_PATH",
                   help="start from this shipped model's body with a new, freshly initialised "
                        "head for the labels' classes (transfer; lr and prior as for a fresh net)")
    p.add_argument("--seconds-per-round", type=float, default=SECONDS_PER_ROUND)
    p.add_argument("--steps-per-round", type=int, default=None,
                   help="fixed step budget per round instead of seconds (for recipe studies on a "
                        "busy machine)")
    p.add_argument("--prior-weight", type=float, default=None, help="override the default prior")
    p.add_argument("--lr", type=float, default=None, help="override the learning rate")
    p.add_argument("--prior", choices=("background", "self"), default=None,
                   help="prior on unpainted voxels (default: background for a fresh net, self "
                        "when starting from a shipped model)")
    p.add_argument("--norm", default="batch", choices=("batch", "instance", "group", "none"),
                   help="normalisation layers of the fresh U-Net (recipe studies)")
    p.add_argument("--width", type=int, default=None,
                   help="base width of the fresh U-Net (default 16; recipe studies)")
    p.add_argument("--depth", type=int, default=2,
                   help="levels of the fresh U-Net (default 2; recipe studies)")
    p.add_argument("--batch", type=int, default=None,
                   help="crops per training step in every round (default: finetune's 4; recipe studies)")
    p.add_argument("--fresh-recipe-every-round", action="store_true",
                   help="a fresh net keeps lr 2e-3 + background prior in rounds 2+ too (the "
                        "default before 2026-11-26 07:57; recipe studies)")
    p.add_argument("--no-rf", action="store_true", help="skip the random forest")
    p.add_argument("--no-scratch", action="store_true",
                   help="with --model: skip the from-scratch loop (no dice_cnn_scratch)")
    p.add_argument("--quick", action="store_true",
                   help="smoke test only: 2 rounds x 2 steps, batch 2, fresh net of width 8")
    args = p.parse_args(argv)
    if args.rounds is None:
        args.rounds = 2 if args.quick else 3
    if args.quick and args.batch is None:
        args.batch = 2
    if args.quick and args.steps_per_round is None:
        args.steps_per_round = 2
    width = args.width or (8 if args.quick else 16)
    if args.model and args.init_from:
        raise SystemExit("--model and --init-from are exclusive")
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(name)s: %(message)s")
    torch.manual_seed(args.seed)

    img_vol = read_volume(args.image)
    lab_vol = read_volume(args.labels)
    image = np.asarray(img_vol.array, dtype=np.float32)
    labels = np.asarray(lab_vol.array).astype(np.int64)
    if image.shape != labels.shape:
        raise SystemExit(f"image {image.shape} and labels {labels.shape} differ in shape")
    if labels.min() < 0:
        raise SystemExit("the label map has negative values; class labels must be 0, 1, 2, ...")
    labels = compact_labels(labels)
    spacing = tuple(float(s) for s in img_vol.spacing)
    k = int(labels.max()) + 1
    ft: dict[str, Any] = {}
    if args.prior_weight is not None:
        ft["prior_weight"] = args.prior_weight
    ft.update(recipe(args, fresh=not args.model))
    if args.steps_per_round is not None:
        ft["steps"] = args.steps_per_round

    rf = None
    t_feat = 0.0
    if not args.no_rf:
        t0 = time.perf_counter()
        from _rf_baseline import RandomForestBaseline, rf_features  # scikit-learn: only here

        rf = RandomForestBaseline(rf_features(image), seed=args.seed)
        t_feat = time.perf_counter() - t0

    if args.model:
        from napari_cnnseg.core.models import resolve_model

        model = resolve_model(args.model)
        if int(model.num_classes) != k:
            raise SystemExit(f"model {args.model} has {model.num_classes} classes, the labels {k}")
    elif args.init_from:
        from napari_cnnseg.core.models import adapt_head, resolve_model

        model = adapt_head(resolve_model(args.init_from), k)
    else:
        model = make_net(k, spacing, width, norm=args.norm, depth=args.depth)  # type: ignore[arg-type]
    later = later_round_settings(args)
    res = run_loop(model, image, labels, spacing, args.rounds, args.seed,
                   args.seconds_per_round, rf, later=later, **ft)
    out: dict[str, Any] = {
        "bench": "scribbles",
        "image": str(args.image),
        "shape": list(image.shape),
        "classes": k,
        "seed": args.seed,
        "cnn_start": (f"model {args.model}" if args.model else
                      f"body of {args.init_from} + new head" if args.init_from else "fresh"),
        "rounds": args.rounds,
        "dice_cnn_rounds": [round(d, 4) for d in res["dice_cnn_rounds"]],
        "dice_rf_rounds": [round(d, 4) for d in res["dice_rf_rounds"]],
        "dice_cnn": round(res["dice_cnn_rounds"][-1], 4),
        "dice_rf": round(res["dice_rf_rounds"][-1], 4) if res["dice_rf_rounds"] else None,
        "seconds_cnn": round(res["seconds_cnn"], 2),
        "seconds_rf": round(rf.seconds + t_feat, 2) if rf else None,
        "labelled_voxels": res["labelled_voxels"],
        "quick": bool(args.quick),
    }
    if args.model and not args.no_scratch:
        ft.update(recipe(args, fresh=True))
        scratch = run_loop(make_net(k, spacing, width, norm=args.norm, depth=args.depth), image, labels, spacing, args.rounds,  # type: ignore[arg-type]
                           args.seed, args.seconds_per_round, None, later=later, **ft)
        out["dice_cnn_scratch"] = round(scratch["dice_cnn_rounds"][-1], 4)
    emit(out)
    return 0


if __name__ == "__main__":
    from napari_cnnseg.core.errors import CnnsegError

    try:
        sys.exit(main())
    except CnnsegError as exc:  # bad input files: one clear line, no traceback
        sys.exit(f"bench_scribbles: error: {exc}")
