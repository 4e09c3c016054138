"""Peak memory of `predict` does not grow with slide size.

Slides of 10k², 40k² and 100k² (OME-Zarr, mostly glass, the same ~6 megapixels of tissue in each,
so every run does the same inference) are segmented by a base-16 depth-4 valid U-Net on the CPU,
each `predict` in its own process; the peak resident memory of that process is read from the OS.

    .venv/bin/python benchmarks/bench_memory.py [--sizes 10000 40000 100000]

Prints one JSON line; record it in benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import untrained_model
from sparse_slide import write_sparse_slide

PEAK = """
import resource, subprocess, sys, time
t0 = time.perf_counter()
rc = subprocess.run(sys.argv[1:]).returncode
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, time.perf_counter() - t0, rc)
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 40_000, 100_000])
    ap.add_argument("--tissue-px", type=float, default=6e6)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/out/memory"))
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    model = untrained_model(args.out / "unet-w16.safetensors")
    rows = []
    for size in args.sizes:
        slide = args.out / f"sparse-{size}.zarr"
        t0 = time.perf_counter()
        drawn = write_sparse_slide(slide, size, args.tissue_px / size**2)
        made = time.perf_counter() - t0
        cmd = [sys.executable, "-m", "slideseg", "predict", str(slide), "-o", str(args.out / f"mask-{size}.zarr"),
               "--model", str(model), "--device", "cpu", "--overwrite", "--no-progress"]
        res = subprocess.run([sys.executable, "-c", PEAK, *cmd], capture_output=True, text=True, check=True)
        kib, seconds, rc = res.stdout.split()[-3:]
        if rc != "0":
            raise SystemExit(f"predict failed on {size}: {res.stderr}")
        info = json.loads(subprocess.run([sys.executable, "-m", "slideseg", "info", "--json",
                                          str(args.out / f"mask-{size}.zarr")], capture_output=True, text=True,
                                         check=True).stdout)
        plan = info["slideseg"]["plan"]
        rows.append({"size": size, "tissue_fraction": round(drawn, 6), "chunks": plan["grid"][0] * plan["grid"][1],
                     "peak_rss_mib": round(int(kib) / 1024, 1), "predict_s": round(float(seconds), 1),
                     "slide_write_s": round(made, 1)})
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    base = rows[0]["peak_rss_mib"]
    print(json.dumps({"bench": "memory", "rows": rows,
                      "ratio_to_smallest": [round(r["peak_rss_mib"] / base, 3) for r in rows],
                      "machine": f"{platform.machine()} {platform.node()}", "date": time.strftime("%Y-%m-%d")}))


if __name__ == "__main__":
    main()
