"""Which optimiser, learning rate, tile and batch train best within a fixed CPU budget: the sweep
behind ``slideseg train``'s default recipe (docs/training.md, "Defaults").

Every run trains a new depth-4 U-Net (``--width``, default 16) on the synthetic fluorescence-like
field of :mod:`bench_train` (top 320 rows; slideseg holds a band out for validation and keeps the
best epoch) for the same wall-clock time (``--minutes``, ``max_time``, so the learning-rate schedule
spans it) or the same input megapixels (``--megapixels``: compute, which the load of a shared
machine does not change), validating every 64 tiles; then segments the held-out bottom rows with
``predict`` and scores them with ``evaluate``: foreground IoU, object F1, merge rate of touching
nuclei and PQ.

    .venv/bin/python benchmarks/bench_train_sweep.py [--minutes 2 | --megapixels 60] [--only NAME ...]
        [--widths 8 32] [--seeds 0 1]

Prints one JSON line per run (each run's configuration included) and a table sorted by object F1.
Runs one at a time, ``--threads 1`` by default, so that runs on a shared machine compare fairly.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

from bench_train import data_summary, machine, train_and_score, write_data

from slideseg.train.loop import TrainConfig

# name -> (optimizer, lr, momentum, tile (depth 4: output = tile - 184), batch)
GRID: dict[str, tuple[str, float, float, int, int]] = {
    "paper-sgd.001-572x1": ("sgd", 0.001, 0.99, 572, 1),
    "sgd.01m.9-316x8": ("sgd", 0.01, 0.9, 316, 8),
    "adam.001-572x1": ("adam", 0.001, 0.9, 572, 1),
    "adam.003-572x1": ("adam", 0.003, 0.9, 572, 1),
    "adam.01-572x1": ("adam", 0.01, 0.9, 572, 1),
    "adam.003-444x2": ("adam", 0.003, 0.9, 444, 2),
    "adam.003-444x4": ("adam", 0.003, 0.9, 444, 4),
    "adam.003-316x4": ("adam", 0.003, 0.9, 316, 4),
    "adam.001-316x8": ("adam", 0.001, 0.9, 316, 8),
    "adam.003-316x8": ("adam", 0.003, 0.9, 316, 8),
    "adam.01-316x8": ("adam", 0.01, 0.9, 316, 8),
}


def config(name: str, minutes: float, megapixels: float | None, threads: int | None, seed: int) -> TrainConfig:
    """The run ``name`` of the grid, for ``minutes`` of training or ``megapixels`` of input tiles."""
    optimizer, lr, momentum, tile, batch = GRID[name]
    budget = ({"steps": math.ceil(megapixels * 1e6 / (batch * tile * tile))} if megapixels else
              {"max_time": minutes})
    return TrainConfig(optimizer=optimizer, lr=lr, momentum=momentum, tile=tile, batch_size=batch,  # type: ignore[arg-type]
                       warmup_steps=0 if batch == 1 else 20, lr_schedule="cosine", threads=threads, seed=seed,
                       tiles_per_epoch=64, **budget)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=2.0, help="Training time per run.")
    ap.add_argument("--megapixels", type=float, default=None,
                    help="Instead of --minutes: input megapixels per run (steps x batch x tile^2), a budget of "
                    "compute that the load of a shared machine does not change.")
    ap.add_argument("--only", nargs="+", default=list(GRID), choices=list(GRID), help="Runs of the grid to do.")
    ap.add_argument("--widths", type=int, nargs="*", default=[],
                    help="Also run the first --only configuration at these widths (the CPU width rule).")
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/out/sweep"))
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    train_dir, test_dir = write_data(args.out / "data")
    plan = [(name, args.width, seed) for seed in args.seeds for name in args.only]
    plan += [(args.only[0], w, seed) for seed in args.seeds for w in args.widths]
    rows: list[dict[str, Any]] = []
    print(json.dumps({"bench": "train sweep", "minutes": None if args.megapixels else args.minutes,
                      "megapixels": args.megapixels, "threads": args.threads, "seeds": args.seeds,
                      **data_summary(test_dir), "machine": machine(), "date": time.strftime("%Y-%m-%d %H:%M")}),
          flush=True)
    for name, width, seed in plan:
        cfg = config(name, args.minutes, args.megapixels, args.threads, seed)
        label = f"{name}-w{width}"
        row = {"config": label, "seed": seed, **train_and_score(train_dir, test_dir, args.out, f"{label}-s{seed}",
                                                                 cfg, {"depth": 4, "width": width})}
        print(json.dumps(row), flush=True)
        rows.append(row)
    print(f"{'config':<26} {'seed':>4} {'steps':>6} {'tiles':>6} {'train s':>7} {'IoU':>6} {'F1':>6} {'merge':>6} "
          f"{'PQ':>6} best/epochs")
    for r in sorted(rows, key=lambda r: -r["object_f1"]):
        _, _, _, _, batch = GRID[r["config"].rsplit("-w", 1)[0]]
        print(f"{r['config']:<26} {r['seed']:>4} {r['steps']:>6} {r['steps'] * batch:>6} {r['train_s']:>7.0f} "
              f"{r['foreground_iou']:>6.3f} {r['object_f1']:>6.3f} {r['merge_rate']:>6.3f} {r['pq']:>6.3f} "
              f"{r['best_epoch']}/{r['epochs']}")


if __name__ == "__main__":
    main()
