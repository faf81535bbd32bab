"""napari reader / writers / sample data through a real viewer (run under xvfb-run)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_cnnseg._napari_io import (
    CT_WINDOWS,
    GEOMETRY_KEY,
    ROLE_KEY,
    ct_window,
    default_output_path,
    find_layer,
    get_reader,
    layer_role,
    layer_to_volume,
    layer_volume,
    role_metadata,
    sample_brain_mri,
    sample_phantom,
    unwrap,
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


def _layer(data, name="scan", **meta):
    """A stand-in for a napari Image layer (the conversions use only public attributes)."""
    from types import SimpleNamespace

    return SimpleNamespace(name=name, data=data, metadata=meta, scale=(2.0, 1.0, 0.5),
                           translate=(0.0, 1.0, 2.0), rgb=False, multiscale=False)


def _ct(fraction_lung: float) -> np.ndarray:
    """A (16, 32, 32) int16 HU volume: air -1024, tissue 40, bone 1000, some lung at -800."""
    rng = np.random.default_rng(0)
    vol = np.full((16, 32, 32), 40, np.int16)
    vol[:, :, :2] = -1024
    vol[:, :2, :] = 1000
    vol[rng.random(vol.shape) < fraction_lung] = -800
    return vol


def test_ct_window_rule():
    assert ct_window(_ct(0.3)) == ("lung", CT_WINDOWS["lung"])
    assert ct_window(_ct(0.0)) == ("soft tissue", CT_WINDOWS["soft tissue"])
    mri = np.random.default_rng(0).integers(0, 1500, (16, 32, 32)).astype(np.int16)
    assert ct_window(mri) is None  # no HU range, no modality: leave napari's auto contrast
    assert ct_window(mri, {"header": {"0008|0060": "CT"}}) is not None  # modality wins
    assert ct_window(_ct(0.3), {"modality": "MR"}) is None
    assert ct_window(np.full((4, 4, 4), np.nan, np.float32)) is None


def test_reader_opens_ct_with_a_window(tmp_path):
    path = str(write_volume(tmp_path / "chest.nrrd", Volume(_ct(0.3), spacing=(5.0, 0.6, 0.6))))
    (_, kwargs, kind), = get_reader(path)(path)
    assert kind == "image" and kwargs["contrast_limits"] == CT_WINDOWS["lung"]
    assert kwargs["metadata"]["cnnseg_window"] == "lung"
    path = str(write_volume(tmp_path / "t1.nii.gz", Volume(np.ones((4, 5, 6), np.float32))))
    (_, kwargs, _), = get_reader(path)(path)
    assert "contrast_limits" not in kwargs


def test_default_output_path_beside_the_source_in_its_format(tmp_path, monkeypatch):
    src = tmp_path / "lung1_image.nrrd"
    assert default_output_path(str(src), "lung1_image", "labels") == str(
        tmp_path / "lung1_image_labels.nrrd")
    assert default_output_path(str(tmp_path / "a.nii.gz"), "a", "probabilities") == str(
        tmp_path / "a_probabilities.nii.gz")
    assert default_output_path(str(src), "x", "model", ".safetensors").endswith(
        "lung1_image_model.safetensors")
    assert default_output_path(str(tmp_path / "series"), "s", "labels").endswith(
        "series_labels.nii.gz")  # a DICOM folder: beside it, NIfTI
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    out = default_output_path(None, "brain T1/crop", "labels")
    assert out == str(tmp_path / "home" / "brain_T1_crop_labels.nii.gz")


def test_layers_are_found_by_role_key_through_proxies():
    wrapt = pytest.importorskip("wrapt")  # what napari's PublicOnlyProxy is built on

    image = _layer(np.zeros((3, 4, 5), np.float32), spacing=1)
    labels = _layer(np.zeros((3, 4, 5), np.uint8), name="renamed by the user",
                    **role_metadata(image, "labels"))
    prob1 = _layer(None, name="scan p(a)", **role_metadata(image, "probability", class_index=1))
    other = _layer(None, name="scan labels", **role_metadata(_layer(None, name="b"), "labels"))
    layers = [wrapt.ObjectProxy(x) for x in (image, other, labels, prob1)]  # as napari hands them
    assert find_layer(layers, "labels", "scan") is labels  # unwrapped, whatever its name
    assert find_layer(layers, "probability", "scan", class_index=1) is prob1
    assert find_layer(layers, "probability", "scan", class_index=0) is None
    assert find_layer(layers, "scribbles", "scan") is None
    assert layer_role(layers[0]) == {} and layer_role(layers[2])["role"] == "labels"
    assert unwrap(layers[2]) is labels and unwrap(labels) is labels
    assert role_metadata(image, "labels")["spacing"] == 1  # the image's metadata is kept
    assert ROLE_KEY not in image.metadata


def test_layer_volume_conversion_and_refusals():
    from napari_cnnseg.core.errors import InputError

    vol = layer_volume(_layer(np.zeros((3, 4, 5), np.float32)))
    assert vol.spacing == (2.0, 1.0, 0.5) and vol.origin == (0.0, 1.0, 2.0)
    two = layer_volume(_layer(np.zeros((2, 3, 4, 5), np.float32)), channel=1)
    assert two.array.shape == (3, 4, 5)
    assert layer_volume(_layer(np.zeros((2, 3, 4, 5)))).array.shape == (2, 3, 4, 5)
    for data, channel, words in ((np.zeros((4, 5)), None, "2D"),
                                 (np.zeros((1, 2, 3, 4, 5)), None, "expected"),
                                 (np.zeros((2, 3, 4, 5)), 2, "channel 2")):
        with pytest.raises(InputError, match=words):
            layer_volume(_layer(data), channel)
    rgb = _layer(np.zeros((3, 4, 5)))
    rgb.rgb = True
    with pytest.raises(InputError, match="RGB"):
        layer_volume(rgb)


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
