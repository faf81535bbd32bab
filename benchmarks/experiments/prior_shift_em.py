"""Recipe study: Saerens-style EM prior-shift correction of the CNN's whole-volume output.

Run from the repo root (docs/training.md)::

    .venv/bin/python benchmarks/experiments/prior_shift_em.py phantom|brain|kmeans|mni SEED
"""
import sys, json, logging, numpy as np, torch
sys.path.insert(0, "benchmarks")
from bench_scribbles import make_net, crop_for
from _scribble_sim import initial_strokes, correction_strokes
from napari_cnnseg.core.io import read_volume
from napari_cnnseg.core.sample_data import make_phantom
from napari_cnnseg.core.training import finetune
from napari_cnnseg.core.inference import predict
from napari_cnnseg.core.metrics import mean_foreground_dice
def em_priors(p, iters=50, prior_tr=None):
    k = p.shape[0]; flat = p.reshape(k, -1)[:, ::7].astype(np.float64)
    tr = np.full(k, 1.0 / k) if prior_tr is None else prior_tr
    pi = flat.mean(1)
    for _ in range(iters):
        q = flat * (pi / tr)[:, None]; q /= q.sum(0, keepdims=True)
        pi = q.mean(1)
    return pi, tr
def adjust(p, pi, tr):
    q = p * (pi / tr).reshape(-1, 1, 1, 1); return q.argmax(0)
which = sys.argv[1]; seed = int(sys.argv[2])
if which == "phantom":
    img, lab = make_phantom(seed=0)
else:
    D = "../shared/data/itk_kmeans_t1/"
    img = read_volume(D + "KmeansTest_T1UCharRaw.nii.gz"); lab = read_volume(D + ("brain_mask.nii.gz" if which == "brain" else "KmeansTest_T1KmeansPrelimSegmentation.nii.gz"))
    if which == "mni":
        M = "../shared/data/mni_icbm152_2009a/"
        img = read_volume(M + "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"); lab = read_volume(M + "labels_gm1_wm2.nii.gz")
image = np.asarray(img.array, np.float32); labels = np.asarray(lab.array).astype(np.int64)
sp = img.spacing; k = int(labels.max()) + 1
torch.manual_seed(seed)
net = make_net(k, sp); crop = crop_for(labels.shape, sp)
scr = initial_strokes(labels, sp, seed=seed)
raw, adj = [], []
for r in range(3):
    finetune(net, image, scr, crop_shape=crop, seed=seed + r, device="cpu", seconds=18, lr=2e-3, prior="background", prior_weight=0.3)
    p = predict(image, net, device="cpu")
    pred = p.argmax(0); pi, tr = em_priors(p)
    padj = adjust(p, pi, tr)
    raw.append(round(mean_foreground_dice(pred, labels, k), 4)); adj.append(round(mean_foreground_dice(padj, labels, k), 4))
    print(r, "raw", raw[-1], "adj", adj[-1], "pi", np.round(pi, 4).tolist(), "gt", [round(float((labels == c).mean()), 4) for c in range(k)], flush=True)
    if r < 2: scr = correction_strokes(labels, pred, scr, sp, seed=seed + 100 + r)
print(which, seed, "raw", raw, np.mean(raw).round(4), "adj", adj, np.mean(adj).round(4))
