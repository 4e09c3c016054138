"""Peak memory and throughput of `slideseg objects` against mask size.

Synthetic masks of N x N px (streamed chunk by chunk with create_mask + MaskWriter: discs of radius
3-5 px, two classes, on a 17-px grid that is not aligned with the 1024-px chunks, so many discs
cross chunk borders; one object per grid cell) are turned into instance images and tables by
`objects`, each run in its own process with threads (the default); the peak resident memory of
that process is read from the OS. Optionally, `predict` (the bundled model) and `objects` run on
one synthetic slide, to compare their times.

    .venv/bin/python benchmarks/bench_objects.py [--sizes 10000 40000] [--predict-size 4096]

Prints one JSON line; record it in benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from slideseg.io.ngff import LabelClass
from slideseg.plan.tiles import grid_box
from slideseg.write.mask import create_mask

SPACING = 17
CLASSES = (LabelClass(0, "background", (0, 0, 0, 0)), LabelClass(1, "nucleus", (255, 0, 0, 255)),
           LabelClass(2, "other", (0, 0, 255, 255)))
RUN = """
import json, resource, sys, time
from slideseg.tools.objects import ObjectsConfig, objects
t0 = time.perf_counter()
r = objects(sys.argv[1], ObjectsConfig(overwrite=True))
print(json.dumps({"objects": r.objects, "seconds": time.perf_counter() - t0, "units": r.units,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def discs(box: tuple[int, int, int, int]) -> np.ndarray:
    """Class ids of the chunk ``box``: one disc per 17-px cell, placed and sized by a hash of the cell."""
    y0, y1, x0, x1 = box
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.int64)
    cy, cx = yy // SPACING, xx // SPACING
    h = ((cy * 73856093) ^ (cx * 19349663)) & 0xFFFF
    my = cy * SPACING + SPACING // 2 + h % 5 - 2
    mx = cx * SPACING + SPACING // 2 + (h >> 3) % 5 - 2
    r = 3 + (h >> 6) % 3
    inside = (yy - my) ** 2 + (xx - mx) ** 2 <= r**2
    return np.where(inside, 1 + (h >> 9) % 2, 0).astype(np.uint8)


def write_disc_mask(path: Path, size: int, chunk: int = 1024) -> float:
    """Write the N x N disc mask (0.5 µm/px); seconds taken."""
    t0 = time.perf_counter()
    writer = create_mask(path, (size, size), chunk, CLASSES, 0.5, {"source": {"path": "", "level": 0}},
                         overwrite=True)
    gy, gx = writer.grid

    def one(ij: tuple[int, int]) -> None:
        writer.write_chunk(*ij, discs(grid_box(*ij, (size, size), chunk)))

    with ThreadPoolExecutor(2) as pool:
        list(pool.map(one, [(iy, ix) for iy in range(gy) for ix in range(gx)]))
    writer.finalize()
    return time.perf_counter() - t0


def run_objects(mask: Path) -> dict[str, float]:
    res = subprocess.run([sys.executable, "-c", RUN, str(mask)], capture_output=True, text=True, check=True)
    out: dict[str, float] = json.loads(res.stdout.strip().splitlines()[-1])
    return out


def predict_vs_objects(out: Path, size: int) -> dict[str, float]:
    """Wall time of `predict` (bundled model, CPU) and of `objects` on its mask, one synthetic slide."""
    slide, mask = out / f"synth-{size}.ome.tif", out / f"synth-{size}.zarr"
    subprocess.run([sys.executable, "-m", "slideseg", "synth", str(slide), "--size", str(size), str(size),
                    "--no-progress"], check=True, capture_output=True)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "slideseg", "predict", str(slide), "-o", str(mask), "--device", "cpu",
                    "--overwrite", "--no-progress"], check=True, capture_output=True)
    predict_s = time.perf_counter() - t0
    res = run_objects(mask)
    return {"size": size, "predict_s": round(predict_s, 2), "objects_s": round(res["seconds"], 2),
            "objects": res["objects"], "objects_vs_predict": round(res["seconds"] / predict_s, 4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 40_000])
    ap.add_argument("--predict-size", type=int, default=0, help="also time predict vs objects on a slide this big")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/out/objects"))
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for size in args.sizes:
        mask = args.out / f"discs-{size}.zarr"
        made = write_disc_mask(mask, size)
        res = run_objects(mask)
        seconds = res["seconds"]
        rows.append({"size": size, "objects": res["objects"], "units": res["units"],
                     "peak_rss_mb": round(res["peak_rss_mb"], 1), "seconds": round(seconds, 2),
                     "objects_per_s": round(res["objects"] / seconds),
                     "mask_mp_per_s": round(size**2 / 1e6 / seconds, 2),
                     "mask_written_s": round(made, 1)})
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    report: dict[str, object] = {"runs": rows, "machine": platform.machine(), "python": platform.python_version(),
                                 "date": time.strftime("%Y-%m-%d")}
    if args.predict_size:
        report["predict_vs_objects"] = predict_vs_objects(args.out, args.predict_size)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
