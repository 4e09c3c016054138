"""Weighted loss (the U-Net paper's weight map) vs plain cross-entropy, at equal budget, on synthetic
touching nuclei; plus training throughput on the CPU.

Both arms train the same architecture with the same optimiser, learning rate, tiles (the same seeds
draw the same tiles and augmentation), separation borders in the targets and number of steps; only
the per-pixel loss weights differ. Each model then segments a held-out synthetic slide through
``predict``, and ``evaluate`` measures the merge rate of touching nuclei (lower is better), object
F1 and foreground IoU.

    .venv/bin/python benchmarks/bench_train.py [--steps 600] [--seeds 0 1 2] [--width 8] [--depth 3]

Prints one JSON line per run and a summary (mean ± sample standard deviation over seeds); record
it in benchmarks/RESULTS.md with the command, machine and date.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from slideseg.predict import PredictConfig, predict
from slideseg.tools.evaluate import evaluate
from slideseg.tools.synth import SynthConfig, write_synthetic_slide
from slideseg.train.data import load_training_data
from slideseg.train.loop import TrainConfig, train


def make_data(out: Path, size: int) -> tuple[Path, Path]:
    """Training slide (seed 101) and held-out slide (seed 202), each with its truth."""
    for sub, seed, edge in (("train", 101, size), ("test", 202, size // 2)):
        slide = out / sub / f"{sub}.ome.tif"
        if not slide.exists():
            write_synthetic_slide(slide, SynthConfig(size=(edge, edge), seed=seed))
    return out / "train", out / "test"


def run(train_dir: Path, test_dir: Path, out: Path, loss: str, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    data = load_training_data(images=train_dir, masks=train_dir)
    cfg = TrainConfig(steps=args.steps, tile=args.tile, optimizer="adam", lr=args.lr, loss=loss,  # type: ignore[arg-type]
                      seed=seed, tiles_per_epoch=args.steps, threads=args.threads)
    model = out / f"{loss}-seed{seed}.safetensors"
    t0 = time.perf_counter()
    result = train(data, model, cfg, arch={"depth": args.depth, "width": args.width}, overwrite=True)
    seconds = time.perf_counter() - t0
    data.close()
    predict(test_dir / "test.ome.tif", out / f"{loss}-seed{seed}.zarr", model,
            PredictConfig(device="cpu", overwrite=True))
    r = evaluate(out / f"{loss}-seed{seed}.zarr", test_dir / "test.truth.zarr")
    row = {"loss": loss, "seed": seed, "steps": result.steps, "train_s": round(seconds, 1),
           "tiles_per_s": result.history[-1]["tiles_per_s"], "train_loss": round(result.history[-1]["train_loss"], 4),
           "merge_rate": round(r.merges["merge_rate"], 4), "touching_pairs": r.merges["touching_pairs"],
           "object_f1": round(r.objects["f1"], 4), "foreground_iou": round(r.foreground_iou, 4)}
    print(json.dumps(row), flush=True)
    return row


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown CPU"


def summarise(rows: list[dict[str, Any]], key: str) -> str:
    values = [r[key] for r in rows]
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.4f} ± {spread:.4f} (min {min(values):.4f}, max {max(values):.4f})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=600, help="Training steps (1 tile each) per run.")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--depth", type=int, default=3)
    ap.add_argument("--width", type=int, default=8)
    ap.add_argument("--tile", type=int, default=252)
    ap.add_argument("--lr", type=float, default=0.003)
    ap.add_argument("--size", type=int, default=1024, help="Edge of the training slide (held-out: half).")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/out/train"))
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    train_dir, test_dir = make_data(args.out, args.size)
    rows = [run(train_dir, test_dir, args.out, loss, seed, args) for seed in args.seeds for loss in ("weighted", "ce")]
    summary: dict[str, Any] = {
        "bench": "train", "steps": args.steps, "depth": args.depth, "width": args.width, "tile": args.tile,
        "lr": args.lr, "seeds": args.seeds, "torch_threads": args.threads or torch.get_num_threads(),
        "machine": f"{platform.machine()} {_cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__}",
        "date": time.strftime("%Y-%m-%d")}
    for loss in ("weighted", "ce"):
        sub = [r for r in rows if r["loss"] == loss]
        summary[loss] = {k: summarise(sub, k) for k in ("merge_rate", "object_f1", "foreground_iou", "tiles_per_s")}
    print(json.dumps(summary, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
