"""Cost of the live slice refresh in a 20 s fine-tuning round (headless, through Session.finetune):
steps made with a refresh every 5 steps vs none, and the time of one visible-slice prediction.

    .venv/bin/python benchmarks/experiments/refresh_cost.py
"""
import sys, tempfile, time
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1]))
import numpy as np
from napari_cnnseg._session import Session
from napari_cnnseg.core.sample_data import load_brain_t1
from _scribble_sim import initial_strokes
img, lab = load_brain_t1()
s = Session(autosave_folder=tempfile.mkdtemp())
s.set_image(img, name="T1")
s.new_model("unet", ["background", "brain"])
scr = initial_strokes(np.asarray(lab.array), img.spacing, seed=0)
roi = (slice(30, 31), slice(0, 128), slice(0, 128))
for every in (5, 10**6):
    s.new_model("unet", ["background", "brain"])
    times = []
    def on_region(u): pass
    t0 = time.perf_counter()
    out = s.finetune(scr, seconds=20, refresh_every=every, region=lambda: roi, on_region=on_region, refresh=False)
    print("refresh_every", every, "steps", out.steps, "region updates", out.region_updates, round(time.perf_counter()-t0, 1), "s")
import cProfile, pstats
t=time.perf_counter(); 
for _ in range(3): s.predict_region(roi)
print("predict_region", round((time.perf_counter()-t)/3, 3), "s")
cProfile.run("s.predict_region(roi)", "/tmp/exp/pr.prof")
pstats.Stats("/tmp/exp/pr.prof").sort_stats("cumulative").print_stats(12)
