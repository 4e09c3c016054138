"""Plan fuzz cases, run them on a pool of worker processes, classify and summarise the outcomes.

Outcomes of one command run:

* ``result``: exit code 0;
* ``clean``: exit code 2 and a last stderr line ``slideseg: ...`` (the promised one-line error);
* ``noisy``: the same, but with a traceback or an ERROR log line on stderr before it;
* ``crash``: an exception escaped the CLI (a traceback), or any other exit code or a signal;
* ``hang``: killed at the time limit;
* ``memory``: ``MemoryError`` (the address-space limit was hit) or an allocator abort.

A crash's bucket is its exception type and the innermost slideseg function it passed through
(plus the third-party module it came from), so one bug found by many cases counts once.

>>> classify(RunResult("info", 2, 0.1, 100.0, stderr="slideseg: x is not an image\\n"))
('clean', None)
"""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from tests.fuzz.child import GIB, CaseResult, CaseSpec, Limits, RunResult
from tests.fuzz.seeds import Seed

RESULT, CLEAN, NOISY, CRASH, HANG, MEMORY = "result", "clean", "noisy", "crash", "hang", "memory"
OUTCOMES = (RESULT, CLEAN, NOISY, CRASH, HANG, MEMORY)
FAILURES = (NOISY, CRASH, HANG, MEMORY)
READER_FILES = ("slideseg/io/", "slideseg/plan/tiles.py", "slideseg/train/data.py", "slideseg/write/mask_meta.py")
"""Where the reading boundary lives (slide, image and training readers, and the mask reader):
failures located here are the readers' own."""
ROOT = Path(__file__).resolve().parents[2]
DEFAULT_LIMITS = Limits()
_MEMORY_SIGNS = ("MemoryError", "bad_alloc", "Cannot allocate memory", "out of memory", "can't start new thread")


def classify(run: RunResult) -> tuple[str, str | None]:
    """(outcome, crash bucket or None) of one command run."""
    if run.timed_out:
        return HANG, f"{run.command} at {_hang_location(run.stderr)}"
    if run.crash is not None:
        memory = "MemoryError" in run.crash.get("mro", [run.crash["type"]]) or any(
            sign in str(run.crash.get("message", "")) for sign in _MEMORY_SIGNS)
        return (MEMORY if memory else CRASH), bucket(run.crash)
    if run.exit_code == 0:
        return RESULT, None
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    if run.exit_code == 2 and lines and lines[-1].startswith("slideseg:"):
        noise = [line for line in lines if "Traceback" in line or " - ERROR - " in line]
        if not noise:
            return CLEAN, None
        return NOISY, f"{run.command}: {re.sub(r'^[0-9:, -]+', '', noise[0])[:60]}"
    if any(sign in run.stderr for sign in _MEMORY_SIGNS):
        return MEMORY, f"memory in {run.command}"
    how = f"signal {run.signal}" if run.signal is not None else f"exit {run.exit_code}"
    return CRASH, f"{how} in {run.command}: {lines[-1][:80] if lines else ''}"


def _hang_location(stderr: str) -> str:
    """The innermost slideseg function (outside the CLI) in the stack dump a hung child wrote."""
    for match in re.finditer(r'File "([^"]+)", line \d+ in (\S+)', stderr):
        path = Path(match.group(1))
        if "slideseg" in path.parts and "cli" not in path.parts:
            return f"{_module(match.group(1))}:{match.group(2)}"
    return "an unknown place"


def owner(key: str) -> str:
    """``'reader'`` for a failure located in the reading boundary (see :data:`READER_FILES`),
    ``'elsewhere'`` for one located in other slideseg code or outside it."""
    return "reader" if any(f" at {where}" in key for where in READER_FILES) else "elsewhere"


def _module(filename: str) -> str:
    """``tifffile``, ``zarr.core.array``, ``slideseg/io/slide.py``... of a frame's file."""
    path = Path(filename)
    if "slideseg" in path.parts:
        return "/".join(path.parts[path.parts.index("slideseg"):])
    if "site-packages" in path.parts:
        return ".".join(path.parts[path.parts.index("site-packages") + 1:]).removesuffix(".py")
    return path.name


def bucket(crash: dict[str, object]) -> str:
    """``Type at slideseg/file.py:function (from module)``: one key per bug, not per case."""
    frames = [tuple(f) for f in crash.get("frames", [])]  # type: ignore[union-attr]
    ours = [f for f in frames if "slideseg" in Path(str(f[0])).parts]
    ours = [f for f in ours if "cli" not in Path(str(f[0])).parts] or ours
    where = f"{_module(str(ours[-1][0]))}:{ours[-1][2]}" if ours else "outside slideseg"
    inner = frames[-1] if frames else None
    source = f" (from {_module(str(inner[0]))})" if inner and ours and inner != ours[-1] else ""
    return f"{crash['type']} at {where}{source}"


# --- planning ------------------------------------------------------------------------------------


def plan_cases(seeds: Sequence[Seed], n: int, master: int, *, predict_fraction: float = 0.35,
               tissue_fraction: float = 0.3, train_weight: float = 0.5) -> list[CaseSpec]:
    """One pristine case per seed (every command, the seed unmutated: each must give a result),
    then ``n`` mutants spread over the seeds: slides run ``info`` (and ``predict`` for a
    fraction), masks ``info`` and one of ``evaluate``/``export-geojson``/``preview``, pairs
    ``train``. Training pairs are drawn ``train_weight`` times as often as other seeds (training
    is slow)."""
    rng = np.random.default_rng([master, 1])
    weights = np.array([train_weight if s.family == "pair" else 1.0 for s in seeds])
    picks = rng.choice(len(seeds), size=n, p=weights / weights.sum())
    specs = [CaseSpec(i, s.name, s.commands, pristine=True) for i, s in enumerate(seeds)]
    for index, k in enumerate(picks, start=len(seeds)):
        seed = seeds[int(k)]
        if seed.family == "pair":
            commands: tuple[str, ...] = ("train",)
        elif seed.family == "mask":
            commands = ("info", seed.commands[1 + int(rng.integers(len(seed.commands) - 1))])
        else:
            commands = ("info", "predict") if rng.random() < predict_fraction else ("info",)
        specs.append(CaseSpec(index, seed.name, commands, bool(rng.random() < tissue_fraction)))
    return specs


# --- running -------------------------------------------------------------------------------------


def make_model(folder: Path) -> Path:
    """The tiny model every ``predict`` case uses (``slideseg new-model --depth 2 --width 4``)."""
    from slideseg.model.config import UNetConfig
    from slideseg.model.files import save_model
    from slideseg.model.unet import build_unet

    path = folder / "tiny.safetensors"
    config = UNetConfig(depth=2, width=4)
    save_model(path, build_unet(config, seed=0), config, {"trained": False})
    return path


def worker_env(work: Path) -> dict[str, str]:
    """The workers' environment: one thread per kernel, few malloc arenas (the address-space limit
    counts reserved arenas), engine artefacts in the work folder, no engine timing."""
    env = dict(os.environ)
    env.update({"MALLOC_ARENA_MAX": "2", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
                "SLIDESEG_ENGINES_DIR": str(work / "engines"), "SLIDESEG_CPU_ENGINE": "torch",
                "PYTHONPATH": os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep),
                "PYTHONWARNINGS": "default"})
    return env


class _Worker:
    def __init__(self, setup: dict[str, object], env: dict[str, str]) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.fuzz.worker"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, cwd=ROOT, env=env)
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(setup) + "\n")
        self.proc.stdin.flush()
        ready = self.proc.stdout.readline().strip()
        if ready != "ready":
            raise RuntimeError(f"fuzz worker did not start (said {ready!r})")

    def run(self, spec: CaseSpec) -> CaseResult:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(asdict(spec)) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"fuzz worker died on case {spec.index} (exit {self.proc.poll()})")
        return CaseResult.from_json(line)

    def close(self) -> None:
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                pipe.close()
        self.proc.wait(timeout=30)


def run_cases(seeds: Sequence[Seed], specs: Iterable[CaseSpec], work: Path, *, master: int, workers: int = 2,
              limits: Limits = DEFAULT_LIMITS, keep: int = 3,
              on_result: Callable[[CaseResult], None] | None = None) -> list[CaseResult]:
    """Run ``specs`` on ``workers`` worker processes (in parallel); keep the folders of the first
    ``keep`` failing cases of each bucket (for reproducing them) and delete the rest."""
    work.mkdir(parents=True, exist_ok=True)
    model = make_model(work)
    setup = {"seeds": [{**asdict(s), "path": str(s.path)} for s in seeds], "model": str(model), "work": str(work),
             "seconds": limits.seconds, "memory": limits.memory, "master": master}
    todo: queue.Queue[CaseSpec | None] = queue.Queue()
    for spec in specs:
        todo.put(spec)
    results: list[CaseResult] = []
    kept: Counter[str] = Counter()
    lock = threading.Lock()
    errors: list[BaseException] = []

    def serve() -> None:
        try:
            worker = _Worker(setup, worker_env(work))
        except BaseException as e:  # reported after the join
            errors.append(e)
            return
        try:
            while True:
                try:
                    spec = todo.get_nowait()
                except queue.Empty:
                    return
                result = worker.run(spec)
                with lock:
                    results.append(result)
                    failing = [b for o, b in map(classify, result.runs) if o in FAILURES]
                    if failing and kept[failing[0] or ""] < keep:
                        kept[failing[0] or ""] += 1
                    else:
                        shutil.rmtree(result.folder, ignore_errors=True)
                        result.folder = ""
                    if on_result is not None:
                        on_result(result)
        except BaseException as e:
            errors.append(e)
        finally:
            worker.close()

    threads = [threading.Thread(target=serve) for _ in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return sorted(results, key=lambda r: r.spec.index)


# --- summary -------------------------------------------------------------------------------------


@dataclass
class Summary:
    cases: int
    runs: int
    seconds: float
    outcomes: Counter[str]
    by_format: dict[str, Counter[str]]
    by_command: dict[str, Counter[str]]
    buckets: dict[str, list[tuple[CaseResult, RunResult]]]
    times: dict[str, list[float]]
    """Seconds of each run, by command."""
    pristine: dict[str, str]
    """``seed command`` -> outcome of every run of an unmutated seed (each should be a result)."""
    slowest: list[tuple[float, str]]
    """The slowest runs that were not hangs: (seconds, description), slowest first."""

    @property
    def failures(self) -> int:
        return sum(self.outcomes[o] for o in FAILURES)

    def table(self) -> str:
        """The summary as plain text: totals, per format, per command, crash buckets."""
        head = f"{'':18}" + "".join(f"{o:>8}" for o in OUTCOMES) + f"{'runs':>8}"

        def row(name: str, counts: Counter[str]) -> str:
            return f"{name:18}" + "".join(f"{counts[o]:>8}" for o in OUTCOMES) + f"{sum(counts.values()):>8}"

        bad = {k: v for k, v in self.pristine.items() if v != RESULT}
        lines = [f"cases {self.cases} mutants, runs {self.runs}, {self.seconds:.0f} s "
                 f"({self.runs / max(self.seconds, 1e-9):.1f} runs/s)",
                 f"unmutated seeds: {len(self.pristine) - len(bad)} of {len(self.pristine)} runs gave a result"
                 + (f"; not: {bad}" if bad else ""), "", head, row("all", self.outcomes), ""]
        lines += [row(name, c) for name, c in sorted(self.by_format.items())] + [""]
        lines += [row(name, c) for name, c in sorted(self.by_command.items())] + [""]
        lines.append(f"{'seconds per run':18}{'mean':>8}{'p95':>8}{'max':>8}")
        for name, t in sorted(self.times.items()):
            lines.append(f"{name:18}{np.mean(t):8.2f}{np.percentile(t, 95):8.2f}{max(t):8.2f}")
        lines += ["slowest:"] + [f"  {s:6.2f} s  {what}" for s, what in self.slowest] + [""]
        lines.append(f"distinct failure buckets: {len(self.buckets)}")
        for key, hits in sorted(self.buckets.items(), key=lambda kv: -len(kv[1])):
            case, run = hits[0]
            lines.append(f"  {len(hits):5}  {key}")
            lines.append(f"         e.g. case {case.spec.index} ({case.spec.seed}, {run.command}): "
                         f"{'; '.join(case.mutations)[:160]}")
        return "\n".join(lines)


def summarise(results: Sequence[CaseResult], seconds: float) -> Summary:
    outcomes: Counter[str] = Counter()
    by_format: dict[str, Counter[str]] = defaultdict(Counter)
    by_command: dict[str, Counter[str]] = defaultdict(Counter)
    buckets: dict[str, list[tuple[CaseResult, RunResult]]] = defaultdict(list)
    times: dict[str, list[float]] = defaultdict(list)
    slow: list[tuple[float, str]] = []
    pristine: dict[str, str] = {}
    for case in results:
        if case.spec.pristine:
            pristine.update({f"{case.spec.seed} {run.command}": classify(run)[0] for run in case.runs})
            continue
        for run in case.runs:
            times[run.command].append(run.seconds)
            if not run.timed_out:
                slow.append((run.seconds, f"case {case.spec.index} ({case.spec.seed}, {run.command}, "
                                          f"{classify(run)[0]}): {'; '.join(case.mutations)[:100]}"))
            outcome, key = classify(run)
            outcomes[outcome] += 1
            by_format[case.spec.seed][outcome] += 1
            by_command[run.command][outcome] += 1
            if outcome in FAILURES:
                buckets[f"{outcome}: {key}"].append((case, run))
    mutants = sum(not case.spec.pristine for case in results)
    return Summary(mutants, sum(outcomes.values()), seconds, outcomes, dict(by_format), dict(by_command),
                   dict(buckets), dict(times), pristine, sorted(slow, reverse=True)[:5])


def fuzz(folder: Path, cases: int, master: int, *, workers: int = 2, limits: Limits = DEFAULT_LIMITS,
         on_result: Callable[[CaseResult], None] | None = None, **plan: float) -> tuple[Summary, list[CaseResult]]:
    """Build the seeds in ``folder``, plan and run ``cases`` cases, and summarise them."""
    from tests.fuzz.seeds import build_seeds

    t0 = time.monotonic()
    seeds = build_seeds(folder / "seeds")
    specs = plan_cases(seeds, cases, master, **plan)
    results = run_cases(seeds, specs, folder / "cases", master=master, workers=workers, limits=limits,
                        on_result=on_result)
    return summarise(results, time.monotonic() - t0), results


__all__ = ["CLEAN", "CRASH", "FAILURES", "GIB", "HANG", "MEMORY", "OUTCOMES", "RESULT", "Summary", "bucket",
           "classify", "fuzz", "plan_cases", "run_cases", "summarise"]
