"""Seconds per training step: the interactive fresh U-Net vs the library-default U-Net.

Run from the repo root (figures in core/models/registry.py and docs/training.md)::

    .venv/bin/python benchmarks/experiments/step_time_interactive.py
"""
import sys
import time

import numpy as np

sys.path.insert(0, "benchmarks")
from _scribble_sim import initial_strokes  # noqa: E402

from napari_cnnseg.core.io import read_volume  # noqa: E402
from napari_cnnseg.core.models import build_model, interactive_config  # noqa: E402
from napari_cnnseg.core.training import finetune  # noqa: E402

S = "src/napari_cnnseg/sample_data/"
img = read_volume(S + "KmeansTest_T1UCharRaw.nii.gz")
lab = np.asarray(read_volume(S + "brain_mask.nii.gz").array).astype(int)
scr = initial_strokes(lab, img.spacing, seed=0)
for name, cfg in (("interactive", interactive_config("unet")), ("library default", {})):
    net = build_model("unet", num_classes=2, **cfg)
    finetune(net, img.array, scr, steps=2, keep_best=False, device="cpu")  # warm-up
    t = time.perf_counter()
    finetune(net, img.array, scr, steps=4, keep_best=False, device="cpu")
    print(f"{name}: {(time.perf_counter() - t) / 4:.2f} s/step")
