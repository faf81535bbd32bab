"""3D Slicer command-line module (``cnnseg-slicer``) and ``cnnseg slicer-install DIR``.

3D Slicer runs any program that describes itself in the Slicer Execution Model XML as a module
with a generated GUI: it writes the selected volumes to temporary files (NRRD), runs the program
with ``--<longflag> value`` options followed by the positional (``<index>``) arguments, shows the
``<filter-progress>`` lines the program prints on stdout and loads the outputs back.

One Python description (:func:`_groups`) generates both the XML (:func:`xml_text`, printed by
``cnnseg-slicer --xml`` and shipped as ``slicer_cli/CNNSegment.xml``) and the argparse parser
(:func:`build_parser`), so that the two cannot drift apart. They live in
:mod:`napari_cnnseg.cli._slicer_params`, the run (progress lines, scribbles, segmentation) in
:mod:`napari_cnnseg.cli._slicer_run`; this module re-exports their public names.

Usage as Slicer passes it::

    cnnseg-slicer --model NAME [--model_file CKPT] [--scribbles S.nrrd --finetune_seconds 30
        [--output_model NEW.safetensors]] [--probability P.nrrd] --device auto \
        --precision auto [--tile_size 64,64,64] --overlap 0.25 --batch_size 0 \
        [--largest_component] INPUT.nrrd OUTPUT_LABELS.nrrd

This module imports no torch at import time: ``--xml`` answers in a fraction of a second.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from . import EXIT_CANCELLED, EXIT_USER_ERROR, run_reporting_errors
from ._slicer_params import (
    MODULE_NAME,
    NO_SHIPPED_MODEL,
    PRETRAINED_DIR,
    SHIPPED_DIR,
    Group,
    Param,
    _check_constraints,
    _groups,  # noqa: F401  (re-exported: tests and docs/slicer.md refer to it here)
    build_parser,
    parse_int_vector,
    shipped_model_names,
    xml_text,
)
from ._slicer_run import (
    FINETUNE_PRECISIONS,
    SlicerProgress,
    _quiet_stderr,
    _warn_spacing,  # noqa: F401  (re-exported for the tests)
    keep_largest_components,
    log,  # noqa: F401  (the module's logger, as before the split)
    run_segmentation,
    scribbles_on_grid,
)

__all__ = [
    "EXIT_CANCELLED", "EXIT_USER_ERROR", "FINETUNE_PRECISIONS", "MODULE_NAME", "NO_SHIPPED_MODEL",
    "PRETRAINED_DIR", "SHIPPED_DIR", "Group", "Param", "SlicerProgress", "add_parser",
    "build_parser", "install", "keep_largest_components", "launcher_text", "main",
    "parse_int_vector", "run", "run_segmentation", "scribbles_on_grid", "shipped_model_names",
    "xml_text",
]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``cnnseg-slicer`` (and of the Slicer launcher); returns the exit code.

    ``--xml`` prints only the module XML. Otherwise the run writes progress on stdout and
    nothing on stderr unless it fails: then one clear line and a non-zero exit code
    (2 = bad input or option, 130 = cancelled, 1 = unexpected error with its traceback).
    """
    as_process = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--xml" in argv:
        sys.stdout.write(xml_text())
        sys.stdout.flush()
        return 0
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        _check_constraints(parser, args)
    except SystemExit as exc:  # argparse printed usage + error (or --help)
        return int(exc.code or 0)

    def segment() -> None:
        with _quiet_stderr(redirect_fd=as_process):
            run_segmentation(args)

    return run_reporting_errors(segment, "cnnseg-slicer")


# ---------- cnnseg slicer-install DIR -------------------------------------------------------
def launcher_text(kind: str, python: str | None = None) -> tuple[str, str]:
    """File name and text of a Slicer launcher.

    Args:
        kind: ``"python-real"`` (``CNNSegment.py`` run by Slicer's own Python, which needs
            napari-cnnseg pip-installed into Slicer) or ``"this-python"`` (``CNNSegment`` /
            ``CNNSegment.bat`` that runs ``python``, default this interpreter, where
            napari-cnnseg is installed).
        python: interpreter for ``"this-python"``; default :data:`sys.executable`.
    """
    if kind == "python-real":
        return f"{MODULE_NAME}.py", (SHIPPED_DIR / f"{MODULE_NAME}.py").read_text(encoding="utf-8")
    python = python or sys.executable
    if os.name == "nt":
        return f"{MODULE_NAME}.bat", f'@"{python}" -m napari_cnnseg.cli.slicer %*\r\n'
    if any(c.isspace() for c in python):  # a shebang cannot hold spaces: go through sh
        body = f'#!/bin/sh\nexec "{python}" -m napari_cnnseg.cli.slicer "$@"\n'
    else:
        body = (f"#!{python}\n# 3D Slicer CLI launcher of napari-cnnseg (runs the Python above).\n"
                "import sys\n\nfrom napari_cnnseg.cli.slicer import main\n\nsys.exit(main())\n")
    return MODULE_NAME, body


def _write_atomic(path: Path, text: str, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w", encoding="utf-8", newline="") as fh:
        fh.write(text)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def install(directory: str | os.PathLike[str], kind: str = "python-real") -> list[Path]:
    """Write the launcher and its XML into ``directory`` (created if missing).

    Any launcher of the other kind left there is removed, since two files with the basename
    ``CNNSegment`` would register the same Slicer module twice.

    Returns:
        Paths written: ``[launcher, xml]``.
    """
    from ..core.errors import InputError

    if kind not in ("python-real", "this-python"):
        raise InputError(f"unknown launcher kind {kind!r}; choose python-real or this-python")
    folder = Path(directory).expanduser().resolve()
    if folder.exists() and not folder.is_dir():
        raise InputError(f"{folder} is a file; give a folder for the Slicer module")
    folder.mkdir(parents=True, exist_ok=True)
    name, text = launcher_text(kind)
    for other in (f"{MODULE_NAME}.py", MODULE_NAME, f"{MODULE_NAME}.bat"):
        if other != name and (folder / other).is_file():
            (folder / other).unlink()
    launcher, xml = folder / name, folder / f"{MODULE_NAME}.xml"
    _write_atomic(launcher, text, 0o755)
    _write_atomic(xml, xml_text(), 0o644)
    return [launcher, xml]


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``cnnseg slicer-install DIR``."""
    p = sub.add_parser(
        "slicer-install",
        help="write the 3D Slicer module (launcher + XML) into a folder",
        description="Write the CNNSegment 3D Slicer CLI module into DIR; then add DIR to "
        "Slicer's additional module paths.",
    )
    p.add_argument("dir", metavar="DIR", help="folder for the module (use an empty folder)")
    p.add_argument(
        "--launcher", choices=("python-real", "this-python"), default="python-real",
        help="python-real (default): CNNSegment.py run by Slicer's Python, which needs "
        "'PythonSlicer -m pip install napari-cnnseg'; this-python: CNNSegment run by this "
        f"Python ({sys.executable}), no install into Slicer needed",
    )
    return p


def run(args: argparse.Namespace) -> int:
    """Run ``cnnseg slicer-install``: write the files and print the next steps."""
    written = install(args.dir, args.launcher)
    folder = written[0].parent
    print(f"Wrote {written[0]} and {written[1]}.")
    others = sorted(p.name for p in folder.iterdir() if p not in written)
    if others:
        print(f"Note: {folder} holds other files too ({', '.join(others[:5])}); Slicer probes "
              "every file in a module path, so an empty folder is best.")
    print("Next steps:")
    step = 1
    if args.launcher == "python-real":
        print(f"  {step}. Install napari-cnnseg into Slicer's Python (once): in a shell run\n"
              "       PythonSlicer -m pip install napari-cnnseg\n"
              "     or in Slicer's Python console: slicer.util.pip_install('napari-cnnseg')")
        step += 1
    print(f"  {step}. In 3D Slicer: Edit > Application Settings > Modules > Additional module "
          f"paths > Add,\n     choose {folder}, then restart Slicer "
          f"(or start it once with: Slicer --additional-module-paths {folder}).")
    print(f"  {step + 1}. The module 'CNN Segmentation' appears under Segmentation "
          f"(slicer.modules.{MODULE_NAME.lower()} in Python).")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
