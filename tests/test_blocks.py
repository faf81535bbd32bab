"""Block mode: a Zarr volume cut into blocks (+ the net's halo) equals the single-process engine."""

from __future__ import annotations

import numpy as np
import pytest

from napari_cnnseg.cli import main
from napari_cnnseg.core.blocks import block_grid, segment_blocks
from napari_cnnseg.core.cohort import CohortOptions
from napari_cnnseg.core.errors import InputError
from napari_cnnseg.core.io import Volume, read_volume, write_volume
from napari_cnnseg.core.models import build_model, load_model, save_model
from napari_cnnseg.core.pipeline import segment_volume

SHAPE = (37, 45, 29)  # divides evenly into no block below
BLOCK = (16, 20, 16)
OPTS = CohortOptions(probabilities=True, uncertainty=True, device="cpu", precision="fp32")


@pytest.fixture(scope="module")
def client():
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster, distributed.Client(cluster) as c:
        yield c


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    root = tmp_path_factory.mktemp("blocks")
    rng = np.random.default_rng(3)
    img = rng.normal(size=SHAPE).astype(np.float32) * 10 + 100
    img[10:25, 5:30, 3:20] += 30  # some structure
    vol = Volume(img, spacing=(2.0, 0.8, 0.8), origin=(1.0, 2.0, 3.0))
    return write_volume(root / "big.ome.zarr", vol)


def _net(padding):
    import torch

    torch.manual_seed(0)
    return build_model("unet", depth=1, base_width=4, padding=padding, num_classes=3).eval()


def _engine(src, net, tile):
    return segment_volume(read_volume(src, lazy=True), net, device="cpu", precision="fp32",
                          tile_shape=tile)


def _check(out, ref, stem="big"):
    labels = read_volume(out / f"{stem}_labels.ome.zarr")
    probs = read_volume(out / f"{stem}_probabilities.ome.zarr", all_channels=True)
    unc = read_volume(out / f"{stem}_uncertainty.ome.zarr")
    np.testing.assert_array_equal(labels.array, ref.labels.array)
    assert np.abs(probs.array - ref.probabilities.array).max() <= 1e-6
    assert np.abs(unc.array - ref.uncertainty.array).max() <= 1e-6
    assert labels.same_grid(ref.labels) and labels.metadata["class_names"] == ref.class_names


def test_block_grid_covers_the_volume_once():
    boxes = block_grid(SHAPE, BLOCK)
    assert len(boxes) == 3 * 3 * 2
    cover = np.zeros(SHAPE, dtype=int)
    for box in boxes:
        cover[tuple(slice(a, b) for a, b in box)] += 1
    assert (cover == 1).all()


@pytest.mark.parametrize("padding", ["valid", "same"])
def test_blocks_here_equal_the_engine(source, tmp_path, padding):
    net = _net(padding)
    tile = (24, 24, 24) if padding == "valid" else (16, 16, 16)
    opts = CohortOptions(**{**OPTS.__dict__, "tile_shape": tile})
    rec = segment_blocks(source, net, tmp_path, opts, block_shape=BLOCK)
    assert rec["status"] == "done" and rec["shape"] == list(SHAPE)
    _check(tmp_path, _engine(source, net, tile))
    total = sum(rec["volume_ml"].values())
    assert total == pytest.approx(np.prod(SHAPE) * 2.0 * 0.8 * 0.8 * 1e-3, rel=1e-6)


def test_blocks_on_workers_equal_the_engine(client, source, tmp_path):
    from napari_cnnseg.core.cohort import CohortEngine, segment_cohort

    net = _net("same")
    opts = CohortOptions(**{**OPTS.__dict__, "tile_shape": (16, 16, 16)})
    engine = CohortEngine(client=client, block_shape=BLOCK)
    res = segment_cohort([source], net, tmp_path, opts, engine=engine)
    assert [r["status"] for r in res.records] == ["done"]
    _check(tmp_path, _engine(source, net, (16, 16, 16)))
    hidden = [p.name for p in tmp_path.iterdir() if p.name.startswith(".") and p.name != ".cnnseg"]
    assert hidden == []  # temporary stores committed
    again = segment_cohort([source], net, tmp_path, opts, engine=engine)
    assert [r["status"] for r in again.records] == ["skipped"]


def test_cli_blocks_on_a_scheduler(client, source, tmp_path, capsys):
    net = _net("valid")
    model = save_model(tmp_path / "m", net, class_names=["background", "a", "b"])
    out = tmp_path / "out"
    code = main(["segment", str(source), "-m", str(model), "-o", str(out), "--blocks", "16",
                 "--scheduler", client.scheduler.address, "--device", "cpu", "--precision", "fp32",
                 "--tile", "24", "24", "24", "--probabilities", "--uncertainty"])
    assert code == 0
    cap = capsys.readouterr()
    assert "blocks" in cap.err
    _check(out, _engine(source, load_model(model), (24, 24, 24)))


def test_block_mode_refuses_non_zarr(tmp_path):
    src = write_volume(tmp_path / "a.nii.gz", Volume(np.zeros((8, 8, 8), np.float32)))
    with pytest.raises(InputError, match="chunked Zarr"):
        segment_blocks(src, _net("valid"), tmp_path / "o", OPTS)
    zsrc = write_volume(tmp_path / "b.zarr", Volume(np.zeros((8, 8, 8), np.float32)))
    with pytest.raises(InputError, match="Zarr outputs"):
        segment_blocks(zsrc, _net("valid"), tmp_path / "o", CohortOptions(format="nii.gz"))
