"""Where chunk tasks run: Dask threads in this process (the default), a local cluster of worker
processes, a running cluster (scheduler file or address), or SLURM/PBS jobs via dask-jobqueue."""

from __future__ import annotations

import contextlib
import logging
import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

from slideseg.config import Config
from slideseg.errors import ConfigError

ClusterKind = Literal["slurm", "pbs"]
# A local cluster serves no dashboard, and its schedulers' and workers' small HTTP endpoints
# (health, metrics) listen on free loopback ports, never on 0.0.0.0:8787.
_LOOPBACK_ONLY: dict[str, Any] = {
    "dashboard_address": None, "scheduler_kwargs": {"dashboard_address": "127.0.0.1:0"},
    "worker_dashboard_address": "127.0.0.1:0",
}


@dataclass(frozen=True)
class ClusterConfig(Config):
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
    """Walltime per batch job in the scheduler's own syntax (SLURM: ``minutes``, ``MM:SS``,
    ``HH:MM:SS``, ``D-HH``, ``D-HH:MM``, ``D-HH:MM:SS``; PBS: ``seconds``, ``MM:SS``,
    ``HH:MM:SS``); workers retire a few minutes before it."""
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
        parse_walltime(self.walltime, self.cluster or "slurm")


def _dask_log_level() -> int:
    """Dask's own log level for the clusters started here: a failing task's traceback is Dask's log line
    and also the error raised to the caller, so it is logged only when slideseg's logger is at DEBUG
    (``slideseg --debug``)."""
    return logging.WARNING if logging.getLogger("slideseg").isEnabledFor(logging.DEBUG) else logging.CRITICAL


def return_memory() -> None:
    """Give the memory a finished phase of a long run freed back to the OS, so that the next phase's
    peak does not stack on it: Python's collector, pyarrow's pool (if loaded), and glibc's heap
    (``malloc_trim``, as Dask's workers do; skipped where the C library is not glibc)."""
    import ctypes
    import gc
    import sys

    gc.collect()
    if "pyarrow" in sys.modules:
        sys.modules["pyarrow"].default_memory_pool().release_unused()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


@contextmanager
def dask_client(cc: ClusterConfig, gpu: bool = False) -> Iterator[Any]:
    """A ``distributed.Client`` for ``cc``; clusters it started are closed on exit.

    Dask's in-memory developer logs are kept short: they hold the arguments of recent tasks (a chunk's
    relabel table, for instance) and would otherwise grow the client's memory with the number of tasks.
    """
    import dask
    import distributed  # noqa: F401  (its config defaults must be loaded before they are changed)

    with dask.config.set(_SHORT_LOGS), _client(cc, gpu) as client:
        yield client


_SHORT_LOGS = {"distributed.admin.low-level-log-length": 50, "distributed.admin.log-length": 1000}


@contextmanager
def _client(cc: ClusterConfig, gpu: bool) -> Iterator[Any]:
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
                                   silence_logs=_dask_log_level(), resources=resources)
    elif cc.workers:
        threads = max(1, (os.cpu_count() or 1) // cc.workers)
        cluster = LocalCluster(n_workers=cc.workers, threads_per_worker=cc.threads, processes=True,
                               host="127.0.0.1", resources=resources, env={"OMP_NUM_THREADS": str(threads)},
                               silence_logs=_dask_log_level(), **_LOOPBACK_ONLY)
    else:
        cluster = LocalCluster(n_workers=1, threads_per_worker=cc.threads, processes=False, resources=resources,
                               silence_logs=_dask_log_level(), **_LOOPBACK_ONLY)
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
    kind = cc.cluster or "slurm"
    seconds = parse_walltime(cc.walltime, kind)
    life = worker_lifetime(seconds)
    extra_args += ["--lifetime", f"{life // 60}m" if life % 60 == 0 else f"{life}s", "--lifetime-stagger", "2m"]
    kwargs: dict[str, Any] = {
        "cores": cc.cores, "processes": 1, "memory": cc.memory, "walltime": format_walltime(seconds, kind),
        "job_extra_directives": directives, "worker_extra_args": extra_args,
        "interface": cc.interface, "queue": cc.queue, "account": cc.account,
        "dashboard_address": None, "scheduler_options": {"dashboard_address": None, **scheduler},
    }
    return cls(**{k: v for k, v in kwargs.items() if v is not None or k == "dashboard_address"})


_SLURM_FORMS = "minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS"
_PBS_FORMS = "seconds, MM:SS or HH:MM:SS (seconds may have a fraction)"
_RETIRE_BEFORE_S = 300
"""Workers retire this long before the job's walltime (and after at least a minute)."""


def parse_walltime(text: str, kind: ClusterKind = "slurm") -> int:
    """Seconds of a walltime written as ``kind``'s scheduler reads it.

    SLURM (``sbatch --time``): a bare number is minutes; ``MM:SS``, ``HH:MM:SS``, ``D-HH``,
    ``D-HH:MM``, ``D-HH:MM:SS``. PBS (``-l walltime``): a bare number is seconds;
    ``[[HH:]MM:]SS[.fraction]`` (a fraction rounds up to the next second).

    >>> parse_walltime("240"), parse_walltime("240", "pbs"), parse_walltime("1-12:30")
    (14400, 240, 131400)
    """
    forms = _SLURM_FORMS if kind == "slurm" else _PBS_FORMS
    bad = ConfigError(f"--walltime {text!r} is not a {kind.upper()} time; expected {forms}")
    s = text.strip()
    days = 0
    if kind == "slurm" and "-" in s:
        d, _, s = s.partition("-")
        if not d.isdigit() or not s:
            raise bad
        days = int(d)
        parts = s.split(":")
        if len(parts) > 3:
            raise bad
        parts += ["0"] * (3 - len(parts))  # D-HH, D-HH:MM: the missing fields are zero
    else:
        parts = s.split(":")
        if not 1 <= len(parts) <= 3:
            raise bad
        if kind == "slurm":
            # minutes | minutes:seconds | hours:minutes:seconds
            parts = {1: ["0", parts[0], "0"], 2: ["0", *parts], 3: parts}[len(parts)]
        else:
            parts = ["0"] * (3 - len(parts)) + parts  # [[hours:]minutes:]seconds
    *hm, sec = parts
    if not all(x.isdigit() for x in hm) or not _is_seconds(sec, fraction=kind == "pbs"):
        raise bad
    total = ((days * 24 + int(hm[0])) * 60 + int(hm[1])) * 60 + math.ceil(float(sec))
    if total <= 0:
        raise ConfigError(f"--walltime {text!r} is zero; expected a positive time ({forms})")
    return total


def format_walltime(seconds: int, kind: ClusterKind = "slurm") -> str:
    """``seconds`` as ``kind``'s scheduler writes it (the form the job script carries).

    >>> format_walltime(131400), format_walltime(131400, "pbs"), format_walltime(14400)
    ('1-12:30:00', '36:30:00', '04:00:00')
    """
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    if kind == "slurm" and h >= 24:
        d, h = divmod(h, 24)
        return f"{d}-{h:02d}:{m:02d}:{s:02d}"
    return f"{h:02d}:{m:02d}:{s:02d}"


def worker_lifetime(walltime_s: int) -> int:
    """Seconds a worker lives in a job of ``walltime_s``: it retires 5 minutes before the end
    (at least one minute in), so its tasks are handed to other workers in time."""
    return max(60, walltime_s - _RETIRE_BEFORE_S)


def _is_seconds(text: str, *, fraction: bool) -> bool:
    whole, dot, frac = text.partition(".")
    return whole.isdigit() and (not dot or (fraction and frac.isdigit()))
