"""CPU throughput per engine (PyTorch vs ONNX Runtime), as ratios measured in one run.

Each engine gets the same raw uint8 batch; engines are timed in interleaved rounds (so a burst of
load from another process hits all of them alike) after a warm-up, and the best round is kept.
ONNX exports are made before timing and are not counted.

    .venv/bin/python benchmarks/bench_engines.py [--width 16] [--tile 572] [--batch 2] [--rounds 5]

Prints a table and one JSON line; record them in benchmarks/RESULTS.md (## Engines).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from collections.abc import Callable

import numpy as np
import torch

from slideseg.engines.base import Engine
from slideseg.engines.registry import make_engine
from slideseg.engines.selection import cpu_name
from slideseg.model.config import UNetConfig
from slideseg.model.files import LoadedModel
from slideseg.model.unet import build_unet

VARIANTS = [  # (label, engine, precision)
    ("torch fp32", "torch", "fp32"),
    ("torch bf16", "torch", "bf16"),
    ("onnxruntime fp32", "onnxruntime", "fp32"),
    ("onnxruntime fp16", "onnxruntime", "fp16"),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--tile", type=int, default=572)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    os.environ.setdefault("SLIDESEG_ENGINES_DIR", tempfile.mkdtemp(prefix="slideseg-bench-"))

    cfg = UNetConfig(depth=args.depth, width=args.width)
    model = LoadedModel(build_unet(cfg, seed=0).eval(), cfg, "bench".ljust(64, "0"))
    out = cfg.geometry.output_size(args.tile)
    batch = np.random.default_rng(0).integers(0, 256, (args.batch, 3, args.tile, args.tile), dtype=np.uint8)
    engines: dict[str, Engine] = {}
    for label, name, precision in VARIANTS:
        engines[label] = make_engine(name, _copy(model), device="cpu", threads=args.threads, precision=precision)
        engines[label].infer(batch)  # warm-up (and the ONNX export)
    best = _interleaved(engines, batch, args.rounds)
    mp = args.batch * out * out / 1e6
    base = best["torch fp32"]
    rows = {label: {"seconds": round(s, 4), "output_mp_per_s": round(mp / s, 3), "vs_torch_fp32": round(base / s, 2)}
            for label, s in best.items()}
    print(f"{'engine':<20}{'s/batch':>10}{'MP/s':>8}{'x torch fp32':>14}")
    for label, r in rows.items():
        print(f"{label:<20}{r['seconds']:>10.3f}{r['output_mp_per_s']:>8.3f}{r['vs_torch_fp32']:>14.2f}")
    print(json.dumps({
        "bench": "engines", "depth": args.depth, "width": args.width, "tile": args.tile, "output": out,
        "batch": args.batch, "rounds": args.rounds, "results": rows,
        "machine": f"{cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__} "
                   f"({torch.get_num_threads()} threads), {platform.python_version()}",
        "date": time.strftime("%Y-%m-%d"),
    }))


def _copy(model: LoadedModel) -> LoadedModel:
    net = build_unet(model.config)
    net.load_state_dict(model.net.state_dict())
    return LoadedModel(net.eval(), model.config, model.weights_sha256)


def _interleaved(engines: dict[str, Engine], batch: np.ndarray, rounds: int,
                 clock: Callable[[], float] = time.perf_counter) -> dict[str, float]:
    best = {label: float("inf") for label in engines}
    for _ in range(rounds):
        for label, engine in engines.items():
            t0 = clock()
            engine.infer(batch)
            best[label] = min(best[label], clock() - t0)
    return best


if __name__ == "__main__":
    main()
