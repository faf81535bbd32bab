"""A volume whose fixed features are too big to cache (``PooledFeatures``): the whole-volume
stream and a box (the visible slice while training) give the tiled network's probabilities,
without the tiled network's memory."""

from __future__ import annotations

import numpy as np
import pytest

from napari_cnnseg.core.errors import Cancelled
from napari_cnnseg.core.inference import predict
from napari_cnnseg.core.models import build_model, feature_net
from napari_cnnseg.core.models.feature_net import FeatureNet, PooledFeatures


def _net() -> FeatureNet:
    import torch

    torch.manual_seed(0)
    return build_model("feature_net", in_channels=1, num_classes=3,
                       sigmas=[[0, 1, 1], [1, 2, 2]], context_layers=0).eval()


def _refuse(*args, **kwargs):
    raise AssertionError("the tiled network ran")


@pytest.fixture
def pooled(monkeypatch):
    monkeypatch.setattr(feature_net, "FULL_CACHE_BYTES", 0)  # every volume is "too big"
    feature_net._CACHE.clear()
    yield
    feature_net._CACHE.clear()


def test_a_box_of_a_pooled_volume_matches_the_whole_stream_and_the_tiled_net(pooled, monkeypatch):
    from napari_cnnseg.core import inference

    tiled_net = inference._predict_on
    monkeypatch.setattr(inference, "_predict_on", _refuse)  # boxes filter slabs, no tiles
    net = _net()
    x = np.random.default_rng(2).random((19, 40, 37)).astype(np.float32)
    whole = predict(x, net, device="cpu", precision="fp32")  # streamed slab by slab
    assert any(isinstance(v, PooledFeatures) for v in feature_net._CACHE.values())
    for box in [(slice(5, 6), slice(0, 40), slice(0, 37)),      # one slice
                (slice(3, 17), slice(7, 30), slice(2, 37))]:    # slabs, part of each slice
        part = predict(x, net, device="cpu", precision="fp32", roi=box)
        assert part.shape == (3, *(s.stop - s.start for s in box))
        np.testing.assert_allclose(part, whole[(slice(None), *box)], atol=1e-6)
    monkeypatch.setattr(inference, "_predict_on", tiled_net)
    feature_net._CACHE.clear()  # no features: a box takes the tiled network
    tiled = predict(x, net, device="cpu", precision="fp32", roi=(slice(0, 19), slice(0, 40),
                                                                  slice(0, 37)))
    np.testing.assert_allclose(whole, tiled, atol=1e-5)


def test_a_pooled_box_can_be_cancelled(pooled):
    net = _net()
    x = np.random.default_rng(3).random((10, 24, 24)).astype(np.float32)
    predict(x, net, device="cpu", precision="fp32")
    with pytest.raises(Cancelled):
        predict(x, net, device="cpu", precision="fp32",
                roi=(slice(2, 3), slice(0, 24), slice(0, 24)), cancel=lambda: True)
