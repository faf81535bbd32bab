"""Train the shipped models into ``src/napari_cnnseg/core/models/pretrained/`` (CPU minutes).

Usage::

    python scripts/train_pretrained.py [--only phantom-unet|brain-t1-unet] [--steps N]
                                       [--outdir DIR]

Recipe (deterministic: fixed seeds, fp32 for the shipped weights' reproducibility is not
required, bf16 autocast is used where the CPU has it, exactly as fine-tuning does):

* architecture: ``unet``, depth 2, base width 16, valid padding, batch norm, first level
  in-plane (1x3x3 convolutions, 1x2x2 pooling): the same net the scribble benchmark
  fine-tunes, ~0.4 MB of weights;
* training: :func:`napari_cnnseg.core.training.finetune` with *every* voxel painted (the
  label map + 1 as scribbles), so crops are class-balanced, flipped and intensity-jittered;
  AdamW lr 2e-3, batch 4, output crops from the benchmark's rule;
* ``phantom-unet`` (4 classes: background, organ, vessel, lesion): trained on the synthetic
  phantoms of seeds 1 and 2, validated on the unseen phantom of seed 0 (the demo volume);
* ``brain-t1-unet`` (2 classes: background, brain): trained on the bundled ITK T1 head MRI
  (Apache-2.0) with its brain mask, on the first 70 % of the slices along the thick (3 mm)
  axis; validated on the last 30 % (held out). It is a demo / starting-point model fitted to
  one head, not a general brain extractor.

Prints one line per model with its validation Dice (mean over foreground classes) and
writes ``<name>.safetensors`` + ``<name>.json`` (atomic writes via ``save_model``).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from _unet import crop_for, make_net  # noqa: E402

from napari_cnnseg.core.inference import predict  # noqa: E402
from napari_cnnseg.core.metrics import dice_per_class, mean_foreground_dice  # noqa: E402
from napari_cnnseg.core.models import PRETRAINED_DIR, save_model  # noqa: E402
from napari_cnnseg.core.normalization import DEFAULT_NORMALIZATION  # noqa: E402
from napari_cnnseg.core.sample_data import load_brain_t1, make_phantom  # noqa: E402
from napari_cnnseg.core.training import finetune  # noqa: E402

log = logging.getLogger("train_pretrained")
LR = 2e-3


def _train(net, images, labels, spacing, steps: int, seed: int) -> None:
    """Full-label training through finetune(): the volumes take turns, one chunk each."""
    crop = crop_for(labels[0].shape, spacing)
    chunk = 25
    done = 0
    turn = 0
    while done < steps:
        n = min(chunk, steps - done)
        i = turn % len(images)
        finetune(net, images[i], labels[i].astype(np.int64) + 1, steps=n, lr=LR,
                 crop_shape=crop, prior_weight=0.0, seed=seed + turn, keep_best=False,
                 normalization=DEFAULT_NORMALIZATION, device="cpu")
        done += n
        turn += 1
        log.info("%d/%d steps", done, steps)


def _validate(net, image, labels) -> tuple[float, dict[int, float]]:
    pred = predict(image, net, device="cpu", precision="fp32").argmax(0)
    k = int(net.num_classes)
    return mean_foreground_dice(pred, labels, k), dice_per_class(pred, labels, k)


def phantom_unet(steps: int, outdir: Path) -> dict:
    train = [make_phantom(seed=s) for s in (1, 2)]
    val_img, val_lab = make_phantom(seed=0)
    torch.manual_seed(0)
    net = make_net(4, val_img.spacing)
    t0 = time.perf_counter()
    _train(net, [v.array for v, _ in train], [lab.array for _, lab in train],
           val_img.spacing, steps, seed=0)
    secs = time.perf_counter() - t0
    dice, per = _validate(net, val_img.array, val_lab.array)
    path = save_model(
        outdir / "phantom-unet", net,
        class_names=list(val_lab.metadata.get("class_names",
                                              ["background", "organ", "vessel", "lesion"])),
        normalization=DEFAULT_NORMALIZATION, spacing=list(val_img.spacing),
        description=(f"U-Net for the synthetic phantom (scripts/train_pretrained.py): trained on "
                     f"phantom seeds 1-2, {steps} steps; validation Dice {dice:.3f} on seed 0"),
        validation_dice=round(dice, 4),
    )
    return {"model": "phantom-unet", "val_dice": dice, "val_dice_per_class": per,
            "train_seconds": secs, "path": str(path)}


def brain_t1_unet(steps: int, outdir: Path) -> dict:
    image, labels = load_brain_t1()
    img, lab = np.asarray(image.array, np.float32), np.asarray(labels.array)
    cut = int(round(0.7 * img.shape[0]))
    torch.manual_seed(0)
    net = make_net(2, image.spacing)
    t0 = time.perf_counter()
    # normalisation statistics of the training slab only: nothing leaks from the held-out part
    _train(net, [img[:cut]], [lab[:cut]], image.spacing, steps, seed=0)
    secs = time.perf_counter() - t0
    dice, per = _validate(net, img[cut:], lab[cut:])
    path = save_model(
        outdir / "brain-t1-unet", net, class_names=["background", "brain"],
        normalization=DEFAULT_NORMALIZATION, spacing=list(image.spacing),
        description=(f"brain mask U-Net for T1 head MRI (scripts/train_pretrained.py): trained "
                     f"on slices 0-{cut - 1} of the bundled ITK T1, {steps} steps; validation "
                     f"Dice {dice:.3f} on the held-out slices {cut}-{img.shape[0] - 1}"),
        validation_dice=round(dice, 4),
    )
    return {"model": "brain-t1-unet", "val_dice": dice, "val_dice_per_class": per,
            "train_seconds": secs, "path": str(path)}


MODELS = {"phantom-unet": phantom_unet, "brain-t1-unet": brain_t1_unet}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", choices=sorted(MODELS), default=None)
    p.add_argument("--steps", type=int, default=160, help="training steps per model")
    p.add_argument("--outdir", default=str(PRETRAINED_DIR))
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(name)s: %(message)s")
    outdir = Path(args.outdir)
    for name in ([args.only] if args.only else sorted(MODELS)):
        res = MODELS[name](args.steps, outdir)
        for suffix in (".safetensors", ".json"):  # package data: world-readable
            Path(res["path"]).with_suffix(suffix).chmod(0o644)
        per = ", ".join(f"{c}: {v:.3f}" for c, v in res["val_dice_per_class"].items())
        print(f"{name}: validation Dice (mean foreground) {res['val_dice']:.4f} "
              f"[per class {per}] trained {res['train_seconds']:.0f} s -> {res['path']}",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
