"""Click-through of one fine-tuning round in napari (run under Xvfb):

    xvfb-run -a -s "-screen 0 1280x1024x24" .venv/bin/python benchmarks/experiments/gui_round1.py [OUT.png]

Bundled T1 brain, New untrained U-Net (2 classes), the benchmark's round-1 strokes as the scribbles
layer, Fine-tune 20 s on the real worker thread; prints the steps made and the labels' Dice against
the brain mask, and saves a screenshot."""
import sys, time
import numpy as np
import napari
from qtpy.QtWidgets import QApplication
from napari_cnnseg._widgets import FinetuneWidget, SegmentWidget
from napari_cnnseg.core.sample_data import load_brain_t1
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1]))
from _scribble_sim import initial_strokes

img, lab = load_brain_t1()
viewer = napari.Viewer(show=True)
layer = viewer.add_image(img.array, name="T1", scale=img.spacing)
seg, fin = SegmentWidget(viewer), FinetuneWidget(viewer)
viewer.window.add_dock_widget(seg, name="Segment"); viewer.window.add_dock_widget(fin, name="Fine-tune")
seg.set_image_layer(layer)
seg.choose_new("unet", ["background", "brain"])
print("fresh:", seg.session.model_is_fresh if hasattr(seg, "session") else "?")
scr_layer = fin.add_scribbles_layer()
scr_layer.data = initial_strokes(np.asarray(lab.array), img.spacing, seed=0).astype(scr_layer.data.dtype)
viewer.dims.set_point(0, img.spacing[0] * 30)
fin.seconds_spin.setValue(20)
fin.train_btn.click()
t0 = time.time()
app = QApplication.instance()
while time.time() - t0 < 60:
    app.processEvents(); time.sleep(0.05)
    if time.time() - t0 > 3 and fin.train_btn.isEnabled():
        break
for _ in range(40):
    app.processEvents(); time.sleep(0.05)
print("trained after", round(time.time() - t0, 1), "s; layers:", [l.name for l in viewer.layers])
print("fresh after:", seg.session.model_is_fresh)
print("status:", fin.status.text(), "| steps", getattr(fin.last_outcome, "steps", None))
from napari_cnnseg.core.metrics import mean_foreground_dice
labels_layer = [l for l in viewer.layers if type(l).__name__ == "Labels" and "scribbles" not in l.name]
for l in labels_layer:
    print(l.name, "Dice vs mask", round(mean_foreground_dice(np.asarray(l.data), np.asarray(lab.array), 2), 3))
viewer.screenshot(sys.argv[1] if len(sys.argv) > 1 else "gui_round1.png", canvas_only=False)
viewer.close()
