"""``python -m napari_cnnseg.demo --out DIR [--headless]``: the README demo on bundled data.

1. loads the bundled real T1 brain MRI crop and its brain mask (``core.sample_data``);
2. segments it with the shipped model (or, if none is shipped, with a small U-Net fine-tuned
   for a few seconds on thin strokes drawn from the mask, as a user would paint them);
3. writes ``labels.nii.gz``, ``probabilities.nii.gz`` (K, Z, Y, X) and ``uncertainty.nii.gz``
   on the source geometry into DIR (through ``core.io``) and prints the Dice against the mask;
4. opens napari with the image, the result layers, the strokes and both docks, and saves
   screenshots into DIR (``demo_2d.png``: a slice with the response map over the image;
   ``demo_3d.png``: a 3D rendering).

With ``--headless`` (run it under ``xvfb-run``) the viewer is closed after the screenshots and
the command prints where the files are; otherwise the viewer stays open.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ._session import Session

logger = logging.getLogger(__name__)

#: camera (rx, ry, rz) in degrees of the 3D screenshot
CAMERA_3D = (-25.0, 35.0, 150.0)


def demo_strokes(mask: np.ndarray, slices: Sequence[int] | None = None) -> np.ndarray:
    """Thin strokes a user could paint: a few rows of each class on five axial slices.

    Args:
        mask: (Z, Y, X) class indices (0 = background).
        slices: z indices to paint; default five slices spread over the object.

    Returns:
        (Z, Y, X) uint8 scribbles (value k = class k-1).
    """
    scr = np.zeros(mask.shape, dtype=np.uint8)
    zs = np.nonzero(mask.reshape(mask.shape[0], -1).any(1))[0]
    if slices is None:
        lo, hi = (int(zs.min()), int(zs.max())) if zs.size else (0, mask.shape[0] - 1)
        slices = [lo + (hi - lo) * f // 6 for f in (1, 2, 3, 4, 5)]
    for z in slices:
        for c in np.unique(mask[z]):
            region = mask[z] == c
            ys = np.nonzero(region.any(1))[0]
            for y in ys[len(ys) // 5 :: max(1, len(ys) // 4)][:3]:
                xs = np.nonzero(region[y])[0]
                scr[z, y, xs[len(xs) // 4 : 3 * len(xs) // 4 : 2]] = c + 1
    return scr


def prepare_session(
    out: Path, *, seconds: float = 30.0, model: str | None = None
) -> tuple[Session, Any, np.ndarray | None, dict[str, Any]]:
    """Load the sample, choose/fine-tune the model, segment, write results into ``out``.

    Returns:
        ``(session, truth_volume, strokes, info)``; info holds file paths and numbers.
    """
    from .core.io import write_volume
    from .core.metrics import dice_per_class
    from .core.models import list_pretrained
    from .core.sample_data import load_brain_t1

    out.mkdir(parents=True, exist_ok=True)
    image, truth = load_brain_t1()
    session = Session(autosave_folder=out / "autosave")
    session.set_image(image, name="brain_t1")
    info: dict[str, Any] = {}
    shipped = list_pretrained()
    if model is None and shipped:
        model = next((n for n in shipped if "brain" in n.lower()), shipped[0])
    strokes = demo_strokes(np.asarray(truth.array))
    session.autosave_scribbles(strokes)  # the Fine-tune dock restores them: ready to train
    if model is not None:
        session.load_model(model)
        info["model"] = model
    else:
        from .core.models.registry import NEW_TASK_FAMILY

        # no shipped model: the net and recipe the Fine-tune dock starts a new structure with
        session.new_model(NEW_TASK_FAMILY,
                          list(truth.metadata.get("class_names", ["background", "brain"])))
        t0 = time.perf_counter()
        outcome = session.finetune(strokes, seconds=seconds, refresh=False)
        info["model"] = f"new feature net fine-tuned {len(outcome.losses)} steps on the demo strokes"
        info["finetune_s"] = round(time.perf_counter() - t0, 1)
        info["painted_voxels"] = int(np.count_nonzero(strokes))
    t0 = time.perf_counter()
    res = session.segment()
    info["segment_s"] = round(time.perf_counter() - t0, 1)
    dice = dice_per_class(res.labels, np.asarray(truth.array), len(session.class_names))
    info["dice"] = {session.class_names[k]: round(float(v), 3) for k, v in dice.items()}
    meta = {"class_names": session.class_names}
    info["files"] = [
        str(write_volume(out / "labels.nii.gz", image.with_array(res.labels, **meta))),
        str(write_volume(out / "probabilities.nii.gz", image.with_array(res.probabilities, **meta))),
        str(write_volume(out / "uncertainty.nii.gz", image.with_array(res.uncertainty))),
    ]
    return session, truth, strokes, info


def open_viewer(session: Session, *, show: bool = True) -> tuple[Any, dict[str, Any]]:
    """napari viewer with the image, result layers, strokes and both docks on ``session``."""
    import napari

    from ._napari_io import volume_to_layer_kwargs
    from ._widgets._shared import controller_for, show_results

    viewer = napari.Viewer(title="napari-cnnseg demo", show=show)
    ctrl = controller_for(viewer)
    ctrl.session = session  # the docks pick up this session when they are created
    kwargs = volume_to_layer_kwargs(session.volume, name=session.image_name)
    image_layer = viewer.add_image(session.volume.array, **kwargs)
    seg_dock, seg = viewer.window.add_plugin_dock_widget("napari-cnnseg", "Segment")
    fin_dock, fin = viewer.window.add_plugin_dock_widget("napari-cnnseg", "Fine-tune")
    seg.set_image_layer(image_layer)
    seg.ctrl.changed("model")
    layers = show_results(viewer, image_layer, session)
    scribbles = fin.add_scribbles_layer()  # restores the demo strokes from the autosave
    layers.update(image=image_layer, scribbles=scribbles, segment=seg, finetune=fin,
                  docks=[seg_dock, fin_dock])
    return viewer, layers


def _camera(viewer):
    """The viewer's camera: ``viewer.scene.camera`` on napari >= 0.9, ``viewer.camera`` before."""
    scene = getattr(viewer, "scene", None)
    return scene.camera if scene is not None and hasattr(scene, "camera") else viewer.camera


def take_screenshots(viewer: Any, layers: dict[str, Any], out: Path, prefix: str = "demo") -> list[Path]:
    """Save a 2D slice view (response map over the image) and a 3D rendering into ``out``."""
    from qtpy.QtWidgets import QApplication

    out.mkdir(parents=True, exist_ok=True)
    image = layers["image"]
    labels = layers["labels"]
    fg = layers["probabilities"][1:]
    from qtpy.QtCore import Qt

    window = viewer.window._qt_window
    window.resize(1280, 960)
    window.resizeDocks(layers["docks"], [400] * len(layers["docks"]), Qt.Orientation.Horizontal)
    QApplication.processEvents()
    seg_h = layers["segment"].sizeHint().height() + 30
    window.resizeDocks(layers["docks"], [seg_h, 960 - seg_h], Qt.Orientation.Vertical)
    QApplication.processEvents()
    left = [d for d in window.findChildren(type(layers["docks"][0]))
            if window.dockWidgetArea(d) == Qt.DockWidgetArea.LeftDockWidgetArea]
    if left:
        window.resizeDocks(left, [230] * len(left), Qt.Orientation.Horizontal)
    viewer.layers.selection.active = image
    # 2D: a mid-brain slice, response map (additive colour) over the grey image, label contour
    viewer.dims.ndisplay = 2
    strokes = np.asarray(layers["scribbles"].data)
    if strokes.any():  # a slice with strokes, to show them over the response map
        z = int(np.argmax((strokes > 0).sum(axis=(1, 2))))
    else:
        z = int(np.argmax((fg[0].data > 0.5).sum(axis=(1, 2)))) if fg else strokes.shape[0] // 2
    viewer.dims.set_current_step(0, z)
    labels.contour = 1
    labels.opacity = 0.9
    for p in fg:
        p.visible = True
        p.opacity = 0.6
    layers["uncertainty"].visible = False
    QApplication.processEvents()
    viewer.reset_view()
    camera = _camera(viewer)
    camera.zoom = camera.zoom * 1.3
    QApplication.processEvents()
    paths = [out / f"{prefix}_2d.png"]
    viewer.screenshot(str(paths[0]), canvas_only=False)
    # 3D: the label surface rendered with the image as a faint MIP
    viewer.dims.ndisplay = 3
    labels.contour = 0
    labels.opacity = 0.7
    layers["scribbles"].visible = False
    for p in fg:
        p.visible = False
    image.rendering = "mip"
    image.opacity = 0.5
    viewer.reset_view()
    _camera(viewer).angles = CAMERA_3D
    QApplication.processEvents()
    paths.append(out / f"{prefix}_3d.png")
    viewer.screenshot(str(paths[1]), canvas_only=True)
    viewer.dims.ndisplay = 2
    labels.contour = 1
    for p in fg:
        p.visible = True
    layers["scribbles"].visible = True
    image.opacity = 1.0
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m napari_cnnseg.demo``; returns the exit code."""
    parser = argparse.ArgumentParser(prog="python -m napari_cnnseg.demo", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("demo_output"), help="output folder")
    parser.add_argument("--headless", action="store_true", help="screenshots only, then exit")
    parser.add_argument("--model", help="shipped model name or checkpoint (default: shipped)")
    parser.add_argument("--seconds", type=float, default=30.0,
                        help="fine-tuning budget when no model is shipped (default 30)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    from .core.errors import CnnsegError

    try:
        session, _, _, info = prepare_session(args.out, seconds=args.seconds, model=args.model)
    except CnnsegError as exc:
        print(f"demo: error: {exc}", file=sys.stderr)
        return 2
    print(f"model: {info['model']}")
    print("Dice vs the bundled brain mask: " + ", ".join(f"{k} {v}" for k, v in info["dice"].items()))
    for f in info["files"]:
        print(f"wrote {f}")
    import napari

    viewer, layers = open_viewer(session, show=True)
    for path in take_screenshots(viewer, layers, args.out):
        print(f"wrote {path}")
    if args.headless:
        viewer.close()
        print(f"demo outputs are in {args.out.resolve()}")
        return 0
    napari.run()
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
