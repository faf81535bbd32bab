"""``cnnseg info``: geometry equals SimpleITK's reordered to (z, y, x); clear errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from napari_cnnseg.cli import EXIT_BROKEN_PIPE, main
from napari_cnnseg.cli.info import KEYS
from napari_cnnseg.core.io import read_volume, write_volume


def oblique_nifti(path) -> sitk.Image:
    """Write an oblique, anisotropic NIfTI straight through SimpleITK (not through core.io)."""
    image = sitk.GetImageFromArray(np.arange(5 * 6 * 7, dtype=np.int16).reshape(5, 6, 7))
    image.SetSpacing((0.5, 0.75, 2.5))  # (x, y, z), exact in float32
    image.SetOrigin((100.125, -3.5, 10.25))
    c, s = 0.6, 0.8
    rotation = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]) @ np.array([[1, 0, 0], [0, c, -s], [0, s, c]])
    image.SetDirection(tuple(rotation.ravel()))
    sitk.WriteImage(image, str(path))
    return sitk.ReadImage(str(path))


def sitk_geometry_zyx(image: sitk.Image) -> dict:
    return {
        "shape": list(image.GetSize())[::-1],
        "spacing": list(image.GetSpacing())[::-1],
        "origin": list(image.GetOrigin())[::-1],
        "direction": np.reshape(image.GetDirection(), (3, 3))[::-1, ::-1].tolist(),
    }


def info_json(path, capsys) -> dict:
    assert main(["info", str(path), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def assert_matches(info: dict, expected: dict, tol: float = 1e-6) -> None:
    assert info["shape"] == expected["shape"]
    for key in ("spacing", "origin", "direction"):
        np.testing.assert_allclose(info[key], expected[key], atol=tol, rtol=0, err_msg=key)


def test_info_oblique_nifti_matches_simpleitk(tmp_path, capsys):
    image = oblique_nifti(tmp_path / "oblique.nii.gz")
    info = info_json(tmp_path / "oblique.nii.gz", capsys)
    assert tuple(info) == KEYS
    assert info["dtype"] == "int16"
    assert_matches(info, sitk_geometry_zyx(image), tol=1e-12)
    assert not np.allclose(np.abs(info["direction"]), np.eye(3))


def test_info_after_nifti_nrrd_mha_nifti_chain(tmp_path, capsys):
    image = oblique_nifti(tmp_path / "start.nii.gz")
    path = tmp_path / "start.nii.gz"
    for i, ext in enumerate([".nrrd", ".mha", ".nii.gz"]):
        path = write_volume(tmp_path / f"step{i}{ext}", read_volume(path))
        assert_matches(info_json(path, capsys), sitk_geometry_zyx(image))
    np.testing.assert_array_equal(read_volume(path).array, sitk.GetArrayFromImage(image))


def test_info_text_output(tmp_path, capsys):
    oblique_nifti(tmp_path / "a.nii.gz")
    assert main(["info", str(tmp_path / "a.nii.gz")]) == 0
    out = capsys.readouterr().out
    for key in KEYS:
        assert f"{key}:" in out
    assert "(5, 6, 7)" in out


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("missing.nii.gz", None, "does not exist"),
        ("notes.xyz", b"hello", "unknown file type"),
        ("broken.nii.gz", b"garbage" * 20, "corrupt"),
    ],
)
def test_info_bad_input_exits_nonzero_with_message(tmp_path, capsys, name, content, message):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    assert main(["info", str(path)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_info_console_script_subprocess(tmp_path):
    image = oblique_nifti(tmp_path / "o.nii.gz")
    done = subprocess.run([sys.executable, "-m", "napari_cnnseg.cli", "info", str(tmp_path / "o.nii.gz"), "--json"],
                          capture_output=True, text=True, check=True)
    assert_matches(json.loads(done.stdout), sitk_geometry_zyx(image), tol=1e-12)
    bad = subprocess.run([sys.executable, "-m", "napari_cnnseg.cli", "info", str(tmp_path / "nope.nrrd")],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "does not exist" in bad.stderr and "Traceback" not in bad.stderr


def test_info_json_has_no_negative_zero(tmp_path, capsys):
    # the bundled T1's direction holds a -0.0 after SimpleITK's LPS conversion
    sample = Path(__file__).parents[1] / "src/napari_cnnseg/sample_data/KmeansTest_T1UCharRaw.nii.gz"
    assert main(["info", str(sample), "--json"]) == 0
    out = capsys.readouterr().out
    assert "-0.0" not in out
    assert json.loads(out)["direction"][1] == [-1.0, 0.0, 0.0]


def test_closed_stdout_pipe_exits_quietly(monkeypatch, capsys):
    class ClosedPipe:
        def write(self, text):
            raise BrokenPipeError(32, "Broken pipe")

        def flush(self):
            raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(sys, "stdout", ClosedPipe())
    assert main(["models"]) == EXIT_BROKEN_PIPE
    assert capsys.readouterr().err == ""


def test_closed_stdout_pipe_subprocess_has_no_traceback():
    # `cnnseg models | head -1`: the reader goes away before the output is written
    proc = subprocess.Popen([sys.executable, "-m", "napari_cnnseg.cli", "models"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == EXIT_BROKEN_PIPE
    assert "Traceback" not in err and "Exception ignored" not in err, err


def test_info_on_a_folder_without_dicom_is_one_line(tmp_path, capfd):
    (tmp_path / "study" / "sub1").mkdir(parents=True)
    (tmp_path / "study" / "sub2").mkdir()
    (tmp_path / "study" / "notes.txt").write_text("no DICOM here")
    assert main(["info", str(tmp_path / "study")]) == 2
    err = capfd.readouterr().err  # fd level: ITK writes its warnings there, not to sys.stderr
    assert "no DICOM series found" in err
    assert "GDCMSeriesFileNames" not in err and "WARNING" not in err, err
