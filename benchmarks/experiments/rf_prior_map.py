"""Round 1 from scratch with a dense prior: the RF's probabilities, or a stronger background prior.

Needs the core change in ``rf_prior_map.patch`` (``finetune(prior="map", prior_map=...,
random_fraction=...)``, not kept in the product): ``git apply benchmarks/experiments/rf_prior_map.patch``
first, ``git apply -R`` after.

Usage (repository root)::

    .venv/bin/python benchmarks/experiments/rf_prior_map.py SET STEPS SEED [JSON]

SET: brain | mni | phantom (``../shared/data`` for the first two); JSON: extra ``finetune``
settings, e.g. ``'{"prior_weight": 1.0, "random_fraction": 0.5}'``; with ``"rf": true`` the
prior is the RF's whole-volume probabilities on the same strokes (``prior="map"``), else the
background prior. Prints one JSON line: Dice after round 1, the RF's Dice, the predicted /
true volume per class.
"""

import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import numpy as np
import torch
from _rf_baseline import rf_features
from _scribble_sim import initial_strokes
from bench_scribbles import compact_labels, crop_for, make_net, predict_labels
from sklearn.ensemble import RandomForestClassifier

from napari_cnnseg.core.io import read_volume
from napari_cnnseg.core.metrics import mean_foreground_dice
from napari_cnnseg.core.sample_data import make_phantom
from napari_cnnseg.core.training import finetune

D = ROOT.parent / "shared" / "data"
SETS = {
    "brain": (D / "itk_kmeans_t1/KmeansTest_T1UCharRaw.nii.gz", D / "itk_kmeans_t1/brain_mask.nii.gz"),
    "mni": (D / "mni_icbm152_2009a/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
            D / "mni_icbm152_2009a/labels_gm1_wm2.nii.gz"),
}


def load(name):
    if name == "phantom":
        im, lb = make_phantom()
        return np.asarray(im.array, np.float32), np.asarray(lb.array).astype(np.int64), tuple(im.spacing)
    a, b = SETS[name]
    iv, lv = read_volume(a), read_volume(b)
    return (np.asarray(iv.array, np.float32), compact_labels(np.asarray(lv.array).astype(np.int64)),
            tuple(float(s) for s in iv.spacing))


def main():
    name, steps, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    extra = json.loads(sys.argv[4]) if len(sys.argv) > 4 else {}
    use_rf = bool(extra.pop("rf", False))
    img, lab, sp = load(name)
    k = int(lab.max()) + 1
    torch.manual_seed(seed)
    scr = initial_strokes(lab, sp, seed=seed)
    kw = {"lr": 2e-3, "prior": "background"}
    rf_dice = None
    if use_rf:
        feats = rf_features(img)
        m = scr > 0
        rf = RandomForestClassifier(n_estimators=100, n_jobs=-1, random_state=seed).fit(feats[m], scr[m] - 1)
        flat = feats.reshape(-1, feats.shape[-1])
        prob = np.zeros((k, flat.shape[0]), np.float32)
        for i in range(0, flat.shape[0], 1 << 20):
            prob[rf.classes_, i:i + (1 << 20)] = rf.predict_proba(flat[i:i + (1 << 20)]).T
        prob = prob.reshape(k, *lab.shape)
        rf_dice = round(mean_foreground_dice(prob.argmax(0), lab, k), 4)
        kw = {"lr": 2e-3, "prior": "map", "prior_map": prob}
    kw.update(extra)
    net = make_net(k, sp)
    t0 = time.time()
    finetune(net, img, scr, crop_shape=crop_for(lab.shape, sp), seed=seed, device="cpu", steps=steps, **kw)
    pred = predict_labels(net, img)
    ratios = [round(float((pred == c).sum()) / max(1, int((lab == c).sum())), 2) for c in range(1, k)]
    print(json.dumps({"set": name, "seed": seed, "steps": steps, "rf_prior": use_rf, "extra": extra,
                      "dice": round(mean_foreground_dice(pred, lab, k), 4), "dice_rf": rf_dice,
                      "vol_ratio": ratios, "seconds": round(time.time() - t0, 1)}))


if __name__ == "__main__":
    main()
