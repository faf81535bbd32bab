"""Where a training step spends its time: torch.profiler over 20 finetune() steps on the bench net
(phantom, batch 4, the bench crop), ops sorted by self CPU time.

    .venv/bin/python benchmarks/experiments/step_profile.py
"""
import sys, time
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1]))
import torch, numpy as np
from bench_scribbles import make_net, crop_for
from _scribble_sim import initial_strokes
from napari_cnnseg.core.sample_data import make_phantom
from napari_cnnseg.core.training import finetune
image, labels = make_phantom()
sp=image.spacing
scr=initial_strokes(labels.array, sp, seed=0)
net=make_net(4, sp)
crop=crop_for(labels.array.shape, sp)
finetune(net, image.array, scr, steps=5, batch_size=4, crop_shape=crop, keep_best=False, device="cpu")
from torch.profiler import profile, ProfilerActivity
with profile(activities=[ProfilerActivity.CPU]) as prof:
    h=finetune(net, image.array, scr, steps=20, batch_size=4, crop_shape=crop, keep_best=False, device="cpu")
print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=30))
t=h.times; print("s/step", (t[-1]-t[2])/(len(t)-3))
