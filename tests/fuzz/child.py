"""One fuzz case inside a worker process: mutate a seed, then run each command in a forked child
under a time limit and an address-space limit, and report what happened.

The worker (``python -m tests.fuzz.worker``) imports the CLI, torch and Dask once; each command
then costs a ``fork`` instead of an interpreter start. A child writes its stdout and stderr to
files and, if an exception escapes the CLI, a JSON record of it (type, message, frames), which is
how the parent tells a crash from a clean error without parsing tracebacks.
"""

from __future__ import annotations

import contextlib
import faulthandler
import json
import os
import resource
import shutil
import signal
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tests.fuzz.mutators import mutate
from tests.fuzz.seeds import Seed

GIB = 2**30
COMMANDS = ("info", "predict", "evaluate", "export-geojson", "preview", "train")
"""The commands a case may run."""


@dataclass(frozen=True)
class CaseSpec:
    """One case: which seed, which commands, and the index that seeds its mutations."""

    index: int
    seed: str
    commands: tuple[str, ...]
    tissue: bool = False
    """Run ``predict`` with tissue detection (otherwise ``--no-tissue``)."""
    limits: tuple[float, int] | None = None
    """(seconds, memory) for this case instead of the run's (to check that the limits work)."""
    pristine: bool = False
    """Run the seed as it is, unmutated (every command must then give a result)."""


@dataclass
class RunResult:
    """One command run on one mutant."""

    command: str
    exit_code: int | None
    """None when killed (a hang or a signal)."""
    seconds: float
    max_rss_mb: float
    timed_out: bool = False
    signal: int | None = None
    stderr: str = ""
    crash: dict[str, Any] | None = None
    """Type, message and frames of an exception that escaped the CLI."""


@dataclass
class CaseResult:
    spec: CaseSpec
    mutations: list[str]
    runs: list[RunResult] = field(default_factory=list)
    folder: str = ""

    def to_json(self) -> str:
        return json.dumps(asdict(self), default=str)

    @staticmethod
    def from_json(text: str) -> CaseResult:
        d = json.loads(text)
        limits = d["spec"].get("limits")
        spec = CaseSpec(**{**d["spec"], "commands": tuple(d["spec"]["commands"]),
                           "limits": None if limits is None else tuple(limits)})
        return CaseResult(spec, d["mutations"], [RunResult(**r) for r in d["runs"]], d["folder"])


@dataclass(frozen=True)
class Limits:
    seconds: float = 20.0
    memory: int = 4 * GIB
    """Address space the child may add to what the worker already maps."""


def argv_for(command: str, seed: Seed, mutant: Path, folder: Path, model: Path, tissue: bool) -> list[str]:
    """The ``slideseg`` arguments of one command on a mutant (outputs go into ``folder``)."""
    if command == "info":
        return ["info", str(mutant)]
    if command == "predict":
        return ["predict", str(mutant), "-o", str(folder / "out.zarr"), "-m", str(model), "--chunk", "128",
                "--engine", "torch", "--device", "cpu", "--threads", "1", "--io-threads", "1", "--no-progress",
                *([] if tissue else ["--no-tissue"]), *seed.predict_args]
    if command == "evaluate":
        return ["evaluate", str(mutant), seed.extra["gt"]]
    if command == "export-geojson":
        return ["export-geojson", str(mutant), "-o", str(folder / "out.geojson")]
    if command == "preview":
        return ["preview", str(mutant), "-o", str(folder / "out.png"), "--size", "256"]
    if command == "train":
        return ["train", "--images", str(mutant / "images"), "--masks", str(mutant / "masks"), "--mask-kind",
                seed.extra.get("kind", "classes"), "-o", str(folder / "model.safetensors"), "--depth", "2",
                "--width", "4", "--steps", "2", "--tile", "92", "--device", "cpu", "--threads", "1",
                "--workers", "1", "--no-progress", "--no-elastic", "--val-tiles", "1"]
    raise ValueError(f"unknown command {command!r}")


def _address_space() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    return 0


def _crash_record(exc: BaseException) -> dict[str, Any]:
    frames = [(f.filename, f.lineno, f.name) for f in traceback.extract_tb(exc.__traceback__)]
    return {"type": type(exc).__name__, "mro": [c.__name__ for c in type(exc).__mro__],
            "message": str(exc)[:500], "frames": frames}


def _child(argv: list[str], folder: Path, limit: int, seconds: float, stem: str) -> None:
    """In the forked child: limits, redirections, the CLI; never returns."""
    code = 1
    try:
        os.setpgid(0, 0)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        os.chdir(folder)
        for fd, name in ((1, f"{stem}.out"), (2, f"{stem}.err")):
            handle = os.open(folder / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(handle, fd)
            os.close(handle)
        sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115
        sys.stderr = open(2, "w", closefd=False)  # noqa: SIM115
        faulthandler.dump_traceback_later(seconds, exit=False, file=sys.stderr)  # where a hang hangs
        from slideseg.cli import app

        try:
            app(argv, prog_name="slideseg")
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except BaseException as e:  # the crash the fuzzer is looking for: record it
            (folder / f"{stem}.crash.json").write_text(json.dumps(_crash_record(e)))
            traceback.print_exc()
            code = 1
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def run_command(argv: list[str], folder: Path, limits: Limits, stem: str) -> RunResult:
    """Fork, run ``slideseg ARGV`` in the child under ``limits``, wait, and collect the result."""
    limit = _address_space() + limits.memory
    t0 = time.monotonic()
    pid = os.fork()
    if pid == 0:
        _child(argv, folder, limit, max(0.5, limits.seconds - 1.0), stem)
    timed_out = False
    while True:
        done, status, usage = os.wait4(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() - t0 > limits.seconds:
            timed_out = True
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
            _, status, usage = os.wait4(pid, 0)
            break
        time.sleep(0.005)
    seconds = time.monotonic() - t0
    sig = os.WTERMSIG(status) if os.WIFSIGNALED(status) else None
    code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else None
    err_file, crash_file = folder / f"{stem}.err", folder / f"{stem}.crash.json"
    stderr = err_file.read_text(errors="replace")[-4000:] if err_file.exists() else ""
    crash = json.loads(crash_file.read_text()) if crash_file.exists() else None
    return RunResult(argv[0], code, round(seconds, 3), usage.ru_maxrss / 1024, timed_out, sig, stderr, crash)


def run_case(spec: CaseSpec, seed: Seed, master: int, work: Path, model: Path, limits: Limits) -> CaseResult:
    """Mutate ``seed`` (seeded by ``master`` and the case index), run every command of ``spec``."""
    rng = np.random.default_rng([master, spec.index])
    limits = limits if spec.limits is None else Limits(*spec.limits)
    folder = work / f"case-{spec.index:06d}"
    folder.mkdir(parents=True, exist_ok=True)
    mutant = folder / seed.path.name
    if spec.pristine:
        copy = shutil.copytree if seed.path.is_dir() else shutil.copyfile
        copy(seed.path, mutant)
    result = CaseResult(spec, [] if spec.pristine else mutate(seed, mutant, rng), folder=str(folder))
    for k, command in enumerate(spec.commands):
        argv = argv_for(command, seed, mutant, folder, model, spec.tissue)
        result.runs.append(run_command(argv, folder, limits, f"run{k}-{command}"))
    return result
