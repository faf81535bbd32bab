"""Fine-tune dock under Xvfb: scribbles layer, live slice refresh, undo, save, autosave after a crash."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

from napari_cnnseg._widgets import FinetuneWidget, SegmentWidget, _worker  # noqa: E402
from napari_cnnseg._widgets.finetune import AUTOSAVE_DELAY_MS  # noqa: E402
from napari_cnnseg.core.sample_data import make_phantom  # noqa: E402

pytestmark = pytest.mark.gui

CLASSES = ["background", "organ", "vessel", "lesion"]
SHAPE = (10, 24, 24)
TINY_UNET = dict(depth=2, base_width=4)
#: quick training settings for the 2-core CI machine
QUICK = dict(batch_size=2, crop_shape=(4, 12, 12), keep_best=False)


@pytest.fixture(autouse=True)
def _sync(monkeypatch, tmp_path):
    monkeypatch.setattr(_worker, "SYNC", True)
    monkeypatch.setenv("CNNSEG_DATA_DIR", str(tmp_path / "data"))


@pytest.fixture
def phantom():
    return make_phantom(shape=SHAPE, spacing=(2.0, 0.5, 0.5), seed=3)


def _docks(viewer, qtbot, image):
    layer = viewer.add_image(image.array, name="phantom", scale=image.spacing)
    seg, fin = SegmentWidget(viewer), FinetuneWidget(viewer)
    qtbot.addWidget(seg)
    qtbot.addWidget(fin)
    seg.set_image_layer(layer)
    seg.choose_new("unet", CLASSES, **TINY_UNET)
    return layer, seg, fin


def _paint(layer, labels: np.ndarray) -> None:
    """Brush strokes through napari's own paint path (emits the paint event)."""
    layer.brush_size = 1
    for z in (2, 6):
        for c in np.unique(labels[z]):
            ys, xs = np.nonzero(labels[z] == c)
            for y, x in list(zip(ys, xs, strict=True))[:: max(1, len(ys) // 6)]:
                layer.paint((z, y, x), int(c) + 1)


def _weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_scribbles_layer_on_image_grid(make_napari_viewer, qtbot, phantom):
    viewer = make_napari_viewer()
    image_layer, seg, fin = _docks(viewer, qtbot, phantom[0])
    layer = fin.add_scribbles_layer()
    assert layer.name == "phantom scribbles" and type(layer).__name__ == "Labels"
    assert layer.data.shape == SHAPE and not layer.data.any()
    np.testing.assert_allclose(layer.scale, image_layer.scale)
    assert layer.mode == "paint" and viewer.layers.selection.active is layer
    assert layer.selected_label == 2  # class 1 ("organ") = value 2
    fin.class_combo.setCurrentIndex(3)
    assert layer.selected_label == 4
    # colours follow the model classes: scribble value k has the colour of class k-1
    from napari_cnnseg._colors import class_color

    for k in range(1, len(CLASSES) + 1):
        np.testing.assert_allclose(layer.colormap.map(k), class_color(k - 1), atol=1e-6)
    assert fin.add_scribbles_layer() is layer  # no duplicate


@pytest.mark.slow
def test_finetune_loop_live_slice_refresh_undo_and_save(
    make_napari_viewer, qtbot, phantom, tmp_path
):
    viewer = make_napari_viewer()
    image, labels = phantom
    image_layer, seg, fin = _docks(viewer, qtbot, image)
    seg.segment()
    w0 = _weights(seg.session.model)
    scr = fin.add_scribbles_layer()
    _paint(scr, labels.array)
    viewer.dims.set_current_step(0, 2)  # visible slice z = 2
    fin.refresh_seconds = 0.0  # as often as the cost cap allows
    lbl_layer = viewer.layers["phantom labels"]
    fin.finetune(steps=4, **QUICK)
    assert fin.last_error is None, fin.last_error
    # live refreshes of exactly the visible slice (the first after step 1), then the whole volume
    rois = [roi for _, roi in fin.refresh_log]
    n = fin.last_outcome.region_updates
    assert n >= 1 and rois[:-1] == [(slice(2, 3), slice(0, 24), slice(0, 24))] * n
    assert rois[-1] == ()
    assert len(fin.last_outcome.losses) == 4
    assert "Done: 4 steps in" in fin.status.text() and "s in all" in fin.status.text()
    assert fin.progress.value() == fin.progress.maximum()
    assert viewer.layers["phantom labels"] is lbl_layer  # updated in place
    np.testing.assert_array_equal(lbl_layer.data, seg.session.results.labels)
    w1 = _weights(seg.session.model)
    assert any(not torch.equal(w0[k], w1[k]) for k in w0)
    tuned_labels = lbl_layer.data.copy()
    assert fin.undo_btn.isEnabled()
    fin.undo()
    w2 = _weights(seg.session.model)
    assert all(torch.equal(w0[k], w2[k]) for k in w0)  # exact previous weights
    seg_again = seg.session.segment()  # layers follow the restored model
    np.testing.assert_array_equal(lbl_layer.data, seg_again.labels)
    assert not fin.undo_btn.isEnabled()
    assert tuned_labels.shape == SHAPE
    path = fin.save_model(tmp_path / "mine")
    assert path is not None and path.exists()


@pytest.mark.slow
def test_finetune_without_segment_first_and_3d_view(make_napari_viewer, qtbot, phantom):
    viewer = make_napari_viewer()
    image, labels = phantom
    _, seg, fin = _docks(viewer, qtbot, image)
    _paint(fin.add_scribbles_layer(), labels.array)
    viewer.dims.ndisplay = 3  # no single visible slice: only the final whole-volume refresh
    fin.finetune(steps=2, **QUICK)
    assert fin.last_error is None, fin.last_error
    assert [roi for _, roi in fin.refresh_log] == [()]
    assert "phantom labels" in viewer.layers
    assert viewer.layers["phantom labels"].data.shape == SHAPE


def test_finetune_errors_are_notifications(make_napari_viewer, qtbot, phantom):
    viewer = make_napari_viewer()
    _, seg, fin = _docks(viewer, qtbot, phantom[0])
    assert fin.finetune(steps=2) is None and "scribbles" in fin.last_error
    fin.add_scribbles_layer()
    assert fin.finetune(steps=2) is None and "paint" in fin.last_error
    assert fin.undo() is None and "undo" in fin.last_error
    assert [layer.name for layer in viewer.layers] == ["phantom", "phantom scribbles"]


def test_autosave_survives_a_simulated_crash(make_napari_viewer, qtbot, phantom, tmp_path):
    image, labels = phantom
    viewer = make_napari_viewer()
    _, _, fin = _docks(viewer, qtbot, image)
    scr = fin.add_scribbles_layer()
    _paint(scr, labels.array)
    qtbot.wait(3 * AUTOSAVE_DELAY_MS)  # the autosave lands right after the strokes
    painted = np.array(scr.data)
    assert painted.any()
    files = list((tmp_path / "data" / "scribbles").glob("*.npz"))
    assert len(files) == 1  # saved on every stroke, without any explicit save
    # "crash": the viewer and docks vanish without any shutdown code running
    fin.ctrl.session._store = None
    # restart: a new viewer with the same image restores the strokes
    viewer2 = make_napari_viewer()
    _, _, fin2 = _docks(viewer2, qtbot, image)
    assert fin2.session is not fin.session
    restored = fin2.add_scribbles_layer()
    np.testing.assert_array_equal(restored.data, painted)


@pytest.mark.slow
def test_finetune_in_a_real_worker_thread_refreshes_live_then_stops(
    make_napari_viewer, qtbot, phantom, monkeypatch
):
    viewer = make_napari_viewer()
    image, labels = phantom
    _, seg, fin = _docks(viewer, qtbot, image)
    _paint(fin.add_scribbles_layer(), labels.array)
    viewer.dims.set_current_step(0, 6)
    fin.refresh_seconds = 0.0
    monkeypatch.setattr(_worker, "SYNC", False)
    job = fin.finetune(steps=10_000, **QUICK)  # far more than we let it run
    assert job is not None and job.worker is not None
    assert not fin.train_btn.isEnabled() and fin.stop_btn.isEnabled()
    # slice refreshes arrive on the GUI thread while the worker trains
    qtbot.waitUntil(lambda: len(fin.refresh_log) >= 2, timeout=120_000)
    assert all(roi == (slice(6, 7), slice(0, 24), slice(0, 24)) for _, roi in fin.refresh_log)
    fin.stop()
    qtbot.waitUntil(lambda: not job.running, timeout=120_000)
    out = fin.last_outcome
    assert out is not None and out.stopped and out.steps >= 2
    assert fin.refresh_log[-1][1] == ()  # whole volume after Stop
    np.testing.assert_array_equal(
        viewer.layers["phantom labels"].data, seg.session.results.labels
    )
    assert fin.train_btn.isEnabled() and fin.undo_btn.isEnabled()


def test_live_refresh_is_paced_by_time_not_steps(phantom):
    """Session level (what the dock drives): a long pause gives only the first-step preview;
    a zero pause still leaves most of the time to training (cost cap)."""
    from napari_cnnseg._session import LIVE_REFRESH_MAX_SHARE, Preview, RegionUpdate, Session

    image, labels = phantom
    s = Session()
    s.set_image(image, name="phantom")
    s.new_model("unet", CLASSES, **TINY_UNET)
    scr = np.zeros(SHAPE, np.uint8)
    scr[2, ::3, ::3] = labels.array[2, ::3, ::3] + 1
    roi = s.slice_roi(0, 2)
    seen = []
    out = s.finetune(scr, steps=6, preview=Preview(lambda: roi, seconds=3600.0),
                     on_event=lambda e: seen.append(e) if isinstance(e, RegionUpdate) else None,
                     refresh=False, **QUICK)
    assert out.region_updates == 1 and len(seen) == 1 and seen[0].roi == roi
    out = s.finetune(scr, steps=6, preview=Preview(lambda: roi, seconds=0.0),
                     on_event=lambda e: seen.append(e) if isinstance(e, RegionUpdate) else None,
                     refresh=False, **QUICK)
    assert 1 <= out.region_updates <= 6 and 0 < LIVE_REFRESH_MAX_SHARE < 1
