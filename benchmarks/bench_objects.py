"""Peak memory and throughput of `slideseg objects` against mask size.

Synthetic masks of N x N px hold one disc per cell of a ``--spacing`` px grid (radius 3-5 px, two
classes; position, size and class from a hash of the cell), so objects scale as (N / spacing)². The
grid must not line up with the 1024-px chunks, so many discs cross chunk borders. The hash depends on
the cell index modulo ``--period`` cells, so the pattern repeats every spacing x period px and the
chunk grid meets only a few distinct chunks: each is computed once and written (compressed, as
always) wherever it recurs, which makes a 100k² mask quick to write. A few random chunks are read back
and compared with a direct computation, and the object count with the number of discs in the mask.

Each mask is turned into an instance image and table by `objects`, in its own process with threads
(the default); peak resident memory is read from the OS (``getrusage``), and the resident memory of
each phase (label, stitch, write, table, pyramid) is sampled every 0.2 s. Optionally, `predict` (the
bundled model) and `objects` run on one synthetic slide, to compare their times.

    .venv/bin/python benchmarks/bench_objects.py [--sizes 10000 100000] [--spacing 40] [--predict-size 4096]

Prints one JSON line per mask on stderr and a JSON report on stdout.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import random
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from slideseg.io.ngff import LabelClass
from slideseg.plan.tiles import grid_box
from slideseg.write.mask import create_mask, read_mask

CHUNK = 1024
CLASSES = (LabelClass(0, "background", (0, 0, 0, 0)), LabelClass(1, "nucleus", (255, 0, 0, 255)),
           LabelClass(2, "other", (0, 0, 255, 255)))
MAX_REACH = 2 + 5  # farthest a disc pixel lies from its cell centre (offset + radius)
RUN = """
import json, resource, sys, threading, time
from slideseg.tools.objects import ObjectsConfig, objects
from slideseg.write import instances

class Phases:
    # peak resident MB per phase, sampled: open, label, stitch, write, table, pyramid
    def __init__(self):
        self.phase, self.left, self.peak, self.secs, self.t = "open", 0, {}, {}, time.perf_counter()
        threading.Thread(target=self.sample, daemon=True).start()
    def enter(self, phase):
        now = time.perf_counter()
        self.secs[self.phase] = self.secs.get(self.phase, 0.0) + now - self.t
        self.phase, self.t = phase, now
    def pass_started(self, name, n_units, n_pixels):
        self.enter(name.split(": ")[-1])
        self.left = n_units
        if n_units == 0:
            self.unit_done(0)
    def unit_done(self, pixels):
        self.left -= 1
        if self.left <= 0:
            self.enter("stitch" if self.phase == "label" else "table")
    def sample(self):
        page = resource.getpagesize()
        while True:
            with open("/proc/self/statm") as f:
                rss = int(f.read().split()[1]) * page / 2**20
            self.peak[self.phase] = round(max(self.peak.get(self.phase, 0.0), rss), 1)
            time.sleep(0.2)

phases = Phases()
finalize = instances.InstanceWriter.finalize
def timed_finalize(self, *a, **k):
    phases.enter("pyramid")
    finalize(self, *a, **k)
    phases.enter("done")
instances.InstanceWriter.finalize = timed_finalize
t0 = time.perf_counter()
r = objects(sys.argv[1], ObjectsConfig(overwrite=True), observer=phases)
seconds = time.perf_counter() - t0
print(json.dumps({"objects": r.objects, "seconds": seconds, "units": r.units,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "phase_rss_mb": phases.peak, "phase_s": {k: round(v, 1) for k, v in phases.secs.items()}}))
"""


@dataclass(frozen=True)
class Discs:
    """The disc pattern: one disc per ``spacing`` px cell, hashed from the cell index modulo ``period``."""

    spacing: int
    period: int

    def __post_init__(self) -> None:
        if self.spacing < 2 * MAX_REACH + 3:
            raise SystemExit(f"--spacing {self.spacing} is too small; expected >= {2 * MAX_REACH + 3} so that "
                             "discs stay inside their cells and apart")
        if CHUNK % self.spacing == 0:
            raise SystemExit(f"--spacing {self.spacing} divides the {CHUNK}-px chunks, so no disc would cross a "
                             "chunk border; pick a spacing that does not divide it (e.g. 40)")
        if self.period < 1:
            raise SystemExit(f"--period is {self.period}; expected a positive number of cells")

    @property
    def repeat(self) -> int:
        """Pixels after which the pattern repeats, along each axis."""
        return self.spacing * self.period

    def distinct_offsets(self, chunk: int = CHUNK) -> int:
        """Distinct positions of a ``chunk`` grid line within one repeat of the pattern."""
        return self.repeat // math.gcd(chunk, self.repeat)

    def ids(self, box: tuple[int, int, int, int]) -> np.ndarray:
        """uint8 class ids of the mask region ``box = (y0, y1, x0, x1)``, computed pixel by pixel."""
        y0, y1, x0, x1 = box
        s, p = self.spacing, self.period
        yy, xx = np.ogrid[y0:y1, x0:x1]
        yy, xx = yy.astype(np.int64), xx.astype(np.int64)
        cy, cx = yy // s, xx // s
        h = (((cy % p) * 73856093) ^ ((cx % p) * 19349663)) & 0xFFFF  # (h, w)
        my = cy * s + s // 2 + h % 5 - 2
        mx = cx * s + s // 2 + (h >> 3) % 5 - 2
        r = 3 + (h >> 6) % 3
        inside = (yy - my) ** 2 + (xx - mx) ** 2 <= r**2
        return np.where(inside, 1 + (h >> 9) % 2, 0).astype(np.uint8)

    def key(self, box: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
        """The box's position within the repeat and its size: boxes with equal keys hold equal ids."""
        y0, y1, x0, x1 = box
        return y0 % self.repeat, x0 % self.repeat, y1 - y0, x1 - x0

    def count(self, size: int) -> int:
        """Discs with at least one pixel in an N x N mask (each is one object: a disc cut by the mask's
        edge stays 4-connected)."""
        s, full = self.spacing, size // self.spacing
        n = full * full
        if full * s < size:  # the partial last row and column of cells
            cut = full * s
            strips = [((cut, size, 0, cut), 1), ((0, cut, cut, size), 0), ((cut, size, cut, size), 0)]
            for box, axis in strips:
                ids = self.ids(box)
                cells = np.nonzero(ids)[axis] + box[2 * axis]
                n += len(np.unique(cells // s))
        return n


def write_disc_mask(path: Path, size: int, discs: Discs) -> dict[str, float]:
    """Write the N x N disc mask (0.5 µm/px) from cached distinct chunks; seconds and chunks computed."""
    t0 = time.perf_counter()
    writer = create_mask(path, (size, size), CHUNK, CLASSES, 0.5, {"source": {"path": "", "level": 0}},
                         overwrite=True)
    gy, gx = writer.grid
    grid = [(iy, ix) for iy in range(gy) for ix in range(gx)]
    cache: dict[tuple[int, int, int, int], np.ndarray] = {}
    for ij in grid:  # compute each distinct chunk once, before the parallel writes
        box = grid_box(*ij, (size, size), CHUNK)
        k = discs.key(box)
        if k not in cache:
            cache[k] = discs.ids((k[0], k[0] + k[2], k[1], k[1] + k[3]))
    computed = time.perf_counter() - t0

    def one(ij: tuple[int, int]) -> None:
        writer.write_chunk(*ij, cache[discs.key(grid_box(*ij, (size, size), CHUNK))])

    with ThreadPoolExecutor(2) as pool:
        list(pool.map(one, grid))
    writer.finalize()
    check_chunks(path, size, discs)
    return {"mask_written_s": round(time.perf_counter() - t0, 1), "mask_distinct_chunks": len(cache),
            "mask_chunks_computed_s": round(computed, 1)}


def check_chunks(path: Path, size: int, discs: Discs, n: int = 6) -> None:
    """Read back ``n`` random level-0 chunks (and the last one) and compare them with a direct
    computation at their own position, so that a caching error cannot change the mask unseen."""
    level0 = read_mask(path).levels[0]
    g = math.ceil(size / CHUNK)
    rng = random.Random(size)
    picks = {(rng.randrange(g), rng.randrange(g)) for _ in range(n)} | {(g - 1, g - 1)}
    for ij in sorted(picks):
        y0, y1, x0, x1 = grid_box(*ij, (size, size), CHUNK)
        got = np.asarray(level0[y0:y1, x0:x1])
        if not np.array_equal(got, discs.ids((y0, y1, x0, x1))):
            raise RuntimeError(f"chunk {ij} of {path} differs from the disc pattern at its position; expected "
                               "equal: the chunk cache or the period of the pattern is wrong")


def run_objects(mask: Path) -> dict[str, Any]:
    res = subprocess.run([sys.executable, "-c", RUN, str(mask)], capture_output=True, text=True, check=True)
    out: dict[str, Any] = json.loads(res.stdout.strip().splitlines()[-1])
    return out


def predict_vs_objects(out: Path, size: int) -> dict[str, Any]:
    """Wall time of `predict` (bundled model, CPU) and of `objects` on its mask, one synthetic slide."""
    slide, mask = out / f"synth-{size}.ome.tif", out / f"synth-{size}.zarr"
    subprocess.run([sys.executable, "-m", "slideseg", "synth", str(slide), "--size", str(size), str(size),
                    "--no-progress"], check=True, capture_output=True)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "slideseg", "predict", str(slide), "-o", str(mask), "--device", "cpu",
                    "--overwrite", "--no-progress"], check=True, capture_output=True)
    predict_s = time.perf_counter() - t0
    res = run_objects(mask)
    seconds = float(res["seconds"])
    return {"size": size, "predict_s": round(predict_s, 2), "objects_s": round(seconds, 2),
            "objects": res["objects"], "objects_vs_predict": round(seconds / predict_s, 4)}


def measure(out: Path, size: int, discs: Discs, keep: bool) -> dict[str, Any]:
    """Write the N x N mask, run `objects` on it; one row of the report."""
    mask = out / f"discs-{size}-s{discs.spacing}.zarr"
    made = write_disc_mask(mask, size, discs)
    res = run_objects(mask)
    seconds, found = float(res["seconds"]), int(res["objects"])
    expected = discs.count(size)
    row: dict[str, Any] = {
        "size": size, "spacing": discs.spacing, "period": discs.period, "objects": found,
        "objects_expected": expected, "units": res["units"], "peak_rss_mb": round(float(res["peak_rss_mb"]), 1),
        "seconds": round(seconds, 2), "objects_per_s": round(found / seconds),
        "mask_mp_per_s": round(size**2 / 1e6 / seconds, 2), "phase_rss_mb": res["phase_rss_mb"],
        "phase_s": res["phase_s"], **made}
    if found != expected:
        print(f"objects found {found} objects in {mask}; the mask holds {expected} discs", file=sys.stderr)
    if not keep:
        shutil.rmtree(mask)
        mask.with_suffix(".objects.parquet").unlink(missing_ok=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 40_000])
    ap.add_argument("--spacing", type=int, default=17, help="px between disc centres; objects ~ (N / spacing)²")
    ap.add_argument("--period", type=int, default=32, help="cells after which the disc pattern repeats")
    ap.add_argument("--predict-size", type=int, default=0, help="also time predict vs objects on a slide this big")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/out/objects"))
    ap.add_argument("--keep", action="store_true", help="keep the masks, instance images and tables")
    args = ap.parse_args()
    discs = Discs(args.spacing, args.period)
    args.out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    for size in args.sizes:
        rows.append(measure(args.out, size, discs, args.keep))
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    report: dict[str, object] = {"runs": rows, "machine": platform.machine(), "python": platform.python_version(),
                                 "date": time.strftime("%Y-%m-%d"),
                                 "distinct_offsets_per_axis": discs.distinct_offsets()}
    if len(rows) > 1:
        peaks = [float(r["peak_rss_mb"]) for r in rows]
        report["peak_rss_ratio_last_to_first"] = round(peaks[-1] / peaks[0], 3)
    if args.predict_size:
        report["predict_vs_objects"] = predict_vs_objects(args.out, args.predict_size)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
