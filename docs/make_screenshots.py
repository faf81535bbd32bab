"""Regenerate the README screenshots of the napari docks (run under a virtual X server).

    xvfb-run -a -s "-screen 0 1280x1024x24" .venv/bin/python docs/make_screenshots.py

Runs the demo pipeline (``napari_cnnseg.demo``: bundled T1 brain MRI, shipped model or a
quickly fine-tuned U-Net, Segment) and saves into ``docs/``:

* ``screenshot_2d.png``: the napari window with both docks; a slice of the image with the
  brain response map (additive colour) and the label contour over it, plus the strokes;
* ``screenshot_3d.png``: a 3D rendering of the label map over a faint MIP of the image.

PNGs are re-encoded with an adaptive palette when larger than ~450 KB.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

DOCS = Path(__file__).resolve().parent
MAX_BYTES = 450_000


def shrink_png(path: Path, max_bytes: int = MAX_BYTES) -> int:
    """Re-encode ``path`` with a 256-colour palette if it is larger than ``max_bytes``."""
    if path.stat().st_size <= max_bytes:
        return path.stat().st_size
    from PIL import Image

    with Image.open(path) as im:
        small = im.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT)
    small.save(path, optimize=True)
    return path.stat().st_size


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="regenerate docs/screenshot_*.png")
    parser.add_argument("--out", type=Path, default=DOCS, help="folder for the PNGs (docs/)")
    parser.add_argument("--seconds", type=float, default=30.0,
                        help="fine-tuning budget if no model is shipped")
    args = parser.parse_args(argv)

    from napari_cnnseg.demo import open_viewer, prepare_session, take_screenshots

    with tempfile.TemporaryDirectory() as tmp:
        session, _, _, info = prepare_session(Path(tmp), seconds=args.seconds)
        print(f"model: {info['model']}; Dice {info['dice']}")
        viewer, layers = open_viewer(session, show=True)
        paths = take_screenshots(viewer, layers, args.out, prefix="screenshot")
        viewer.close()
    for p in paths:
        print(f"wrote {p} ({shrink_png(p) // 1000} KB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
