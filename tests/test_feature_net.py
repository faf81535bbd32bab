"""The feature net (fixed multi-scale filters + learned head), its per-voxel training and the
stroke-connected post-processing: the loop a new structure starts with."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from napari_cnnseg.core.errors import Cancelled, InputError
from napari_cnnseg.core.inference import predict
from napari_cnnseg.core.models import (
    build_model,
    feature_net,
    interactive_config,
    load_model,
    save_model,
)
from napari_cnnseg.core.models.features import InputFeatures, scale_sigmas
from napari_cnnseg.core.postprocess import keep_stroke_components
from napari_cnnseg.core.training import finetune, recommended_settings, started_new


def _net(k=2, context=0):
    return build_model("feature_net", in_channels=1, num_classes=k,
                       sigmas=[[0, 1, 1], [0.5, 4, 4]], context_layers=context).eval()


def test_gaussian_matches_scipy_with_replicate_borders():
    f = InputFeatures(1, [[1.5, 3.0, 2.0]])
    x = torch.rand(1, 1, 7, 30, 25)
    ref = ndimage.gaussian_filter(x[0, 0].double().numpy(), (1.5, 3.0, 2.0), mode="nearest",
                                  truncate=3.0)
    assert np.abs(f(x)[0, 1].numpy() - ref).max() < 1e-5
    assert f.out_channels == 4  # image + smoothed, gradient, Laplacian


def test_valid_features_are_the_centre_of_same_features():
    sig = [[0, 1, 1], [1, 2, 2]]
    same, valid = InputFeatures(1, sig), InputFeatures(1, sig, padding="valid")
    x = torch.rand(1, 1, 12, 40, 40)
    mz, my, mx = valid.margin
    assert valid.margin == (4, 7, 7)  # kernel radius ceil(3 sigma) + 1 for the derivatives
    inner = same(x)[:, :, mz:-mz, my:-my, mx:-mx]
    assert torch.allclose(valid(x), inner, atol=1e-6)


def test_tiled_prediction_equals_the_whole_volume_path():
    for context in (0, 1):
        net = _net(3, context)
        x = np.random.default_rng(0).random((9, 50, 61)).astype(np.float32)
        box = (slice(0, 9), slice(0, 50), slice(0, 61))  # an roi takes the tiled path
        whole = predict(x, net, device="cpu", precision="fp32")
        feature_net._CACHE.clear()  # else the box is read from the cached whole-volume features
        tiled = predict(x, net, device="cpu", precision="fp32", tile_shape=(12, 45, 45), roi=box)
        assert whole.shape == (3, 9, 50, 61)
        # the whole-volume path of a per-voxel net keeps its features as float16 (2 bytes per
        # value, a relative rounding of 2^-11): probabilities within 1e-4 (a tiling error
        # moves them by 1e-2 or more) ...
        assert np.abs(whole - tiled).max() < 1e-4
        np.testing.assert_allclose(whole.sum(0), 1.0, atol=1e-5)
        if context == 0:  # ... and with float32 features it is the tiled net to float rounding
            from napari_cnnseg.core.models.feature_net import predict_features, volume_features
            from napari_cnnseg.core.normalization import DEFAULT_NORMALIZATION

            f32 = volume_features(net, x, dict(DEFAULT_NORMALIZATION), dtype=np.float32)
            assert np.abs(predict_features(net, f32) - tiled).max() < 1e-5


def test_a_box_reads_the_cached_features_of_the_whole_volume():
    net = _net(3, 0)
    x = np.random.default_rng(1).random((9, 50, 61)).astype(np.float32)
    feature_net._CACHE.clear()
    box = (slice(4, 5), slice(3, 40), slice(0, 61))  # the visible slice, part of it
    assert feature_net.features_if_cached(net, x, {"mode": "zscore"}) is None
    whole = predict(x, net, device="cpu", precision="fp32")  # fills the cache
    assert len(feature_net._CACHE) == 1
    part = predict(x, net, device="cpu", precision="fp32", roi=box)
    np.testing.assert_array_equal(part, whole[(slice(None), *box)])  # the same features
    with pytest.raises(Cancelled):
        predict(x, net, device="cpu", precision="fp32", roi=box, cancel=lambda: True)


def _blob_task(seed=0):
    rng = np.random.default_rng(seed)
    img = rng.normal(0, 0.3, (12, 48, 48)).astype(np.float32)
    lab = np.zeros(img.shape, np.int64)
    lab[4:8, 16:30, 18:32] = 1
    img[lab == 1] += 1.5
    scr = np.zeros_like(lab)
    scr[6, 20:26, 22:28] = 2
    scr[6, 2:10, 2:40] = 1
    scr[6, 38:46, 5:45] = 1
    return img, lab, scr


def test_per_voxel_training_learns_a_blob_from_two_strokes():
    img, lab, scr = _blob_task()
    net = _net()
    hist = finetune(net, img, scr, steps=120, **recommended_settings(True, net))
    assert hist.steps == 120 and hist.losses[-1] < hist.losses[0]
    p = predict(img, net, device="cpu")[1]
    assert ((p > 0.5) & (lab == 1)).sum() > 0.9 * (lab == 1).sum()  # the unpainted blob too
    assert p[scr == 1].mean() < 0.1 and p[scr == 2].mean() > 0.9


def test_context_layers_train_on_crops_of_the_features():
    img, lab, scr = _blob_task(1)
    net = _net(context=1)
    hist = finetune(net, img, scr, steps=3, batch_size=2, crop_shape=(4, 16, 16))
    assert hist.steps == 3 and all(np.isfinite(hist.losses))


def test_checkpoint_round_trip_keeps_filters_and_task_origin(tmp_path):
    net = _net()
    net.meta = {"new_task": True}
    save_model(tmp_path / "m", net, class_names=["background", "lesion"], new_task=True)
    back = load_model(tmp_path / "m.safetensors")
    assert back.get_config() == net.get_config() and started_new(back)
    x = np.random.default_rng(1).random((6, 40, 40)).astype(np.float32)
    np.testing.assert_allclose(predict(x, back, device="cpu"), predict(x, net, device="cpu"),
                               atol=1e-6)


def test_new_task_config_follows_the_spacing():
    thick = interactive_config("feature_net", (6.5, 0.78, 0.78))
    assert thick["sigmas"] == scale_sigmas((6.5, 0.78, 0.78), (1.0, 2.0, 4.0, 8.0, 16.0))
    assert thick["sigmas"][0] == [0.0, 1.0, 1.0] and thick["context_kernel"] == "inplane"
    iso = interactive_config("feature_net", (1.0, 1.0, 1.0))
    assert iso["sigmas"][-1] == [16.0, 16.0, 16.0] and iso["context_kernel"] == "3d"
    assert interactive_config("feature_net") == {}
    with pytest.raises(InputError, match="three positive"):
        scale_sigmas((0, 1, 1))
    with pytest.raises(InputError, match="sigma"):
        build_model("feature_net", sigmas=[[0, 0, 0]])


def test_keep_stroke_components_drops_unpainted_look_alikes():
    labels = np.zeros((5, 20, 20), np.uint8)
    labels[1:3, 2:6, 2:6] = 1      # painted lesion
    labels[1:3, 12:16, 12:16] = 1  # look-alike far away
    labels[3, 10:12, 0:3] = 2      # a class without strokes stays
    scr = np.zeros(labels.shape, np.int64)
    scr[2, 3, 3] = 2
    scr[0, 0, 0] = 1
    out = keep_stroke_components(labels, scr)
    assert out[1, 3, 3] == 1 and out[1, 13, 13] == 0 and out[3, 10, 1] == 2
    assert out.dtype == labels.dtype and labels[1, 13, 13] == 1  # input untouched
    with pytest.raises(InputError, match="different grids"):
        keep_stroke_components(labels, scr[:, :10])


def test_keep_stroke_components_matches_a_plain_reference_and_many_components():
    """The lean form (flat stroke lookup, uint16 component map, int32 past 65535 components)
    keeps exactly the components a plain per-class labelling keeps."""
    from scipy import ndimage
    rng = np.random.default_rng(3)
    structure = np.ones((3, 3, 3), bool)
    labels = np.zeros((10, 300, 300), np.uint8)
    labels[::2, ::2, :200:2] = 1  # 75,000 isolated voxels: more components than uint16 holds
    labels[:, :, 201:] = rng.integers(0, 3, (10, 300, 99))  # blobs of classes 1 and 2
    scr = np.zeros_like(labels)
    pts = rng.integers(0, [10, 300, 300], (400, 3))
    scr[tuple(pts.T)] = rng.integers(1, 4, 400)
    out = keep_stroke_components(labels, scr)
    ref = labels.copy()
    ref[scr > 0] = scr[scr > 0] - 1
    honoured = ref.copy()
    assert ndimage.label(honoured == 1, structure=structure)[1] > 65535
    for c in (1, 2):
        comp, _ = ndimage.label(honoured == c, structure=structure)
        kept = np.unique(comp[(scr == c + 1) & (honoured == c)])
        ref[(comp > 0) & ~np.isin(comp, kept)] = 0
    np.testing.assert_array_equal(out, ref)


def test_painted_voxels_keep_their_painted_class():
    """A stroke is a label set by hand: painted voxels show their class, and a painted
    foreground voxel the net missed keeps its component (it touches that stroke)."""
    labels = np.zeros((3, 12, 12), np.uint8)
    labels[1, 2:5, 2:5] = 1
    labels[1, 8, 8] = 1           # predicted foreground on a background stroke
    scr = np.zeros(labels.shape, np.int64)
    scr[1, 3, 3] = 2
    scr[1, 8, 8] = 1              # background stroke
    scr[1, 6, 6] = 2              # foreground stroke the net missed
    out = keep_stroke_components(labels, scr)
    assert out[1, 8, 8] == 0 and out[1, 6, 6] == 1 and out[1, 2, 2] == 1
    kept = keep_stroke_components(labels, scr, honour_strokes=False)
    assert kept[1, 6, 6] == 0 and kept[1, 2, 2] == 1


def test_a_fine_tuned_model_remembers_its_strokes_for_segment_volume():
    """`cnnseg segment -m CHECKPOINT` of the scan that was fine-tuned keeps, like the dock, only
    the regions connected to the strokes (two-class tasks); other grids are left alone."""
    from napari_cnnseg.core.io import Volume
    from napari_cnnseg.core.pipeline import segment_volume
    from napari_cnnseg.core.postprocess import applies_to, remembered_strokes, stroke_seeds

    img, lab, scr = _blob_task()
    rng = np.random.default_rng(5)
    img = np.concatenate([img, rng.normal(0, 0.3, (12, 48, 32)).astype(np.float32)], axis=2)
    scr = np.concatenate([scr, np.zeros((12, 48, 32), scr.dtype)], axis=2)
    img[4:8, 18:26, 62:72] += 1.5  # a look-alike blob nobody painted, 30 voxels away
    net = _net()
    finetune(net, img, scr, steps=60, **recommended_settings(True, net))
    assert net.meta["stroke_seeds"]["shape"] == list(img.shape)
    raw = predict(img, net, device="cpu").argmax(0)
    assert raw[6, 22, 66] == 1  # the net alone finds the look-alike too
    labels = segment_volume(Volume(img), net).labels.array
    assert labels[6, 22, 66] == 0 and labels[6, 23, 25] == 1
    other = segment_volume(Volume(img[:, :40]), net).labels.array  # another grid: untouched
    np.testing.assert_array_equal(other, predict(img[:, :40], net, device="cpu").argmax(0))
    meta = {"stroke_seeds": stroke_seeds(scr)}
    back = remembered_strokes(meta, img.shape)  # a sample of the foreground strokes
    assert set(np.unique(back[back > 0])) == {2} and (scr[back > 0] == back[back > 0]).all()
    assert remembered_strokes(meta, (12, 40, 80)) is None
    assert not applies_to(3)  # tissue maps with several classes keep every piece


def test_an_ensemble_of_heads_is_the_mean_of_its_heads_and_round_trips(tmp_path):
    sig = [[0, 1, 1], [0.5, 4, 4]]
    ens = build_model("feature_net", num_classes=3, sigmas=sig, context_layers=0, heads=3,
                      width=4)
    img, lab, scr = _blob_task(2)
    scr[6, 30:34, 5:9] = 3  # a third class
    finetune(ens, img, scr, steps=20, **recommended_settings(True, ens))  # BN stats move too
    ens.eval()
    x = torch.randn(1, 1, 7, 30, 30)
    with torch.no_grad():
        feats = ens.features(x)
        want = ens(x)
        singles = []
        for h in range(3):
            one = build_model("feature_net", num_classes=3, sigmas=sig, context_layers=0,
                              width=4).eval()
            one.load_state_dict({k: t if t.ndim == 0 else t.reshape(3, -1, *t.shape[1:])[h]
                                 for k, t in ens.state_dict().items()})
            singles.append(one.head(feats))
        points = ens.head_points(feats[0].reshape(feats.shape[1], -1).T)
    torch.testing.assert_close(want, torch.stack(singles).mean(0), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(points.T.reshape(want.shape), want, atol=1e-5, rtol=1e-5)
    save_model(tmp_path / "e", ens, class_names=["background", "a", "b"], new_task=True)
    back = load_model(tmp_path / "e.safetensors")
    assert back.get_config()["heads"] == 3
    np.testing.assert_allclose(predict(img, back, device="cpu"), predict(img, ens, device="cpu"),
                               atol=1e-6)
    with pytest.raises(InputError, match="heads"):
        build_model("feature_net", heads=2, context_layers=1)
    assert interactive_config("feature_net", (1.0, 1.0, 1.0))["heads"] > 1  # the default


def test_a_tissue_maps_rare_painted_class_is_weighted_by_how_much_was_painted():
    """Balanced classes let a handful of painted voxels claim as much as a large painted class;
    with more than two painted classes the terms follow the painted counts ** 0.5."""
    import torch

    from napari_cnnseg.core.pointwise_training import (
        CLASS_WEIGHT_POWER,
        PointwiseSampler,
        pointwise_loss,
    )

    scr = np.zeros((4, 20, 20), np.int64)
    scr[0, :10] = 1
    scr[1, :10, :4] = 2
    scr[2, :1, :4] = 3  # 4 voxels
    feats = np.zeros((2, 4, 20, 20), np.float32)
    sampler = PointwiseSampler(feats, scr, 0)
    assert sampler.class_weights[3] == pytest.approx(4.0 ** CLASS_WEIGHT_POWER)
    assert sampler.class_weights[1] == pytest.approx(200.0 ** CLASS_WEIGHT_POWER)
    two = PointwiseSampler(feats, np.where(scr == 3, 0, scr), 0)
    assert set(two.class_weights.values()) == {1.0}  # one structure on a background: balanced
    logits = torch.zeros(3, 3)
    logits[0, 0] = logits[1, 1] = 5.0  # classes 1 and 2 right, class 3 wrong
    target = torch.tensor([1, 2, 3])
    balanced = pointwise_loss(logits, target, 0.0)
    weighted = pointwise_loss(logits, target, 0.0, sampler.class_weights)
    assert weighted < balanced  # the rare class's error counts less


def test_a_tissue_map_gets_wider_heads_and_one_structure_keeps_the_measured_ones():
    from napari_cnnseg._model_info import build_new_model
    from napari_cnnseg.cli.finetune import _load_model
    from napari_cnnseg.core.models.registry import (
        FEATURE_HEADS,
        FEATURE_WIDTH,
        TISSUE_MAP_WIDTH,
    )

    sp = (1.0, 1.0, 1.0)
    assert TISSUE_MAP_WIDTH > FEATURE_WIDTH
    for k, width in ((2, FEATURE_WIDTH), (3, TISSUE_MAP_WIDTH), (7, TISSUE_MAP_WIDTH)):
        assert interactive_config("feature_net", sp, k)["width"] == width
        dock = build_new_model("feature_net", num_classes=k, spacing=sp).get_config()  # Session
        cli, _ = _load_model(None, k, 1, sp)  # cnnseg finetune without -m: classes of the strokes
        for cfg in (dock, cli.get_config()):
            assert (cfg["heads"], cfg["width"], cfg["num_classes"]) == (FEATURE_HEADS, width, k)
    assert interactive_config("feature_net", sp)["width"] == FEATURE_WIDTH  # classes unknown
    explicit = build_new_model("feature_net", num_classes=5, spacing=sp, width=4)
    assert explicit.get_config()["width"] == 4  # the caller's setting wins
