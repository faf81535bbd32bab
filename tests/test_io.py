"""core.io: round trips with full geometry per format, foreign metadata, and clear errors."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest
import SimpleITK as sitk
import tifffile
import zarr

from napari_cnnseg.core.errors import InputError, VolumeReadError
from napari_cnnseg.core.io import (
    Volume,
    read_volume,
    volume_from_sitk,
    volume_to_sitk,
    write_volume,
)

FORMATS = [".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd", ".tif", ".ome.tiff", ".zarr"]
CHANNEL_FORMATS = [".nrrd", ".mha", ".tif", ".zarr"]


def oblique_direction() -> np.ndarray:
    """A right-handed rotation about two axes built from 3-4-5 triangles (cos 0.6, sin 0.8)."""
    c, s = 0.6, 0.8
    rx = np.array([[1, 0, 0], [0, c, -s], [0, s, c]])
    ry = np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])
    return rx @ ry


def oblique_volume(dtype=np.int16, channels: int = 0, seed: int = 0) -> Volume:
    # NIfTI stores spacing and origin as float32: these values are exact in float32, so the
    # 1e-6 tolerance holds for them too; the direction goes through a float32 quaternion.
    rng = np.random.default_rng(seed)
    shape = (7, 9, 11) if not channels else (channels, 7, 9, 11)
    array = rng.integers(0, 200, size=shape).astype(dtype)
    return Volume(array, spacing=(2.5, 0.75, 0.5), origin=(-10.25, 3.5, 100.125),
                  direction=oblique_direction(), metadata={"unit": "mm"})


def assert_same_geometry(a: Volume, b: Volume, tol: float = 1e-6) -> None:
    np.testing.assert_allclose(a.spacing, b.spacing, atol=tol, rtol=0)
    np.testing.assert_allclose(a.origin, b.origin, atol=tol, rtol=0)
    np.testing.assert_allclose(a.direction, b.direction, atol=tol, rtol=0)


@pytest.mark.parametrize("ext", FORMATS)
@pytest.mark.parametrize("dtype", [np.int16, np.uint8, np.float32])
def test_round_trip_keeps_voxels_and_oblique_geometry(tmp_path, ext, dtype):
    vol = oblique_volume(dtype)
    path = write_volume(tmp_path / f"vol{ext}", vol)
    back = read_volume(path)
    assert back.array.dtype == vol.array.dtype
    np.testing.assert_array_equal(back.array, vol.array)
    assert_same_geometry(back, vol)
    # nothing but the written file (and its data file for split formats) is left behind
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert leftovers == []


@pytest.mark.parametrize("ext", CHANNEL_FORMATS)
def test_multichannel_round_trip(tmp_path, ext):
    vol = oblique_volume(np.uint16, channels=2)
    path = write_volume(tmp_path / f"vol{ext}", vol)
    back = read_volume(path, all_channels=True)
    assert back.shape == vol.shape
    np.testing.assert_array_equal(back.array, vol.array)
    assert_same_geometry(back, vol)
    one = read_volume(path, channel=1)
    np.testing.assert_array_equal(one.array, vol.array[1])
    with pytest.raises(InputError, match="channel"):
        read_volume(path)
    with pytest.raises(InputError, match="channel 0..1"):
        read_volume(path, channel=5)


def test_chain_nifti_nrrd_mha_tiff_zarr_nifti_keeps_geometry(tmp_path):
    vol = oblique_volume()
    path = write_volume(tmp_path / "a.nii.gz", vol)
    first = read_volume(path)
    current = first
    for i, ext in enumerate([".nrrd", ".mha", ".tif", ".zarr", ".nii.gz"]):
        path = write_volume(tmp_path / f"step{i}{ext}", current)
        current = read_volume(path)
        np.testing.assert_array_equal(current.array, vol.array)
        assert_same_geometry(current, first)


def test_physical_points_match_simpleitk(tmp_path):
    vol = oblique_volume()
    image = volume_to_sitk(vol)
    for index_zyx in [(0, 0, 0), (6, 8, 10), (3, 1, 7)]:
        expected = np.asarray(image.TransformIndexToPhysicalPoint(tuple(int(i) for i in index_zyx[::-1])))
        np.testing.assert_allclose(vol.index_to_physical(index_zyx), expected[::-1], atol=1e-9)
        np.testing.assert_allclose((vol.affine @ [*index_zyx, 1])[:3], expected[::-1], atol=1e-9)
    again = volume_from_sitk(image)
    assert_same_geometry(again, vol, tol=0)


def test_nifti_ras_is_converted_to_lps(tmp_path):
    """A NIfTI written with a known RAS affine reads back with LPS origin (x, y negated)."""
    import struct

    vol = Volume(np.zeros((2, 3, 4), np.uint8), spacing=(3.0, 2.0, 1.0), origin=(5.0, 6.0, 7.0))
    path = write_volume(tmp_path / "a.nii", vol)
    raw = path.read_bytes()
    srow_x = struct.unpack("<4f", raw[280:296])  # NIfTI-1 header: srow_x at byte 280
    assert srow_x[3] == pytest.approx(-7.0)  # LPS x = 7 -> RAS x = -7
    assert read_volume(path).origin == pytest.approx((5.0, 6.0, 7.0))


def test_with_array_keeps_geometry():
    vol = oblique_volume()
    out = vol.with_array(np.zeros(vol.shape, np.uint8), class_names=["a", "b"])
    assert_same_geometry(out, vol, tol=0)
    assert out.metadata["class_names"] == ["a", "b"] and "class_names" not in vol.metadata
    out.direction[0, 0] = 9.0  # independent copies
    assert vol.direction[0, 0] != 9.0


@pytest.mark.parametrize("ext", [".nrrd", ".mha", ".tif", ".zarr"])
def test_class_names_survive(tmp_path, ext):
    vol = Volume(np.arange(24, dtype=np.uint8).reshape(2, 3, 4) % 3,
                 metadata={"class_names": ["background", "organ", "vessel"]})
    back = read_volume(write_volume(tmp_path / f"l{ext}", vol))
    assert back.metadata["class_names"] == ["background", "organ", "vessel"]


def test_overwrite_is_atomic_and_replaces(tmp_path):
    for ext in (".nii.gz", ".zarr", ".tif"):
        path = tmp_path / f"x{ext}"
        write_volume(path, oblique_volume(seed=1))
        write_volume(path, oblique_volume(seed=2))
        np.testing.assert_array_equal(read_volume(path).array, oblique_volume(seed=2).array)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("ext", [".nrrd", ".mha", ".tif", ".ome.zarr", ".nii.gz"])
def test_nan_voxels_round_trip_as_docs_io_says(tmp_path, ext):
    array = np.zeros((4, 5, 6), np.float32)
    array[1, 2, 3] = np.nan
    path = tmp_path / f"nan{ext}"
    write_volume(path, Volume(array, spacing=(1.0, 1.0, 1.0)))
    back = np.asarray(read_volume(path).array)
    if ext == ".nii.gz":  # ITK's NIfTI reader turns NaN into 0 (docs/io.md); the file keeps NaN
        assert not np.isnan(back).any() and back[1, 2, 3] == 0
    else:
        assert np.isnan(back[1, 2, 3]) and np.isnan(back).sum() == 1


def test_a_killed_writers_temp_store_is_swept_and_a_live_ones_kept(tmp_path):
    import subprocess
    import sys

    from napari_cnnseg.core.io._atomic import _host

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    dead_pid = int(gone.stdout)  # that process has exited
    path = tmp_path / "probs.zarr"
    stale = tmp_path / f".probs.zarr.{_host()}-{dead_pid}-0123abcd.tmp.zarr"
    live = tmp_path / f".probs.zarr.{_host()}-1-0123abcd.tmp.zarr"  # pid 1 always runs
    other = tmp_path / f".probs.zarr.otherhost-{dead_pid}-0123abcd.tmp.zarr"  # not ours to judge
    for d in (stale, live, other):
        (d / "0").mkdir(parents=True)
    write_volume(path, oblique_volume(seed=1))
    assert path.is_dir() and not stale.exists() and live.exists() and other.exists()


# ----------------------------------------------------------------------------- foreign files


def write_dicom_series(folder, vol: Volume) -> None:
    """Write a (Z, Y, X) int16 volume as a DICOM series, one file per z slice."""
    image = volume_to_sitk(vol)
    d = image.GetDirection()
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    uid = "1.2.826.0.1.3680043.2.1125.1.42"
    for k in range(image.GetDepth()):
        sl = image[:, :, k]
        sl.SetMetaData("0020|000e", uid)  # series instance UID
        sl.SetMetaData("0020|000d", uid + ".1")
        sl.SetMetaData("0008|0060", "MR")
        sl.SetMetaData("0020|0037", "\\".join(str(v) for v in (d[0], d[3], d[6], d[1], d[4], d[7])))
        sl.SetMetaData("0020|0032", "\\".join(str(v) for v in image.TransformIndexToPhysicalPoint((0, 0, k))))
        sl.SetMetaData("0020|0013", str(k))
        sl.SetMetaData("0008|0018", f"{uid}.{k + 2}")
        writer.SetFileName(str(folder / f"slice{k:03d}.dcm"))
        writer.Execute(sl)


def test_dicom_series_folder(tmp_path):
    vol = Volume(np.random.default_rng(1).integers(0, 900, (6, 10, 12)).astype(np.int16),
                 spacing=(2.5, 0.75, 0.5), origin=(-10.25, 3.5, 100.125), direction=oblique_direction())
    write_dicom_series(tmp_path, vol)
    for target in (tmp_path, tmp_path / "slice003.dcm"):
        back = read_volume(target)
        assert back.metadata["format"] == "dicom"
        np.testing.assert_array_equal(back.array, vol.array)
        assert_same_geometry(back, vol, tol=1e-5)  # DICOM stores decimal strings


def test_imagej_tiff_spacing_and_channels(tmp_path):
    data = np.random.default_rng(0).integers(0, 255, (5, 2, 6, 7)).astype(np.uint8)
    path = tmp_path / "ij.tif"
    tifffile.imwrite(path, data, imagej=True, resolution=(1 / 0.25, 1 / 0.25),
                     metadata={"spacing": 1.5, "unit": "um", "axes": "ZCYX"})
    back = read_volume(path, channel=1)
    np.testing.assert_array_equal(back.array, data[:, 1])
    assert back.spacing == pytest.approx((1.5, 0.25, 0.25))
    assert back.metadata["unit"] == "µm"
    both = read_volume(path, all_channels=True)
    np.testing.assert_array_equal(both.array, np.moveaxis(data, 1, 0))


def test_ome_tiff_spacing(tmp_path):
    data = np.zeros((4, 5, 6), np.uint16)
    data[1, 2, 3] = 7
    path = tmp_path / "x.ome.tif"
    tifffile.imwrite(path, data, ome=True, metadata={
        "axes": "ZYX", "PhysicalSizeZ": 2.0, "PhysicalSizeY": 0.3, "PhysicalSizeX": 0.4})
    back = read_volume(path)
    np.testing.assert_array_equal(back.array, data)
    assert back.spacing == pytest.approx((2.0, 0.3, 0.4))


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_ome_zarr_scale_translation(tmp_path, version):
    data = np.arange(2 * 4 * 5 * 6, dtype=np.uint16).reshape(2, 4, 5, 6)
    path = tmp_path / "img.ome.zarr"
    root = zarr.open_group(str(path), mode="w", zarr_format=2 if version == "0.4" else 3)
    root.create_array("s0", shape=data.shape, dtype=data.dtype)[...] = data
    root.create_array("s1", shape=(2, 2, 3, 3), dtype=data.dtype)[...] = 0
    axes = [{"name": "c", "type": "channel"}] + [
        {"name": n, "type": "space", "unit": "micrometer"} for n in "zyx"]
    ms = [{"version": version, "axes": axes, "datasets": [
        {"path": "s0", "coordinateTransformations": [
            {"type": "scale", "scale": [1, 2.0, 0.5, 0.25]},
            {"type": "translation", "translation": [0, 10.0, 20.0, 30.0]}]},
        {"path": "s1", "coordinateTransformations": [{"type": "scale", "scale": [1, 4.0, 1.0, 0.5]}]},
    ]}]
    root.attrs.update({"multiscales": ms} if version == "0.4" else {"ome": {"version": version, "multiscales": ms}})
    back = read_volume(path, channel=1)
    np.testing.assert_array_equal(back.array, data[1])
    assert back.spacing == pytest.approx((2.0, 0.5, 0.25))
    assert back.origin == pytest.approx((10.0, 20.0, 30.0))


def test_plain_zarr_array(tmp_path):
    data = np.ones((3, 4, 5), np.float32)
    zarr.save_array(str(tmp_path / "a.zarr"), data)
    back = read_volume(tmp_path / "a.zarr")
    np.testing.assert_array_equal(back.array, data)
    assert back.spacing == (1.0, 1.0, 1.0)


def test_real_t1_matches_simpleitk_reordered(shared_data):
    path = shared_data / "itk_kmeans_t1" / "KmeansTest_T1UCharRaw.nii.gz"
    image = sitk.ReadImage(str(path))
    vol = read_volume(path)
    assert vol.shape == tuple(image.GetSize())[::-1]
    np.testing.assert_allclose(vol.spacing, image.GetSpacing()[::-1])
    np.testing.assert_allclose(vol.origin, image.GetOrigin()[::-1])
    np.testing.assert_allclose(vol.direction, np.reshape(image.GetDirection(), (3, 3))[::-1, ::-1])
    assert not np.allclose(np.abs(vol.direction), np.eye(3))  # the permuted affine is kept


# ----------------------------------------------------------------------------- bad inputs


def test_missing_file(tmp_path):
    with pytest.raises(VolumeReadError, match="does not exist"):
        read_volume(tmp_path / "nope.nii.gz")


def test_unknown_extension(tmp_path):
    path = tmp_path / "notes.xyz"
    path.write_text("hello")
    with pytest.raises(VolumeReadError, match="unknown file type.*supported"):
        read_volume(path)
    with pytest.raises(InputError, match="unknown extension"):
        write_volume(tmp_path / "out.xyz", oblique_volume())


@pytest.mark.parametrize("ext", [".nii.gz", ".nrrd", ".mha", ".tif"])
def test_corrupt_file(tmp_path, ext):
    path = tmp_path / f"bad{ext}"
    path.write_bytes(b"this is not an image at all" * 10)
    with pytest.raises(VolumeReadError, match="corrupt"):
        read_volume(path)


@pytest.mark.parametrize("ext", [".nii.gz", ".nii", ".nrrd", ".mha", ".tif"])
def test_truncated_file(tmp_path, ext):
    path = write_volume(tmp_path / f"vol{ext}", oblique_volume(np.float32))
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) * 2 // 3])
    with pytest.raises(VolumeReadError, match="corrupt|truncated"):
        read_volume(path)


def test_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(VolumeReadError, match="empty"):
        read_volume(tmp_path / "empty")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "readme.txt").write_text("no dicom here")
    with pytest.raises(VolumeReadError, match="no DICOM series"):
        read_volume(tmp_path / "junk")


def test_2d_images(tmp_path):
    sitk.WriteImage(sitk.Image(5, 6, sitk.sitkUInt8), str(tmp_path / "flat.nii.gz"))
    with pytest.raises(InputError, match="2D"):
        read_volume(tmp_path / "flat.nii.gz")
    tifffile.imwrite(tmp_path / "flat.tif", np.zeros((6, 5), np.uint8))
    with pytest.raises(InputError, match="2D"):
        read_volume(tmp_path / "flat.tif")
    with pytest.raises(InputError, match="3D volume"):
        Volume(np.zeros((6, 5)))
    for ext in (".nii.gz", ".tif", ".zarr"):  # a 3D file holding one slice is a 2D image too
        path = write_volume(tmp_path / f"slice{ext}", Volume(np.zeros((1, 6, 5), np.uint8)))
        with pytest.raises(InputError, match="2D"):
            read_volume(path)


def test_4d_nifti_needs_a_channel(tmp_path):
    data = np.random.default_rng(0).random((3, 4, 5, 6)).astype(np.float32)
    image = sitk.JoinSeries([sitk.GetImageFromArray(c) for c in data])
    sitk.WriteImage(image, str(tmp_path / "four.nii.gz"))
    with pytest.raises(InputError, match="3 channels.*channel=0..2"):
        read_volume(tmp_path / "four.nii.gz")
    np.testing.assert_array_equal(read_volume(tmp_path / "four.nii.gz", channel=2).array, data[2])


def test_non_finite_spacing(tmp_path):
    path = write_volume(tmp_path / "v.mha", oblique_volume())
    header = path.read_bytes()
    path.write_bytes(header.replace(b"ElementSpacing = 0.5 0.75 2.5", b"ElementSpacing = 0.5 nan 2.5"))
    with pytest.raises((InputError, VolumeReadError), match="spacing"):
        read_volume(path)
    # NIfTI: patch pixdim[1] (float32 at byte 80) to NaN
    nii = write_volume(tmp_path / "v.nii.gz", oblique_volume())
    raw = bytearray(gzip.decompress(nii.read_bytes()))
    raw[80:84] = np.float32(np.nan).tobytes()
    nii.write_bytes(gzip.compress(bytes(raw)))
    with pytest.raises((InputError, VolumeReadError), match="spacing|pixdim|corrupt"):
        read_volume(nii)
    with pytest.raises(InputError, match="not finite"):
        Volume(np.zeros((2, 2, 2)), spacing=(1.0, float("inf"), 1.0))
    with pytest.raises(InputError, match="positive"):
        Volume(np.zeros((2, 2, 2)), spacing=(1.0, 0.0, 1.0))


def test_zarr_group_without_multiscales(tmp_path):
    root = zarr.open_group(str(tmp_path / "g.zarr"), mode="w")
    root.create_array("a", shape=(2, 2, 2), dtype="u1")
    root.create_array("b", shape=(2, 2, 2), dtype="u1")
    with pytest.raises(VolumeReadError, match="one array"):
        read_volume(tmp_path / "g.zarr")


def test_damaged_geometry_record(tmp_path):
    path = write_volume(tmp_path / "v.zarr", oblique_volume())
    group = zarr.open_group(str(path), mode="r+")
    group.attrs["cnnseg"] = json.dumps({"spacing": [1, 1, 1]})
    with pytest.raises(VolumeReadError, match="geometry"):
        read_volume(path)


@pytest.mark.parametrize("ext", [".mhd", ".nhdr"])
def test_detached_header_without_its_data_file(tmp_path, ext):
    path = write_volume(tmp_path / f"v{ext}", oblique_volume())
    for data_file in tmp_path.iterdir():
        if data_file != path:
            data_file.unlink()
    with pytest.raises(VolumeReadError, match="data file .* missing"):
        read_volume(path)


@pytest.mark.parametrize("ext", [".nii.gz", ".nrrd", ".tif", ".zarr"])
def test_bool_and_float16_are_stored_portably(tmp_path, ext):
    mask = Volume(np.eye(4, dtype=bool)[None].repeat(2, axis=0))
    half = Volume(np.linspace(0, 1, 32, dtype=np.float16).reshape(2, 4, 4))
    back_mask = read_volume(write_volume(tmp_path / f"m{ext}", mask))
    back_half = read_volume(write_volume(tmp_path / f"h{ext}", half))
    assert back_mask.array.dtype == np.uint8 and back_half.array.dtype == np.float32
    np.testing.assert_array_equal(back_mask.array, mask.array)
    np.testing.assert_array_equal(back_half.array, half.array.astype(np.float32))


def test_dicom_file_selects_its_own_series(tmp_path):
    a = Volume(np.full((3, 8, 8), 100, np.int16), spacing=(2.0, 1.0, 1.0))
    write_dicom_series(tmp_path, a)
    b = Volume(np.full((2, 8, 8), 7, np.int16), spacing=(3.0, 1.0, 1.0), origin=(50.0, 0.0, 0.0))
    other = tmp_path / "other"
    other.mkdir()
    write_dicom_series(other, b)
    for f in sorted(other.iterdir()):  # a second, smaller series beside the first
        uid = "1.2.826.0.1.3680043.2.1125.1.43"
        image = sitk.ReadImage(str(f))
        image.SetMetaData("0020|000e", uid)
        image.SetMetaData("0008|0018", f"{uid}.{f.stem[-1]}")
        writer = sitk.ImageFileWriter()
        writer.KeepOriginalImageUIDOn()
        writer.SetFileName(str(tmp_path / f"b_{f.name}"))
        writer.Execute(image)
    assert read_volume(tmp_path).shape == (3, 8, 8)  # the folder: the largest series
    assert read_volume(tmp_path / "b_slice001.dcm").shape == (2, 8, 8)


def test_lazy_zarr_stays_a_zarr_array(tmp_path):
    vol = oblique_volume(np.uint16, channels=2)
    path = write_volume(tmp_path / "big.zarr", vol)
    lazy = read_volume(path, lazy=True, all_channels=True)
    assert isinstance(lazy.array, zarr.Array)
    np.testing.assert_array_equal(lazy.array[1, 2], vol.array[1, 2])
    assert_same_geometry(lazy, vol, tol=0)
    np.testing.assert_array_equal(read_volume(path, lazy=True, channel=0).array, vol.array[0])
    with pytest.raises(InputError, match="channel"):
        read_volume(path, lazy=True)


def test_units_are_normalised_across_formats(tmp_path):
    vol = Volume(np.zeros((2, 3, 4), np.uint8), spacing=(0.5, 0.25, 0.25), metadata={"unit": "micrometer"})
    for ext in (".zarr", ".tif", ".ome.zarr"):
        vol = read_volume(write_volume(tmp_path / f"u{ext}", vol))
        assert vol.metadata["unit"] == "µm"
    attrs = zarr.open_group(str(tmp_path / "u.zarr"), mode="r").attrs["multiscales"][0]["axes"]
    assert {a["unit"] for a in attrs} == {"micrometer"}


def test_write_failure_is_a_clear_error_and_keeps_nothing(tmp_path):
    from napari_cnnseg.core.errors import CnnsegError

    blocker = tmp_path / "not_a_folder"
    blocker.write_text("a file where a folder should be")
    for ext in (".nii.gz", ".tif", ".zarr", ".mhd"):
        with pytest.raises(CnnsegError, match="not_a_folder is a file, not a folder"):
            write_volume(blocker / f"out{ext}", oblique_volume())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["not_a_folder"]


def test_dicom_study_folder_with_one_or_several_series(tmp_path):
    vol = Volume(np.full((3, 6, 6), 5, np.int16), spacing=(2.0, 1.0, 1.0))
    series = tmp_path / "patient" / "study" / "series1"
    series.mkdir(parents=True)
    write_dicom_series(series, vol)
    back = read_volume(tmp_path / "patient")  # the only series below is found
    np.testing.assert_array_equal(back.array, vol.array)
    second = tmp_path / "patient" / "study" / "series2"
    second.mkdir()
    write_dicom_series(second, vol)
    with pytest.raises(VolumeReadError, match="2 DICOM series in sub-folders"):
        read_volume(tmp_path / "patient")


def test_same_grid_compares_shape_spacing_origin_and_direction():
    a = Volume(np.zeros((4, 5, 6), np.uint8), spacing=(2.0, 1.0, 1.0), origin=(1.0, 2.0, 3.0))
    assert a.same_grid(a.with_array(np.ones((4, 5, 6), np.float32)))
    assert a.same_grid(a.with_array(np.ones((2, 4, 5, 6), np.float32)))  # channels ignored
    assert not a.same_grid(a.with_array(np.zeros((4, 5, 7))))
    assert not a.same_grid(Volume(a.array, spacing=(2.0, 1.0, 1.1), origin=a.origin))
    assert not a.same_grid(Volume(a.array, spacing=a.spacing, origin=(1.0, 2.0, 3.5)))
    flipped = np.diag([1.0, -1.0, 1.0])
    assert not a.same_grid(Volume(a.array, spacing=a.spacing, origin=a.origin, direction=flipped))


def test_zarr_volume_writer_fills_then_commits_atomically(tmp_path):
    from napari_cnnseg.core.io import ZarrVolumeWriter

    like = oblique_volume(np.float32)
    dest = tmp_path / "probs.ome.zarr"
    data = np.random.default_rng(1).random((2, *like.spatial_shape)).astype(np.float32)
    with ZarrVolumeWriter(dest, like=like, shape=data.shape, dtype="f4", class_names=["a", "b"]) as w:
        assert isinstance(w.array, zarr.Array) and not dest.exists()  # hidden until committed
        for z in range(data.shape[1]):  # filled slab by slab
            w.array[:, z] = data[:, z]
        assert isinstance(w.volume().array, zarr.Array) and w.volume().spacing == like.spacing
        assert w.commit() == dest
    back = read_volume(dest, all_channels=True)
    np.testing.assert_array_equal(back.array, data)
    assert_same_geometry(back, like, tol=0)
    assert back.metadata["class_names"] == ["a", "b"] and back.metadata["unit"] == "mm"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["probs.ome.zarr"]
    # a committed store replaces an existing one; an uncommitted one leaves nothing behind
    with ZarrVolumeWriter(dest, like=like, shape=like.spatial_shape, dtype=np.uint8) as w:
        w.array[...] = 7
        w.commit()
    assert read_volume(dest).array.dtype == np.uint8 and int(read_volume(dest).array.min()) == 7
    with pytest.raises(RuntimeError), ZarrVolumeWriter(tmp_path / "scratch.zarr", like=like,
                                                       shape=like.spatial_shape, dtype="f4"):
        raise RuntimeError("failed while filling")
    with ZarrVolumeWriter(tmp_path / "scratch.zarr", like=like, shape=like.spatial_shape, dtype="f4"):
        pass  # never committed: a scratch store
    assert sorted(p.name for p in tmp_path.iterdir()) == ["probs.ome.zarr"]


def test_zarr_volume_writer_errors(tmp_path):
    from napari_cnnseg.core.errors import CnnsegError
    from napari_cnnseg.core.io import ZarrVolumeWriter

    like = oblique_volume()
    with pytest.raises(InputError, match=r"\.zarr"):
        ZarrVolumeWriter(tmp_path / "x.nii.gz", like=like, shape=like.spatial_shape, dtype="f4")
    with pytest.raises(InputError, match="grid"):
        ZarrVolumeWriter(tmp_path / "x.zarr", like=like, shape=(7, 9, 12), dtype="f4")
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("a file where a folder should be")
    with pytest.raises(CnnsegError, match="cannot create"):
        ZarrVolumeWriter(blocker / "x.zarr", like=like, shape=like.spatial_shape, dtype="f4")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["not_a_folder"]


def test_lazy_zarr_channels_and_singleton_axes_stay_on_disk(tmp_path):
    from napari_cnnseg.core.io._arrays import LazyView

    data = np.arange(2 * 3 * 4 * 5, dtype=np.float32).reshape(1, 2, 3, 4, 5)
    root = zarr.open_group(str(tmp_path / "t.ome.zarr"), mode="w", zarr_format=2)
    root.create_array("0", shape=data.shape, dtype=data.dtype, chunks=(1, 1, 3, 4, 5))[...] = data
    root.attrs["multiscales"] = [{"version": "0.4", "axes": [
        {"name": "t", "type": "time"}, {"name": "c", "type": "channel"},
        *({"name": n, "type": "space", "unit": "micrometer"} for n in "zyx")],
        "datasets": [{"path": "0", "coordinateTransformations": [
            {"type": "scale", "scale": [1.0, 1.0, 2.0, 0.5, 0.5]}]}]}]
    both = read_volume(tmp_path / "t.ome.zarr", lazy=True, all_channels=True)
    assert isinstance(both.array, LazyView) and both.shape == (2, 3, 4, 5)
    assert both.spacing == (2.0, 0.5, 0.5)
    one = read_volume(tmp_path / "t.ome.zarr", lazy=True, channel=-1)
    assert isinstance(one.array, LazyView) and one.shape == (3, 4, 5)
    np.testing.assert_array_equal(np.asarray(one.array), data[0, 1])
    np.testing.assert_array_equal(one.array[1, ::2], data[0, 1, 1, ::2])
    np.testing.assert_array_equal(one.array[..., 2], data[0, 1, :, :, 2])
    np.testing.assert_array_equal(both.array[1][0], data[0, 1, 0])
    np.testing.assert_array_equal(read_volume(tmp_path / "t.ome.zarr", channel=1).array, data[0, 1])
    # a (1, Z, Y, X) store squeezes to a lazy (Z, Y, X) view
    vol = oblique_volume(np.float32, channels=1)
    single = read_volume(write_volume(tmp_path / "c1.zarr", vol), lazy=True)
    assert isinstance(single.array, LazyView) and single.shape == vol.shape[1:]
    np.testing.assert_array_equal(np.asarray(single.array), vol.array[0])


def test_write_volume_with_swapped_or_bad_arguments_says_so(tmp_path):
    vol = Volume(np.zeros((2, 3, 4), np.uint8))
    with pytest.raises(InputError, match="swapped"):
        write_volume(vol, tmp_path / "a.nii.gz")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="file path"):
        write_volume(3, vol)  # type: ignore[arg-type]
    assert not list(tmp_path.iterdir())


def test_4d_tiff_without_axis_names_reads_as_channels_or_says_what_to_do(tmp_path, caplog):
    data = np.arange(3 * 5 * 6 * 7, dtype=np.uint16).reshape(3, 5, 6, 7)
    tifffile.imwrite(tmp_path / "c.tif", data)
    vol = read_volume(tmp_path / "c.tif", all_channels=True)
    assert vol.num_channels == 3
    np.testing.assert_array_equal(np.asarray(vol.array), data)
    assert "no axis names" in caplog.text
    tifffile.imwrite(tmp_path / "t.tif", np.zeros((20, 9, 6, 7), np.uint8))
    with pytest.raises(InputError, match="without axis names"):
        read_volume(tmp_path / "t.tif")
