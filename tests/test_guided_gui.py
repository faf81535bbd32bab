"""The guided loop in the docks (issue 15), under Xvfb, docks opened through the plugin manifest.

* one click: each bundled sample opens with its shipped model preselected, and pressing the
  Segment button is all it takes; other images get the last model chosen by hand, or a prompt
  in the dock (Segment disabled) before any click;
* Next suggestion: moves the dims step and the camera to the top suggestion and outlines it in
  one ``<image> suggestions`` layer, updated in place;
* Live: training runs in a real worker thread while strokes are added; the new strokes are
  used, switching off ends the worker, Undo restores the weights from before Live.

Run with ``xvfb-run -a -s "-screen 0 1280x1024x24" .venv/bin/python -m pytest tests/test_guided_gui.py``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("napari")
pytestqt = pytest.importorskip("pytestqt")

from napari_cnnseg._napari_io import find_layer, unwrap  # noqa: E402
from napari_cnnseg._widgets import _worker  # noqa: E402
from napari_cnnseg._widgets._live import LiveSettings  # noqa: E402
from napari_cnnseg._widgets._model_picker import CHOOSE_PROMPT, SAMPLE_MODELS  # noqa: E402
from napari_cnnseg._widgets._suggestions import camera  # noqa: E402
from napari_cnnseg.core.models import list_pretrained  # noqa: E402

pytestmark = pytest.mark.gui

PLUGIN = "napari-cnnseg"
#: sample key in napari.yaml -> (image layer name, shipped model it must preselect)
SAMPLES = {"phantom": ("phantom", "phantom-unet"), "brain_t1": ("brain T1", "brain-t1-unet")}


@pytest.fixture(autouse=True)
def _sync(monkeypatch, tmp_path):
    monkeypatch.setattr(_worker, "SYNC", True)
    monkeypatch.setenv("CNNSEG_DATA_DIR", str(tmp_path / "data"))


def _docks(viewer):
    _, seg = viewer.window.add_plugin_dock_widget(PLUGIN, "Segment")
    _, fin = viewer.window.add_plugin_dock_widget(PLUGIN, "Fine-tune")
    return seg, fin


def _weights(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------- one click
def test_every_sample_has_its_shipped_model():
    assert set(SAMPLE_MODELS.values()) <= set(list_pretrained())
    assert {model for _, model in SAMPLES.values()} == set(SAMPLE_MODELS.values())


@pytest.mark.parametrize("sample", list(SAMPLES))
def test_one_click_segment_on_each_sample(make_napari_viewer, sample):
    name, model = SAMPLES[sample]
    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, sample)
    seg, fin = _docks(viewer)
    assert seg.image_combo.currentText() == name
    assert seg.session.model_source == model  # preselected, nothing touched
    assert seg.model_combo.currentData() == ("pretrained", model)
    assert "preselected" in seg.status.text()
    assert seg.segment_btn.isEnabled()
    seg.segment_btn.click()  # the one click
    assert seg.last_error is None, seg.last_error
    labels = find_layer(viewer.layers, "labels", name)
    assert labels is not None and labels.data.shape == viewer.layers[name].data.shape[-3:]
    assert labels.data.any()  # the shipped model finds its structure
    assert fin.suggestion_box.suggestions or "sure everywhere" in fin.suggestion_box.label.text()


def test_other_samples_model_follows_the_chosen_image(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "phantom")
    seg, _ = _docks(viewer)
    assert seg.session.model_source == "phantom-unet"
    viewer.open_sample(PLUGIN, "brain_t1")
    seg.set_image_layer(seg.viewer.layers["brain T1"])
    assert seg.session.model_source == "brain-t1-unet"  # preselected model, untouched: follows


def test_a_model_chosen_by_hand_is_never_replaced(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "brain_t1")
    seg, _ = _docks(viewer)
    assert seg.choose_new("unet", ["background", "brain"], depth=2, base_width=4)
    viewer.open_sample(PLUGIN, "phantom")
    seg.set_image_layer(seg.viewer.layers["phantom"])
    assert seg.session.model_source == "new unet"


def test_other_image_prompts_then_gets_the_last_used_model(make_napari_viewer, tmp_path):
    image = np.random.default_rng(0).random((8, 24, 24)).astype(np.float32)
    viewer = make_napari_viewer()
    viewer.add_image(image, name="mine")
    seg, fin = _docks(viewer)
    # no model and none used before: a prompt in the dock before the click, Segment disabled
    assert seg.session.model is None
    assert seg.description.text() == CHOOSE_PROMPT
    assert not seg.segment_btn.isEnabled()
    assert seg.last_error is None  # no error shown: nothing was clicked
    assert seg.choose_pretrained("phantom-unet")  # chosen by hand: remembered
    assert seg.segment_btn.isEnabled()
    # a new viewer (a new napari session) with another image starts with that model
    other = make_napari_viewer()
    other.add_image(image[:, :20], name="another")
    seg2, _ = _docks(other)
    assert seg2.session is not seg.session
    assert seg2.session.model_source == "phantom-unet"
    assert "last one you used" in seg2.status.text()
    seg2.segment_btn.click()
    assert seg2.last_error is None, seg2.last_error


# ---------------------------------------------------------------- next suggestion
@pytest.fixture
def phantom_loop(make_napari_viewer):
    """The phantom sample, segmented once with its preselected shipped model (one click)."""
    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "phantom")
    seg, fin = _docks(viewer)
    seg.segment_btn.click()
    assert seg.last_error is None, seg.last_error
    return viewer, seg, fin


def test_next_suggestion_moves_the_view_and_outlines_one_region(phantom_loop):
    viewer, seg, fin = phantom_loop
    box = fin.suggestion_box
    assert box.suggestions, "no suggestion after Segment"
    assert box.next_btn.isEnabled()
    top = box.suggestions[0]
    assert box.label.text().startswith("Paint next: slice ")
    assert top.describe(fin.session.spatial_shape) in box.label.text()
    viewer.dims.ndisplay = 3  # from a 3D view too
    viewer.dims.set_current_step(0, (top.index + 7) % viewer.dims.nsteps[0])
    scr = fin.add_scribbles_layer()
    box.next_btn.click()
    assert fin.last_error is None, fin.last_error
    assert viewer.dims.ndisplay == 2 and viewer.dims.not_displayed == (0,)
    assert viewer.dims.current_step[0] == top.index
    image = viewer.layers["phantom"]
    centre = np.asarray(image.data_to_world((top.index, *top.center)))
    np.testing.assert_allclose(camera(viewer).center[-2:], centre[1:], atol=1e-6)
    shapes = [x for x in viewer.layers if x.name.endswith("suggestions")]
    assert len(shapes) == 1 and shapes[0].name == "phantom suggestions"
    rect = np.asarray(shapes[0].data[0])
    assert np.all(rect[:, 0] == top.index)  # on the suggested slice
    y0, y1, x0, x1 = top.bbox
    assert rect[:, 1].min() == y0 - 0.5 and rect[:, 1].max() == y1 - 0.5
    assert rect[:, 2].min() == x0 - 0.5 and rect[:, 2].max() == x1 - 0.5
    assert unwrap(viewer.layers.selection.active) is scr  # the next stroke lands in it
    # the next press goes to the second suggestion, same layer updated in place
    if len(box.suggestions) > 1:
        box.next_btn.click()
        assert viewer.dims.current_step[0] == box.suggestions[1].index
        assert box.label.text().startswith("Suggestion 2 of ")
    seg.segment_btn.click()  # a new prediction ranks again; still one suggestions layer
    box.next_btn.click()
    assert [x.name for x in viewer.layers].count("phantom suggestions") == 1
    assert unwrap(viewer.layers["phantom suggestions"]) is unwrap(shapes[0])


def test_suggestions_follow_each_whole_volume_prediction(phantom_loop):
    viewer, seg, fin = phantom_loop
    box = fin.suggestion_box
    top = box.suggestions[0]
    scr = fin.add_scribbles_layer()
    data = np.array(scr.data)
    data[top.index] = 1  # the whole top slice painted background: nothing left to suggest there
    scr.data = data
    fin.finetune(steps=2, batch_size=1, keep_best=False)
    assert fin.last_error is None, fin.last_error
    assert box.suggestions and top.index not in [s.index for s in box.suggestions]
    assert box.label.text().startswith("Paint next: ")


# ---------------------------------------------------------------- live training
def _paint_slice(layer, truth: np.ndarray, z: int, every: int = 5) -> int:
    """Brush dots of every class of ``truth`` on slice ``z`` (napari's paint path); returns
    how many voxels were painted."""
    layer.brush_size = 1
    n = 0
    for c in np.unique(truth[z]):
        ys, xs = np.nonzero(truth[z] == c)
        for y, x in list(zip(ys, xs, strict=True))[:: max(1, len(ys) // every)]:
            layer.paint((z, y, x), int(c) + 1)
            n += 1
    return n


@pytest.fixture
def live_loop(make_napari_viewer):
    """A small phantom, a new feature net (milliseconds per step: what Live is for), segmented
    once; returns (viewer, seg, fin, truth)."""
    from napari_cnnseg.core.sample_data import PHANTOM_CLASSES, make_phantom

    image, truth = make_phantom(shape=(16, 40, 40), spacing=(2.0, 0.5, 0.5), seed=3)
    viewer = make_napari_viewer()
    viewer.add_image(image.array, name="phantom", scale=image.spacing)
    seg, fin = _docks(viewer)
    seg.set_image_layer(seg.viewer.layers["phantom"])
    assert seg.choose_new("feature_net", list(PHANTOM_CLASSES))
    seg.segment_btn.click()
    assert seg.last_error is None, seg.last_error
    return viewer, seg, fin, np.asarray(truth.array)


@pytest.fixture
def spied_live(monkeypatch):
    """Records the LiveTraining objects the dock starts and the strokes handed to them."""
    from napari_cnnseg._session import Session

    started: list[dict] = []
    original = Session.start_live

    def start_live(self, scribbles):
        live = original(self, scribbles)
        record = {"live": live, "updates": [], "stopped": False}
        update, stop = live.update_scribbles, live.stop

        def update_scribbles(scr):
            record["updates"].append(np.array(scr, copy=True))
            return update(scr)

        def stopped():
            record["stopped"] = True
            return stop()

        monkeypatch.setattr(live, "update_scribbles", update_scribbles)
        monkeypatch.setattr(live, "stop", stopped)
        started.append(record)
        return live

    monkeypatch.setattr(Session, "start_live", start_live)
    return started


def test_live_takes_strokes_while_training_stops_and_undoes(live_loop, qtbot, monkeypatch,
                                                             spied_live):
    viewer, seg, fin, truth = live_loop
    session = fin.session
    scr = fin.add_scribbles_layer()
    _paint_slice(scr, truth, 5)
    viewer.dims.set_current_step(0, 5)
    fin.live_settings = LiveSettings(pause_seconds=0.5, slice_seconds=0.2,
                                     rest_after_steps=10**9)
    before = _weights(session.model)
    monkeypatch.setattr(_worker, "SYNC", False)  # a real worker thread, as in napari
    fin.live_btn.click()
    assert fin.live_running and fin.live_btn.isChecked() and fin.live_btn.isEnabled()
    # buttons that would conflict are disabled in both docks while Live runs
    assert not fin.train_btn.isEnabled() and not fin.undo_btn.isEnabled()
    assert not seg.segment_btn.isEnabled() and not fin.save_btn.isEnabled()
    assert fin.stop_btn.isEnabled()
    qtbot.waitUntil(lambda: any(e.kind == "slice" for e in fin.live_log), timeout=300_000)
    # new strokes while it trains: no click, taken from the layer's paint events
    viewer.dims.set_current_step(0, 10)  # the user looks at the slice they paint
    painted = _paint_slice(scr, truth, 10)
    assert painted
    qtbot.waitUntil(lambda: bool(fin.stroke_log), timeout=10_000)
    version = fin.stroke_log[-1][0]
    qtbot.waitUntil(lambda: any(e.kind == "slice" and e.strokes >= version
                                for e in fin.live_log), timeout=300_000)
    (record,) = spied_live
    assert record["updates"] and (record["updates"][-1][10] > 0).sum() >= painted
    shown = next(e for e in fin.live_log if e.kind == "slice" and e.strokes >= version)
    assert shown.update.roi[0] == slice(10, 11)  # the visible slice was refreshed
    qtbot.waitUntil(lambda: any(e.kind == "volume" for e in fin.live_log), timeout=300_000)
    fin.live_btn.click()  # off
    qtbot.waitUntil(lambda: not fin.ctrl.busy, timeout=300_000)
    assert record["stopped"] and not fin.live_running and not fin.live_btn.isChecked()
    assert not fin.ctrl.job.running and fin.ctrl.job.worker is not None
    assert fin.last_error is None, fin.last_error
    assert "Live off after" in fin.status.text()
    after = _weights(session.model)
    assert not _same(before, after)  # it trained
    assert session.tuned_rounds == 1 and fin.undo_btn.isEnabled()
    monkeypatch.setattr(_worker, "SYNC", True)
    fin.undo_btn.click()
    assert fin.last_error is None, fin.last_error
    assert _same(before, _weights(session.model))  # the weights from before Live
    assert not session.can_undo


def test_live_in_synchronous_mode_trains_until_it_rests(live_loop, spied_live):
    viewer, seg, fin, truth = live_loop
    _paint_slice(fin.add_scribbles_layer(), truth, 5)
    fin.live_settings = LiveSettings(rest_after_steps=3, max_chunk_steps=2)
    before = _weights(fin.session.model)
    fin.live_btn.click()  # CNNSEG_SYNC: nobody can paint during it, so it ends when it rests
    assert fin.last_error is None, fin.last_error
    assert not fin.live_running and not fin.live_btn.isChecked() and spied_live[0]["stopped"]
    kinds = [e.kind for e in fin.live_log]
    assert kinds.count("step") >= 2 and "volume" in kinds
    assert not _same(before, _weights(fin.session.model))


def test_live_refreshes_of_a_feature_net_read_its_cached_filters(tmp_path, monkeypatch):
    """The live slice refresh of a per-voxel feature net reads the cached filters (no
    filtering again) and equals the same box of the whole-volume prediction."""
    from napari_cnnseg._session import Session
    from napari_cnnseg.core.errors import Cancelled
    from napari_cnnseg.core.models import feature_net
    from napari_cnnseg.core.sample_data import PHANTOM_CLASSES, make_phantom

    image, _ = make_phantom(shape=(20, 24, 24), seed=1)
    session = Session(autosave_folder=tmp_path)
    session.set_image(image, name="p")
    session.predict_options.update(device="cpu", precision="fp32")
    session.new_model("feature_net", list(PHANTOM_CLASSES))
    session.prepare_features()
    whole = session.segment()
    monkeypatch.setattr(feature_net, "volume_features", None)  # filtering again would fail
    for roi in (session.slice_roi(0, 7), session.slice_roi(2, 5)):
        ref = session.predict_region(roi)
        np.testing.assert_allclose(ref.probabilities, whole.probabilities[(slice(None), *roi)],
                                   atol=5e-4)  # the session keeps float16 maps
    with pytest.raises(Cancelled):  # checked between slabs
        session.predict_region(session.slice_roi(0, 3), cancel=lambda: True)


def test_closing_the_viewer_while_live_runs_ends_the_worker(live_loop, qtbot, monkeypatch,
                                                            spied_live):
    viewer, seg, fin, truth = live_loop
    _paint_slice(fin.add_scribbles_layer(), truth, 5)
    fin.live_settings = LiveSettings(rest_after_steps=10**9)  # it would train forever
    monkeypatch.setattr(_worker, "SYNC", False)
    job = fin.start_live()
    assert job is not None and job.running
    qtbot.waitUntil(lambda: bool(spied_live) and spied_live[0]["live"].steps > 0,
                    timeout=300_000)
    viewer.close()
    qtbot.waitUntil(lambda: not job.running, timeout=120_000)
    assert spied_live[0]["stopped"]  # the live session ended as a round, not abandoned
