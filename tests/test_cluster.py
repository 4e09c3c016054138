"""Cluster options: batch job scripts say what was asked for; bad combinations are refused."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from slideseg.errors import ConfigError
from slideseg.schedule.batcher import Batcher
from slideseg.schedule.cluster import ClusterConfig, jobqueue_cluster


@pytest.mark.parametrize("kind", ["slurm", "pbs"])
def test_job_script_passes_options_through(kind: str) -> None:
    cc = ClusterConfig(cluster=kind, cores=16, memory="64GB", gpus_per_job=1, walltime="02:00:00",  # type: ignore[arg-type]
                       queue="gpu", account="lab42")
    with jobqueue_cluster(cc, host="127.0.0.1") as cluster:
        script = cluster.job_script()
    assert "--resources GPU=1" in script and "--lifetime 115m" in script
    if kind == "slurm":
        for line in ("#SBATCH --gres=gpu:1", "#SBATCH -p gpu", "#SBATCH -A lab42", "#SBATCH -t 02:00:00",
                     "#SBATCH --cpus-per-task=16"):
            assert line in script, script
    else:
        for line in ("#PBS -l ngpus=1", "#PBS -q gpu", "#PBS -A lab42", "walltime=02:00:00"):
            assert line in script, script


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"workers": 2, "scheduler_file": "s.json"}, "choose one way to get workers"),
        ({"workers": 0}, "--workers must be >= 1"),
        ({"cluster": "lsf"}, "--cluster must be slurm or pbs"),
    ],
)
def test_bad_cluster_options(kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        ClusterConfig(**kwargs)


def test_bad_walltime() -> None:
    with pytest.raises(ConfigError, match="HH:MM:SS"):
        jobqueue_cluster(ClusterConfig(cluster="slurm", walltime="two hours"), host="127.0.0.1")


class _CountingEngine:
    """Doubles its input; records the batch sizes it was called with."""

    def __init__(self) -> None:
        self.config = None
        self.calls: list[int] = []
        self.gate = threading.Event()

    def infer(self, batch: np.ndarray) -> np.ndarray:
        self.gate.wait(5)
        self.calls.append(len(batch))
        return batch.astype(np.float32) * 2


def test_batcher_fills_batches_from_several_callers() -> None:
    engine = _CountingEngine()
    batcher = Batcher(engine)  # type: ignore[arg-type]
    inputs = [np.full((1, 1, 2, 2), i, np.uint8) for i in range(6)]
    results: dict[int, np.ndarray] = {}
    threads = [threading.Thread(target=lambda i=i: results.__setitem__(i, batcher.infer(inputs[i], 4)))
               for i in range(6)]
    for t in threads:
        t.start()
    engine.gate.set()
    for t in threads:
        t.join(10)
    assert all(np.array_equal(results[i], inputs[i] * 2.0) for i in range(6))
    assert sum(engine.calls) == 6 and max(engine.calls) > 1 and max(engine.calls) <= 4


def test_batcher_passes_errors_to_the_caller() -> None:
    class Broken:
        config = None

        def infer(self, batch: np.ndarray) -> np.ndarray:
            raise MemoryError("too big")

    with pytest.raises(MemoryError, match="too big"):
        Batcher(Broken()).infer(np.zeros((1, 1, 2, 2)), 2)  # type: ignore[arg-type]
