"""Shared fixtures: seeded RNGs, device parametrisation, paths to real data."""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
#: real labelled volumes beside the checkout (may be absent: tests then skip)
SHARED_DATA = REPO.parent / "shared" / "data"

# Keep tests light on the 2-core CI machine.
os.environ.setdefault("OMP_NUM_THREADS", "2")


def _cuda_available() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:  # pragma: no cover
        return False


DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]


def pytest_collection_modifyitems(config, items):
    if _cuda_available():
        return
    skip = pytest.mark.skip(reason="no CUDA device on this machine")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed_and_restore_rng():
    """Seed python/numpy/torch before each test and restore the torch RNG after."""
    import torch

    state = torch.random.get_rng_state()
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    yield
    torch.random.set_rng_state(state)


@pytest.fixture(params=DEVICES)
def device(request) -> str:
    """Each compute test runs on the CPU and, where present, on CUDA."""
    return request.param


@pytest.fixture
def shared_data() -> Path:
    """Folder of real labelled volumes (``../shared/data``); skips the test when absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not present beside this checkout")
    return SHARED_DATA
