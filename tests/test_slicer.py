"""3D Slicer CLI module: XML against CTK's schema and SEM rules, argparse <-> XML, install, runs."""

from __future__ import annotations

import copy
import os
import re
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from napari_cnnseg.cli import slicer

XSD = Path(__file__).parent / "data" / "ctkCmdLineModule.xsd"
SHIPPED_XML = slicer.SHIPPED_DIR / "CNNSegment.xml"
LAUNCHER = slicer.SHIPPED_DIR / "CNNSegment.py"
IDENT = re.compile(r"^[_a-zA-Z][_a-zA-Z0-9]*$")
#: image types accepted by Slicer's parser (ModuleDescriptionParser.cxx)
SEM_IMAGE_TYPES = {"scalar", "label", "tensor", "diffusion-weighted", "vector", "signal",
                   "multichannel", "dynamic-contrast-enhanced", "any"}
PROGRESS = re.compile(r"<filter-progress>([^<]*)</filter-progress>")


def _params(root: ET.Element) -> list[ET.Element]:
    return [p for group in root.findall("parameters") for p in group
            if p.tag not in ("label", "description")]


@pytest.fixture(scope="module")
def xml_root() -> ET.Element:
    return ET.fromstring(slicer.xml_text().encode())


@pytest.fixture(scope="module")
def schema():
    etree = pytest.importorskip("lxml.etree")
    return etree.XMLSchema(etree.parse(str(XSD)))


# ------------------------------------------------------------------------------- the XML
def test_shipped_xml_is_the_generated_one():
    assert SHIPPED_XML.read_text(encoding="utf-8") == slicer.xml_text(), (
        "slicer_cli/CNNSegment.xml is stale: regenerate it with "
        "`python -m napari_cnnseg.cli.slicer --xml > src/napari_cnnseg/slicer_cli/CNNSegment.xml`"
    )


def test_xml_validates_against_ctk_schema(schema):
    from lxml import etree

    doc = etree.fromstring(slicer.xml_text().encode())
    assert schema.validate(doc), schema.error_log


def _mutate_exec_index(root):
    idx = ET.Element("index")
    idx.text = "0"
    root.insert(0, idx)


def _mutate_step_removed(root):
    for c in root.iter("constraints"):
        c.remove(c.find("step"))
        return


def _mutate_label_first(root):
    group = root.find("parameters")
    label = group.find("label")
    group.remove(label)
    group.insert(1, label)


def _mutate_reference(root):
    root.find("parameters/image[@type='label']").set("reference", "inputVolume")


def _mutate_labelmap_type(root):
    root.find("parameters/image[@type='label']").set("type", "labelmap")


def _mutate_param_order(root):
    p = _params(root)[2]  # a flagged image: move <label> before <description>
    label = p.find("label")
    p.remove(label)
    p.insert(2, label)


def _mutate_bad_longflag(root):
    root.find(".//longflag").text = "tile-size"


@pytest.mark.parametrize("mutate", [
    _mutate_exec_index, _mutate_step_removed, _mutate_label_first, _mutate_reference,
    _mutate_labelmap_type, _mutate_param_order, _mutate_bad_longflag,
])
def test_schema_rejects_broken_variants(schema, xml_root, mutate):
    """Negative controls: the schema gate must be able to fail."""
    from lxml import etree

    root = copy.deepcopy(xml_root)
    mutate(root)
    assert not schema.validate(etree.fromstring(ET.tostring(root)))


def test_sem_rules(xml_root):
    """Rules of Slicer's own parser that the XSD does not check."""
    assert xml_root.findtext("category") == "Segmentation"
    params = _params(xml_root)
    names = [p.findtext("name") for p in params]
    flags = [p.findtext("longflag") for p in params if p.find("longflag") is not None]
    assert len(set(names)) == len(names) and len(set(flags)) == len(flags)
    assert all(IDENT.match(n) for n in names)
    assert all(IDENT.match(f) for f in flags), "longflags are identifiers without dashes"
    indices = []
    for p in params:
        has_index = p.find("index") is not None
        assert has_index != (p.find("longflag") is not None or p.find("flag") is not None)
        if has_index:
            indices.append(int(p.findtext("index")))
        if p.tag == "image":
            assert p.get("type", "scalar") in SEM_IMAGE_TYPES
            assert p.get("fileExtensions", ".nrrd").split(",")[0] == ".nrrd"
        if p.tag == "boolean":
            assert p.findtext("default") == "false", "Slicer passes a bare flag only when true"
        if p.find("element") is not None:
            assert p.findtext("default") in [e.text for e in p.findall("element")]
        if p.find("constraints") is not None:
            lo, hi = float(p.findtext("constraints/minimum")), float(p.findtext("constraints/maximum"))
            assert lo <= float(p.findtext("default")) <= hi
    assert sorted(indices) == list(range(len(indices)))
    by_name = {p.findtext("name"): p for p in params}
    assert by_name["inputVolume"].findtext("index") == "0"
    assert by_name["outputLabelmap"].findtext("index") == "1"
    assert by_name["outputLabelmap"].get("type") == "label"
    assert by_name["outputLabelmap"].findtext("channel") == "output"
    assert by_name["scribbles"].get("type") == "label"
    assert [e.text for e in by_name["device"].findall("element")] == ["auto", "cpu", "cuda"]
    assert by_name["tileSize"].tag == "integer-vector"
    assert by_name["overlap"].find("constraints/step") is not None


def test_model_enumeration_lists_the_shipped_models(xml_root):
    shipped = slicer.shipped_model_names()
    enum = [e.text for e in xml_root.findall(".//string-enumeration[name='model']/element")]
    assert enum == (shipped or [slicer.NO_SHIPPED_MODEL])
    try:
        from napari_cnnseg.core.models import list_pretrained
    except ImportError:
        pytest.skip("core.models is not available yet")
    assert sorted(list_pretrained()) == shipped


def test_docs_list_every_parameter():
    doc = (Path(__file__).parents[1] / "docs" / "slicer.md").read_text(encoding="utf-8")
    for p in (p for g in slicer._groups() for p in g.params):
        assert f"| {p.label} |" in doc, f"docs/slicer.md lacks parameter {p.label!r}"
        if p.longflag:
            assert f"`--{p.longflag}`" in doc


# ------------------------------------------------------------------------ --xml as Slicer runs it
@pytest.mark.parametrize("entry", ["module", "launcher"])
def test_xml_flag_prints_only_the_xml_quickly(entry):
    cmd = ([sys.executable, "-m", "napari_cnnseg.cli.slicer", "--xml"] if entry == "module"
           else [sys.executable, str(LAUNCHER), "--xml"])
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=slicer.SHIPPED_DIR, timeout=30)
    elapsed = time.perf_counter() - t0
    assert proc.returncode == 0
    assert proc.stderr == ""
    assert proc.stdout == SHIPPED_XML.read_text(encoding="utf-8")
    assert elapsed < 2.0, f"--xml took {elapsed:.2f} s; Slicer gives up after 5 s"


def test_xml_does_not_import_torch():
    code = ("import sys, io, contextlib\nfrom napari_cnnseg.cli.slicer import main\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n    main(['--xml'])\n"
            "print(sorted(m for m in ('torch', 'numpy', 'SimpleITK') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# ------------------------------------------------------------------------- argparse <-> XML
def test_argparse_matches_xml(xml_root):
    parser = slicer.build_parser()
    actions = {a.dest: a for a in parser._actions}
    positionals = [a.dest for a in parser._actions if not a.option_strings]
    indexed = sorted((int(p.findtext("index")), p.findtext("name"))
                     for p in _params(xml_root) if p.find("index") is not None)
    assert positionals == [name for _, name in indexed]
    for p in _params(xml_root):
        name = p.findtext("name")
        action = actions[name]
        if p.find("longflag") is not None:
            assert action.option_strings == ["--" + p.findtext("longflag")]
        if p.tag == "boolean":
            assert action.nargs == 0 and action.const is True and action.default is False
            continue
        if p.find("element") is not None:
            assert list(action.choices) == [e.text for e in p.findall("element")]
        default = p.findtext("default")
        if default is None:
            assert action.default is None
        else:
            assert action.default == action.type(default)
        expected_type = {"integer": int, "float": float}.get(p.tag)
        if expected_type is not None:
            assert action.type is expected_type


def test_parses_a_slicer_command_line():
    """Exactly what Slicer builds: flags (bare booleans when true), then index params."""
    parser = slicer.build_parser()
    base = ["--model_file", "m.safetensors", "--device", "cuda", "--precision", "bf16",
            "--overlap", "0.25", "--batch_size", "2", "--probability_class", "1",
            "--finetune_seconds", "30"]
    args = parser.parse_args(base + ["--tile_size", "64,48,32", "--largest_component",
                                     "--returnparameterfile", "/tmp/x.params", "in.nrrd", "out.nrrd"])
    assert (args.inputVolume, args.outputLabelmap) == ("in.nrrd", "out.nrrd")
    assert args.largestComponent is True and args.device == "cuda" and args.precision == "bf16"
    assert args.tileSize == (64, 48, 32) and args.overlap == 0.25 and args.batchSize == 2
    args = parser.parse_args(base + ["in.nrrd", "out.nrrd"])
    assert args.largestComponent is False and args.tileSize is None and args.scribbles is None
    assert parser.parse_args(["--tile_size", "96", "a", "b"]).tileSize == (96, 96, 96)


@pytest.mark.parametrize("bad", [
    ["--device", "gpu"], ["--tile_size", "64,64"], ["--tile_size", "a,b,c"],
    ["--overlap", "0.95"], ["--batch_size", "-1"], ["--largest_component", "true"],
])
def test_bad_options_exit_2_with_a_message(bad, capsys):
    assert slicer.main(bad + ["in.nrrd", "out.nrrd"]) == 2
    captured = capsys.readouterr()
    assert "error" in captured.err and captured.out == ""


def test_missing_input_is_a_clear_error(tmp_path, capsys):
    code = slicer.main([str(tmp_path / "nope.nrrd"), str(tmp_path / "out.nrrd")])
    err = capsys.readouterr().err
    assert code == 2 and "nope.nrrd" in err and "Traceback" not in err
    assert not (tmp_path / "out.nrrd").exists()


# ----------------------------------------------------------------------------- progress lines
def _progress_values(text: str) -> list[float]:
    return [float(v) for v in PROGRESS.findall(text)]


def test_progress_protocol_is_monotone_from_0_to_1():
    import io

    out = io.StringIO()
    prog = slicer.SlicerProgress([("read", 1), ("segment", 8), ("write", 1)], out)
    prog.begin("start")
    prog(1, 1)
    prog.stage("segment", "Segmenting")
    for i in range(0, 101, 7):
        prog(i, 100)
    prog(3, 100)  # engines may report a smaller value again: never goes back
    prog.stage("write", "Writing")
    prog(1, 1)
    prog.end()
    text = out.getvalue()
    values = _progress_values(text)
    assert values[0] == 0.0 and values[-1] == 1.0
    assert np.all(np.diff(values) >= 0)
    assert text.index("<filter-start>") < text.index("<filter-progress>")
    assert text.rstrip().endswith("</filter-end>")
    assert "<filter-name>CNNSegment</filter-name>" in text


# ------------------------------------------------------------------------- helpers of the run
def _volume(array, origin=(1.0, -2.0, 3.0)):
    from napari_cnnseg.core.io import Volume

    c, s = np.cos(0.3), np.sin(0.3)
    direction = np.array([[1.0, 0, 0], [0, c, -s], [0, s, c]])
    return Volume(array, spacing=(2.0, 0.5, 0.75), origin=origin, direction=direction)


def test_scribbles_on_another_grid_are_resampled_onto_the_image():
    rng = np.random.default_rng(0)
    image = _volume(np.zeros((10, 14, 12), np.float32))
    full = rng.integers(0, 4, size=image.spatial_shape)
    box = (slice(2, 8), slice(3, 12), slice(1, 9))
    crop = _volume(full[box], origin=tuple(image.index_to_physical((2, 3, 1))))
    on_grid = slicer.scribbles_on_grid(crop, image)
    expected = np.zeros_like(full)
    expected[box] = full[box]
    np.testing.assert_array_equal(on_grid, expected)
    np.testing.assert_array_equal(slicer.scribbles_on_grid(_volume(full), image), full)


def test_largest_component_keeps_one_blob_per_class():
    labels = np.zeros((12, 12, 12), np.uint8)
    labels[1:6, 1:6, 1:6] = 1
    labels[8:10, 8:10, 8:10] = 1  # smaller blob of class 1
    labels[8:11, 1:4, 1:4] = 2
    out = slicer.keep_largest_components(labels)
    assert out.dtype == labels.dtype
    assert (out == 1).sum() == 125 and (out == 2).sum() == 27
    np.testing.assert_array_equal(slicer.keep_largest_components(out), out)


def test_spacing_warning_only_when_voxels_differ(caplog):
    with caplog.at_level("WARNING", logger=slicer.__name__):
        slicer._warn_spacing([3.0, 2.0, 2.0], (3.0, 2.0, 2.0))
        slicer._warn_spacing(None, (1.0, 1.0, 1.0))
        assert caplog.records == []
        slicer._warn_spacing([3.0, 2.0, 2.0], (1.0, 1.0, 1.0))
        assert len(caplog.records) == 1 and "fine-tune" in caplog.records[0].getMessage()


# ------------------------------------------------------------------------------------ install
@pytest.mark.parametrize("kind", ["python-real", "this-python"])
def test_slicer_install_writes_a_module_folder(tmp_path, kind, capsys):
    from napari_cnnseg.cli import main as cnnseg_main

    folder = tmp_path / "slicer modules"
    assert cnnseg_main(["slicer-install", str(folder), "--launcher", kind]) == 0
    out = capsys.readouterr().out
    assert str(folder) in out and "module paths" in out
    names = sorted(p.name for p in folder.iterdir())
    launcher = folder / ("CNNSegment.py" if kind == "python-real" else
                         ("CNNSegment.bat" if os.name == "nt" else "CNNSegment"))
    assert names == sorted([launcher.name, "CNNSegment.xml"])
    assert (folder / "CNNSegment.xml").read_text(encoding="utf-8") == slicer.xml_text()
    if kind == "python-real":
        assert "PythonSlicer -m pip install napari-cnnseg" in out
        assert launcher.read_text(encoding="utf-8") == LAUNCHER.read_text(encoding="utf-8")
        assert launcher.read_text(encoding="utf-8").splitlines()[0] == "#!/usr/bin/env python-real"
    elif os.name != "nt":
        assert os.access(launcher, os.X_OK) and "." not in launcher.name
        assert launcher.read_text(encoding="utf-8").splitlines()[0] == f"#!{sys.executable}"
        proc = subprocess.run([str(launcher), "--xml"], capture_output=True, text=True, timeout=30)
        assert proc.returncode == 0 and proc.stderr == "" and proc.stdout == slicer.xml_text()


def test_install_replaces_the_other_launcher_kind(tmp_path):
    slicer.install(tmp_path, "this-python")
    slicer.install(tmp_path, "python-real")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["CNNSegment.py", "CNNSegment.xml"]


def test_install_into_a_file_or_a_busy_folder(tmp_path, capsys):
    from napari_cnnseg.cli import main as cnnseg_main

    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    assert cnnseg_main(["slicer-install", str(a_file)]) == 2
    assert "is a file" in capsys.readouterr().err
    assert cnnseg_main(["slicer-install", str(tmp_path)]) == 0
    assert "file.txt" in capsys.readouterr().out  # warned: Slicer probes every file there


def test_launcher_without_a_shebang_path_space(tmp_path):
    name, text = slicer.launcher_text("this-python", python="/opt/My Python/bin/python")
    if os.name != "nt":
        assert text.startswith("#!/bin/sh\n") and '"/opt/My Python/bin/python"' in text


def test_shipped_folder_holds_only_the_module():
    """Any other .py in a Slicer module path would be loaded as a scripted module."""
    files = sorted(p.name for p in slicer.SHIPPED_DIR.iterdir() if p.name != "__pycache__")
    assert files == ["CNNSegment.py", "CNNSegment.xml"]
    assert LAUNCHER.read_text(encoding="utf-8").startswith("#!/usr/bin/env python-real\n")


# ------------------------------------------------------------------------ end to end (engine)
def _engine():
    try:
        from napari_cnnseg.core import models, pipeline, training  # noqa: F401
    except ImportError as exc:
        pytest.skip(f"engine not available yet ({exc})")
    return models


def _tiny_checkpoint(tmp_path: Path, num_classes: int = 3) -> Path:
    models = _engine()
    net = models.build_model("unet", in_channels=1, num_classes=num_classes, depth=1,
                             base_width=4, padding="same")
    path = tmp_path / "tiny.safetensors"
    models.save_model(path, net, class_names=["background"] + [f"c{k}" for k in
                                                               range(1, num_classes)])
    return path


def _sample_nrrd(tmp_path: Path) -> tuple[Path, np.ndarray]:
    from napari_cnnseg.core.io import write_volume
    from napari_cnnseg.core.sample_data import make_phantom

    image, labels = make_phantom(shape=(12, 24, 20), spacing=(2.0, 0.5, 0.5), seed=0)
    c, s = np.cos(0.2), np.sin(0.2)
    oblique = np.array([[c, 0.0, -s], [0.0, 1.0, 0.0], [s, 0.0, c]])
    vol = image.with_array(image.array)
    vol.origin, vol.direction = (-10.5, 20.25, 3.0), oblique
    path = tmp_path / "123_vtkMRMLScalarVolumeNodeB.nrrd"
    write_volume(path, vol)
    return path, np.asarray(labels.array)


def _assert_same_geometry(a: Path, b: Path) -> None:
    import SimpleITK as sitk

    ia, ib = sitk.ReadImage(str(a)), sitk.ReadImage(str(b))
    assert ia.GetSize() == ib.GetSize()
    assert ia.GetSpacing() == ib.GetSpacing()
    assert ia.GetOrigin() == ib.GetOrigin()
    assert ia.GetDirection() == ib.GetDirection()


@pytest.mark.slow
def test_slicer_style_run_writes_a_label_map_on_the_input_geometry(tmp_path):
    import SimpleITK as sitk

    ckpt = _tiny_checkpoint(tmp_path)
    src, _ = _sample_nrrd(tmp_path)
    out = tmp_path / "123_vtkMRMLLabelMapVolumeNodeC.nrrd"
    cmd = [sys.executable, str(LAUNCHER), "--probability_class", "1", "--model",
           slicer.build_parser().get_default("model"), "--model_file", str(ckpt),
           "--finetune_seconds", "30", "--device", "cpu", "--precision", "auto",
           "--overlap", "0.5", "--batch_size", "0", str(src), str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "2"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    values = _progress_values(proc.stdout)
    assert values[0] == 0.0 and values[-1] == 1.0 and len(values) >= 4
    assert np.all(np.diff(values) >= 0)
    comments = re.findall(r"<filter-comment>([^<]*)</filter-comment>", proc.stdout)
    assert [c.split()[0] for c in comments[1:]] == ["Segmenting", "Writing"]
    _assert_same_geometry(src, out)
    labels = sitk.ReadImage(str(out))
    assert labels.GetPixelID() in (sitk.sitkUInt8, sitk.sitkUInt16, sitk.sitkInt16, sitk.sitkInt32)
    arr = sitk.GetArrayFromImage(labels)
    assert arr.min() >= 0 and arr.max() <= 2


@pytest.mark.slow
def test_finetune_run_with_scribbles_probability_and_saved_model(tmp_path, capsys, device,
                                                                  monkeypatch):
    from napari_cnnseg.core import training
    from napari_cnnseg.core.io import read_volume, write_volume

    seen = []
    real = training.finetune

    def spy(model, image, scribbles, **kw):
        seen.append((kw.get("lr"), kw.get("prior")))
        return real(model, image, scribbles, **kw)

    monkeypatch.setattr(training, "finetune", spy)

    ckpt = _tiny_checkpoint(tmp_path, num_classes=4)
    src, truth = _sample_nrrd(tmp_path)
    image = read_volume(src)
    scribbles = np.zeros(truth.shape, np.uint8)
    scribbles[::3, ::4, ::4] = truth[::3, ::4, ::4] + 1  # sparse strokes: value k = class k-1
    scr_path = tmp_path / "scribbles.nrrd"
    write_volume(scr_path, image.with_array(scribbles))
    out, prob = tmp_path / "labels.nrrd", tmp_path / "prob.nrrd"
    new_model = tmp_path / "tuned.safetensors"
    code = slicer.main([
        "--model_file", str(ckpt), "--scribbles", str(scr_path), "--finetune_seconds", "1",
        "--output_model", str(new_model), "--probability", str(prob), "--probability_class", "2",
        "--device", device, "--largest_component", str(src), str(out),
    ])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert captured.err == ""
    values = _progress_values(captured.out)
    assert values[0] == 0.0 and values[-1] == 1.0
    assert np.all(np.diff(values) >= 0)
    assert "Fine-tuning" in captured.out
    _assert_same_geometry(src, out)
    _assert_same_geometry(src, prob)
    p = read_volume(prob).array
    assert p.dtype == np.float32 and 0.0 <= p.min() and p.max() <= 1.0
    from napari_cnnseg.core.models import load_model

    tuned = load_model(new_model)
    assert tuned.num_classes == 4 and tuned.meta["class_names"][0] == "background"
    assert "fine-tuned in 3D Slicer" in tuned.meta["description"]
    trained = training.recommended_settings(False)  # a trained checkpoint is a trained start
    assert seen == [(trained["lr"], trained["prior"])]


def test_real_t1_crop_keeps_its_permuted_geometry(tmp_path, capsys):
    """Real int16 MRI with a permuted (coronal) direction, as Slicer would write it."""
    from napari_cnnseg.core.io import read_volume, write_volume
    from napari_cnnseg.core.sample_data import load_brain_t1

    ckpt = _tiny_checkpoint(tmp_path, num_classes=2)
    image, _ = load_brain_t1()
    crop = image.with_array(np.ascontiguousarray(image.array[20:36, 40:72, 48:80]))
    src, out = tmp_path / "t1.nrrd", tmp_path / "t1_labels.nrrd"
    write_volume(src, crop)
    assert slicer.main(["--model_file", str(ckpt), "--device", "cpu", str(src), str(out)]) == 0
    assert capsys.readouterr().err == ""
    _assert_same_geometry(src, out)
    assert set(np.unique(read_volume(out).array)) <= {0, 1}


@pytest.mark.slow
def test_shipped_model_by_name_gives_what_the_engine_gives(tmp_path, capsys):
    """The Slicer front end adds and loses nothing: same labels as segment_volume in Python."""
    _engine()
    names = slicer.shipped_model_names()
    if not names:
        pytest.skip("no shipped model in core/models/pretrained yet")
    from napari_cnnseg.core.io import read_volume, write_volume
    from napari_cnnseg.core.models import resolve_model
    from napari_cnnseg.core.pipeline import segment_volume
    from napari_cnnseg.core.sample_data import load_brain_t1

    name = "brain-t1-unet" if "brain-t1-unet" in names else names[0]
    image, _ = load_brain_t1()
    src, out = tmp_path / "t1.nrrd", tmp_path / "labels.nrrd"
    write_volume(src, image.with_array(np.ascontiguousarray(image.array[24:40, 32:80, 40:88])))
    argv = ["--model", name, "--device", "cpu", "--precision", "fp32"]
    assert slicer.main(argv + [str(src), str(out)]) == 0
    assert capsys.readouterr().err == ""
    _assert_same_geometry(src, out)
    expected = segment_volume(read_volume(src), resolve_model(name), probabilities=False,
                              device="cpu", precision="fp32", overlap=0.25).labels.array
    np.testing.assert_array_equal(read_volume(out).array, expected)


@pytest.mark.parametrize("case", ["scribble_values", "probability_class", "empty_scribbles",
                                  "fp16_on_cpu"])
def test_bad_run_inputs_fail_before_any_output(tmp_path, capsys, case):
    from napari_cnnseg.core.io import read_volume, write_volume

    ckpt = _tiny_checkpoint(tmp_path, num_classes=3)
    src, truth = _sample_nrrd(tmp_path)
    out = tmp_path / "labels.nrrd"
    argv = ["--model_file", str(ckpt), "--device", "cpu"]
    if case == "probability_class":
        argv += ["--probability", str(tmp_path / "p.nrrd"), "--probability_class", "3"]
    elif case == "fp16_on_cpu":
        argv += ["--precision", "fp16"]
    else:
        scribbles = np.zeros(truth.shape, np.uint8)
        if case == "scribble_values":
            scribbles[0, 0, 0] = 7
        scr = tmp_path / "s.nrrd"
        write_volume(scr, read_volume(src).with_array(scribbles))
        argv += ["--scribbles", str(scr)]
    assert slicer.main(argv + [str(src), str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cnnseg-slicer: error:") and "Traceback" not in err
    assert not out.exists()
