"""Live training through the Session (the Fine-tune dock's Live toggle, Qt-free)."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from _configs import CLASSES, TINY, phantom_strokes

from napari_cnnseg._session import Session
from napari_cnnseg.core.errors import Cancelled, InputError
from napari_cnnseg.core.sample_data import make_phantom


def _weights(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same(a: dict, b: dict) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(params=["feature_net", "unet"])
def live_session(request, tmp_path):
    image, labels = make_phantom(shape=(12, 28, 28), spacing=(2.0, 0.5, 0.5), seed=1)
    s = Session(autosave_folder=tmp_path)
    s.set_image(image, name="phantom")
    s.new_model(request.param, CLASSES, **TINY[request.param])
    s.predict_options.update(device="cpu", precision="fp32")
    return s, labels.array


def test_live_training_takes_new_strokes_and_is_one_undo_step(live_session):
    s, labels = live_session
    before = _weights(s.model)
    live = s.start_live(phantom_strokes(labels, (3,)), batch_size=2, crop_shape=(4, 8, 8), seed=0)
    assert s.can_undo and s.tuned_rounds == 0
    step0 = s.versions.step
    loss = live.train(steps=3)
    assert np.isfinite(loss) and live.steps == 3 and s.versions.step > step0
    assert not _same(before, _weights(s.model))
    second = phantom_strokes(labels, (3, 8))
    assert live.update_scribbles(second)
    assert not live.update_scribbles(np.zeros_like(second))  # erased all: keep the last ones
    live.train(steps=2)
    assert np.array_equal(live._scribbles, second)  # the new strokes were trained on
    region = s.predict_region(s.slice_roi(0, 8))  # the visible slice with the live weights
    assert region.labels.shape == (1, 28, 28)
    live.stop()
    live.stop()  # idempotent
    assert s.tuned_rounds == 1 and "stroke_seeds" in s.model.meta
    with pytest.raises(InputError, match="stopped"):
        live.train(steps=1)
    assert s.undo() and _same(before, _weights(s.model))  # back to before the live session
    assert not s.can_undo


def test_live_training_refuses_bad_strokes_and_stops_on_cancel(live_session):
    s, labels = live_session
    with pytest.raises(InputError):
        s.start_live(np.zeros(labels.shape, np.uint8))  # nothing painted
    assert not s.can_undo  # a refused start leaves no Undo version behind
    live = s.start_live(phantom_strokes(labels, (3,)), batch_size=2, crop_shape=(4, 8, 8))
    with pytest.raises(InputError, match="grid"):
        live.update_scribbles(np.ones((2, 2, 2), np.uint8))
    stop = threading.Event()
    stop.set()
    with pytest.raises(Cancelled):
        live.train(steps=5, cancel=stop.is_set)
    live.stop()
    assert s.tuned_rounds == 1


def test_live_chunks_keep_the_learning_rate(tmp_path):
    image, labels = make_phantom(shape=(12, 28, 28), spacing=(2.0, 0.5, 0.5), seed=1)
    s = Session(autosave_folder=tmp_path)
    s.set_image(image, name="phantom")
    s.new_model("feature_net", CLASSES, **TINY["feature_net"])
    live = s.start_live(phantom_strokes(labels.array, (3,)), lr=1e-3)
    for _ in range(3):  # a chunk may decay the lr within itself, never across chunks
        live.train(steps=4)
        assert live.trainer.opt.param_groups[0]["lr"] > 0.5 * 1e-3 * 0.05
    live.train(steps=0)
    assert live.trainer.opt.param_groups[0]["lr"] == pytest.approx(1e-3)
    live.stop()
