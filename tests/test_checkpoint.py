"""Safe checkpoints: safetensors + JSON sidecar, pickle refusal, validation, shipped models, CLI."""

from __future__ import annotations

import json
import os
import pickle

import pytest
import torch

from napari_cnnseg.core.errors import CheckpointError, InputError
from napari_cnnseg.core.models import (
    build_model,
    list_pretrained,
    load_model,
    model_meta,
    resolve_model,
    save_model,
)
from napari_cnnseg.core.models import checkpoint as ckpt


@pytest.fixture
def small_unet():
    return build_model("unet", depth=1, base_width=2, convs_per_level=1).eval()


def test_save_writes_pair_and_describes_itself(tmp_path, small_unet):
    path = save_model(tmp_path / "liver.safetensors", small_unet, class_names=["background", "liver"],
                      normalization={"mode": "zscore"}, spacing=(2.0, 0.5, 0.5), description="demo")
    assert path == tmp_path / "liver.safetensors"
    doc = json.loads((tmp_path / "liver.json").read_text(encoding="utf-8"))
    assert doc["arch"] == "unet" and doc["config"] == small_unet.get_config()
    assert doc["format_version"] == ckpt.FORMAT_VERSION and doc["package_version"]
    assert doc["meta"]["spacing"] == [2.0, 0.5, 0.5]
    assert sorted(os.listdir(tmp_path)) == ["liver.json", "liver.safetensors"]  # no temp files left
    model = load_model(tmp_path / "liver.json")
    assert model.meta["class_names"] == ["background", "liver"]
    assert model.meta["normalization"] == {"mode": "zscore"}
    assert model.meta["description"] == "demo"
    assert not model.training


def test_meta_of_model_is_kept_and_overridden(tmp_path, small_unet):
    small_unet.meta = {"class_names": ["bg", "a"], "spacing": [1, 1, 1]}
    load = load_model(save_model(tmp_path / "m", small_unet, class_names=["bg", "b"]))
    assert load.meta["class_names"] == ["bg", "b"] and load.meta["spacing"] == [1, 1, 1]


def test_model_meta_defaults(small_unet):
    meta = model_meta(build_model("unet", depth=1, base_width=2, num_classes=3))
    assert meta["class_names"] == ["background", "class 1", "class 2"]
    assert meta["normalization"]["mode"] == "percentile"
    small_unet.meta = {"class_names": ["only one"]}  # wrong length: falls back to defaults
    assert model_meta(small_unet)["class_names"] == ["background", "class 1"]


@pytest.mark.parametrize(
    "meta,match",
    [
        ({"class_names": ["background"]}, "list of 2 strings"),
        ({"normalization": "percentile"}, "normalization"),
        ({"spacing": (1.0, 2.0)}, "spacing"),
        ({"extra": object()}, "not JSON-able"),
    ],
)
def test_bad_meta_raises(tmp_path, small_unet, meta, match):
    with pytest.raises(InputError, match=match):
        save_model(tmp_path / "m", small_unet, **meta)
    assert not list(tmp_path.iterdir())


def test_foreign_module_is_refused(tmp_path):
    with pytest.raises(InputError, match="build_model"):
        save_model(tmp_path / "m", torch.nn.Conv3d(1, 2, 3))


@pytest.mark.parametrize("suffix", [".pt", ".pth", ".ckpt"])
def test_pickles_are_refused_without_torch_load(tmp_path, small_unet, monkeypatch, suffix):
    def boom(*args, **kwargs):  # pragma: no cover - must never be called
        raise AssertionError("torch.load was called")

    monkeypatch.setattr(torch, "load", boom)
    path = tmp_path / f"model{suffix}"
    path.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(CheckpointError, match="pickle"):
        load_model(path)
    with pytest.raises(CheckpointError, match="pickle"):
        resolve_model(str(path))


def test_renamed_pickle_is_refused(tmp_path, small_unet, monkeypatch):
    save_model(tmp_path / "m", small_unet)
    (tmp_path / "m.safetensors").write_bytes(pickle.dumps({"weights": [1, 2, 3]}, protocol=4))
    doc = json.loads((tmp_path / "m.json").read_text(encoding="utf-8"))
    doc.pop("weights_sha256")
    (tmp_path / "m.json").write_text(json.dumps(doc))
    with pytest.raises(CheckpointError, match="not a safetensors file"):
        load_model(tmp_path / "m")


def test_missing_files(tmp_path, small_unet):
    with pytest.raises(CheckpointError, match="not found"):
        load_model(tmp_path / "nothing")
    save_model(tmp_path / "m", small_unet)
    (tmp_path / "m.json").unlink()
    with pytest.raises(CheckpointError, match="sidecar"):
        load_model(tmp_path / "m.safetensors")


def test_mismatched_weights_are_refused(tmp_path, small_unet):
    save_model(tmp_path / "m", small_unet)
    doc = json.loads((tmp_path / "m.json").read_text(encoding="utf-8"))
    doc.pop("weights_sha256")
    doc["config"]["base_width"] = 3  # architecture no longer fits the tensors
    (tmp_path / "m.json").write_text(json.dumps(doc))
    with pytest.raises(CheckpointError, match="has shape"):
        load_model(tmp_path / "m")
    doc["config"]["base_width"] = 2
    doc["config"]["depth"] = 2  # extra layers: missing tensors
    (tmp_path / "m.json").write_text(json.dumps(doc))
    with pytest.raises(CheckpointError, match="missing tensors"):
        load_model(tmp_path / "m")


def test_weights_and_sidecar_must_match(tmp_path, small_unet):
    save_model(tmp_path / "a", small_unet)
    other = build_model("unet", depth=1, base_width=2, convs_per_level=1)
    save_model(tmp_path / "b", other)
    os.replace(tmp_path / "b.safetensors", tmp_path / "a.safetensors")
    with pytest.raises(CheckpointError, match="checksum"):
        load_model(tmp_path / "a")


def test_bad_sidecars(tmp_path, small_unet):
    save_model(tmp_path / "m", small_unet)
    side = tmp_path / "m.json"
    doc = json.loads(side.read_text(encoding="utf-8"))
    side.write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_model(side)
    side.write_text(json.dumps({**doc, "format_version": ckpt.FORMAT_VERSION + 1}))
    with pytest.raises(CheckpointError, match="upgrade"):
        load_model(side)
    side.write_text(json.dumps({**doc, "arch": "transformer"}))
    with pytest.raises(CheckpointError, match="choose one of"):
        load_model(side)
    side.write_text(json.dumps({**doc, "config": [1, 2]}))
    with pytest.raises(CheckpointError, match="JSON object"):
        load_model(side)


def test_failed_write_keeps_previous_checkpoint(tmp_path, small_unet, monkeypatch):
    path = save_model(tmp_path / "m", small_unet)
    before = (path.read_bytes(), (tmp_path / "m.json").read_bytes())

    def failing_save(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"partial")
        raise OSError("disk full")

    import safetensors.torch

    monkeypatch.setattr(safetensors.torch, "save_file", failing_save)
    with pytest.raises(CheckpointError, match="disk full"):
        save_model(tmp_path / "m", build_model("unet", depth=1, base_width=2, convs_per_level=1))
    assert (path.read_bytes(), (tmp_path / "m.json").read_bytes()) == before
    assert sorted(os.listdir(tmp_path)) == ["m.json", "m.safetensors"]
    load_model(path)


def test_unwritable_folder_is_a_clear_error(tmp_path, small_unet):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(CheckpointError, match="cannot write"):
        save_model(blocker / "m", small_unet)


def test_load_on_device(tmp_path, small_unet, device):
    model = load_model(save_model(tmp_path / "m", small_unet), device=device)
    assert next(model.parameters()).device.type == device


def test_shipped_models_resolve_by_name(tmp_path, small_unet, monkeypatch):
    monkeypatch.setattr(ckpt, "PRETRAINED_DIR", tmp_path)
    assert list_pretrained() == []
    save_model(tmp_path / "tiny-unet", small_unet, class_names=["background", "thing"])
    (tmp_path / "orphan.json").write_text("{}")  # no weights: not listed
    assert list_pretrained() == ["tiny-unet"]
    model = resolve_model("tiny-unet")
    assert model.meta["class_names"] == ["background", "thing"]
    x = torch.randn(1, 1, *small_unet.valid_input_shape((4, 4, 4)))
    with torch.no_grad():
        assert torch.equal(model(x), small_unet(x))
    with pytest.raises(CheckpointError, match="Shipped models: tiny-unet"):
        resolve_model("tiny-unt")


def test_resolve_by_path(tmp_path, small_unet):
    save_model(tmp_path / "sub" / "m", small_unet)
    for spec in (tmp_path / "sub" / "m", tmp_path / "sub" / "m.json", tmp_path / "sub" / "m.safetensors"):
        assert resolve_model(str(spec)).arch_name == "unet"


def test_real_shipped_models_load():
    for name in list_pretrained():
        model = resolve_model(name)
        meta = model_meta(model)
        assert len(meta["class_names"]) == model.num_classes


def test_cli_models_lists_architectures(capsys):
    from napari_cnnseg.cli import main

    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for name in ("patch_classifier", "unet", "encoder_decoder", "multiscale", "feature_net"):
        assert name in out
    assert main(["models", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert set(doc["architectures"]) == {"patch_classifier", "unet", "encoder_decoder",
                                         "multiscale", "feature_net"}
    assert [m["name"] for m in doc["pretrained"]] == list_pretrained()
    for name, cfg in doc["architectures"].items():
        build_model(name, **cfg)
