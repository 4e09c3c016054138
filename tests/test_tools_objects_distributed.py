"""`slideseg objects` on a real Dask cluster (a `dask scheduler` and two `dask worker` processes on
loopback, found via a scheduler file): the same instance image and table as a run in one process,
and, after its client is killed with SIGKILL mid-run, `--resume` finishes them byte for byte."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from slideseg.tools.objects import ObjectsConfig, objects
from tests.conftest import local_dask_cluster
from tests.test_tools_objects import class_mask, store, write_mask

pytestmark = pytest.mark.slow  # a cluster to start, and three runs of 500 units: ~1 min on 2 cores

SHAPE, CHUNK = (160, 200), 8  # 500 units: a run lasts long enough to be killed in the middle


@pytest.fixture(scope="module")
def scheduler_file(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A `dask scheduler` and two `dask worker` processes on 127.0.0.1, found via a scheduler file."""
    with local_dask_cluster(tmp_path_factory.mktemp("cluster")) as sf:
        yield sf


@pytest.fixture(scope="module")
def mask(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, bytes]]:
    """A mask of many small chunks, and the files `objects` makes of it in this process (threads)."""
    path = write_mask(tmp_path_factory.mktemp("objects") / "mask.zarr", class_mask(SHAPE, seed=3), chunk=CHUNK)
    objects(path, ObjectsConfig())
    return path, store(path)


def slideseg_objects(path: Path, *args: str | Path) -> list[str]:
    """The command line of `slideseg objects PATH ARGS` in a process of its own."""
    return [sys.executable, "-m", "slideseg", "objects", str(path), *map(str, args), "--no-progress"]


def test_a_cluster_of_worker_processes_gives_the_same_objects(mask: tuple[Path, dict[str, bytes]],
                                                             scheduler_file: Path) -> None:
    path, expected = mask
    run = subprocess.run(slideseg_objects(path, "--scheduler-file", scheduler_file, "--overwrite"),
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert store(path) == expected
    from distributed import Client

    with Client(scheduler_file=str(scheduler_file)) as c:  # both workers ran unit tasks
        counts = c.run(lambda dask_worker: dask_worker.state.executed_count)
    assert len(counts) == 2 and all(n > 0 for n in counts.values()), counts


def units_done(path: Path) -> int:
    """Units of ``MASK/objects`` marked done (NGFF 0.4: one Zarr chunk file per unit, once it is 1)."""
    marks = path / "objects" / "chunks_done"
    return sum(1 for f in marks.iterdir() if not f.name.startswith(".")) if marks.is_dir() else 0


def test_a_client_killed_mid_run_is_resumed_to_the_same_objects(mask: tuple[Path, dict[str, bytes]],
                                                                 scheduler_file: Path) -> None:
    path, expected = mask
    shutil.rmtree(path / "objects")  # start afresh, so that only the new run's marks are counted
    (path.parent / "mask.objects.parquet").unlink()
    total = -(-SHAPE[0] // CHUNK) * -(-SHAPE[1] // CHUNK)
    log = path.parent / "killed.log"
    with log.open("w") as out:
        client = subprocess.Popen(slideseg_objects(path, "--scheduler-file", scheduler_file), stdout=out, stderr=out)
        deadline = time.monotonic() + 300
        while (done := units_done(path)) < 5:
            assert client.poll() is None, f"the run ended before it could be killed: {log.read_text()}"
            assert time.monotonic() < deadline, "no unit was written"
            time.sleep(0.005)
        os.kill(client.pid, signal.SIGKILL)
    assert client.wait(timeout=60) == -signal.SIGKILL
    assert done < total  # killed in the middle of writing the units
    run = subprocess.run(slideseg_objects(path, "--scheduler-file", scheduler_file, "--resume"),
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    resumed = re.search(r"(\d+) of (\d+) units were done already", " ".join(run.stdout.split()))
    assert resumed is not None and int(resumed[1]) >= done and int(resumed[2]) == total, run.stdout
    assert store(path) == expected
