"""segment_volume: labels / probabilities / uncertainty on the source geometry."""

from __future__ import annotations

import numpy as np
import pytest

from napari_cnnseg.core.errors import InputError
from napari_cnnseg.core.inference import predict
from napari_cnnseg.core.models import build_model
from napari_cnnseg.core.pipeline import (
    SegmentationResult,
    labels_from_probabilities,
    normalized_entropy,
    segment_volume,
)
from napari_cnnseg.core.sample_data import make_phantom


@pytest.fixture(scope="module")
def phantom():
    image, labels = make_phantom(shape=(12, 24, 24), spacing=(2.0, 0.5, 0.5), seed=0)
    return image, labels


def test_segment_volume_keeps_geometry_and_agrees_with_predict(phantom):
    image, _ = phantom
    net = build_model("unet", depth=1, base_width=4, padding="valid", num_classes=4).eval()
    net.meta = {"class_names": ["background", "a", "b", "c"]}
    res = segment_volume(image, net, device="cpu", precision="fp32")
    assert isinstance(res, SegmentationResult)
    probs = predict(image.array, net, device="cpu", precision="fp32")
    np.testing.assert_allclose(res.probabilities.array, probs, atol=1e-6)
    np.testing.assert_array_equal(res.labels.array, probs.argmax(0))
    assert res.labels.array.dtype == np.uint8 and res.labels.spatial_shape == image.spatial_shape
    for vol in (res.labels, res.probabilities, res.uncertainty):
        assert vol.spacing == image.spacing and vol.origin == image.origin
        np.testing.assert_array_equal(vol.direction, image.direction)
    assert res.class_names == ["background", "a", "b", "c"]
    unc = res.uncertainty.array
    assert unc.dtype == np.float32 and unc.min() >= 0.0 and unc.max() <= 1.0


def test_optional_outputs_and_default_class_names(phantom):
    image, _ = phantom
    net = build_model("unet", depth=1, base_width=4, padding="same", num_classes=3).eval()
    res = segment_volume(image, net, probabilities=False, uncertainty=False, device="cpu")
    assert res.probabilities is None and res.uncertainty is None
    assert res.class_names == ["background", "class 1", "class 2"]
    with pytest.raises(InputError, match="Volume"):
        segment_volume(image.array, net)
    with pytest.raises(InputError, match="roi"):
        segment_volume(image, net, roi=(slice(0, 1), slice(None), slice(None)))


def test_entropy_bounds_and_argmax_on_lazy_arrays(tmp_path):
    rng = np.random.default_rng(0)
    k, shape = 3, (20, 5, 6)
    logits = rng.normal(size=(k, *shape)).astype(np.float32)
    p = np.exp(logits) / np.exp(logits).sum(0)
    p[:, 0] = 1.0 / k  # uniform slice -> entropy 1
    p[:, 1] = 0.0
    p[1, 1] = 1.0  # certain slice -> entropy 0
    ent = normalized_entropy(p)
    np.testing.assert_allclose(ent[0], 1.0, atol=1e-6)
    np.testing.assert_allclose(ent[1], 0.0, atol=1e-6)
    ref = -(p * np.log(np.clip(p, 1e-12, 1))).sum(0) / np.log(k)
    np.testing.assert_allclose(ent, ref, atol=1e-6)
    assert normalized_entropy(p[:1]).max() == 0.0  # one class: no uncertainty
    zarr = pytest.importorskip("zarr")
    z = zarr.open_array(str(tmp_path / "p.zarr"), mode="w", shape=p.shape, chunks=(1, 4, 5, 6),
                        dtype="f4")
    z[:] = p
    np.testing.assert_array_equal(labels_from_probabilities(z), p.argmax(0))
    with pytest.raises(InputError, match="K, Z, Y, X"):
        labels_from_probabilities(p[0])


def test_real_brain_crop_runs_end_to_end():
    from napari_cnnseg.core.sample_data import load_brain_t1

    image, mask = load_brain_t1()
    crop = image.with_array(np.asarray(image.array)[:16, :32, :32])
    net = build_model("unet", depth=1, base_width=4, padding="valid").eval()
    res = segment_volume(crop, net, device="cpu", precision="fp32", tile_shape=28)
    assert res.labels.spatial_shape == (16, 32, 32)
    assert set(np.unique(res.labels.array)) <= {0, 1}


def test_outputs_stream_into_caller_given_arrays(phantom, tmp_path):
    zarr = pytest.importorskip("zarr")
    image, _ = phantom
    net = build_model("unet", depth=1, base_width=4, padding="valid", num_classes=3).eval()
    ref = segment_volume(image, net, device="cpu", precision="fp32", tile_shape=28)
    grid = image.spatial_shape
    lazy = image.with_array(zarr.open_array(str(tmp_path / "in.zarr"), mode="w", shape=grid,
                                            chunks=(5, 8, 8), dtype="f4"))
    lazy.array[...] = image.array
    outs = {name: zarr.open_array(str(tmp_path / f"{name}.zarr"), mode="w", shape=shape,
                                  chunks=(1, 4, 8, 8)[-len(shape):], dtype=dtype)
            for name, shape, dtype in (("probabilities_out", (3, *grid), "f4"),
                                       ("labels_out", grid, "u1"), ("uncertainty_out", grid, "f4"))}
    res = segment_volume(lazy, net, device="cpu", precision="fp32", tile_shape=28, **outs)
    assert res.probabilities.array is outs["probabilities_out"]
    assert res.labels.array is outs["labels_out"] and res.uncertainty.array is outs["uncertainty_out"]
    np.testing.assert_array_equal(outs["labels_out"][...], ref.labels.array)
    np.testing.assert_allclose(outs["probabilities_out"][...], ref.probabilities.array, atol=1e-6)
    np.testing.assert_allclose(outs["uncertainty_out"][...], ref.uncertainty.array, atol=1e-6)
    assert res.labels.spacing == image.spacing and res.class_names == ref.class_names
    # only labels to a caller array; probabilities in memory, not kept
    labels = np.zeros(grid, np.int32)
    res = segment_volume(image, net, probabilities=False, uncertainty=False, labels_out=labels,
                         device="cpu", precision="fp32", tile_shape=28)
    assert res.labels.array is labels and res.probabilities is None and res.uncertainty is None
    np.testing.assert_array_equal(labels, ref.labels.array)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"probabilities_out": np.zeros((2, 12, 24, 24), np.float32)}, r"\(3, 12, 24, 24\)"),
        ({"labels_out": np.zeros((12, 24, 23), np.uint8)}, r"\(12, 24, 24\)"),
        ({"labels_out": np.zeros((12, 24, 24), np.float32)}, "integer"),
        ({"uncertainty_out": np.zeros((12, 24, 24), np.uint8)}, "floats"),
        ({"uncertainty_out": np.zeros((12, 24, 24), np.float32), "uncertainty": False}, "uncertainty=True"),
        ({"out": np.zeros((3, 12, 24, 24), np.float32)}, "probabilities_out"),
    ],
)
def test_bad_out_arrays_fail_before_predicting(phantom, monkeypatch, kwargs, message):
    import napari_cnnseg.core.pipeline as pipeline

    def no_predict(*args, **kw):
        raise AssertionError("predict ran")

    monkeypatch.setattr(pipeline, "predict", no_predict)
    net = build_model("unet", depth=1, base_width=4, padding="valid", num_classes=3).eval()
    with pytest.raises(InputError, match=message):
        segment_volume(phantom[0], net, **kwargs)
