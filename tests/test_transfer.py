"""Transfer learning: adapt_head keeps the body, swaps the classification head."""

from __future__ import annotations

import pytest
import torch

from napari_cnnseg.core.errors import InputError
from napari_cnnseg.core.models import (
    adapt_head,
    as_dense,
    build_model,
    load_model,
    resolve_model,
    save_model,
)

SOURCES = [
    ("unet", {"depth": 2, "base_width": 4, "convs_per_level": 1, "num_classes": 4}),
    ("unet", {"depth": 1, "base_width": 4, "padding": "same", "num_classes": 2}),
    ("encoder_decoder", {"depth": 1, "base_width": 4, "num_classes": 3}),
    ("multiscale", {"num_classes": 3}),
]


def _head_keys(model):
    last = f"head.{len(model.head) - 1}" if isinstance(model.head, torch.nn.Sequential) else "head"
    return {f"{last}.weight", f"{last}.bias"}


@pytest.fixture(params=SOURCES, ids=lambda s: s[0] + "-" + str(s[1].get("padding", "valid")))
def source(request):
    torch.manual_seed(0)
    name, cfg = request.param
    return build_model(name, **cfg).eval()


@pytest.mark.parametrize("k", [1, 2, 7])
def test_new_head_body_identical(source, k):
    before = {n: t.clone() for n, t in source.state_dict().items()}
    new = adapt_head(source, k, class_names=[f"c{i}" for i in range(k)])
    assert new is not source and new.num_classes == k
    assert new.get_config()["num_classes"] == k
    assert new.meta["class_names"] == [f"c{i}" for i in range(k)]
    head = _head_keys(source)
    assert head == _head_keys(new)
    new_state = new.state_dict()
    assert set(new_state) == set(before)
    for n, t in before.items():
        if n in head:
            assert new_state[n].shape[0] == k
        else:
            assert torch.equal(new_state[n], t), n
    for n, t in source.state_dict().items():  # the source is untouched
        assert torch.equal(t, before[n])
    assert new.training == source.training


def test_output_shape_rules_unchanged(source):
    new = adapt_head(source, 5)
    for probe in [(4, 4, 4), (9, 13, 11)]:
        shape = source.valid_input_shape(probe)
        assert new.valid_input_shape(probe) == shape
        assert new.output_shape(shape) == source.output_shape(shape)
        out = new(torch.randn(1, source.in_channels, *shape))
        assert tuple(out.shape) == (1, 5, *source.output_shape(shape))
    assert new.margin == source.margin and new.lattice == source.lattice


def test_save_load_round_trip_identical(source, tmp_path):
    new = adapt_head(source, 6).eval()
    save_model(tmp_path / "adapted", new)
    back = load_model(tmp_path / "adapted")
    assert back.num_classes == 6 and back.meta["class_names"][0] == "background"
    assert len(back.meta["class_names"]) == 6
    x = torch.randn(1, source.in_channels, *source.valid_input_shape((7, 8, 9)))
    with torch.no_grad():
        assert torch.equal(new(x), back(x))


def test_shipped_model_body_with_new_head():
    src = resolve_model("phantom-unet")
    torch.manual_seed(1)
    a = adapt_head(src, 3)
    torch.manual_seed(1)
    b = adapt_head(src, 3)
    assert torch.equal(a.head.weight, b.head.weight)  # seeded by the global RNG
    assert a.meta["normalization"] == src.meta["normalization"]
    assert a.meta["class_names"] == ["background", "class 1", "class 2"]
    assert src.num_classes == 4 and src.head.out_channels == 4


@pytest.mark.parametrize("k", [0, -1, 2.0, True])
def test_bad_num_classes(source, k):
    with pytest.raises(InputError, match="num_classes"):
        adapt_head(source, k)


def test_bad_class_names(source):
    with pytest.raises(InputError, match="class_names"):
        adapt_head(source, 3, class_names=["background", "x"])


def test_unsupported_models():
    pc = build_model("patch_classifier")
    with pytest.raises(InputError, match="1x1x1 classification"):
        adapt_head(pc, 3)
    with pytest.raises(InputError, match="1x1x1 classification"):
        adapt_head(as_dense(pc), 3)
    with pytest.raises(InputError, match="not a napari-cnnseg network"):
        adapt_head(torch.nn.Conv3d(1, 2, 1), 3)
