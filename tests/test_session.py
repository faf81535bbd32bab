"""Qt-free session model behind the docks: segment, live region refresh, fine-tune, undo, autosave."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from _configs import CLASSES, TINY, phantom_strokes

from napari_cnnseg._autosave import ScribbleStore, image_key
from napari_cnnseg._session import Preview, Refreshing, RegionUpdate, Session, normalized_entropy
from napari_cnnseg.core.errors import InputError
from napari_cnnseg.core.io import Volume
from napari_cnnseg.core.sample_data import make_phantom
from napari_cnnseg.core.trainer import StepDone


@pytest.fixture
def phantom():
    return make_phantom(shape=(12, 28, 28), spacing=(2.0, 0.5, 0.5), seed=1)


@pytest.fixture
def session(phantom, tmp_path):
    image, _ = phantom
    s = Session(autosave_folder=tmp_path / "autosave")
    s.set_image(image, name="phantom")
    s.new_model("unet", CLASSES, **TINY["unet"])
    return s


def _weights(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_normalized_entropy_bounds():
    k = 4
    uniform = np.full((k, 2, 3, 3), 1.0 / k, dtype=np.float32)
    onehot = np.zeros((k, 2, 3, 3), dtype=np.float32)
    onehot[2] = 1.0
    assert np.allclose(normalized_entropy(uniform), 1.0, atol=1e-5)
    assert np.allclose(normalized_entropy(onehot), 0.0, atol=1e-5)


@pytest.mark.parametrize("family", list(TINY))
def test_segment_every_family(phantom, tmp_path, family):
    image, _ = phantom
    s = Session(autosave_folder=tmp_path)
    s.set_image(image, name="phantom")
    s.new_model(family, CLASSES, **TINY[family])
    res = s.segment()
    shape = image.array.shape
    assert res.labels.shape == shape and res.labels.dtype == np.uint8
    assert res.probabilities.shape == (len(CLASSES), *shape)
    # the session keeps its maps as float16 (_results.RESULT_DTYPE): K roundings of <= 2.5e-4
    assert np.allclose(res.probabilities.astype(np.float32).sum(0), 1.0, atol=2e-3)
    assert np.array_equal(res.labels, res.probabilities.argmax(0))
    assert res.uncertainty.min() >= 0.0 and res.uncertainty.max() <= 1.0
    assert s.class_names == CLASSES
    assert family.split("_")[0].lower()[:4] in s.describe_model().lower().replace("-", "")


def test_region_equals_whole_and_applies_in_place(session):
    session.predict_options["precision"] = "fp32"  # live refreshes always run in fp32
    res = session.segment()
    labels_id, probs_id = id(res.labels), id(res.probabilities)
    roi = session.slice_roi(0, 5)
    upd = session.predict_region(roi)
    assert upd.probabilities.shape == (4, 1, 28, 28)
    # float32 region vs the float16 whole-volume maps: within float16 rounding
    np.testing.assert_allclose(upd.probabilities, res.probabilities[:, 5:6], atol=5e-4)
    # a region computed with newer weights is written into the same arrays
    with torch.no_grad():
        for p in session.model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    session.versions.step += 1
    upd2 = session.predict_region(session.slice_roi(1, 7))
    before = res.probabilities.copy()
    assert session.apply_region(upd2)
    assert id(session.results.labels) == labels_id and id(session.results.probabilities) == probs_id
    np.testing.assert_array_equal(res.probabilities[:, :, 7:8],
                                  upd2.probabilities.astype(res.probabilities.dtype))
    outside = np.ones(before.shape, bool)
    outside[:, :, 7] = False
    np.testing.assert_array_equal(res.probabilities[outside], before[outside])
    # an update older than the results is ignored
    assert not session.apply_region(upd)


@pytest.mark.slow
def test_finetune_live_refresh_then_undo_restores_exact_weights(session, phantom):
    _, labels = phantom
    session.segment()
    w0 = _weights(session.model)
    seen, live_losses, refreshing = [], [], []
    handlers = {StepDone: lambda e: live_losses.append(e.loss), RegionUpdate: seen.append,
                Refreshing: refreshing.append}
    out = session.finetune(
        phantom_strokes(labels.array),
        steps=4,
        batch_size=2,
        crop_shape=(4, 12, 12),
        keep_best=False,
        preview=Preview(lambda: session.slice_roi(0, 3), steps=2),
        on_event=lambda event: handlers[type(event)](event),
    )
    assert out.region_updates == 2 and len(seen) == 2
    assert all(u.probabilities.shape == (4, 1, 28, 28) for u in seen)
    assert len(out.losses) == 4 and all(np.isfinite(out.losses))
    assert live_losses == out.losses  # the live loss the dock shows is the trainer's
    assert refreshing and refreshing[-1].done == refreshing[-1].total  # the final refresh
    assert out.results is session.results and out.results.labels.shape == (12, 28, 28)
    w1 = _weights(session.model)
    assert any(not torch.equal(w0[k], w1[k]) for k in w0)
    assert session.can_undo
    assert session.undo()
    w2 = _weights(session.model)
    assert all(torch.equal(w0[k], w2[k]) for k in w0)
    assert not session.can_undo and not session.undo()


@pytest.mark.slow
def test_stop_keeps_weights_and_refreshes(session, phantom):
    _, labels = phantom
    w0 = _weights(session.model)
    calls = []

    def cancel() -> bool:
        calls.append(1)
        return len(calls) > 2  # stop after two steps

    out = session.finetune(
        phantom_strokes(labels.array), steps=50, batch_size=2, crop_shape=(4, 12, 12),
        keep_best=False, cancel=cancel,
    )
    assert out.stopped and out.results is not None and out.steps == 2 == len(out.losses)
    assert any(not torch.equal(w0[k], v) for k, v in session.model.state_dict().items())
    assert session.undo()
    assert all(torch.equal(w0[k], v) for k, v in session.model.state_dict().items())


def test_failed_finetune_leaves_model_and_undo_stack(session, phantom):
    _, labels = phantom
    w0 = _weights(session.model)
    with pytest.raises(InputError):
        session.finetune(phantom_strokes(labels.array), steps=2, batch_size=0)
    assert not session.can_undo
    assert all(torch.equal(w0[k], v) for k, v in session.model.state_dict().items())


@pytest.mark.parametrize(
    "bad, match",
    [
        (np.zeros((12, 28, 28), np.uint8), "paint"),
        (np.ones((12, 28, 27), np.uint8), "grid"),
        (np.full((12, 28, 28), 9, np.uint8), "classes"),
        (np.ones((12, 28, 28), np.float32), "integers"),
    ],
)
def test_bad_scribbles_say_what_to_do(session, bad, match):
    with pytest.raises(InputError, match=match):
        session.check_scribbles(bad)


def test_channel_mismatch_and_missing_pieces(phantom, tmp_path):
    image, _ = phantom
    s = Session(autosave_folder=tmp_path)
    with pytest.raises(InputError, match="no image"):
        s.check_ready()
    two = Volume(np.stack([image.array, image.array]), spacing=image.spacing)
    s.set_image(two, name="two channels")
    with pytest.raises(InputError, match="no model"):
        s.check_ready()
    s.new_model("unet", CLASSES, in_channels=1, **TINY["unet"])
    with pytest.raises(InputError, match="channel"):
        s.segment()
    with pytest.raises(InputError, match="family"):
        s.new_model("resnet")


def test_save_model_round_trip(session, tmp_path):
    from napari_cnnseg.core.models import load_model

    path = session.save_model(tmp_path / "tuned")
    loaded = load_model(path)
    assert loaded.meta["class_names"] == CLASSES
    for k, v in session.model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k])


# ------------------------------------------------------------------ autosave
def test_autosave_round_trip_and_reload_in_new_session(session, phantom, tmp_path):
    image, labels = phantom
    scr = phantom_strokes(labels.array)
    path = session.autosave_scribbles(scr)
    assert path.is_file() and path.parent == tmp_path / "autosave"
    # a new session (e.g. after a restart) on the same image finds them again
    again = Session(autosave_folder=tmp_path / "autosave")
    again.set_image(image.with_array(image.array.copy()), name="phantom")
    np.testing.assert_array_equal(again.load_scribbles(), scr)
    # another image does not
    other = Session(autosave_folder=tmp_path / "autosave")
    other.set_image(image.with_array(image.array + 1.0), name="phantom")
    assert other.load_scribbles() is None


def test_autosave_survives_crash_during_save(tmp_path, monkeypatch):
    store = ScribbleStore("abc", tmp_path)
    first = np.zeros((5, 6, 7), np.uint8)
    first[2, 3, 4] = 2
    store.save(first)
    second = first.copy()
    second[1, 1, 1] = 1

    def crash(*args, **kwargs):
        raise OSError("simulated power cut")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        store.save(second)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["abc.npz"]  # no temp files left
    np.testing.assert_array_equal(ScribbleStore("abc", tmp_path).load(), first)
    # a truncated file (crash of a non-atomic writer) is ignored, not fatal
    store.path.write_bytes(store.path.read_bytes()[:40])
    assert store.load() is None
    # a file for another grid is ignored
    store.save(first)
    assert store.load((5, 6, 8)) is None


def test_image_key_is_stable_and_discriminating():
    a = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
    assert image_key(a) == image_key(a.copy())
    assert image_key(a) != image_key(a + 1)
    assert image_key(a) != image_key(a, spacing=(2.0, 1.0, 1.0))
    assert image_key(a, source_path="/x/y.nii") == image_key(a + 5, source_path="/x/y.nii")


def test_session_is_qt_free():
    import json
    import subprocess
    import sys

    code = (
        "import json, sys\n"
        "import napari_cnnseg._session, napari_cnnseg._autosave, napari_cnnseg._results\n"
        "bad = sorted(k for k in sys.modules if k.split('.')[0] in "
        "('napari', 'qtpy', 'PyQt5', 'PyQt6', 'PySide2', 'PySide6', 'magicgui', 'vispy'))\n"
        "print(json.dumps(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_demo_strokes_stay_inside_their_class(phantom):
    from napari_cnnseg.demo import demo_strokes

    _, labels = phantom
    lab = np.asarray(labels.array)
    scr = demo_strokes(lab)
    painted = scr > 0
    assert painted.any()
    np.testing.assert_array_equal(scr[painted] - 1, lab[painted])
    assert set(np.unique(scr[painted]) - 1) == set(np.unique(lab[np.nonzero(painted.any((1, 2)))[0]]))


def test_new_networks_default_to_the_fast_interactive_settings(tmp_path):
    from napari_cnnseg.core.models import default_config, interactive_config

    s = Session(autosave_folder=tmp_path)
    cfg = s.new_model("unet", CLASSES).get_config()
    for key, value in interactive_config("unet").items():
        assert cfg[key] == value
    assert interactive_config("unet") != {k: default_config("unet")[k] for k in interactive_config("unet")}
    assert s.new_model("unet", CLASSES, depth=3).get_config()["depth"] == 3  # explicit wins
    assert interactive_config("multiscale") == {}


def test_finetune_uses_the_measured_recipe_for_the_model_start(session, phantom, monkeypatch):
    import napari_cnnseg.core.training as training
    from napari_cnnseg.core.models import build_model

    seen = []
    real = training.finetune

    def spy(model, image, scribbles, **kw):
        seen.append((kw["lr"], kw["prior"]))
        return real(model, image, scribbles, **kw)

    monkeypatch.setattr(training, "finetune", spy)
    scr = phantom_strokes(np.asarray(phantom[1].array))
    small = {"steps": 1, "refresh": False, "batch_size": 2, "crop_shape": (4, 8, 8)}
    assert session.model_is_fresh
    session.finetune(scr, **small)  # an untrained net: the new-task recipe
    assert not session.model_is_fresh  # fine-tuned once
    assert session.describe_model().splitlines()[0].endswith("(new, fine-tuned 1× here)")
    session.finetune(scr, **small)  # a net that started new keeps the new-task recipe
    assert session.undo() and not session.model_is_fresh
    assert session.undo() and session.model_is_fresh  # back to the untrained weights
    session.model.meta = {**session.model.meta, "new_task": False}
    session.set_model(session.model, source="a checkpoint")  # a trained start
    assert not session.model_is_fresh
    session.finetune(scr, **small)
    session.finetune(scr, lr=1e-4, **small)  # explicit settings win
    new, trained = training.recommended_settings(True), training.recommended_settings(False)
    assert new["prior"] == "background" and trained["prior"] == "self"
    per_voxel = training.recommended_settings(True, build_model("feature_net", context_layers=0))
    assert per_voxel["prior_weight"] < new["prior_weight"]
    assert seen == [(new["lr"], new["prior"]), (new["lr"], new["prior"]),
                    (trained["lr"], trained["prior"]), (1e-4, trained["prior"])]
