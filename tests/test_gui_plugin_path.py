"""The docks as users open them: Plugins menu -> CNN Segmentation (``add_plugin_dock_widget``).

napari then hands each dock a ``PublicOnlyProxy`` of the viewer, so every layer the dock sees is
a proxy too. These tests run the whole loop that way: Segment twice, paint, Fine-tune with live
refresh, Undo, reopen the Fine-tune dock; one labels layer throughout, the data and the
rendering of the shown layers change while training runs, the brush stays on the scribbles.

Run with ``xvfb-run -a -s "-screen 0 1280x1024x24" .venv/bin/python -m pytest tests/test_gui_plugin_path.py``.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

from _configs import CLASSES, TINY  # noqa: E402

from napari_cnnseg._napari_io import unwrap  # noqa: E402
from napari_cnnseg._widgets import _worker  # noqa: E402
from napari_cnnseg.core.sample_data import make_phantom  # noqa: E402

pytestmark = pytest.mark.gui

PLUGIN = "napari-cnnseg"
SHAPE = (10, 24, 24)
QUICK = dict(batch_size=2, crop_shape=(4, 12, 12), keep_best=False)
EXPECTED = sorted(["phantom", *[f"phantom p({c})" for c in CLASSES], "phantom uncertainty",
                   "phantom labels", "phantom scribbles"])


@pytest.fixture(autouse=True)
def _sync(monkeypatch, tmp_path):
    monkeypatch.setattr(_worker, "SYNC", True)
    monkeypatch.setenv("CNNSEG_DATA_DIR", str(tmp_path / "data"))


def _open(make_napari_viewer, show: bool):
    """A viewer with the phantom and both docks opened through the plugin manifest."""
    viewer = make_napari_viewer(show=show)
    image, labels = make_phantom(shape=SHAPE, spacing=(2.0, 0.5, 0.5), seed=3)
    viewer.add_image(image.array, name="phantom", scale=image.spacing)
    _, seg = viewer.window.add_plugin_dock_widget(PLUGIN, "Segment")
    _, fin = viewer.window.add_plugin_dock_widget(PLUGIN, "Fine-tune")
    assert type(seg.viewer).__name__ == "PublicOnlyProxy"  # what the Plugins menu hands over
    seg.set_image_layer(seg.viewer.layers["phantom"])
    assert seg.choose_new("unet", CLASSES, **TINY["unet"])
    return viewer, seg, fin, labels.array


@pytest.fixture
def loop(make_napari_viewer):
    return _open(make_napari_viewer, show=False)


@pytest.fixture
def shown_loop(make_napari_viewer):
    """The same in a shown window: a hidden canvas renders black."""
    return _open(make_napari_viewer, show=True)


def _names(viewer) -> list[str]:
    return sorted(layer.name for layer in viewer.layers)


def _paint(layer, labels: np.ndarray, z: int = 2) -> None:
    layer.brush_size = 1
    for c in np.unique(labels[z]):
        ys, xs = np.nonzero(labels[z] == c)
        for y, x in list(zip(ys, xs, strict=True))[:: max(1, len(ys) // 6)]:
            layer.paint((z, y, x), int(c) + 1)


def _canvas(viewer) -> np.ndarray:
    return np.asarray(viewer.screenshot(canvas_only=True, flash=False))


def test_segment_twice_finetune_undo_keep_one_set_of_layers(loop):
    viewer, seg, fin, truth = loop
    seg.segment()
    after_first = {layer.name: unwrap(layer) for layer in viewer.layers}
    seg.segment()
    assert len(viewer.layers) == len(after_first)  # no "phantom labels [1]"
    assert all(unwrap(viewer.layers[n]) is layer for n, layer in after_first.items())
    scr = fin.add_scribbles_layer()
    _paint(scr, truth)
    assert _names(viewer) == EXPECTED
    labels = unwrap(viewer.layers["phantom labels"])
    fin.finetune(steps=3, **QUICK)
    assert fin.last_error is None, fin.last_error
    assert _names(viewer) == EXPECTED
    assert unwrap(viewer.layers["phantom labels"]) is labels
    np.testing.assert_array_equal(labels.data, fin.session.results.labels)
    # the brush stays on the scribbles, which stay on top of the results
    assert unwrap(viewer.layers[-1]) is scr and unwrap(viewer.layers.selection.active) is scr
    assert scr.mode == "paint"
    fin.undo()
    assert fin.last_error is None and _names(viewer) == EXPECTED
    assert unwrap(viewer.layers.selection.active) is scr
    # a renamed result layer is still found by its role key, not by its name
    labels.name = "my result"
    seg.segment()
    assert len(viewer.layers) == len(EXPECTED) and unwrap(viewer.layers["my result"]) is labels


def test_reopened_finetune_dock_finds_the_scribbles(loop):
    viewer, seg, fin, truth = loop
    scr = fin.add_scribbles_layer()
    viewer.window.remove_dock_widget("all")
    _, fin2 = viewer.window.add_plugin_dock_widget(PLUGIN, "Fine-tune")
    assert fin2 is not fin
    assert unwrap(fin2.add_scribbles_layer()) is scr
    assert [layer.name for layer in viewer.layers].count("phantom scribbles") == 1
    assert "phantom scribbles [1]" not in viewer.layers


def test_live_refresh_changes_data_and_what_is_drawn(shown_loop, monkeypatch):
    viewer, seg, fin, truth = shown_loop
    seg.segment()
    scr = fin.add_scribbles_layer()
    _paint(scr, truth)
    viewer.dims.set_current_step(0, 2)  # the painted slice is the visible one
    assert viewer.dims.current_step[0] == 2
    fin.refresh_seconds = 0.0
    prob = unwrap(viewer.layers["phantom p(organ)"])
    before_data = prob.data[2].copy()
    before_canvas = _canvas(viewer)
    seen: list[dict] = []
    show_region = fin._show_region

    def spy(img, update):
        show_region(img, update)
        drawn = _canvas(viewer)
        for layer in viewer.layers:  # re-slice everything from scratch: the truth to compare
            layer.refresh()
        seen.append({
            "data": prob.data[2].copy(), "drawn": drawn, "fresh": _canvas(viewer),
            "buttons": (seg.segment_btn.isEnabled(), seg.export_labels_btn.isEnabled(),
                        fin.train_btn.isEnabled(), fin.undo_btn.isEnabled()),
        })

    monkeypatch.setattr(fin, "_show_region", spy)
    fin.finetune(steps=3, **QUICK)
    assert fin.last_error is None, fin.last_error
    assert seen, "no live refresh during training"
    first = seen[0]
    assert before_canvas[..., :3].any()  # a real rendering, not a black hidden canvas
    assert not np.array_equal(first["data"], before_data)  # the shown layer's data changed
    assert not np.array_equal(first["drawn"], before_canvas)  # ... and so did the canvas
    for s in seen:  # what is drawn is the current data, without scrolling away and back
        assert np.array_equal(s["drawn"], s["fresh"])
        assert s["buttons"] == (False, False, False, False)  # no conflicting job can start


def test_progress_only_moves_forward_and_restarts_at_zero(loop, monkeypatch):
    viewer, seg, fin, truth = loop
    _paint(fin.add_scribbles_layer(), truth)
    values: list[tuple[int, int]] = []
    original = fin.set_fraction

    def spy(fraction):
        original(fraction)
        values.append((len(fin.refresh_log), fin.progress.value()))

    monkeypatch.setattr(fin, "set_fraction", spy)
    for _ in range(2):
        fin.finetune(steps=3, **QUICK)
        assert fin.last_error is None, fin.last_error
        assert fin.progress.value() == fin.progress.maximum()
        run, values[:] = [v for _, v in values], []
        assert run == sorted(run) and run[0] < fin.progress.maximum()
