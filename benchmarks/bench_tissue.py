"""Tissue skipping: wall time follows the tissue fraction, and the pipeline keeps the engine busy.

Synthetic slides with 20 %, 50 % and 100 % tissue are segmented on the CPU (base-16 depth-4 valid
U-Net) with tissue skipping on. For each: the fraction of chunks that ran, the wall time relative
to the 100 % slide, and pipeline efficiency = engine-only time for exactly the tiles that ran /
end-to-end wall time.

    .venv/bin/python benchmarks/bench_tissue.py [--size 4096] [--fractions 0.2 0.5 1.0]

Prints one JSON line; record it in benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

from slideseg.engines.registry import load_engine
from slideseg.io.tissue import TissueMask
from slideseg.plan.tiles import make_plan
from slideseg.predict import PredictConfig, default_batch_size, predict
from slideseg.tools.synth import SynthConfig, write_synthetic_slide
from slideseg.write.mask import open_mask

sys.path.insert(0, str(Path(__file__).parent))
from common import tile_batches, time_engine, untrained_model


def engine_only(slide_path: Path, mask: Path, model: Path, engine: str) -> float:
    """Engine time for the tiles of the chunks that `predict` ran (read into memory first)."""
    g = open_mask(mask)
    p = dict(g.attrs)["slideseg"]["plan"]
    plan = make_plan(tuple(p["shape"]), tile=p["tile"], context=p["context"], alignment=p["alignment"],
                     chunk=p["chunk"], tile_output=p["tile_output"])
    tissue = TissueMask.from_zarr(g["tissue"]) if "tissue" in g else None
    batches = tile_batches(slide_path, plan, "reflect", default_batch_size(plan.tile, gpu=False),
                           keep=lambda c: tissue is None or tissue.covers(c.box))
    return time_engine(load_engine(model, engine, device="cpu"), batches)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--fractions", type=float, nargs="+", default=[0.2, 0.5, 1.0])
    ap.add_argument("--chunk", type=int, default=512, help="output chunk edge (finer: skipping follows tissue closer)")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/out/tissue"))
    ap.add_argument("--engine", default="torch", help="engine for both passes (auto | torch | onnxruntime)")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    model = args.out / "unet-w16.safetensors"
    untrained_model(model)
    rows = []
    for f in args.fractions:
        slide = args.out / f"tissue-{f:.2f}.ome.tif"
        if not slide.exists():
            write_synthetic_slide(slide, SynthConfig(size=(args.size, args.size), tissue_fraction=f, seed=1))
        mask = args.out / f"mask-{f:.2f}.zarr"
        cfg = PredictConfig(device="cpu", chunk=args.chunk, engine=args.engine, overwrite=True)
        if not rows:  # warm-up: exports, caches, first-call costs
            predict(slide, mask, model, cfg)
        t0 = time.perf_counter()
        r = predict(slide, mask, model, cfg)
        wall = time.perf_counter() - t0
        eng = engine_only(slide, mask, model, args.engine)
        total = r.chunks_run + r.chunks_skipped
        rows.append({"tissue_target": f, "tissue_detected": round(r.tissue_fraction or 1.0, 3),
                     "chunks_run_fraction": round(r.chunks_run / total, 3), "wall_s": round(wall, 2),
                     "engine_s": round(eng, 2), "efficiency": round(eng / wall, 3)})
    full = rows[-1]["wall_s"]
    for row in rows:
        row["wall_vs_full"] = round(row["wall_s"] / full, 3)
    print(json.dumps({"bench": "tissue", "size": args.size, "chunk": args.chunk, "engine": args.engine,
                      "rows": rows,
                      "machine": f"{platform.machine()} {platform.node()}", "date": time.strftime("%Y-%m-%d")}))


if __name__ == "__main__":
    main()
