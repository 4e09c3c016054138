"""Chunk tasks on many workers: a real Dask scheduler and worker processes on loopback give the
same output as a single-process run, and so does a local cluster of worker processes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import zarr

from slideseg.predict import PredictConfig, predict
from slideseg.schedule.cluster import ClusterConfig
from tests.conftest import chunk_files, local_dask_cluster, random_rgb, save_tiny_model, write_tiff

CFG = PredictConfig(chunk=128, probabilities=True, device="cpu", threads=1)


@pytest.fixture(scope="module")
def case(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    d = tmp_path_factory.mktemp("dist")
    save_tiny_model(d / "m.safetensors", seed=8, depth=3)
    img = random_rgb((400, 1100), seed=9)
    img[:200, :300] = 240
    slide = write_tiff(d / "s.ome.tif", img)
    reference = d / "reference.zarr"
    predict(slide, reference, d / "m.safetensors", CFG)
    return slide, d / "m.safetensors", reference


def _same(a: Path, b: Path) -> None:
    ga, gb = zarr.open_group(a, mode="r"), zarr.open_group(b, mode="r")
    for key in ("0", "1", "probabilities/0"):
        np.testing.assert_array_equal(ga[key][:], gb[key][:])  # type: ignore[index]
    assert chunk_files(a) == chunk_files(b)


@pytest.fixture
def scheduler_file(tmp_path: Path) -> Iterator[Path]:
    """A `dask scheduler` and two `dask worker` processes on 127.0.0.1, found via a scheduler file."""
    with local_dask_cluster(tmp_path) as sf:
        yield sf


def test_scheduler_file_cluster_matches_single_process(tmp_path: Path, case: tuple[Path, Path, Path],
                                                       scheduler_file: Path) -> None:
    slide, model, reference = case
    out = tmp_path / "dist.zarr"
    result = predict(slide, out, model, CFG, ClusterConfig(scheduler_file=str(scheduler_file)))
    _same(reference, out)
    from distributed import Client

    with Client(scheduler_file=str(scheduler_file)) as c:  # both workers ran chunk tasks
        counts = c.run(lambda dask_worker: dask_worker.state.executed_count)
    assert len(counts) == 2 and all(n > 0 for n in counts.values()), counts
    assert sum(counts.values()) >= result.chunks_run > 0, counts  # every chunk that ran, ran there


def test_local_worker_processes_match_single_process(tmp_path: Path, case: tuple[Path, Path, Path]) -> None:
    slide, model, reference = case
    out = tmp_path / "local2.zarr"
    predict(slide, out, model, CFG, ClusterConfig(workers=2, threads=1))
    _same(reference, out)
