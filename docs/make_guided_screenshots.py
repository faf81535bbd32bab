"""Screenshots of the guided loop (docs/guided.md): Next suggestion and Live training.

    xvfb-run -a -s "-screen 0 1280x1024x24" .venv/bin/python docs/make_guided_screenshots.py

Opens the bundled phantom sample and both docks from the Plugins menu's manifest entries,
then saves into ``docs/``:

* ``screenshot_suggestion.png``: one click on Segment (the shipped phantom model is
  preselected), then **Next suggestion**: the view on the suggested slice, the region
  outlined in the ``phantom suggestions`` layer, the suggestion's text in the Fine-tune dock;
* ``screenshot_live.png``: a new feature net, strokes on the middle slice, **Live** on, then
  strokes on a slice 6 further while it trains: that slice refreshed from the new strokes, the
  status line with the step, loss and whether the newest strokes are learnt, the conflicting
  buttons disabled.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

DOCS = Path(__file__).resolve().parent
log = logging.getLogger("guided_screenshots")


def _pump(app, seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        app.processEvents()
        time.sleep(0.01)


def _wait(app, predicate, what: str, dock, timeout: float = 300.0) -> None:
    end = time.perf_counter() + timeout
    while not predicate() and time.perf_counter() < end:
        app.processEvents()
        time.sleep(0.01)
    if not predicate():
        raise RuntimeError(f"no {what} within {timeout} s: {dock.status.text()} "
                           f"(last error: {dock.last_error})")
    log.info("%s: %s", what, dock.status.text())


def _paint(layer, truth: np.ndarray, z: int, every: int = 6, brush: int = 1) -> None:
    layer.brush_size = brush
    for c in np.unique(truth[z]):
        ys, xs = np.nonzero(truth[z] == c)
        for y, x in list(zip(ys, xs, strict=True))[:: max(1, len(ys) // every)]:
            layer.paint((z, y, x), int(c) + 1)


def _save(viewer, path: Path) -> None:
    from make_screenshots import shrink_png

    viewer.screenshot(str(path), canvas_only=False, flash=False)
    log.info("%s: %d bytes", path, shrink_png(path))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="docs/screenshot_suggestion.png and _live.png")
    parser.add_argument("--out", type=Path, default=DOCS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    sys.path.insert(0, str(DOCS))
    # autosaves and the remembered model go to a throw-away folder, not the user's
    os.environ.setdefault("CNNSEG_DATA_DIR", tempfile.mkdtemp(prefix="cnnseg-shots-"))
    import napari
    from qtpy.QtWidgets import QApplication

    from napari_cnnseg._widgets import _worker
    from napari_cnnseg.core.sample_data import PHANTOM_CLASSES

    _worker.SYNC = True
    viewer = napari.Viewer(show=True)
    viewer.window.resize(1280, 900)
    app = QApplication.instance()
    viewer.open_sample("napari-cnnseg", "phantom")
    viewer.layers["phantom ground truth"].visible = False
    _, seg = viewer.window.add_plugin_dock_widget("napari-cnnseg", "Segment")
    _, fin = viewer.window.add_plugin_dock_widget("napari-cnnseg", "Fine-tune")
    _pump(app, 1.0)  # let Qt lay the docks out first
    viewer.reset_view()  # fit the image in the canvas left between the docks
    seg.segment_btn.click()  # one click: phantom-unet was preselected
    fin.add_scribbles_layer()
    fin.suggestion_box.next_btn.click()
    _pump(app, 1.0)
    _save(viewer, args.out / "screenshot_suggestion.png")

    # Live: a new structure starts with a feature net (milliseconds per step on a CPU)
    truth = np.asarray(viewer.layers["phantom ground truth"].data)
    seg.choose_new("feature_net", list(PHANTOM_CLASSES))
    seg.segment_btn.click()
    log.info("feature net: %s", seg.status.text())
    scr = fin.add_scribbles_layer()
    first = truth.shape[0] // 2  # strokes of every class on the middle slice
    viewer.dims.set_current_step(0, first)
    _paint(scr, truth, first)
    _worker.SYNC = False  # a real worker thread, as in napari
    log.info("live on: %s", fin.status.text())
    fin.live_btn.click()
    _wait(app, lambda: any(e.kind == "volume" for e in fin.live_log), "volume refresh", fin)
    z = first + 6  # the user scrolls a few slices on and paints there, Live still on
    viewer.dims.set_current_step(0, z)
    _pump(app, 0.2)
    viewer.reset_view()
    _paint(scr, truth, z, every=10, brush=2)
    _wait(app, lambda: bool(fin.stroke_log), "stroke hand-over", fin)
    version = fin.stroke_log[-1][0]
    _wait(app, lambda: any(e.kind == "slice" and e.strokes >= version for e in fin.live_log),
          "slice trained on the new strokes", fin)
    _pump(app, 0.5)
    _save(viewer, args.out / "screenshot_live.png")
    fin.live_btn.click()
    _wait(app, lambda: not fin.ctrl.busy, "live off", fin)
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
