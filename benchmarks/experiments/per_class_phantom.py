"""Recipe study: per-class Dice and predicted class fractions, CNN from scratch vs RF, phantom.

Run from the repo root (docs/training.md)::

    .venv/bin/python benchmarks/experiments/per_class_phantom.py [SEED] [PRIOR_WEIGHT]
"""
import sys, json, logging, numpy as np, torch
sys.path.insert(0, "benchmarks")
from bench_scribbles import make_net, crop_for, predict_labels
from _scribble_sim import initial_strokes, correction_strokes
from _rf_baseline import RandomForestBaseline, rf_features
from napari_cnnseg.core.sample_data import make_phantom
from napari_cnnseg.core.training import finetune
from napari_cnnseg.core.metrics import dice_per_class
seed = int(sys.argv[1]) if len(sys.argv) > 1 else 0
pw = float(sys.argv[2]) if len(sys.argv) > 2 else 0.3
img, lab = make_phantom(seed=0); image = np.asarray(img.array, np.float32); labels = np.asarray(lab.array).astype(np.int64)
sp = img.spacing; k = int(labels.max()) + 1
torch.manual_seed(seed)
net = make_net(k, sp); crop = crop_for(labels.shape, sp)
scr = initial_strokes(labels, sp, seed=seed)
rf = RandomForestBaseline(rf_features(image), seed=seed)
for r in range(3):
    finetune(net, image, scr, crop_shape=crop, seed=seed + r, device="cpu", seconds=18, lr=2e-3, prior="background", prior_weight=pw)
    pred = predict_labels(net, image); prf = rf.fit_predict(scr)
    print(r, "cnn", {c: round(v, 3) for c, v in dice_per_class(pred, labels, k).items()}, "rf", {c: round(v, 3) for c, v in dice_per_class(prf, labels, k).items()},
          "fg frac pred", [round(float((pred == c).mean()), 4) for c in range(k)], "gt", [round(float((labels == c).mean()), 4) for c in range(k)])
    if r < 2: scr = correction_strokes(labels, pred, scr, sp, seed=seed + 100 + r)
