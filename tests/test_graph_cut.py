"""The graph cut on a two-class prediction (``core.postprocess.graph_cut``) and its use by
``core.pipeline.segment_volume``'s post-processing."""

from __future__ import annotations

import logging

import numpy as np
import pytest

pytest.importorskip("maxflow")

from napari_cnnseg.core.postprocess import graph_cut, keep_stroke_components  # noqa: E402


def _cube(shape=(12, 40, 40)):
    truth = np.zeros(shape, np.uint8)
    truth[3:9, 10:30, 12:28] = 1
    image = np.where(truth == 1, 2.0, 0.0).astype(np.float32)
    image += np.random.default_rng(0).normal(0, 0.1, shape).astype(np.float32)
    return truth, image


def test_isolated_flips_in_a_flat_region_are_smoothed_away():
    truth, image = _cube()
    rng = np.random.default_rng(1)
    p = np.where(truth == 1, 0.8, 0.2).astype(np.float32)
    flips = rng.random(truth.shape) < 0.03
    p[flips] = 1 - p[flips]  # salt and pepper the argmax would keep
    labels = (p > 0.5).astype(np.uint8)
    assert (labels != truth).sum() > 200
    out = graph_cut(labels, p, image, np.zeros_like(truth), (1.0, 1.0, 1.0))
    assert out.dtype == labels.dtype and out.shape == labels.shape
    assert (out != truth).sum() < 10


def test_an_ambiguous_band_is_cut_along_the_image_edge():
    truth, image = _cube()
    p = np.where(truth == 1, 0.9, 0.1).astype(np.float32)
    p[:, :, 28:34] = 0.55  # the net is unsure beyond the cube's right face, an image edge
    labels = (p > 0.5).astype(np.uint8)
    out = graph_cut(labels, p, image, np.zeros_like(truth), (1.0, 1.0, 1.0))
    assert labels[5, 20, 30] == 1 and out[5, 20, 30] == 0  # the leak past the edge is cut
    assert (out != truth).sum() < 0.2 * (labels != truth).sum()


def test_strokes_are_hard_constraints_and_zero_smoothness_is_the_argmax():
    truth, image = _cube()
    p = np.where(truth == 1, 0.9, 0.1).astype(np.float32)
    scr = np.zeros_like(truth)
    scr[5, 2:4, 2:6] = 2  # painted foreground where the net says background
    scr[5, 15:18, 15:18] = 1  # and background inside the cube
    labels = (p > 0.5).astype(np.uint8)
    out = graph_cut(labels, p, image, scr, (1.0, 1.0, 1.0))
    assert (out[scr == 2] == 1).all() and (out[scr == 1] == 0).all()
    np.testing.assert_array_equal(
        graph_cut(labels, p, image, np.zeros_like(truth), smoothness=0.0), labels)


def test_only_the_box_around_structure_and_strokes_is_cut(caplog):
    truth, image = _cube((12, 80, 80))
    p = np.where(truth == 1, 0.9, 0.1).astype(np.float32)
    labels = (p > 0.5).astype(np.uint8)
    p[6, 60:80, 60:80] = 0.99  # far outside the box: stays background though p says otherwise
    out = graph_cut(labels, p, image, np.zeros_like(truth), (1.0, 1.0, 1.0), margin=4)
    assert (out[6, 60:80, 60:80] == 0).all() and (out[:, :40, :40] == truth[:, :40, :40]).all()
    with caplog.at_level(logging.INFO, logger="napari_cnnseg.core.postprocess"):
        same = graph_cut(labels, p, image, np.zeros_like(truth), max_voxels=1000)
    np.testing.assert_array_equal(same, labels)
    assert "graph cut skipped" in caplog.text
    far_bg = np.zeros_like(truth)
    far_bg[6, 75:78, 75:78] = 1  # background strokes far away do not widen the box
    p = np.where(truth == 1, 0.9, 0.1).astype(np.float32)
    p[:, 10:30, 28:30] = 0.55  # an unsure rim past the cube's face, cut along the image edge
    cut = graph_cut((p > 0.5).astype(np.uint8), p, image, far_bg, max_voxels=12 * 40 * 40)
    assert (cut[:, 10:30, 28:30] == 0).all()
    empty = np.zeros_like(truth)
    np.testing.assert_array_equal(graph_cut(empty, p * 0, image, empty), empty)


def test_a_multichannel_image_uses_every_channel():
    truth, image = _cube()
    p = np.where(truth == 1, 0.9, 0.1).astype(np.float32)
    p[:, :, 28:34] = 0.55
    labels = (p > 0.5).astype(np.uint8)
    flat = np.random.default_rng(2).normal(0, 0.1, truth.shape).astype(np.float32)
    out = graph_cut(labels, p, np.stack([flat, image * 100]), np.zeros_like(truth))
    assert out[5, 20, 30] == 0 and (out != truth).sum() < 50


def test_segment_volume_cuts_the_probabilities_with_the_strokes():
    """The session's refresh path: a two-class model's labels are the graph cut's."""
    from test_feature_net import _blob_task, _net

    from napari_cnnseg.core.io import Volume
    from napari_cnnseg.core.pipeline import segment_volume
    from napari_cnnseg.core.training import finetune, recommended_settings

    img, lab, scr = _blob_task()
    net = _net()
    finetune(net, img, scr, steps=60, **recommended_settings(True, net))
    res = segment_volume(Volume(img), net, strokes=scr)
    probs = res.probabilities.array
    kept = keep_stroke_components(probs.argmax(0).astype(np.uint8), scr)
    expect = keep_stroke_components(graph_cut(kept, probs[1], img, scr), scr)
    got = res.labels.array
    np.testing.assert_array_equal(got, expect)
    assert (got != kept).any()  # the cut changed something
    assert (got[scr == 2] == 1).all() and (got[scr == 1] == 0).all()
    plain = segment_volume(Volume(img), net, strokes=scr, postprocess=False).labels.array
    np.testing.assert_array_equal(plain, probs.argmax(0))
