"""Many workers: a real Dask scheduler and worker processes on loopback give the same output as a
single-process run, and so does a local cluster of worker processes."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import zarr

from slideseg.model.config import UNetConfig
from slideseg.model.files import save_model
from slideseg.model.unet import build_unet
from slideseg.predict import PredictConfig, predict, predict_many
from slideseg.schedule.cluster import ClusterConfig
from tests.conftest import random_rgb
from tests.test_predict import write_tiff
from tests.test_resume import chunk_files

CFG = PredictConfig(chunk=128, probabilities=True, device="cpu", threads=1)


@pytest.fixture(scope="module")
def case(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    d = tmp_path_factory.mktemp("dist")
    cfg = UNetConfig(depth=3, width=4, classes=2)
    save_model(d / "m.safetensors", build_unet(cfg, seed=8), cfg)
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
    sf = tmp_path / "scheduler.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    common = ["--scheduler-file", str(sf), "--no-dashboard"]
    logs = [(tmp_path / f"{n}.log").open("w") for n in ("scheduler", "w1", "w2")]
    procs = [subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
                               "--port", "0", *common], stdout=logs[0], stderr=logs[0], env=env)]
    deadline = time.monotonic() + 60
    while not sf.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    for log in logs[1:]:
        procs.append(subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_worker", "--host", "127.0.0.1",
                                       "--nthreads", "2", "--nworkers", "1", *common],
                                      stdout=log, stderr=log, env=env))
    from distributed import Client

    with Client(scheduler_file=str(sf), timeout="60s") as c:
        c.wait_for_workers(2, timeout=60)
    try:
        yield sf
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for log in logs:
            log.close()


def test_scheduler_file_cluster_matches_single_process(tmp_path: Path, case: tuple[Path, Path, Path],
                                                       scheduler_file: Path) -> None:
    slide, model, reference = case
    out = tmp_path / "dist.zarr"
    predict(slide, out, model, CFG, ClusterConfig(scheduler_file=str(scheduler_file)))
    _same(reference, out)
    from distributed import Client

    with Client(scheduler_file=str(scheduler_file)) as c:  # both workers took part
        counts = c.run(lambda: __import__("slideseg.schedule.tasks", fromlist=["_JOBS"])._JOBS.__len__())
    assert sorted(counts.values()) == [1, 1]


def test_local_worker_processes_match_single_process(tmp_path: Path, case: tuple[Path, Path, Path]) -> None:
    slide, model, reference = case
    out = tmp_path / "local2.zarr"
    predict(slide, out, model, CFG, ClusterConfig(workers=2, threads=1))
    _same(reference, out)


def test_several_slides_skip_complete_outputs(tmp_path: Path, case: tuple[Path, Path, Path]) -> None:
    slide, model, reference = case
    other = write_tiff(tmp_path / "b.ome.tif", random_rgb((200, 300), seed=1))
    outdir = tmp_path / "masks"
    items = predict_many([slide, other], outdir, model, CFG)
    assert [it.output.name for it in items] == ["s.zarr", "b.zarr"]
    assert all(it.result is not None for it in items)
    _same(reference, outdir / "s.zarr")
    again = predict_many([slide, other, tmp_path / "missing.tif"], outdir, model, CFG)
    assert [it.skipped for it in again[:2]] == ["already complete"] * 2
    assert again[2].error is not None and "missing.tif" in again[2].error
