"""Steps a fresh net makes in one 18 s round (the benchmark's budget), and when the first ends.

    .venv/bin/python benchmarks/experiments/round1_steps.py brain|mni|phantom
"""

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _scribble_sim import initial_strokes
from bench_scribbles import SECONDS_PER_ROUND, crop_for, make_net
from rf_prior_map import load

from napari_cnnseg.core.training import finetune, recommended_settings

name = sys.argv[1]
img, lab, sp = load(name)
scr = initial_strokes(lab, sp, seed=0)
net = make_net(int(lab.max()) + 1, sp)
t = time.perf_counter()
h = finetune(net, img, scr, crop_shape=crop_for(lab.shape, sp), seed=0, device="cpu",
             seconds=SECONDS_PER_ROUND, **recommended_settings(True))
print(name, "crop", crop_for(lab.shape, sp), "steps", h.steps, "first step ends at",
      round(h.times[0], 2), "s, total", round(time.perf_counter() - t, 2), "s")
