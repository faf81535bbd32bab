"""`cnnseg finetune` and `cnnseg evaluate` end to end on tiny files."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_cnnseg.cli import main
from napari_cnnseg.core.io import Volume, read_volume, write_volume
from napari_cnnseg.core.models import build_model, load_model, save_model


@pytest.fixture
def files(tmp_path):
    rng = np.random.default_rng(0)
    shape = (8, 20, 20)
    gt = np.zeros(shape, np.uint8)
    gt[2:6, 5:15, 5:15] = 1
    image = (gt + 0.2 * rng.standard_normal(shape)).astype(np.float32)
    scr = np.zeros(shape, np.uint8)
    scr[4, 8:12, 10] = 2
    scr[4, 1:4, 1:18] = 1
    spacing = (2.0, 0.5, 0.5)
    paths = {
        "image": write_volume(tmp_path / "img.nii.gz", Volume(image, spacing=spacing)),
        "scr": write_volume(tmp_path / "scr.nii.gz", Volume(scr, spacing=spacing)),
        "gt": write_volume(tmp_path / "gt.nii.gz", Volume(gt, spacing=spacing)),
    }
    net = build_model("unet", num_classes=2, depth=1, base_width=4, anisotropic_levels=1)
    paths["model"] = save_model(tmp_path / "start", net, class_names=["background", "box"])
    return tmp_path, paths


def test_finetune_writes_a_loadable_checkpoint(files, capsys):
    tmp, p = files
    before = load_model(p["model"])
    rc = main(["finetune", str(p["image"]), "--scribbles", str(p["scr"]), "-m", str(p["model"]),
               "-o", str(tmp / "tuned"), "--steps", "10", "--crop", "4", "8", "8", "--batch", "2"])
    out, err = capsys.readouterr()
    assert rc == 0
    assert "step 10/10" in err
    written = out.strip().splitlines()[-1]
    assert written.endswith("tuned.safetensors")
    after = load_model(written)
    assert after.meta["class_names"] == ["background", "box"]
    assert after.meta["spacing"] == [2.0, 0.5, 0.5]
    assert any(not torch.equal(a, b) for a, b in
               zip(before.state_dict().values(), after.state_dict().values(), strict=True))
    assert not list(tmp.glob("*.tmp"))  # atomic writes leave no temp files


def test_finetune_rejects_scribbles_off_the_image_grid(files, tmp_path, capsys):
    _, p = files
    bad = write_volume(tmp_path / "bad.nii.gz", Volume(np.ones((8, 20, 19), np.uint8)))
    rc = main(["finetune", str(p["image"]), "--scribbles", str(bad), "-m", str(p["model"]),
               "-o", str(tmp_path / "x"), "--steps", "1"])
    assert rc == 2
    assert "grid" in capsys.readouterr().err


def test_steps_and_seconds_are_exclusive(files):
    _, p = files
    with pytest.raises(SystemExit):
        main(["finetune", str(p["image"]), "-s", str(p["scr"]), "-m", str(p["model"]),
              "-o", "x", "--steps", "1", "--seconds", "1"])


def test_evaluate_json_uses_physical_spacing(files, capsys):
    tmp, p = files
    assert main(["evaluate", str(p["gt"]), str(p["gt"]), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["dice"] == {"0": 1.0, "1": 1.0} and res["hd95"]["1"] == 0.0
    gt = np.zeros((8, 20, 20), np.uint8)
    gt[2:6, 5:15, 7:17] = 1  # shifted by 2 voxels along x (0.5 mm each)
    shifted = write_volume(tmp / "shift.nii.gz", Volume(gt, spacing=(2.0, 0.5, 0.5)))
    assert main(["evaluate", str(shifted), str(p["gt"]), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert 0 < res["hd95"]["1"] <= 1.0  # at most 2 voxels * 0.5 mm
    assert res["dice"]["1"] == pytest.approx(0.8)
    assert main(["evaluate", str(shifted), str(p["gt"])]) == 0
    assert "mean foreground dice 0.8000" in capsys.readouterr().out


def test_evaluate_refuses_different_grids(files, capsys):
    tmp, p = files
    other = write_volume(tmp / "o.nii.gz", Volume(np.zeros((8, 20, 20), np.uint8),
                                                  spacing=(1.0, 1.0, 1.0)))
    assert main(["evaluate", str(other), str(p["gt"])]) == 2
    assert "spacing" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--lr", "-1"], "--lr must be > 0"),
        (["--lr", "nan"], "--lr must be > 0"),
        (["--batch", "0"], "--batch must be >= 1"),
        (["--crop", "0", "4", "4"], "--crop must be 3 positive integers"),
        (["--prior-weight", "-1"], "--prior-weight must be >= 0"),
        (["--class-names", "a", "b", "c"], "--class-names gives 3 name(s) but the model has 2"),
        (["-o", "DIR/"], "is a folder; give a checkpoint name"),
        (["-o", "FILE/model"], "is a file, not a folder"),
    ],
)
def test_finetune_bad_options_fail_before_training(files, capsys, monkeypatch, extra, message):
    import napari_cnnseg.core.training as training

    tmp, p = files
    (tmp / "FILE").write_text("not a folder")
    monkeypatch.setattr(training, "finetune", lambda *a, **k: pytest.fail("trained anyway"))
    extra = [e.replace("DIR", str(tmp)).replace("FILE", str(tmp / "FILE")) for e in extra]
    args = ["finetune", str(p["image"]), "-s", str(p["scr"]), "-m", str(p["model"]),
            "-o", str(tmp / "new"), "--steps", "1", *extra]  # a second -o wins
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not list(tmp.glob("new*"))


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux /proc")
def test_finetune_refuses_a_read_only_folder_before_training_even_as_root(files, capsys,
                                                                          monkeypatch):
    import napari_cnnseg.core.training as training

    tmp, p = files  # /proc takes no new files, whoever asks (os.access says yes to root)
    monkeypatch.setattr(training, "finetune", lambda *a, **k: pytest.fail("trained anyway"))
    args = ["finetune", str(p["image"]), "-s", str(p["scr"]), "-m", str(p["model"]),
            "-o", "/proc/cnnseg-model", "--steps", "1"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "/proc is not writable" in err[0], err


def test_finetune_refuses_nan_images_before_training(files, capsys, monkeypatch):
    import napari_cnnseg.core.training as training

    tmp, p = files
    from napari_cnnseg.core.io import read_volume

    image = read_volume(p["image"])
    holes = np.asarray(image.array).copy()
    holes[0, 0, :3] = np.nan
    bad = write_volume(tmp / "holes.nrrd", image.with_array(holes))
    monkeypatch.setattr(training, "finetune", lambda *a, **k: pytest.fail("trained anyway"))
    assert main(["finetune", str(bad), "-s", str(p["scr"]), "-m", str(p["model"]),
                 "-o", str(tmp / "new"), "--steps", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "3 NaN/inf voxel(s)" in err[0]


def test_finetune_progress_with_a_seconds_budget(capsys):
    from napari_cnnseg.cli.finetune import _Progress
    from napari_cnnseg.core.training import FinetuneHistory

    history = FinetuneHistory()
    history.losses = [0.5]
    progress = _Progress(history, every=10, estimated=True)
    for done, total in [(1, 3), (2, 8), (9, 30), (10, 25), (11, 11), (12, 12), (13, 13)]:
        progress(done, total)
    progress.finish(13)
    lines = [ln.split(" loss")[0] for ln in capsys.readouterr().err.splitlines()]
    assert lines == ["step 1/~3", "step 10/~25", "step 13/13"]  # not one line per late step
    steps = _Progress(history, every=10)
    for done in range(1, 13):
        steps(done, 12)
    steps.finish(12)
    assert [ln.split(" loss")[0] for ln in capsys.readouterr().err.splitlines()] == [
        "step 1/12", "step 10/12", "step 12/12"]


def test_evaluate_help_shows_a_single_percent_sign(capsys):
    with pytest.raises(SystemExit):
        main(["evaluate", "--help"])
    out = capsys.readouterr().out
    assert "95% Hausdorff" in out and "%%" not in out


def test_evaluate_refuses_probabilities_and_too_few_classes_in_cli_terms(files, capsys):
    tmp, p = files
    probs = np.stack([np.full((8, 20, 20), 0.25, np.float32), np.full((8, 20, 20), 0.75, np.float32)])
    pp = write_volume(tmp / "probs.nrrd", Volume(probs, spacing=(2.0, 0.5, 0.5)))
    assert main(["evaluate", str(pp), str(p["gt"])]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "PREDICTION" in err[0] and "2 channels" in err[0]
    assert "channel=" not in err[0]  # the Python keyword, not an option of this command
    assert main(["evaluate", str(p["gt"]), str(p["gt"]), "--classes", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pass --classes 2 or more" in err[0] and "num_classes" not in err[0]


def test_finetune_from_an_architecture_name_uses_the_interactive_net(files, capsys):
    from napari_cnnseg.core.models import interactive_config

    tmp, p = files
    rc = main(["finetune", str(p["image"]), "-s", str(p["scr"]), "-m", "unet",
               "-o", str(tmp / "fresh"), "--steps", "1", "--batch", "2"])
    assert rc == 0, capsys.readouterr().err
    cfg = load_model(tmp / "fresh.safetensors").get_config()
    assert {k: cfg[k] for k in interactive_config("unet")} == interactive_config("unet")


def test_finetune_without_a_model_builds_the_new_task_net(files, capsys):
    """No -m: the dock's default new net for the image's spacing, marked as a new task, so a
    later `-m CHECKPOINT` round goes on with the new-task recipe."""
    from napari_cnnseg.core.models import interactive_config
    from napari_cnnseg.core.training import started_new

    tmp, p = files
    rc = main(["finetune", str(p["image"]), "-s", str(p["scr"]), "-o", str(tmp / "new"),
               "--steps", "1", "--batch", "2"])
    assert rc == 0, capsys.readouterr().err
    model = load_model(tmp / "new.safetensors")
    assert model.arch_name == "feature_net" and started_new(model)
    spacing = read_volume(p["image"]).spacing
    assert model.get_config()["sigmas"] == interactive_config("feature_net", spacing)["sigmas"]
    rc = main(["finetune", str(p["image"]), "-s", str(p["scr"]), "-m", str(tmp / "new.safetensors"),
               "-o", str(tmp / "round2"), "--steps", "1", "--batch", "2"])
    assert rc == 0, capsys.readouterr().err
    assert started_new(load_model(tmp / "round2.safetensors"))


def test_evaluate_warns_when_the_prediction_looks_like_an_image(files, tmp_path, caplog):
    _, p = files
    gt = read_volume(p["gt"])
    ramp = np.arange(gt.array.size, dtype=np.int32).reshape(gt.array.shape) % 100
    scan = write_volume(tmp_path / "scan.nii.gz", gt.with_array(ramp))
    with caplog.at_level(logging.WARNING):
        assert main(["evaluate", str(scan), str(p["gt"]), "--json"]) == 0
    assert "100 distinct values" in caplog.text
    floats = write_volume(tmp_path / "f.nii.gz", gt.with_array(gt.array.astype(np.float32) + 0.5))
    assert main(["evaluate", str(floats), str(p["gt"])]) == 2
