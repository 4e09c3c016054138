"""End-to-end `predict` throughput and pipeline efficiency on the CPU.

Pipeline efficiency = (engine-only time for exactly the tiles `predict` runs) / (end-to-end wall
time of `predict`, slide opening, reading, decoding, writing and pyramid included). 1.0 means the
network never waits for I/O.

    .venv/bin/python benchmarks/bench_predict.py [--size 4096] [--width 16] [--repeat 2]

Prints one JSON line; record it in benchmarks/RESULTS.md with the machine and date.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

from slideseg.engines.registry import make_engine
from slideseg.io.slide import open_slide
from slideseg.model.files import load_model
from slideseg.predict import PredictConfig, default_batch_size, plan_for, predict
from slideseg.tools.synth import SynthConfig, write_synthetic_slide

sys.path.insert(0, str(Path(__file__).parent))
from common import tile_batches, time_engine, untrained_model


def engine_only_seconds(slide_path: Path, model_path: Path, cfg: PredictConfig) -> tuple[float, int]:
    """Time the engine alone on the tiles `predict` would run (tiles read into memory first)."""
    model = load_model(model_path)
    engine = make_engine(cfg.engine, model, device=cfg.device, threads=cfg.threads)
    with open_slide(slide_path) as slide:
        plan = plan_for(slide.shape[:2], model.config.geometry, cfg)
    batch = cfg.batch_size or default_batch_size(plan.tile, gpu=False)
    batches = tile_batches(slide_path, plan, model.config.mirror, batch)
    return time_engine(engine, batches), sum(len(b) for b in batches)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--chunk", type=int, default=1024)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/out"))
    ap.add_argument("--engine", default="torch", help="engine for both passes (auto | torch | onnxruntime)")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    slide = args.out / f"synth-{args.size}.ome.tif"
    if not slide.exists():
        write_synthetic_slide(slide, SynthConfig(size=(args.size, args.size), seed=0))
    model_path = args.out / f"unet-w{args.width}.safetensors"
    untrained_model(model_path, args.width)
    cfg = PredictConfig(chunk=args.chunk, device="cpu", engine=args.engine, overwrite=True)
    predict(slide, args.out / "mask.zarr", model_path, cfg)  # warm-up: exports, caches, first-call costs

    runs = []
    for _ in range(args.repeat):
        engine_s, n_tiles = engine_only_seconds(slide, model_path, cfg)
        t0 = time.perf_counter()
        result = predict(slide, args.out / "mask.zarr", model_path, cfg)
        wall = time.perf_counter() - t0
        runs.append({"engine_s": round(engine_s, 2), "wall_s": round(wall, 2),
                     "efficiency": round(engine_s / wall, 3),
                     "output_mp_per_s": round(args.size**2 / 1e6 / wall, 3)})
    print(json.dumps({
        "bench": "predict", "size": args.size, "width": args.width, "chunk": args.chunk,
        "tiles": n_tiles, "plan": result.plan, "engine": result.engine, "runs": runs,
        "machine": f"{platform.machine()} {platform.processor() or ''} {torch.get_num_threads()} threads".strip(),
        "date": time.strftime("%Y-%m-%d"),
    }))


if __name__ == "__main__":
    main()
