"""`cnnseg segment`: round trip on sample data, cohorts, formats, bad inputs."""

from __future__ import annotations

import numpy as np
import pytest

from napari_cnnseg.cli import main
from napari_cnnseg.cli.segment import ProgressBar, output_stem
from napari_cnnseg.core.io import Volume, read_volume, write_volume
from napari_cnnseg.core.models import build_model, save_model
from napari_cnnseg.core.pipeline import segment_volume


@pytest.fixture
def model_path(tmp_path):
    net = build_model("unet", depth=1, base_width=4, padding="valid", num_classes=3).eval()
    return save_model(tmp_path / "tiny", net, class_names=["background", "a", "b"])


@pytest.fixture
def volume():
    rng = np.random.default_rng(0)
    direction = np.array([[0.0, 1.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    return Volume(rng.normal(size=(9, 20, 18)).astype(np.float32), spacing=(3.0, 2.0, 1.5),
                  origin=(10.0, -5.0, 2.5), direction=direction)


def test_round_trip_keeps_geometry_and_matches_engine(tmp_path, model_path, volume, capsys):
    src = write_volume(tmp_path / "head.nii.gz", volume)
    out = tmp_path / "out"
    code = main(["segment", str(src), "-m", str(model_path), "-o", str(out), "--probabilities",
                 "--uncertainty", "--device", "cpu", "--precision", "fp32", "--tile", "24", "24", "24"])
    assert code == 0
    printed = capsys.readouterr()
    assert "head.nii.gz [" in printed.err and "tiles" in printed.err  # progress bar on stderr
    labels = read_volume(out / "head_labels.nii.gz")
    probs = read_volume(out / "head_probabilities.nii.gz", all_channels=True)
    unc = read_volume(out / "head_uncertainty.nii.gz")
    assert str(out / "head_labels.nii.gz") in printed.out
    source = read_volume(src)
    for vol in (labels, probs, unc):
        np.testing.assert_allclose(vol.spacing, source.spacing, rtol=1e-6)
        np.testing.assert_allclose(vol.origin, source.origin, atol=1e-4)
        np.testing.assert_allclose(vol.direction, source.direction, atol=1e-6)
    from napari_cnnseg.core.models import load_model

    ref = segment_volume(source, load_model(model_path), device="cpu", precision="fp32",
                         tile_shape=24)
    np.testing.assert_array_equal(labels.array, ref.labels.array)
    assert probs.shape == (3, 9, 20, 18)
    np.testing.assert_allclose(probs.array.sum(0), 1.0, atol=1e-4)
    assert 0.0 <= unc.array.min() and unc.array.max() <= 1.0


def test_cohort_with_a_bad_input_and_format_switch(tmp_path, model_path, volume, capsys):
    a = write_volume(tmp_path / "a.nrrd", volume)
    b = write_volume(tmp_path / "b.tif", volume)
    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(b"not a nifti file")
    out = tmp_path / "out"
    code = main(["segment", str(a), str(bad), str(b), "-m", str(model_path), "-o", str(out),
                 "--device", "cpu", "-q"])
    assert code == 2
    err = capsys.readouterr().err
    assert "broken.nii.gz" in err and "1 of 3 input(s) failed" in err
    assert (out / "a_labels.nrrd").is_file() and (out / "b_labels.tif").is_file()
    assert read_volume(out / "a_labels.nrrd").array.dtype == np.uint8
    code = main(["segment", str(a), "-m", str(model_path), "-o", str(out), "--format", "nii.gz", "-q"])
    assert code == 0 and (out / "a_labels.nii.gz").is_file()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["-m", "no_such_model"], "no model"),
        (["--overlap", "1.5"], "--overlap"),
        (["--device", "tpu"], "device"),
        (["--batch", "0"], "--batch"),
    ],
)
def test_bad_options_exit_2_with_one_clear_line(tmp_path, model_path, volume, capsys, extra, message):
    src = write_volume(tmp_path / "v.nii.gz", volume)
    model = extra[1] if extra[0] == "-m" else str(model_path)
    args = ["segment", str(src), "-m", model, "-o", str(tmp_path / "o")]
    if extra[0] != "-m":
        args += extra
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert message in err[-1] and "Traceback" not in "\n".join(err)


def test_missing_input_file_is_reported(tmp_path, model_path, capsys):
    assert main(["segment", str(tmp_path / "nope.nii.gz"), "-m", str(model_path), "-o",
                 str(tmp_path / "o"), "-q"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_output_stem_and_progress_bar():
    from pathlib import Path

    assert output_stem(Path("/d/head.nii.gz")) == ("head", ".nii.gz")
    assert output_stem(Path("/d/cells.ome.tif")) == ("cells", ".ome.tif")
    assert output_stem(Path("/d/series_folder")) == ("series_folder", ".nii.gz")
    import io

    stream = io.StringIO()
    bar = ProgressBar("x", stream=stream)
    for done in range(0, 11):
        bar(done, 10)
    lines = stream.getvalue().splitlines()
    assert lines[-1].startswith("x [") and "10/10 tiles" in lines[-1]
    assert len(lines) <= 5  # not a terminal: a few lines, not one per tile
