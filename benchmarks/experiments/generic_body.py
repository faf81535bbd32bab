"""Generic body pretrained on random synthetic volumes, then used as the start (``--init-from``).

Usage (repository root; ~15 min on the 2-core machine)::

    .venv/bin/python benchmarks/experiments/generic_body.py SECONDS OUT_STEM
    .venv/bin/python benchmarks/bench_scribbles.py --image IMG --labels GT --init-from OUT_STEM.safetensors --no-rf

Volumes (Z, Y, X) 24x96x96 (fewer slices for thick-slice draws, z spacing 1-5x in-plane): 4
classes as the argmax of 4 smoothed noise fields (sigma 3-14 voxels), plus up to 5 small spheres
and 2 tubes of random classes; per-class random mean intensity and texture, a smooth bias field,
blur, noise, gamma, either polarity. Class index = rank of the class's mean intensity (so the
task is learnable without fixed anatomy). The bench U-Net (``make_net``) is trained on them with
full labels through ``finetune`` (lr 2e-3, 10 steps per new volume) for SECONDS.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch

from scipy import ndimage

K = 4

def synth_volume(rng, shape=(24, 96, 96)):
    r = float(rng.choice([1.0, 1.0, 1.5, 2.0, 3.0, 5.0]))  # z spacing / in-plane spacing
    zs = max(8, int(round(shape[0] * 2 / r))) if r > 1 else shape[0]
    shp = (min(shape[0], zs) if r > 1 else shape[0], shape[1], shape[2])
    fields = []
    for _ in range(K):
        s = float(rng.uniform(3, 14))
        f = ndimage.gaussian_filter(rng.standard_normal(shp).astype(np.float32), (s / r, s, s))
        f /= f.std() + 1e-6
        fields.append(f + rng.uniform(-0.5, 0.5))
    lab = np.argmax(np.stack(fields), 0).astype(np.int64)
    zz, yy, xx = np.indices(shp)
    for _ in range(int(rng.integers(0, 6))):  # small spheres (lesion-like)
        c = [rng.uniform(0, n) for n in shp]; rad = rng.uniform(1.5, 6)
        m = ((zz - c[0]) * r) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2 < rad ** 2
        lab[m] = int(rng.integers(K))
    for _ in range(int(rng.integers(0, 3))):  # tubes (vessel-like): a smooth random walk
        p = np.array([rng.uniform(0, n) for n in shp]); d = rng.standard_normal(3); d /= np.linalg.norm(d)
        rad = rng.uniform(1, 3); cls = int(rng.integers(K)); m = np.zeros(shp, bool)
        for _ in range(150):
            d += 0.3 * rng.standard_normal(3); d /= np.linalg.norm(d); p += d * np.array([1 / r, 1, 1])
            i = np.round(p).astype(int)
            if (i < 0).any() or (i >= shp).any():
                break
            m[tuple(i)] = True
        m = ndimage.distance_transform_edt(~m, sampling=(r, 1, 1)) < rad
        lab[m] = cls
    means = rng.uniform(0, 1, K)
    img = means[lab].astype(np.float32)
    for k in range(K):  # texture per class
        sd = rng.uniform(0.0, 0.08)
        if sd > 0:
            tex = ndimage.gaussian_filter(rng.standard_normal(shp).astype(np.float32), rng.uniform(0.5, 2))
            tex /= tex.std() + 1e-6
            img[lab == k] += sd * tex[lab == k]
    bias = ndimage.gaussian_filter(rng.standard_normal(shp).astype(np.float32), (20 / r, 20, 20))
    bias /= bias.std() + 1e-6
    img *= np.exp(rng.uniform(0, 0.3) * bias)
    b = rng.uniform(0, 1.2)
    if b > 0.2:
        img = ndimage.gaussian_filter(img, (b / r, b, b))
    img += rng.uniform(0.005, 0.1) * rng.standard_normal(shp).astype(np.float32)
    img = np.sign(img) * np.abs(img) ** rng.uniform(0.7, 1.4)
    order = np.argsort(np.argsort(means))  # rank of each class by its mean intensity
    lab = order[lab]
    if rng.random() < 0.5:
        img = -img  # either polarity
        lab = (K - 1) - lab
    return img.astype(np.float32), lab, (r, 1.0, 1.0)


import time
from bench_scribbles import make_net, crop_for
from napari_cnnseg.core.models import save_model
from napari_cnnseg.core.normalization import DEFAULT_NORMALIZATION
from napari_cnnseg.core.training import finetune
budget = float(sys.argv[1]); out = sys.argv[2]
rng = np.random.default_rng(0); torch.manual_seed(0)
net = make_net(K, (1.0, 1.0, 1.0))
t0 = time.time(); n = 0; losses = []
while time.time() - t0 < budget:
    img, lab, sp = synth_volume(rng)
    h = finetune(net, img, lab + 1, steps=10, lr=2e-3, crop_shape=crop_for(lab.shape, sp), prior_weight=0.0,
                 seed=n, keep_best=False, normalization=DEFAULT_NORMALIZATION, device="cpu")
    losses += h.losses; n += 1
    if n % 20 == 0:
        print(f"{time.time()-t0:.0f}s vols {n} steps {len(losses)} loss {np.mean(losses[-200:]):.3f}", flush=True)
        save_model(out, net, class_names=["c0", "c1", "c2", "c3"], normalization=DEFAULT_NORMALIZATION,
                   spacing=[1.0, 1.0, 1.0], description="generic synthetic body (experiment)")
save_model(out, net, class_names=["c0", "c1", "c2", "c3"], normalization=DEFAULT_NORMALIZATION,
           spacing=[1.0, 1.0, 1.0], description="generic synthetic body (experiment)")
print("done", n, len(losses))
