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
import time
from pathlib import Path

import numpy as np

from slideseg.engines import load_engine
from slideseg.io import open_slide
from slideseg.model import UNetConfig, build_unet, save_model
from slideseg.predict import PredictConfig, default_batch_size, predict
from slideseg.schedule import read_window
from slideseg.synth import SynthConfig, write_synthetic_slide
from slideseg.tissue import TissueMask
from slideseg.write import open_mask


def engine_only(slide_path: Path, mask: Path, model: Path) -> float:
    """Engine time for the tiles of the chunks that `predict` ran (read into memory first)."""
    from slideseg.plan import make_plan

    g = open_mask(mask)
    rec = dict(g.attrs)["slideseg"]
    p = rec["plan"]
    plan = make_plan(tuple(p["shape"]), tile=p["tile"], context=p["context"], alignment=p["alignment"],
                     chunk=p["chunk"], tile_output=p["tile_output"])
    tissue = TissueMask.from_zarr(g["tissue"]) if "tissue" in g else None
    engine = load_engine(model, device="cpu")
    n = default_batch_size(plan.tile, gpu=False)
    batches = []
    with open_slide(slide_path) as slide:
        for chunk in plan:
            if tissue is not None and not tissue.covers(chunk.box):
                continue
            window = read_window(slide, chunk.window, "reflect")
            tiles = [window[t.read.relative_to(chunk.window)] for t in chunk.tiles]
            batches += [np.stack(tiles[i : i + n]).transpose(0, 3, 1, 2) for i in range(0, len(tiles), n)]
    engine.infer(batches[0])
    t0 = time.perf_counter()
    for b in batches:
        engine.infer(b)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--fractions", type=float, nargs="+", default=[0.2, 0.5, 1.0])
    ap.add_argument("--out", type=Path, default=Path("benchmarks/out/tissue"))
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    model = args.out / "unet-w16.safetensors"
    mc = UNetConfig(depth=4, width=16)
    save_model(model, build_unet(mc, seed=0), mc, {"trained": False})
    rows = []
    for f in args.fractions:
        slide = args.out / f"tissue-{f:.2f}.ome.tif"
        if not slide.exists():
            write_synthetic_slide(slide, SynthConfig(size=(args.size, args.size), tissue_fraction=f, seed=1))
        mask = args.out / f"mask-{f:.2f}.zarr"
        t0 = time.perf_counter()
        r = predict(slide, mask, model, PredictConfig(device="cpu", overwrite=True))
        wall = time.perf_counter() - t0
        eng = engine_only(slide, mask, model)
        total = r.chunks_run + r.chunks_skipped
        rows.append({"tissue_target": f, "tissue_detected": round(r.tissue_fraction or 1.0, 3),
                     "chunks_run_fraction": round(r.chunks_run / total, 3), "wall_s": round(wall, 2),
                     "engine_s": round(eng, 2), "efficiency": round(eng / wall, 3)})
    full = rows[-1]["wall_s"]
    for row in rows:
        row["wall_vs_full"] = round(row["wall_s"] / full, 3)
    print(json.dumps({"bench": "tissue", "size": args.size, "rows": rows,
                      "machine": f"{platform.machine()} {platform.node()}", "date": time.strftime("%Y-%m-%d")}))


if __name__ == "__main__":
    main()
