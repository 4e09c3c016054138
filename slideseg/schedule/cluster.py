"""Where chunk tasks run: Dask threads in this process (the default), a local cluster of worker
processes, a running cluster (scheduler file or address), or SLURM/PBS jobs via dask-jobqueue."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any, Literal

from slideseg.errors import ConfigError

ClusterKind = Literal["slurm", "pbs"]
# A local cluster serves no dashboard, and its schedulers' and workers' small HTTP endpoints
# (health, metrics) listen on free loopback ports, never on 0.0.0.0:8787.
_LOOPBACK_ONLY: dict[str, Any] = {
    "dashboard_address": None, "scheduler_kwargs": {"dashboard_address": "127.0.0.1:0"},
    "worker_dashboard_address": "127.0.0.1:0", "silence_logs": logging.ERROR,
}


@dataclass(frozen=True)
class ClusterConfig:
    """How to get Dask workers. At most one of ``workers``, ``scheduler_file``,
    ``scheduler_address`` and ``cluster`` is set; none means threads in this process."""

    workers: int | None = None
    """Start a local cluster of this many worker processes."""
    threads: int = 2
    """Threads per worker (they read, post-process and write while one thread runs inference)."""
    scheduler_file: str | None = None
    """Connect to the running cluster described by this scheduler file (`dask scheduler --scheduler-file`)."""
    scheduler_address: str | None = None
    """Connect to the running scheduler at this address (tcp://host:port)."""
    cluster: ClusterKind | None = None
    """Submit workers as batch jobs with dask-jobqueue."""
    jobs: int = 1
    """Batch jobs to start (one worker each)."""
    cores: int = 8
    """Cores per batch job."""
    memory: str = "32GB"
    """Memory per batch job."""
    gpus_per_job: int = 0
    """GPUs per batch job (adds the scheduler's GPU request and a GPU=1 worker resource)."""
    walltime: str = "04:00:00"
    """Walltime per batch job; workers retire a few minutes before it."""
    queue: str | None = None
    """Partition (SLURM) or queue (PBS)."""
    account: str | None = None
    """Account or project to charge."""
    interface: str | None = None
    """Network interface the scheduler listens on (e.g. ib0) so compute nodes can reach it."""

    def __post_init__(self) -> None:
        chosen = [k for k in ("workers", "scheduler_file", "scheduler_address", "cluster") if getattr(self, k)]
        if len(chosen) > 1:
            flags = ", ".join("--" + c.replace("_", "-") for c in chosen)
            raise ConfigError(f"choose one way to get workers; got {flags}")
        if self.workers is not None and self.workers < 1:
            raise ConfigError(f"--workers must be >= 1, got {self.workers}")
        if self.threads < 1:
            raise ConfigError(f"--io-threads must be >= 1, got {self.threads}")
        if self.cluster not in (None, "slurm", "pbs"):
            raise ConfigError(f"--cluster must be slurm or pbs, got {self.cluster!r}")
        if self.jobs < 1 or self.cores < 1 or self.gpus_per_job < 0:
            raise ConfigError("--jobs and --cores must be >= 1 and --gpus-per-job >= 0")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@contextmanager
def dask_client(cc: ClusterConfig, gpu: bool = False) -> Iterator[Any]:
    """A ``distributed.Client`` for ``cc``; clusters it started are closed on exit."""
    from distributed import Client, LocalCluster

    if cc.scheduler_file or cc.scheduler_address:
        try:
            client = Client(address=cc.scheduler_address, scheduler_file=cc.scheduler_file, timeout="30s")
        except OSError as exc:
            where = cc.scheduler_file or cc.scheduler_address
            raise ConfigError(f"could not reach the Dask scheduler at {where} ({exc}); is it running?") from exc
        with client:
            yield client
        return
    resources = {"GPU": 1} if gpu else None
    if cc.cluster:
        cluster: Any = jobqueue_cluster(cc)
        cluster.scale(jobs=cc.jobs)
    elif cc.workers and gpu:
        try:
            from dask_cuda import LocalCUDACluster
        except ImportError as exc:
            raise ConfigError("--workers with --device cuda starts one worker per GPU and needs dask-cuda: "
                              "pip install dask-cuda (or run without --workers)") from exc
        cluster = LocalCUDACluster(n_workers=cc.workers, threads_per_worker=cc.threads, dashboard_address=None,
                                   silence_logs=logging.ERROR, resources=resources)
    elif cc.workers:
        threads = max(1, (os.cpu_count() or 1) // cc.workers)
        cluster = LocalCluster(n_workers=cc.workers, threads_per_worker=cc.threads, processes=True,
                               host="127.0.0.1", resources=resources, env={"OMP_NUM_THREADS": str(threads)},
                               **_LOOPBACK_ONLY)
    else:
        cluster = LocalCluster(n_workers=1, threads_per_worker=cc.threads, processes=False, resources=resources,
                               **_LOOPBACK_ONLY)
    with cluster, Client(cluster) as client:
        yield client


def jobqueue_cluster(cc: ClusterConfig, **scheduler: Any) -> Any:
    """A dask-jobqueue SLURMCluster/PBSCluster from ``cc`` (no jobs started until it is scaled)."""
    try:
        import dask_jobqueue
    except ImportError as exc:
        raise ConfigError("--cluster needs dask-jobqueue: pip install 'slideseg[hpc]'") from exc
    cls = {"slurm": dask_jobqueue.SLURMCluster, "pbs": dask_jobqueue.PBSCluster}[cc.cluster or "slurm"]
    directives: list[str] = []
    extra_args: list[str] = []
    if cc.gpus_per_job:
        directives.append(f"--gres=gpu:{cc.gpus_per_job}" if cc.cluster == "slurm" else f"-l ngpus={cc.gpus_per_job}")
        extra_args += ["--resources", "GPU=1"]
    minutes = _minutes(cc.walltime)
    extra_args += ["--lifetime", f"{max(1, minutes - 5)}m", "--lifetime-stagger", "2m"]
    kwargs: dict[str, Any] = {
        "cores": cc.cores, "processes": 1, "memory": cc.memory, "walltime": cc.walltime,
        "job_extra_directives": directives, "worker_extra_args": extra_args,
        "interface": cc.interface, "queue": cc.queue, "account": cc.account,
        "dashboard_address": None, "scheduler_options": {"dashboard_address": None, **scheduler},
    }
    return cls(**{k: v for k, v in kwargs.items() if v is not None or k == "dashboard_address"})


def _minutes(walltime: str) -> int:
    parts = walltime.split(":")
    try:
        h, m, s = (["0"] * (3 - len(parts)) + parts)[-3:]
        return int(h) * 60 + int(m) + (1 if int(s) else 0)
    except ValueError:
        raise ConfigError(f"--walltime must look like HH:MM:SS, got {walltime!r}") from None
