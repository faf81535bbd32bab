#!/usr/bin/env python-real
"""3D Slicer CLI module "CNN Segmentation" of napari-cnnseg (launcher run by Slicer's Python).

Slicer finds this file in a module path (its first line starts with #!), reads
CNNSegment.xml beside it for the GUI and runs it with python-real. The work is done by
napari_cnnseg.cli.slicer, which must be installed into Slicer's Python once:
    PythonSlicer -m pip install napari-cnnseg
"""

import sys

try:
    from napari_cnnseg.cli.slicer import main
except ImportError as exc:
    sys.stderr.write(
        f"CNNSegment: cannot import napari-cnnseg in this Python ({sys.executable}): {exc}\n"
        "Install it into 3D Slicer's Python once: run 'PythonSlicer -m pip install napari-cnnseg'"
        " in a shell, or slicer.util.pip_install('napari-cnnseg') in Slicer's Python console.\n"
    )
    sys.exit(1)

sys.exit(main())
