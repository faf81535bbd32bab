"""Recipe study: the fresh U-Net fed 1 + N channels (image + Gaussian-smoothed copies).

Run from the repo root (numbers in docs/training.md, "From scratch on the real brain mask")::

    .venv/bin/python benchmarks/experiments/filter_channels.py IMAGE LABELS [--rf] [--sigmas 1,2,4,8,16]
"""
import sys, time, json, logging
sys.path.insert(0, "benchmarks")
import numpy as np, torch
from scipy import ndimage as ndi
from bench_scribbles import crop_for
from _scribble_sim import correction_strokes, initial_strokes
from _rf_baseline import RandomForestBaseline, rf_features
from napari_cnnseg.core.io import read_volume
from napari_cnnseg.core.metrics import mean_foreground_dice
from napari_cnnseg.core.training import finetune
from napari_cnnseg.core.inference import predict
from napari_cnnseg.core.normalization import normalize
from napari_cnnseg.core.models import build_model
import argparse
p = argparse.ArgumentParser(); p.add_argument("image"); p.add_argument("labels")
p.add_argument("--sigmas", default="1,2,4,8,16"); p.add_argument("--grad", action="store_true")
p.add_argument("--rf", action="store_true"); p.add_argument("--seed", type=int, default=0)
p.add_argument("--seconds", type=float, default=18); p.add_argument("--prior-weight", type=float, default=0.3)
p.add_argument("--lr", type=float, default=2e-3); p.add_argument("--width", type=int, default=16)
a = p.parse_args()
logging.basicConfig(level=logging.WARNING)
torch.manual_seed(a.seed)
iv, lv = read_volume(a.image), read_volume(a.labels)
img = normalize(np.asarray(iv.array, np.float32)); lab = np.asarray(lv.array).astype(np.int64)
sp = tuple(iv.spacing)
sig = [float(s) for s in a.sigmas.split(",") if s]
chans = [img] + [ndi.gaussian_filter(img, s) for s in sig]
if a.grad:
    chans += [ndi.gaussian_gradient_magnitude(img, s) * s for s in sig[:3]]
feats = np.stack(chans).astype(np.float32)
k = int(lab.max()) + 1
net = build_model("unet", in_channels=feats.shape[0], num_classes=k, depth=2, base_width=a.width,
                  padding="valid", norm="batch", anisotropic_levels=1)
crop = crop_for(lab.shape, sp)
scr = initial_strokes(lab, sp, seed=a.seed)
rf = RandomForestBaseline(rf_features(img), seed=a.seed) if a.rf else None
dc, dr, secs, steps, pr, rc = [], [], 0, [], [], []
for r in range(3):
    t0 = time.perf_counter()
    h = finetune(net, feats, scr, crop_shape=crop, seed=a.seed + r, device="cpu", seconds=a.seconds,
                 lr=a.lr, prior_weight=a.prior_weight, normalization={"mode": "none"})
    secs += time.perf_counter() - t0; steps.append(h.steps)
    pred = predict(feats, net, device="cpu", normalization={"mode": "none"}).argmax(0)
    dc.append(round(mean_foreground_dice(pred, lab, k), 4))
    pr.append([round(float(((pred==c)&(lab==c)).sum()/max((pred==c).sum(),1)),3) for c in range(1,k)]); rc.append([round(float(((pred==c)&(lab==c)).sum()/max((lab==c).sum(),1)),3) for c in range(1,k)])
    if rf: dr.append(round(mean_foreground_dice(rf.fit_predict(scr), lab, k), 4))
    if r < 2: scr = correction_strokes(lab, pred, scr, sp, seed=a.seed + 100 + r)
print(json.dumps({"args": vars(a), "cnn": dc, "rf": dr, "mean_cnn": round(np.mean(dc), 4),
                  "mean_rf": round(np.mean(dr), 4) if dr else None, "secs": round(secs, 1), "steps": steps, "prec": pr, "rec": rc}))
