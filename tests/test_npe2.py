"""The npe2 manifest validates, and every command it names resolves to a callable."""

from __future__ import annotations

import importlib
import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

NPE2 = Path(sys.executable).with_name("npe2")


def run_npe2(*args: str) -> subprocess.CompletedProcess:
    """Run npe2; it prints non-ASCII marks, so decode as UTF-8 whatever the locale."""
    env = {**os.environ, "PYTHONUTF8": "1"}
    return subprocess.run([*npe2_command(), *args], capture_output=True, encoding="utf-8", env=env)


def npe2_command() -> list[str]:
    if NPE2.exists():
        return [str(NPE2)]
    found = shutil.which("npe2")
    if found is None:
        pytest.skip("the npe2 command is not installed (pip install npe2)")
    return [found]


def test_npe2_validate():
    done = run_npe2("validate", "napari-cnnseg")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "valid" in done.stdout


@pytest.mark.skipif(importlib.util.find_spec("napari_cnnseg._widgets") is None,
                    reason="napari_cnnseg._widgets is not written yet")
def test_npe2_validate_imports():
    done = run_npe2("validate", "napari-cnnseg", "--imports")
    assert done.returncode == 0, done.stdout + done.stderr


def test_io_commands_resolve():
    from npe2 import PluginManifest

    manifest = PluginManifest.from_distribution("napari-cnnseg")
    io_commands = [c for c in manifest.contributions.commands if "_napari_io" in c.python_name]
    assert {c.id.split(".")[-1] for c in io_commands} >= {
        "get_reader", "write_image", "write_labels", "sample_phantom", "sample_brain"}
    for command in io_commands:
        module, attr = command.python_name.split(":")
        assert callable(getattr(importlib.import_module(module), attr)), command.id
    readers = manifest.contributions.readers
    assert readers and readers[0].accepts_directories
    kinds = {w.layer_types[0] for w in manifest.contributions.writers}
    assert kinds == {"image", "labels"}
