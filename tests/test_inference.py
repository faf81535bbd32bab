"""Tiled dense prediction: exactness, blending, roi, progress/cancel, OOM, streaming, devices."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from torch import nn

from napari_cnnseg.core import tiling
from napari_cnnseg.core.devices import available_devices, resolve_device
from napari_cnnseg.core.errors import Cancelled, DeviceError, InputError
from napari_cnnseg.core.inference import (
    AUTO_MAX_MEAN_ABS_DIFF,
    predict,
    wrap_module,
)
from napari_cnnseg.core.models import as_dense, build_model
from napari_cnnseg.core.netprep import fold_batchnorm, inference_copy, network_spec
from napari_cnnseg.core.normalization import normalize

VALID_FAMILIES = {
    "unet": dict(depth=2, base_width=4, padding="valid"),
    "unet_trilinear_aniso": dict(depth=2, base_width=4, padding="valid", upsampling="trilinear",
                                 anisotropic_levels=1),
    "encoder_decoder": dict(depth=1, base_width=4, padding="valid"),
    "multiscale": dict(widths=(4, 4), head_widths=(8,)),
    "patch_classifier": dict(patch_size=9, widths=(4, 4), pool_after=(1,), fc_widths=(8,)),
}


def _family(name: str) -> str:
    return "unet" if name.startswith("unet") else name


def _trained_bn(net: nn.Module) -> nn.Module:
    """Give BatchNorm layers non-trivial running statistics (so folding is really tested)."""
    gen = torch.Generator().manual_seed(1)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm3d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
    return net.eval()


def one_pass(image: np.ndarray, model: nn.Module) -> np.ndarray:
    """Reference: the dense net over the whole mirror-padded volume in one forward."""
    net = network_spec(model).net.eval()
    m = net.margin
    padded_shape = net.valid_input_shape([s + 2 * mi for s, mi in zip(image.shape[-3:], m, strict=True)])
    idx = [tiling.reflect_indices(-mi, n - mi, s)
           for mi, n, s in zip(m, padded_shape, image.shape[-3:], strict=True)]
    norm = normalize(image)
    norm = norm[None] if norm.ndim == 3 else norm
    padded = norm[np.ix_(range(norm.shape[0]), *idx)]
    with torch.no_grad():
        y = torch.softmax(net(torch.from_numpy(np.ascontiguousarray(padded))[None]), 1)[0].numpy()
    z, yy, x = image.shape[-3:]
    return y[:, :z, :yy, :x]


def tile_for(net: nn.Module, out: int = 12) -> tuple[int, int, int]:
    """A tile input shape giving outputs of about ``out`` voxels per axis (a few tiles per test)."""
    return tuple(2 * m + out for m in network_spec(net).margin)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


# --- valid nets: exact overlap-tile -------------------------------------------------------
@pytest.mark.parametrize("name", list(VALID_FAMILIES))
@pytest.mark.parametrize("shape", [(13, 21, 17), (5, 9, 30)])
def test_valid_tiled_equals_one_pass(name, shape, rng):
    net = _trained_bn(build_model(_family(name), **VALID_FAMILIES[name]))
    image = rng.normal(size=shape).astype(np.float32) * 10 + 3
    ref = one_pass(image, net)
    calls = []
    tiled = predict(image, net, tile_shape=tile_for(net, 8), batch_size=3, precision="fp32",
                    device="cpu", progress=lambda d, t: calls.append((d, t)))
    assert tiled.shape == (2, *shape) and tiled.dtype == np.float32
    assert calls[-1][0] == calls[-1][1] > 1  # really tiled (several tiles)
    np.testing.assert_allclose(tiled, ref, atol=1e-5, rtol=0)
    # default tile (one tile here: the volume is smaller than a 96^3 tile)
    np.testing.assert_allclose(predict(image, net, precision="fp32", device="cpu"), ref, atol=1e-5)


def test_valid_multichannel_and_anisotropic_tiles(rng):
    net = _trained_bn(build_model("unet", in_channels=2, num_classes=3, depth=1, base_width=4,
                                  padding="valid"))
    image = rng.normal(size=(2, 11, 26, 19)).astype(np.float32)
    tz, ty, tx = tile_for(net, 6)
    tiled = predict(image, net, tile_shape=(tz, ty + 8, tx), precision="fp32", device="cpu")
    np.testing.assert_allclose(tiled, one_pass(image, net), atol=1e-5)
    np.testing.assert_allclose(tiled.sum(0), 1.0, atol=1e-5)


def test_roi_of_valid_net_equals_region_of_whole(rng):
    net = _trained_bn(build_model("unet", depth=2, base_width=4, padding="valid"))
    image = rng.normal(size=(15, 31, 29)).astype(np.float32)
    whole = predict(image, net, tile_shape=tile_for(net), precision="fp32", device="cpu")
    roi = (slice(3, 9), slice(5, 28), slice(0, 29))
    part = predict(image, net, tile_shape=tile_for(net), roi=roi, precision="fp32", device="cpu")
    assert part.shape == (2, 6, 23, 29)
    np.testing.assert_allclose(part, whole[(slice(None), *roi)], atol=1e-5)
    one_slice = predict(image, net, roi=(slice(7, 8), slice(None), slice(None)), precision="fp32",
                        device="cpu")
    np.testing.assert_allclose(one_slice, whole[:, 7:8], atol=1e-5)


# --- same nets: blending ----------------------------------------------------------------
def test_gaussian_map_and_scan_positions_match_monai():
    monai_utils = pytest.importorskip("monai.data.utils")
    for shape in [(16, 16, 16), (8, 24, 12)]:
        ref = monai_utils.compute_importance_map(shape, mode="gaussian", sigma_scale=0.125).numpy()
        np.testing.assert_array_equal(tiling.gaussian_weights(shape), ref)
        assert tiling.gaussian_weights(shape).min() > 0
    for size, tile, ov in [(160, 96, 0.25), (37, 16, 0.5), (16, 16, 0.25), (50, 7, 0.0)]:
        from monai.inferers.utils import _get_scan_interval

        interval = _get_scan_interval((size,), (tile,), 1, (ov,))
        ref = [s[0].start for s in monai_utils.dense_patch_slices((size,), (tile,), interval)]
        assert tiling.scan_starts(size, tile, ov) == ref


def test_same_net_matches_monai_sliding_window(rng):
    inferers = pytest.importorskip("monai.inferers")
    net = _trained_bn(build_model("unet", depth=2, base_width=4, padding="same"))
    image = rng.normal(size=(20, 37, 30)).astype(np.float32)
    ours = predict(image, net, tile_shape=16, overlap=0.25, batch_size=2, precision="fp32",
                   device="cpu", normalization={"mode": "none"})
    with torch.no_grad():
        logits = inferers.sliding_window_inference(
            torch.from_numpy(image)[None, None], (16, 16, 16), 1, net.eval(), overlap=0.25,
            mode="gaussian")
    ref = torch.softmax(logits, 1)[0].numpy()
    np.testing.assert_allclose(ours, ref, atol=1e-5)


@pytest.mark.parametrize("overlap", [0.25, 0.5])
def test_same_net_seam_error_is_bounded(overlap):
    from napari_cnnseg.core.sample_data import make_phantom

    image = make_phantom(shape=(24, 40, 40), spacing=(1.0, 1.0, 1.0))[0].array
    net = _trained_bn(build_model("unet", depth=2, base_width=4, padding="same"))
    whole = predict(image, net, tile_shape=(24, 40, 40), precision="fp32", device="cpu")
    tiled = predict(image, net, tile_shape=16, overlap=overlap, precision="fp32", device="cpu")
    err = np.abs(tiled - whole)
    # measured: max ~2e-3, mean ~7e-5 for this net; the bound documented in docs/inference.md
    assert err.max() < 0.02 and err.mean() < 1e-3
    assert (tiled.argmax(0) == whole.argmax(0)).mean() > 0.999


def test_same_net_roi_close_to_whole(rng):
    net = _trained_bn(build_model("unet", depth=2, base_width=4, padding="same"))
    image = rng.normal(size=(20, 40, 36)).astype(np.float32)
    whole = predict(image, net, tile_shape=16, precision="fp32", device="cpu")
    roi = (slice(9, 10), slice(None), slice(None))
    part = predict(image, net, tile_shape=16, roi=roi, precision="fp32", device="cpu")
    assert part.shape == (2, 1, 40, 36)
    assert np.abs(part - whole[:, 9:10]).max() < 0.02


# --- engine plumbing ----------------------------------------------------------------------
def test_model_is_not_modified_and_bn_folding_is_exact(rng):
    net = _trained_bn(build_model("unet", depth=1, base_width=4, padding="same"))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    x = torch.from_numpy(rng.normal(size=(2, 1, 16, 16, 16)).astype(np.float32))
    fast = inference_copy(net, torch.device("cpu"))
    assert not any(isinstance(m, nn.BatchNorm3d) for m in fast.modules())
    with torch.no_grad():
        np.testing.assert_allclose(fast(x.contiguous(memory_format=torch.channels_last_3d)),
                                   net(x), atol=1e-5)
    predict(rng.normal(size=(16, 16, 16)), net, device="cpu")
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert any(isinstance(m, nn.BatchNorm3d) for m in net.modules())


def test_fold_batchnorm_skips_unsafe_pairs():
    class Branchy(nn.Module):  # conv output used twice: BN must not be folded into it
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv3d(1, 2, 3, padding=1)
            self.bn = nn.BatchNorm3d(2)

        def forward(self, x):
            y = self.conv(x)
            return self.bn(y) + y

    net = Branchy().eval()
    assert fold_batchnorm(net) == 0
    seq = nn.Sequential(nn.Sequential(nn.Conv3d(1, 2, 3), nn.Dropout(0.1)), nn.BatchNorm3d(2)).eval()
    assert fold_batchnorm(seq) == 1
    conv = nn.Conv3d(2, 2, 3, padding=1)
    shared = nn.Sequential(conv, nn.BatchNorm3d(2), conv).eval()  # weights used twice
    assert fold_batchnorm(shared) == 0


def test_progress_reaches_total_and_cancel_stops(rng):
    net = build_model("unet", depth=1, base_width=4, padding="same").eval()
    image = rng.normal(size=(16, 32, 32)).astype(np.float32)
    calls = []
    predict(image, net, tile_shape=8, overlap=0.0, batch_size=2, device="cpu",
            progress=lambda d, t: calls.append((d, t)))
    total = calls[-1][1]
    assert total == 2 * 4 * 4 and calls[-1][0] == total
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)

    seen = []

    def cancel():
        return len(seen) >= 2  # cancel after the first batch

    with pytest.raises(Cancelled):
        predict(image, net, tile_shape=8, overlap=0.0, batch_size=2, device="cpu",
                progress=lambda d, t: seen.append(d), cancel=cancel)
    assert seen == [0, 2]  # no batch ran after cancel() turned True


class _OOMOnBigBatch(nn.Module):
    """Wraps a net; raises CUDA-style OOM for batches above ``max_batch`` or tiles above ``max_vox``."""

    def __init__(self, net, max_batch=1, max_vox=10**9):
        super().__init__()
        self.net, self.max_batch, self.max_vox = net, max_batch, max_vox

    def forward(self, x):
        if x.shape[0] > self.max_batch or x[0, 0].numel() > self.max_vox:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return self.net(x)


def test_oom_retries_with_smaller_batch_then_smaller_tile(rng, caplog):
    base = build_model("unet", depth=1, base_width=4, padding="same").eval()
    image = rng.normal(size=(16, 32, 32)).astype(np.float32)
    ref = predict(image, base, tile_shape=16, overlap=0.0, device="cpu", precision="fp32")
    flaky = wrap_module(_OOMOnBigBatch(base, max_batch=1), 2, divisor=2)
    with caplog.at_level(logging.WARNING, logger="napari_cnnseg.core.inference"):
        out = predict(image, flaky, tile_shape=16, overlap=0.0, batch_size=4, device="cpu",
                      precision="fp32")
    np.testing.assert_allclose(out, ref, atol=1e-5)
    assert "batch size" in caplog.text
    caplog.clear()
    small = wrap_module(_OOMOnBigBatch(base, max_batch=8, max_vox=16 * 32 * 32 - 1), 2, divisor=2)
    with caplog.at_level(logging.WARNING, logger="napari_cnnseg.core.inference"):
        out = predict(image, small, tile_shape=32, device="cpu", precision="fp32")
    assert "retrying with tile" in caplog.text and out.shape == ref.shape
    never = wrap_module(_OOMOnBigBatch(base, max_batch=0), 2, divisor=2)
    with pytest.raises(DeviceError, match="out of memory"):
        predict(image, never, tile_shape=16, device="cpu")


def test_oom_on_gpu_falls_back_to_cpu(monkeypatch, rng, caplog):
    from napari_cnnseg.core import inference

    base = build_model("unet", depth=1, base_width=4, padding="same").eval()
    image = rng.normal(size=(8, 16, 16)).astype(np.float32)
    ref = predict(image, base, device="cpu", precision="fp32")
    real = inference._predict_on
    tried = []

    def fake_predict_on(img, model, spec, attempt, *args):
        tried.append(attempt.dev.type)
        if attempt.dev.type != "cpu":  # simulated GPU that never has enough memory
            raise inference._TileTooLarge
        return real(img, model, spec, attempt, *args)

    monkeypatch.setattr(inference, "resolve_device", lambda spec: torch.device("cuda"))
    monkeypatch.setattr(inference, "_predict_on", fake_predict_on)
    with caplog.at_level(logging.WARNING, logger="napari_cnnseg.core.inference"):
        out = predict(image, base, device="cuda", precision="fp32")
    np.testing.assert_allclose(out, ref, atol=1e-5)
    assert tried[-1] == "cpu" and "cuda" in tried
    assert "falling back to the CPU" in caplog.text


def test_zarr_and_dask_in_zarr_out(tmp_path, rng):
    zarr = pytest.importorskip("zarr")
    net = _trained_bn(build_model("unet", depth=1, base_width=4, padding="valid"))
    same = build_model("unet", depth=1, base_width=4, padding="same").eval()
    image = rng.normal(size=(19, 24, 22)).astype(np.float32)
    src = zarr.open_array(str(tmp_path / "in.zarr"), mode="w", shape=image.shape,
                          chunks=(8, 8, 8), dtype="f4")
    src[:] = image
    for model in (net, same):
        ref = predict(image, model, tile_shape=tile_for(model), device="cpu", precision="fp32")
        dst = zarr.open_array(str(tmp_path / f"out_{model.padding}.zarr"), mode="w",
                              shape=ref.shape, chunks=(1, 8, 8, 8), dtype="f4")
        got = predict(src, model, tile_shape=tile_for(model), device="cpu", precision="fp32",
                      out=dst)
        assert got is dst
        np.testing.assert_allclose(dst[:], ref, atol=1e-5)
    da = pytest.importorskip("dask.array")
    lazy = da.from_array(image, chunks=(8, 8, 8))
    tile = tile_for(net)
    np.testing.assert_allclose(predict(lazy, net, tile_shape=tile, device="cpu", precision="fp32"),
                               predict(image, net, tile_shape=tile, device="cpu", precision="fp32"),
                               atol=1e-6)


def test_float16_out_and_auto_precision_within_tolerance(rng):
    net = _trained_bn(build_model("unet", depth=1, base_width=4, padding="valid"))
    image = rng.normal(size=(12, 20, 20)).astype(np.float32)
    ref = predict(image, net, device="cpu", precision="fp32")
    out = np.zeros(ref.shape, np.float16)
    predict(image, net, device="cpu", precision="fp32", out=out)
    np.testing.assert_allclose(out, ref, atol=1e-3)
    auto = predict(image, net, device="cpu", precision="auto")
    assert np.abs(auto - ref).mean() <= 2 * AUTO_MAX_MEAN_ABS_DIFF


def test_foreign_module_needs_a_shape_rule(rng):
    plain = nn.Conv3d(1, 2, 3, padding=1)
    image = rng.normal(size=(8, 8, 8)).astype(np.float32)
    with pytest.raises(InputError, match="wrap_module"):
        predict(image, plain, device="cpu")
    wrapped = wrap_module(plain, 2, divisor=1)
    out = predict(image, wrapped, device="cpu", precision="fp32", normalization={"mode": "none"})
    with torch.no_grad():
        ref = torch.softmax(plain(torch.from_numpy(image)[None, None]), 1)[0].numpy()
    np.testing.assert_allclose(out, ref, atol=1e-5)
    valid = wrap_module(nn.Conv3d(1, 2, 3), 2, padding="valid", margin=1, divisor=1)
    np.testing.assert_allclose(predict(image, valid, tile_shape=5, device="cpu", precision="fp32"),
                               one_pass(image, valid), atol=1e-5)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(image=np.zeros((4, 4))), "3D image"),
        (dict(image=np.zeros((3, 8, 8, 8))), "channel"),
        (dict(roi=(slice(0, 2), slice(0, 2))), "roi"),
        (dict(roi=(slice(5, 2), slice(None), slice(None))), "selects nothing"),
        (dict(overlap=1.0), "overlap"),
        (dict(tile_shape=(0, 8, 8)), "tile"),
        (dict(batch_size=0), "batch_size"),
        (dict(out=np.zeros((2, 4, 4, 4), np.float32)), "out has shape"),
        (dict(precision="fp8"), "precision"),
        (dict(device="tpu"), "device"),
    ],
)
def test_bad_inputs_raise_clear_errors(kwargs, match):
    net = build_model("unet", depth=1, base_width=2, padding="same")
    image = kwargs.pop("image", np.zeros((8, 8, 8), np.float32))
    with pytest.raises((InputError, DeviceError), match=match):
        predict(image, net, **kwargs)


def test_devices():
    assert available_devices()[:2] == ["auto", "cpu"]
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type in ("cpu", "cuda", "mps")
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="CUDA is not available"):
            resolve_device("cuda")


def test_dense_patch_classifier_accepted_directly(rng):
    pc = build_model("patch_classifier", **VALID_FAMILIES["patch_classifier"]).eval()
    image = rng.normal(size=(10, 12, 14)).astype(np.float32)
    np.testing.assert_allclose(predict(image, pc, device="cpu", precision="fp32"),
                               predict(image, as_dense(pc), device="cpu", precision="fp32"), atol=1e-6)


def test_on_device_matches_cpu(device, rng):
    net = _trained_bn(build_model("unet", depth=2, base_width=4, padding="valid"))
    image = rng.normal(size=(13, 21, 17)).astype(np.float32)
    tile = tile_for(net)
    ref = predict(image, net, tile_shape=tile, device="cpu", precision="fp32")
    got = predict(image, net, tile_shape=tile, device=device, precision="fp32")
    np.testing.assert_allclose(got, ref, atol=1e-3)
    low = predict(image, net, tile_shape=tile, device=device, precision="auto")
    assert (low.argmax(0) == ref.argmax(0)).mean() > 0.99


def test_fast_copy_cache_follows_in_place_weight_updates(rng):
    net = _trained_bn(build_model("unet", depth=1, base_width=4, padding="valid"))
    image = rng.normal(size=(12, 20, 20)).astype(np.float32)
    first = predict(image, net, device="cpu", precision="fp32")
    with torch.no_grad():  # what a fine-tuning step does
        for p in net.parameters():
            p.mul_(1.5)
    second = predict(image, net, device="cpu", precision="fp32")
    np.testing.assert_allclose(second, one_pass(image, net), atol=1e-5)
    assert np.abs(second - first).max() > 1e-3


@pytest.mark.parametrize("padding", ["valid", "same"])
def test_single_slice_volume_and_nan_voxels(padding, rng):
    net = _trained_bn(build_model("unet", depth=1, base_width=4, padding=padding))
    image = rng.normal(size=(1, 20, 23)).astype(np.float32)
    out = predict(image, net, device="cpu", precision="fp32")
    assert out.shape == (2, 1, 20, 23)
    np.testing.assert_allclose(out.sum(0), 1.0, atol=1e-5)
    image[0, 3:6, 4:9] = np.nan  # masked scan
    out = predict(image, net, device="cpu", precision="fp32")
    assert np.isfinite(out).all()


@pytest.mark.parametrize("cout", [1, 2, 4])
def test_sub_pixel_transposed_conv_is_exact(cout, rng):
    from napari_cnnseg.core.netprep import SubPixelConvTranspose3d, rewrite_transposed_convs

    ct = nn.ConvTranspose3d(6, cout, 3, stride=2, padding=1, output_padding=1).eval()
    x = torch.from_numpy(rng.normal(size=(2, 6, 5, 7, 4)).astype(np.float32))
    with torch.no_grad():
        ref = ct(x)
        got = SubPixelConvTranspose3d(ct)(x)
        got_cl = SubPixelConvTranspose3d(ct).to(memory_format=torch.channels_last_3d)(
            x.contiguous(memory_format=torch.channels_last_3d))
    assert got.shape == ref.shape == (2, cout, 10, 14, 8)
    np.testing.assert_allclose(got, ref, atol=1e-5)
    np.testing.assert_allclose(got_cl, ref, atol=1e-5)
    other = nn.Sequential(nn.ConvTranspose3d(6, 2, 2, stride=2), nn.ConvTranspose3d(2, 8, 3, 2, 1, 1))
    assert rewrite_transposed_convs(other) == 0  # other kernel / wide output: left alone


def test_stats_of_a_lazy_multichannel_image_read_strided_samples_only(monkeypatch):
    import napari_cnnseg.core.normalization as normalization

    monkeypatch.setattr(normalization, "_MAX_SAMPLE", 500)  # force a stride on a small volume
    data = np.random.default_rng(0).normal(size=(2, 16, 20, 24)).astype(np.float32)
    data[1] = data[1] * 5 + 3

    class Recording:  # a lazy array that logs what is read
        shape, ndim, dtype = data.shape, data.ndim, data.dtype

        def __init__(self) -> None:
            self.keys: list = []

        def __getitem__(self, key):
            self.keys.append(key)
            return data[key]

    lazy = Recording()
    for spec in (None, {"mode": "zscore"}):
        assert normalization.compute_stats(lazy, spec) == normalization.compute_stats(data, spec)
    assert len(lazy.keys) == 4
    assert all(isinstance(k, tuple) and len(k) == 4 and k[1].step > 1 for k in lazy.keys)


def test_tiny_tiles_and_ignored_overlap_are_reported(rng, caplog, monkeypatch):
    import napari_cnnseg.core.inference as inference

    net = build_model("unet", depth=1, base_width=4, padding="valid")
    image = rng.normal(size=(12, 14, 16)).astype(np.float32)
    monkeypatch.setattr(inference, "MANY_TILES", 3)
    with caplog.at_level(logging.INFO, logger="napari_cnnseg.core.inference"):
        predict(image, net, device="cpu", precision="fp32", tile_shape=8, overlap=0.5)
    text = caplog.text
    assert "overlap is not used for valid-padding networks" in text
    assert "tiles this small are slow" in text
