"""`cnnseg segment`: round trip on sample data, cohorts, formats, bad inputs."""

from __future__ import annotations

import numpy as np
import pytest

from napari_cnnseg.cli import main
from napari_cnnseg.cli.segment import ProgressBar, output_stem
from napari_cnnseg.core.io import Volume, read_volume, write_volume
from napari_cnnseg.core.models import build_model, save_model
from napari_cnnseg.core.pipeline import segment_volume


def _outputs(out):
    """Names in ``out`` besides the cohort summary and the hidden per-volume records."""
    return sorted(p.name for p in out.iterdir() if p.name not in ("summary.csv", ".cnnseg"))


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


@pytest.fixture
def predict_spy(monkeypatch):
    """Record the type of ``out=`` that segment_volume hands to predict."""
    import napari_cnnseg.core.pipeline as pipeline

    seen: list[type] = []
    seen_images: list[type] = []
    real = pipeline.predict

    def spy(image, model, **kwargs):
        seen.append(type(kwargs.get("out")))
        seen_images.append(type(image))
        return real(image, model, **kwargs)

    monkeypatch.setattr(pipeline, "predict", spy)
    monkeypatch.setattr(pipeline, "seen_images", seen_images, raising=False)
    return seen


def test_round_trip_keeps_geometry_and_matches_engine(tmp_path, model_path, volume, capsys,
                                                      predict_spy):
    src = write_volume(tmp_path / "head.nii.gz", volume)
    out = tmp_path / "out"
    code = main(["segment", str(src), "-m", str(model_path), "-o", str(out), "--probabilities",
                 "--uncertainty", "--device", "cpu", "--precision", "fp32", "--tile", "24", "24", "24"])
    assert code == 0
    assert predict_spy == [type(None)]  # NIfTI in and out: the in-memory path
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


def test_a_run_where_everything_failed_leaves_no_new_empty_folder(tmp_path, model_path, capsys):
    out = tmp_path / "new" / "out"
    assert main(["segment", str(tmp_path / "missing.nii.gz"), "-m", str(model_path),
                 "-o", str(out)]) == 2
    assert not out.exists()
    existing = tmp_path / "existing"
    existing.mkdir()
    assert main(["segment", str(tmp_path / "missing.nii.gz"), "-m", str(model_path),
                 "-o", str(existing)]) == 2
    assert existing.is_dir()  # a folder the user already had is never removed


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


def _reference(src, model_path):
    from napari_cnnseg.core.models import load_model

    return segment_volume(read_volume(src), load_model(model_path), device="cpu", precision="fp32",
                          tile_shape=24)


def test_zarr_in_zarr_out_streams_and_equals_the_in_memory_path(tmp_path, model_path, volume,
                                                                 predict_spy, capsys):
    zarr = pytest.importorskip("zarr")
    src = write_volume(tmp_path / "head.ome.zarr", volume)
    out = tmp_path / "out"
    code = main(["segment", str(src), "-m", str(model_path), "-o", str(out), "--probabilities",
                 "--uncertainty", "--device", "cpu", "--precision", "fp32", "--tile", "24", "24", "24",
                 "-q"])
    assert code == 0
    assert predict_spy == [zarr.Array]  # probabilities streamed into a store, never a numpy array
    names = ["head_labels.ome.zarr", "head_probabilities.ome.zarr", "head_uncertainty.ome.zarr"]
    assert capsys.readouterr().out.split() == [str(out / n) for n in names]
    assert _outputs(out) == names  # no scratch stores left
    ref = _reference(src, model_path)
    labels = read_volume(out / names[0])
    probs = read_volume(out / names[1], all_channels=True)
    unc = read_volume(out / names[2])
    np.testing.assert_array_equal(labels.array, ref.labels.array)
    assert labels.array.dtype == np.uint8
    np.testing.assert_allclose(probs.array, ref.probabilities.array, atol=1e-6)
    np.testing.assert_allclose(unc.array, ref.uncertainty.array, atol=1e-6)
    for vol in (labels, probs, unc):
        assert vol.same_grid(volume) and vol.metadata["class_names"] == ["background", "a", "b"]


def test_zarr_in_nifti_out_streams_through_a_scratch_store(tmp_path, model_path, volume, predict_spy):
    zarr = pytest.importorskip("zarr")
    import napari_cnnseg.core.pipeline as pipeline
    from napari_cnnseg.core.io._arrays import LazyView

    other = volume.array[::-1].copy()
    src = write_volume(tmp_path / "head.zarr", volume.with_array(np.stack([other, volume.array])))
    out = tmp_path / "out"
    code = main(["segment", str(src), "-m", str(model_path), "-o", str(out), "--format", "nii.gz",
                 "--channel", "1", "--device", "cpu", "--precision", "fp32", "--tile", "24", "24",
                 "24", "-q"])
    assert code == 0 and predict_spy == [zarr.Array]
    assert pipeline.seen_images == [LazyView]  # the channel is read tile by tile too
    assert _outputs(out) == ["head_labels.nii.gz"]  # scratch store removed
    labels = read_volume(out / "head_labels.nii.gz")
    ref = _reference(write_volume(tmp_path / "c1.nii.gz", volume), model_path)
    np.testing.assert_array_equal(labels.array, ref.labels.array)
    np.testing.assert_allclose(labels.spacing, volume.spacing, rtol=1e-6)


def test_nifti_in_zarr_out_streams_labels(tmp_path, model_path, volume, predict_spy):
    zarr = pytest.importorskip("zarr")
    src = write_volume(tmp_path / "head.nii.gz", volume)
    out = tmp_path / "out"
    assert main(["segment", str(src), "-m", str(model_path), "-o", str(out), "--format", "zarr",
                 "--device", "cpu", "--precision", "fp32", "--tile", "24", "24", "24", "-q"]) == 0
    assert predict_spy == [zarr.Array]
    assert _outputs(out) == ["head_labels.zarr"]
    np.testing.assert_array_equal(read_volume(out / "head_labels.zarr").array,
                                  _reference(src, model_path).labels.array)


def test_unwritable_outdir_exits_2_with_one_clear_line(tmp_path, model_path, volume, capsys,
                                                      monkeypatch):
    src = write_volume(tmp_path / "v.zarr", volume)
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    assert main(["segment", str(src), "-m", str(model_path), "-o", str(blocker / "out"), "-q"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "cannot create output folder" in err[-1] and "Traceback" not in "\n".join(err)
    import napari_cnnseg.cli.segment as cli_segment

    monkeypatch.setattr(cli_segment.os, "access", lambda *a, **k: False)  # root writes anywhere
    assert main(["segment", str(src), "-m", str(model_path), "-o", str(tmp_path / "o"), "-q"]) == 2
    assert "is not writable" in capsys.readouterr().err.strip().splitlines()[-1]


def test_streaming_failures_leave_no_stores_behind(tmp_path, model_path, volume, capsys, monkeypatch):
    import napari_cnnseg.core.io._stream as stream
    import napari_cnnseg.core.pipeline as pipeline
    from napari_cnnseg.core.errors import DeviceError

    src = write_volume(tmp_path / "v.zarr", volume)
    out = tmp_path / "out"
    real_create = stream._create_zarr

    def create_then_fail(path, *args, **kwargs):
        if "uncertainty" in path.name:  # the third store: two were created already
            raise PermissionError(13, "Permission denied")
        return real_create(path, *args, **kwargs)

    monkeypatch.setattr(stream, "_create_zarr", create_then_fail)
    args = ["segment", str(src), "-m", str(model_path), "-o", str(out), "--uncertainty",
            "--probabilities", "-q", "--device", "cpu"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "v_uncertainty.zarr: Permission denied" in err and "input(s) failed" not in err
    assert not out.exists()  # nothing left, not even the folder this run created
    monkeypatch.setattr(stream, "_create_zarr", real_create)

    def predict_fails_halfway(image, model, out=None, **kwargs):
        out[:, :2] = 0.5
        raise DeviceError("out of memory")

    monkeypatch.setattr(pipeline, "predict", predict_fails_halfway)
    assert main(args) == 2
    assert "out of memory" in capsys.readouterr().err
    assert not out.exists()


def test_one_bad_input_is_one_line_naming_it_once(tmp_path, model_path, capsys):
    import tifffile

    flat = tmp_path / "slice.tif"
    tifffile.imwrite(flat, np.zeros((16, 16), np.float32))
    for name in ("slice.tif", "nope.nii.gz"):
        assert main(["segment", str(tmp_path / name), "-m", str(model_path), "-o",
                     str(tmp_path / "o"), "-q"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1, err  # no "1 of 1 input(s) failed" after it
        assert err[0].count(name) == 1 and err[0].startswith("cnnseg segment: error: ")
        assert "--channel" not in err[0]  # a 2D image is not a channel problem


def test_same_named_inputs_are_refused_before_any_work(tmp_path, model_path, volume, capsys):
    a = write_volume(tmp_path / "d1" / "a.nii.gz", volume)
    b = write_volume(tmp_path / "d2" / "a.nii.gz", volume)
    c = write_volume(tmp_path / "d2" / "a.nrrd", volume)
    out = tmp_path / "out"
    for inputs in ([a, b], [a, a], [a, c, "--format", "nii.gz"]):
        assert main(["segment", *map(str, inputs), "-m", str(model_path), "-o", str(out)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "would both write" in err[0] and "a_labels.nii.gz" in err[0]
        assert not out.exists()
    assert main(["segment", str(a), str(c), "-m", str(model_path), "-o", str(out), "-q"]) == 0


def test_label_map_and_nan_images_are_flagged(tmp_path, model_path, volume, capsys, caplog):
    labels = write_volume(tmp_path / "mask.nii.gz",
                          volume.with_array((volume.array > 0).astype(np.uint8)))
    out = tmp_path / "o"
    assert main(["segment", str(labels), "-m", str(model_path), "-o", str(out), "-q"]) == 0
    assert "looks like a label map" in caplog.text
    caplog.clear()
    holes = volume.array.copy()
    holes[0, :2] = np.nan
    src = write_volume(tmp_path / "holes.nrrd", volume.with_array(holes))
    assert main(["segment", str(src), "-m", str(model_path), "-o", str(out), "-q"]) == 0
    assert "36 NaN/inf voxel(s)" in caplog.text and "label map" not in caplog.text
    empty = write_volume(tmp_path / "empty.nrrd", volume.with_array(np.full_like(holes, np.nan)))
    capsys.readouterr()
    assert main(["segment", str(empty), "-m", str(model_path), "-o", str(out), "-q"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no finite value" in err[0]
    assert not (out / "empty_labels.nrrd").exists()
