"""Start-up time of a light command: `slideseg info mask.zarr`, this tree against an earlier one.

A light command should cost the interpreter, the CLI and the few readers it needs, not torch. Each
run is a fresh ``python -m slideseg`` process; the trees are taken in turn (one warm-up run each
first, so the file cache is warm for both), and the median wall time of ``--repeat`` runs is given
for each, with their ratio. The earlier tree is checked out with ``git worktree`` into a temporary
folder (removed afterwards) and put first on ``PYTHONPATH``; the run checks which tree it imported.
A probe run of each tree lists the heavy packages the command loaded.

    .venv/bin/python benchmarks/bench_startup.py [--before b484b12] [--repeat 11]

Prints one JSON line; record it in benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from slideseg.io.ngff import LabelClass
from slideseg.write.mask import create_mask

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "distributed", "dask", "zarr", "tifffile", "scipy", "PIL", "onnx", "onnxruntime", "safetensors")

# Runs the CLI, then prints where slideseg came from and which heavy packages were loaded.
PROBE = """
import json, sys
from slideseg.cli import main
try:
    main()
except SystemExit:
    pass
import slideseg
loaded = {m.split(".")[0] for m in sys.modules}
print(json.dumps({"slideseg": slideseg.__file__, "heavy": sorted(loaded & set(__HEAVY__))}))
""".replace("__HEAVY__", repr(HEAVY))


@contextmanager
def worktree(rev: str) -> Iterator[Path]:
    """A temporary checkout of ``rev`` beside the repository, removed on exit."""
    with tempfile.TemporaryDirectory(prefix="slideseg-before-") as tmp:
        path = Path(tmp) / "tree"
        subprocess.run(["git", "worktree", "add", "--detach", str(path), rev], cwd=ROOT, check=True,
                       capture_output=True)
        try:
            yield path
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(path)], cwd=ROOT, check=True)


def write_mask(path: Path) -> Path:
    """A finished 1024 x 1024 two-class mask with its pyramid."""
    chunk = 256
    writer = create_mask(path, (1024, 1024), chunk, [LabelClass(0, "background", (0, 0, 0, 0)),
                                                     LabelClass(1, "nucleus", (255, 0, 0, 255))],
                         0.5, {"source": {"path": "", "level": 0}}, overwrite=True)
    block = np.zeros((chunk, chunk), np.uint8)
    block[64:192, 64:192] = 1
    for iy in range(writer.grid[0]):
        for ix in range(writer.grid[1]):
            writer.write_chunk(iy, ix, block)
    writer.finalize()
    return path


def env_for(tree: Path) -> dict[str, str]:
    """The environment that imports slideseg from ``tree``."""
    return {**os.environ, "PYTHONPATH": str(tree)}


def run_once(tree: Path, args: list[str], cwd: Path) -> float:
    """Wall seconds of one ``python -m slideseg ARGS`` process."""
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "slideseg", *args], cwd=cwd, env=env_for(tree), check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def probe(tree: Path, args: list[str], cwd: Path) -> dict[str, object]:
    """Where slideseg was imported from and the heavy packages the command loaded."""
    res = subprocess.run([sys.executable, "-c", PROBE, *args], cwd=cwd, env=env_for(tree), check=True,
                         capture_output=True, text=True)
    report: dict[str, object] = json.loads(res.stdout.strip().splitlines()[-1])
    if not str(report["slideseg"]).startswith(str(tree)):
        raise RuntimeError(f"expected slideseg from {tree}, imported {report['slideseg']}")
    return report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", default="b484b12", help="The earlier tree's commit.")
    ap.add_argument("--repeat", type=int, default=11, help="Timed runs per tree and command.")
    args = ap.parse_args()
    commands = {"info mask.zarr": ["info", "mask.zarr"], "--help": ["--help"]}
    with tempfile.TemporaryDirectory(prefix="slideseg-startup-") as tmp, worktree(args.before) as before:
        work = Path(tmp)
        write_mask(work / "mask.zarr")
        trees = {"current": ROOT, args.before: before}
        result: dict[str, object] = {}
        for name, argv in commands.items():
            seconds: dict[str, list[float]] = {t: [] for t in trees}
            heavy = {t: probe(path, argv, work)["heavy"] for t, path in trees.items()}
            for path in trees.values():
                run_once(path, argv, work)  # warm-up
            for _ in range(args.repeat):
                for t, path in trees.items():
                    seconds[t].append(run_once(path, argv, work))
            median = {t: statistics.median(s) for t, s in seconds.items()}
            result[name] = {
                "median_s": {t: round(m, 3) for t, m in median.items()},
                "min_s": {t: round(min(s), 3) for t, s in seconds.items()},
                "before/current": round(median[args.before] / median["current"], 2),
                "heavy_loaded": heavy,
            }
    print(json.dumps({"repeat": args.repeat, "python": platform.python_version(), "cpus": os.cpu_count(),
                      "machine": platform.machine(), "date": time.strftime("%Y-%m-%d"), **result}))


if __name__ == "__main__":
    main()
