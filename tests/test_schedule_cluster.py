"""Cluster options: batch job scripts say what was asked for; bad combinations are refused."""

from __future__ import annotations

import pytest

from slideseg.errors import ConfigError
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
