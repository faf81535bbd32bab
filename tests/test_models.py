"""Networks: shape rules, gradients, exact dense conversion, exact tiling, registry errors.

One shared parametrised class runs over every family and several configurations (tiny widths,
odd and anisotropic shapes) so that each invariant is checked for all networks.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from napari_cnnseg.core.errors import InputError, ShapeError
from napari_cnnseg.core.models import (
    DensePatchClassifier,
    PatchClassifier,
    architecture_names,
    as_dense,
    build_model,
    classify_patches,
    default_config,
    load_model,
    save_model,
    valid_patch_sizes,
)
from napari_cnnseg.core.models.patch_classifier import DilatedMaxPool3d

CONFIGS = [
    ("unet", dict(depth=2, base_width=2, convs_per_level=1)),
    ("unet", dict(depth=2, base_width=3, padding="same", upsampling="trilinear", norm="instance")),
    ("unet", dict(depth=2, base_width=2, convs_per_level=1, anisotropic_levels=1,
                  upsampling="trilinear", dropout=0.1, in_channels=2, num_classes=3)),
    ("unet", dict(depth=1, base_width=2, padding="same", norm="none", anisotropic_levels=1)),
    ("encoder_decoder", dict(depth=1, base_width=2, norm="none")),
    ("encoder_decoder", dict(depth=2, base_width=2, convs_per_level=1, padding="same", norm="group")),
    ("multiscale", dict(widths=(2, 3), factors=(3,), head_widths=(4,))),
    ("multiscale", dict(widths=(2,), factors=(3, 5), norm="none", in_channels=2, num_classes=3)),
    ("multiscale", dict(widths=(2, 2), factors=(), head_widths=())),  # single scale
    ("patch_classifier", dict(patch_size=9, widths=(3, 4), pool_after=(1,), fc_widths=(8,))),
    ("patch_classifier", dict(patch_size=7, widths=(3, 2), pool_after=(), fc_widths=(),
                              norm="batch", num_classes=3)),
]
IDS = [f"{name}-{i}" for i, (name, _) in enumerate(CONFIGS)]
MIN_SHAPES = [(5, 7, 9), (1, 1, 1), (13, 6, 11)]


def _exact_tiling(net: nn.Module) -> bool:
    norm = getattr(net, "get_config", dict)().get("norm", "none")
    return net.padding == "valid" and norm in ("none", "batch")


@pytest.fixture(params=CONFIGS, ids=IDS)
def net(request, _seed_and_restore_rng) -> nn.Module:
    name, cfg = request.param
    return as_dense(build_model(name, **cfg))


class TestNetworkProtocol:
    """Invariants every dense network must satisfy."""

    def test_protocol_attributes(self, net):
        assert net.padding in ("valid", "same")
        assert len(net.margin) == 3 and len(net.lattice) == 3
        if net.padding == "same":
            assert net.margin == (0, 0, 0)
        cfg = net.get_config()
        assert json.loads(json.dumps(cfg)) == cfg
        assert net.arch_name in architecture_names()

    @pytest.mark.parametrize("min_shape", MIN_SHAPES)
    def test_output_shape_matches_rules(self, net, min_shape):
        net.eval()
        shape = net.valid_input_shape(min_shape)
        assert all(s >= m for s, m in zip(shape, min_shape, strict=True))
        out_shape = net.output_shape(shape)
        with torch.no_grad():
            y = net(torch.randn(2, net.in_channels, *shape))
        assert tuple(y.shape) == (2, net.num_classes, *out_shape)
        if net.padding == "valid":
            assert tuple(s - 2 * m for s, m in zip(shape, net.margin, strict=True)) == out_shape
        else:
            assert out_shape == shape

    def test_valid_input_shape_is_smallest(self, net):
        shape = net.valid_input_shape((4, 4, 4))
        for axis in range(3):
            for smaller in range(4, shape[axis]):
                probe = list(shape)
                probe[axis] = smaller
                with pytest.raises(ShapeError):
                    net.output_shape(probe)

    def test_next_valid_shape_is_one_lattice_step(self, net):
        shape = net.valid_input_shape(1)
        bigger = tuple(s + step for s, step in zip(shape, net.lattice, strict=True))
        if net.padding == "same" or isinstance(net, DensePatchClassifier) or net.arch_name == "multiscale":
            assert net.valid_input_shape(tuple(s + 1 for s in shape)) == bigger
        out_a, out_b = net.output_shape(shape), net.output_shape(bigger)
        assert all(b - a == st for a, b, st in zip(out_a, out_b, net.lattice, strict=True))

    def test_gradients_reach_every_parameter(self, net):
        net.train()
        with torch.no_grad():  # tiny random nets can start with dead ReLUs: keep units alive
            for m in net.modules():
                if isinstance(m, (nn.Conv3d, nn.ConvTranspose3d)) and m.bias is not None:
                    m.bias.fill_(0.1)
        shape = net.valid_input_shape((6, 6, 6))
        x = torch.randn(2, net.in_channels, *shape)
        y = net(x)
        (y * torch.randn_like(y)).sum().backward()
        for name, p in net.named_parameters():
            assert p.grad is not None, name
            assert torch.isfinite(p.grad).all(), name
            assert p.grad.abs().sum() > 0, name

    def test_checkpoint_round_trip_identical(self, net, tmp_path):
        net.eval()
        with torch.no_grad():  # non-trivial batch-norm statistics
            for m in net.modules():
                if isinstance(m, nn.BatchNorm3d):
                    m.running_mean.uniform_(-0.5, 0.5)
                    m.running_var.uniform_(0.5, 2.0)
        path = save_model(tmp_path / "net", net, class_names=[f"c{k}" for k in range(net.num_classes)])
        loaded = as_dense(load_model(path))
        x = torch.randn(1, net.in_channels, *net.valid_input_shape((7, 8, 9)))
        with torch.no_grad():
            assert torch.equal(net(x), loaded(x))
        assert loaded.meta["class_names"] == [f"c{k}" for k in range(net.num_classes)]

    def test_rebuild_from_config(self, net):
        cfg = json.loads(json.dumps(net.get_config()))
        again = as_dense(build_model(net.arch_name, **cfg))
        assert type(again) is type(net)
        assert [(n, p.shape) for n, p in again.named_parameters()] == [
            (n, p.shape) for n, p in net.named_parameters()
        ]

    def test_bad_shapes_raise_with_nearest_valid(self, net):
        shape = net.valid_input_shape(1)
        axis = int(np.argmax(net.lattice))
        bad = tuple(s - (i == axis) for i, s in enumerate(shape))
        with pytest.raises(ShapeError, match=r"pad the input to \(\d+, \d+, \d+\)") as err:
            net(torch.randn(1, net.in_channels, *bad))
        assert str(net.valid_input_shape(bad)) in str(err.value)
        with pytest.raises(InputError, match="channel"):
            net(torch.randn(1, net.in_channels + 1, *shape))
        with pytest.raises(ShapeError, match="5D"):
            net(torch.randn(net.in_channels, *shape))

    def test_tiles_on_lattice_equal_one_pass(self, net):
        """A crop whose origin is on the lattice gives exactly the same output voxels."""
        if not _exact_tiling(net):
            pytest.skip("same padding / per-tile normalisation: tiling is blended, not exact")
        net.eval()
        small = net.valid_input_shape((3, 5, 4))
        shift = tuple(2 * st for st in net.lattice)
        big = net.valid_input_shape(tuple(s + d for s, d in zip(small, shift, strict=True)))
        x = torch.randn(1, net.in_channels, *big)
        with torch.no_grad():
            whole = net(x)
            tile = net(x[:, :, shift[0]:shift[0] + small[0], shift[1]:shift[1] + small[1],
                         shift[2]:shift[2] + small[2]])
        oz, oy, ox = tile.shape[2:]
        ref = whole[:, :, shift[0]:shift[0] + oz, shift[1]:shift[1] + oy, shift[2]:shift[2] + ox]
        torch.testing.assert_close(tile, ref, atol=1e-5, rtol=1e-5)

    def test_runs_on_device(self, net, device):
        net.eval()
        x = torch.randn(1, net.in_channels, *net.valid_input_shape((6, 6, 6)))
        with torch.no_grad():
            ref = net(x)
            out = net.to(device)(x.to(device)).cpu()
        torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)


# --- patch classifier: exact dense conversion ------------------------------------------------
DENSE_CASES = [
    dict(patch_size=9, widths=(2, 3), pool_after=(1,), fc_widths=(5,)),
    dict(patch_size=7, widths=(3, 2), pool_after=(), fc_widths=(4, 3)),  # no pooling
    dict(patch_size=21, widths=(2, 2, 3), pool_after=(1, 2), fc_widths=(6,), num_classes=3),
    dict(patch_size=17, widths=(2, 3), pool_after=(1, 1), fc_widths=()),  # two pools in a row
    dict(patch_size=11, widths=(3,), pool_after=(1,), pool_size=3, pool_kernel=3, in_channels=2),
    dict(patch_size=9, widths=(2, 2), pool_after=(2,), norm="batch", fc_widths=(4,)),
]


@pytest.mark.parametrize("cfg", DENSE_CASES, ids=[f"case{i}" for i in range(len(DENSE_CASES))])
def test_dense_equals_per_patch(cfg, device):
    model = build_model("patch_classifier", **cfg).to(device).eval()
    if cfg.get("norm") == "batch":
        with torch.no_grad():
            for m in model.modules():
                if isinstance(m, nn.BatchNorm3d):
                    m.running_mean.uniform_(-0.5, 0.5)
                    m.running_var.uniform_(0.5, 2.0)
    dense = model.to_dense().eval()
    p = model.patch_size
    shape = (p + 6, p + 3, p + 8)  # odd, unequal sides
    x = torch.randn(model.in_channels, *shape, device=device)
    with torch.no_grad():
        out = dense(x[None])[0]
    assert tuple(out.shape) == (model.num_classes, *(s - p + 1 for s in shape))
    rng = np.random.default_rng(1)
    limits = np.array(out.shape[1:])
    corners = np.array([[0, 0, 0], limits - 1, [0, limits[1] - 1, 0], [limits[0] - 1, 0, limits[2] - 1]])
    coords = np.concatenate([corners, rng.integers(0, limits, size=(40, 3))])
    ref = classify_patches(model, x, coords, batch_size=7)
    got = out[:, coords[:, 0], coords[:, 1], coords[:, 2]].T
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=0)


def test_dense_protocol_and_back_conversion(tmp_path):
    model = build_model("patch_classifier", patch_size=9, widths=(2, 3), pool_after=(1,), fc_widths=(4,))
    model.eval()
    dense = as_dense(model)
    assert dense.padding == "valid" and dense.margin == (4, 4, 4) and dense.lattice == (1, 1, 1)
    assert dense.output_shape((20, 9, 11)) == (12, 1, 3)
    with torch.no_grad():
        for p in dense.parameters():  # "fine-tune" the dense form
            p.add_(0.01 * torch.randn_like(p))
    back = dense.to_patch_classifier().eval()
    x = torch.randn(1, 1, 12, 10, 11)
    with torch.no_grad():
        torch.testing.assert_close(back.to_dense()(x), dense(x), atol=1e-6, rtol=0)
    loaded = load_model(save_model(tmp_path / "dense", dense))
    assert isinstance(loaded, PatchClassifier)
    with torch.no_grad():
        torch.testing.assert_close(as_dense(loaded)(x), dense(x), atol=1e-6, rtol=0)


def test_as_dense_returns_dense_nets_unchanged():
    unet = build_model("unet", depth=1, base_width=2)
    assert as_dense(unet) is unet
    dense = as_dense(build_model("patch_classifier", patch_size=5, widths=(2,), pool_after=(), fc_widths=()))
    assert as_dense(dense) is dense


def test_patch_classifier_rejects_volumes():
    model = build_model("patch_classifier", patch_size=9, widths=(2, 3), pool_after=(1,))
    with pytest.raises(ShapeError, match="as_dense"):
        model(torch.randn(1, 1, 12, 12, 12))


@pytest.mark.parametrize("patch_size", [23, 27, 10, 5])
def test_incompatible_patch_size_names_valid_neighbours(patch_size):
    layout = dict(widths=(2, 2, 2, 2), pool_after=(1, 3), fc_widths=(3,))
    valid = valid_patch_sizes(**{k: layout[k] for k in ("widths", "pool_after")})
    assert 25 in valid and patch_size not in valid
    with pytest.raises(InputError, match="patch_size") as err:
        build_model("patch_classifier", patch_size=patch_size, **layout)
    named = [int(s) for s in err.value.args[0].rsplit(":", 1)[-1].replace(",", " ").split() if s.isdigit()]
    assert named, err.value
    for size in named:  # every suggested size really works
        build_model("patch_classifier", patch_size=size, **layout)


@pytest.mark.parametrize("kernel,dilation", [(3, 1), (3, 2), (5, 3), (1, 4)])
def test_dilated_max_pool_equals_torch(kernel, dilation):
    x = torch.randn(2, 3, 17, 15, 16, requires_grad=True)
    ref = nn.functional.max_pool3d(x, kernel, stride=1, dilation=dilation)
    got = DilatedMaxPool3d(kernel, dilation)(x)
    torch.testing.assert_close(got, ref, atol=0, rtol=0)
    with torch.no_grad():
        torch.testing.assert_close(DilatedMaxPool3d(kernel, dilation)(x), ref, atol=0, rtol=0)


def test_classify_patches_checks_origins():
    model = build_model("patch_classifier", patch_size=5, widths=(2,), pool_after=(), fc_widths=())
    with pytest.raises(ShapeError, match="origins"):
        classify_patches(model, torch.randn(8, 8, 8), [[4, 0, 0]])
    assert classify_patches(model, torch.randn(8, 8, 8), np.zeros((0, 3))).shape == (0, 2)


# --- U-Net / multi-scale specifics -----------------------------------------------------------
def test_unet_same_padding_rounds_to_divisor():
    net = build_model("unet", depth=3, base_width=2, padding="same", anisotropic_levels=1)
    assert net.lattice == (4, 8, 8)
    assert net.valid_input_shape((5, 9, 17)) == (8, 16, 24)
    with pytest.raises(ShapeError, match=r"\(8, 16, 24\)"):
        net.output_shape((5, 9, 17))


def test_unet_valid_skip_crops_are_centred():
    """A valid U-Net with identity-like behaviour keeps features aligned: a delta input moves
    the output response by exactly the same shift (translation by a lattice step)."""
    net = build_model("unet", depth=2, base_width=2, convs_per_level=1, norm="none").eval()
    shape = net.valid_input_shape((1, 1, 1))
    big = tuple(s + st for s, st in zip(shape, net.lattice, strict=True))
    x = torch.zeros(1, 1, *big)
    x[0, 0, big[0] // 2, big[1] // 2, big[2] // 2] = 1.0
    shifted = torch.roll(x, shifts=tuple(net.lattice), dims=(2, 3, 4))
    with torch.no_grad():
        a, b = net(x), net(shifted)
    s = net.lattice
    torch.testing.assert_close(b[..., s[0]:, s[1]:, s[2]:], a[..., :-s[0], :-s[1], :-s[2]], atol=1e-6, rtol=0)


def test_multiscale_alignment_rule():
    net = build_model("multiscale", widths=(2, 2, 2), factors=(3,))
    assert net.margin == (10, 10, 10) and net.lattice == (3, 3, 3)
    assert net.output_shape((29, 32, 35)) == (9, 12, 15)
    with pytest.raises(ShapeError, match=r"pad the input to \(29, 29, 29\) or crop it to \(26, 26, 26\)"):
        net.output_shape((28, 28, 28))


# --- registry --------------------------------------------------------------------------------
def test_registry_names_and_defaults():
    assert set(architecture_names()) == {"patch_classifier", "unet", "encoder_decoder", "multiscale",
                                         "feature_net"}
    for name in architecture_names():
        cfg = default_config(name)
        assert json.loads(json.dumps(cfg)) == cfg
        assert build_model(name, **cfg).get_config() == cfg


@pytest.mark.parametrize(
    "name,config,match",
    [
        ("resnet", {}, "choose one of patch_classifier, unet, encoder_decoder, multiscale"),
        ("unet", {"widht": 3}, "valid options: in_channels"),
        ("unet", {"padding": "full"}, "'valid', 'same'"),
        ("unet", {"upsampling": "pixelshuffle"}, "'transposed', 'trilinear'"),
        ("unet", {"norm": "layer"}, "'batch', 'instance', 'group', 'none'"),
        ("unet", {"depth": 0}, "depth must be an integer >= 1"),
        ("unet", {"depth": 2, "anisotropic_levels": 3}, "use 0..2"),
        ("unet", {"dropout": 1.5}, "dropout"),
        ("unet", {"skips": "yes"}, "skips"),
        ("encoder_decoder", {"skips": True}, "skips"),
        ("multiscale", {"factors": [2]}, "odd integers"),
        ("multiscale", {"widths": []}, "widths"),
        ("patch_classifier", {"patch_size": 24}, "odd"),
        ("patch_classifier", {"pool_after": [9]}, "1..4"),
        ("patch_classifier", {"pool_kernel": 2}, "odd"),
        ("patch_classifier", {"widths": "abc"}, "list of integers"),
        ("patch_classifier", {"widths": "12"}, "list of integers"),
        ("multiscale", {"head_widths": [2.5]}, "list of integers"),
    ],
)
def test_bad_configs_raise_input_error(name, config, match):
    with pytest.raises(InputError, match=match):
        build_model(name, **config)


@pytest.mark.parametrize("channels_last", [False, True])
def test_center_crop_gradient_equals_slicing_and_keeps_memory_format(channels_last):
    from napari_cnnseg.core.models.base import center_crop

    x = torch.randn(2, 3, 9, 11, 13, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last_3d)
    x.requires_grad_(True)
    weights = torch.randn(2, 3, 5, 7, 9, dtype=torch.float64)
    (center_crop(x, (5, 7, 9)) * weights).sum().backward()
    ours, x.grad = x.grad, None
    (x[:, :, 2:7, 2:9, 2:11] * weights).sum().backward()
    assert torch.equal(ours, x.grad)
    assert ours.is_contiguous(memory_format=torch.channels_last_3d) == channels_last
    assert torch.autograd.gradcheck(lambda t: center_crop(t, (5, 7, 9)), (x.detach().requires_grad_(),))
