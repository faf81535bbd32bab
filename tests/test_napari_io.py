"""napari reader / writers / sample data through a real viewer (run under xvfb-run)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_cnnseg._napari_io import (
    GEOMETRY_KEY,
    get_reader,
    layer_to_volume,
    sample_brain_mri,
    sample_phantom,
    volume_to_layer_kwargs,
    write_image,
    write_labels,
)
from napari_cnnseg.core.io import Volume, read_volume, write_volume

PLUGIN = "napari-cnnseg"


def oblique_direction() -> np.ndarray:
    c, s = 0.6, 0.8
    return np.array([[1, 0, 0], [0, c, -s], [0, s, c]]) @ np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])


def oblique(array: np.ndarray, **meta) -> Volume:
    return Volume(array, spacing=(2.5, 0.75, 0.5), origin=(-10.25, 3.5, 100.125),
                  direction=oblique_direction(), metadata=meta)


def assert_same_geometry(a: Volume, b: Volume, tol: float = 1e-6) -> None:
    np.testing.assert_allclose(a.spacing, b.spacing, atol=tol, rtol=0)
    np.testing.assert_allclose(a.origin, b.origin, atol=tol, rtol=0)
    np.testing.assert_allclose(a.direction, b.direction, atol=tol, rtol=0)


# ----------------------------------------------------------------------------- Qt-free hooks


def test_get_reader_accepts_volumes_and_declines_the_rest(tmp_path):
    vol = oblique(np.zeros((3, 4, 5), np.float32))
    for name in ("a.nii.gz", "a.nrrd", "a.mha", "a.tif", "a.zarr"):
        assert callable(get_reader(str(write_volume(tmp_path / name, vol))))
    (tmp_path / "photo.png").write_bytes(b"\x89PNG....")
    (tmp_path / "empty").mkdir()
    for path in (tmp_path / "photo.png", tmp_path / "missing.nii.gz", tmp_path / "empty", 42, None):
        assert get_reader(path if not hasattr(path, "name") else str(path)) is None


def test_reader_accepts_dicom_study_folders(tmp_path):
    from test_io import write_dicom_series

    vol = Volume(np.full((3, 6, 6), 5, np.int16), spacing=(2.0, 1.0, 1.0))
    (tmp_path / "study" / "series").mkdir(parents=True)
    write_dicom_series(tmp_path / "study" / "series", vol)
    reader = get_reader(str(tmp_path / "study"))
    (data, kwargs, kind), = reader(str(tmp_path / "study"))
    assert kind == "image" and data.shape == (3, 6, 6) and kwargs["scale"] == (2.0, 1.0, 1.0)


def test_reader_picks_labels_by_name_and_dtype(tmp_path):
    labels = oblique(np.arange(60, dtype=np.uint8).reshape(3, 4, 5) % 3)
    image = oblique(np.random.default_rng(0).random((3, 4, 5)).astype(np.float32))
    paths = {
        "liver_seg.nii.gz": labels, "brain_mask.nrrd": labels, "scan.nii.gz": labels,
        "probs_label.nii.gz": image,
    }
    expected = {"liver_seg.nii.gz": "labels", "brain_mask.nrrd": "labels", "scan.nii.gz": "image",
                "probs_label.nii.gz": "image"}
    for name, vol in paths.items():
        path = str(write_volume(tmp_path / name, vol))
        (data, kwargs, kind), = get_reader(path)(path)
        assert kind == expected[name], name
        assert kwargs["scale"] == pytest.approx(vol.spacing)
        assert kwargs["translate"] == pytest.approx(vol.origin)
        np.testing.assert_allclose(kwargs["metadata"][GEOMETRY_KEY]["direction"], vol.direction, atol=1e-6)
        assert kwargs["metadata"][GEOMETRY_KEY]["source"] == path


def test_zarr_labels_load_into_memory_images_stay_lazy(tmp_path):
    import zarr

    labels = str(write_volume(tmp_path / "organ_seg.zarr", oblique(np.ones((3, 4, 5), np.uint8))))
    image = str(write_volume(tmp_path / "scan.zarr", oblique(np.ones((3, 4, 5), np.float32))))
    (lab, _, kind), = get_reader(labels)(labels)
    assert kind == "labels" and isinstance(lab, np.ndarray)  # paintable
    (img, _, kind), = get_reader(image)(image)
    assert kind == "image" and isinstance(img, zarr.Array)


def test_multichannel_image_uses_channel_axis(tmp_path):
    path = str(write_volume(tmp_path / "two.zarr", oblique(np.zeros((2, 3, 4, 5), np.uint16))))
    (data, kwargs, kind), = get_reader(path)(path)
    assert data.shape == (2, 3, 4, 5) and kwargs["channel_axis"] == 0 and kind == "image"


def test_layer_round_trip_through_writer_hooks(tmp_path):
    vol = oblique(np.arange(60, dtype=np.int64).reshape(3, 4, 5) % 4, class_names=["a", "b", "c", "d"])
    kwargs = volume_to_layer_kwargs(vol, name="seg")
    for ext in (".nii.gz", ".nrrd", ".mha", ".tif", ".zarr"):
        written = write_labels(str(tmp_path / f"seg{ext}"), vol.array, kwargs)
        back = read_volume(written[0])
        assert back.array.dtype == np.uint8  # napari's int64 labels are stored compactly
        np.testing.assert_array_equal(back.array, vol.array)
        assert_same_geometry(back, vol)
    written = write_image(str(tmp_path / "img.nrrd"), vol.array.astype(np.float32), kwargs)
    assert read_volume(written[0]).array.dtype == np.float32


def test_layer_to_volume_without_recorded_geometry_uses_scale_translate():
    vol = layer_to_volume(np.zeros((3, 4, 5)), {}, scale=(2.0, 1.0, 0.5), translate=(1.0, 2.0, 3.0))
    assert vol.spacing == (2.0, 1.0, 0.5) and vol.origin == (1.0, 2.0, 3.0)
    np.testing.assert_array_equal(vol.direction, np.eye(3))
    # a rescaled layer keeps its direction but takes the new scale
    kwargs = volume_to_layer_kwargs(oblique(np.zeros((3, 4, 5))))
    moved = layer_to_volume(np.zeros((3, 4, 5)), kwargs["metadata"], scale=(1.0, 1.0, 1.0),
                            translate=kwargs["translate"])
    assert moved.spacing == (1.0, 1.0, 1.0)
    np.testing.assert_allclose(moved.direction, oblique_direction())


def test_sample_data_hooks():
    for hook, names in ((sample_phantom, 4), (sample_brain_mri, 2)):
        (img, ikw, ikind), (lab, lkw, lkind) = hook()
        assert (ikind, lkind) == ("image", "labels")
        assert img.shape == lab.shape and img.ndim == 3
        assert ikw["scale"] == lkw["scale"] and ikw["translate"] == lkw["translate"]
        assert len(lkw["metadata"]["class_names"]) == names
        assert int(lab.max()) == names - 1


# ----------------------------------------------------------------------------- through napari


@pytest.mark.gui
def test_open_and_save_through_viewer(make_napari_viewer, tmp_path):
    import napari

    viewer = make_napari_viewer()
    image = oblique(np.random.default_rng(1).random((6, 7, 8)).astype(np.float32))
    labels = oblique((np.arange(6 * 7 * 8).reshape(6, 7, 8) % 3).astype(np.uint8))
    img_path = write_volume(tmp_path / "scan.nii.gz", image)
    lab_path = write_volume(tmp_path / "scan_seg.nrrd", labels)
    [img_layer] = viewer.open(str(img_path), plugin=PLUGIN)
    [lab_layer] = viewer.open(str(lab_path), plugin=PLUGIN)
    assert isinstance(img_layer, napari.layers.Image)
    assert isinstance(lab_layer, napari.layers.Labels)
    np.testing.assert_allclose(img_layer.scale, image.spacing)
    np.testing.assert_allclose(img_layer.translate, image.origin)
    # edit the labels in napari, then save both layers with our writers
    lab_layer.data[0, 0, 0] = 2
    out_lab = tmp_path / "out_seg.mha"
    out_img = tmp_path / "out.tif"
    napari.save_layers(str(out_lab), [lab_layer], plugin=PLUGIN)
    napari.save_layers(str(out_img), [img_layer], plugin=PLUGIN)
    back_lab, back_img = read_volume(out_lab), read_volume(out_img)
    np.testing.assert_array_equal(back_lab.array, lab_layer.data)
    assert back_lab.array[0, 0, 0] == 2
    np.testing.assert_array_equal(back_img.array, image.array)
    assert_same_geometry(back_lab, labels)
    assert_same_geometry(back_img, image)


@pytest.mark.gui
def test_open_sample_through_viewer(make_napari_viewer):
    viewer = make_napari_viewer()
    layers = viewer.open_sample(PLUGIN, "phantom")
    assert [type(layer).__name__ for layer in layers] == ["Image", "Labels"]
    assert tuple(layers[0].scale) == (2.0, 0.5, 0.5)
    brain = viewer.open_sample(PLUGIN, "brain_t1")
    assert GEOMETRY_KEY in brain[0].metadata and brain[1].data.max() == 1
