"""Screenshot of the guided loop on a real lesion (docs/guided.md), the way a user gets there.

    xvfb-run -a -s "-screen 0 1280x1024x24" .venv/bin/python docs/make_lesion_suggestion_screenshot.py

Needs ``../shared/data/lesions_mri_ct`` (the lung CT nodule; skipped with a message without
it). Opens the CT in napari, adds the Segment and Fine-tune docks from the plugin manifest,
picks the new untrained feature net (the dock's recommendation for a new structure), clicks
Segment, puts the simulated clinician's round-1 strokes (``benchmarks/_clinician.py``, seed 0)
into the scribbles layer, runs one 18 s Fine-tune round, presses **Next suggestion** and saves
``docs/screenshot_lesion_suggestion.png``. Logs the round's Dice and how many wrong voxels the
suggested slice holds.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "lesions_mri_ct"
log = logging.getLogger("lesion_screenshot")


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if not (DATA / "lung1_image.nrrd").exists():
        log.info("no %s: nothing to do", DATA)
        return 0
    os.environ["CNNSEG_SYNC"] = "1"  # jobs inline: the screenshot shows the finished round
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import imageio.v3 as iio
    import napari
    from _clinician import initial_strokes
    from qtpy.QtWidgets import QApplication

    from napari_cnnseg._widgets import _worker
    from napari_cnnseg.core.io import read_volume

    _worker.SYNC = True
    img, gt = read_volume(DATA / "lung1_image.nrrd"), read_volume(DATA / "lung1_label.nrrd")
    truth = (np.asarray(gt.array) > 0).astype(np.uint8)
    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(1280, 1000)
    viewer.add_image(np.asarray(img.array), name="lung1", scale=img.spacing)
    _, seg = viewer.window.add_plugin_dock_widget("napari-cnnseg", "Segment")
    _, fin = viewer.window.add_plugin_dock_widget("napari-cnnseg", "Fine-tune")
    seg.set_image_layer(viewer.layers["lung1"])
    seg.choose_new("feature_net", ["background", "nodule"])
    seg.segment_btn.click()
    fin.add_scribbles_layer().data = initial_strokes(truth, tuple(img.spacing), seed=0)
    fin.finetune(seconds=18)
    labels = np.asarray(viewer.layers["lung1 labels"].data)
    dice = 2 * ((labels == 1) & (truth == 1)).sum() / ((labels == 1).sum() + truth.sum())
    fin.suggestion_box.next_btn.click()
    z = viewer.dims.current_step[0]
    log.info("round 1 Dice %.3f; %s; wrong voxels on slice %d: %d (most on any slice: %d)",
             dice, fin.suggestion_box.label.text(), z, int((labels[z] != truth[z]).sum()),
             int((labels != truth).sum((1, 2)).max()))
    for _ in range(20):
        QApplication.processEvents()
    out = ROOT / "docs" / "screenshot_lesion_suggestion.png"
    iio.imwrite(out, viewer.screenshot(canvas_only=False))
    log.info("saved %s", out)
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
