"""Very large, mostly-empty synthetic slides for the memory and tissue benchmarks.

A few round tissue islands (rendered by :func:`slideseg.tools.synth.render_region`) on glass, written
as an OME-Zarr 0.4 multiscale image (Zarr v2, (y, x, c), 1024-px chunks) in which only chunks that
touch an island are stored: the glass is the fill value. A 100k x 100k slide with 0.1 % tissue
takes seconds to write and a few MB on disk, yet reads like any other slide.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import zarr
from numcodecs import Blosc

from slideseg.tools.synth import SynthConfig, render_region

GLASS = 240
CHUNK = 1024


def islands(size: int, tissue_px: float, n: int = 4, seed: int = 0) -> list[tuple[float, float, float]]:
    """(cy, cx, r) of ``n`` discs with ``tissue_px`` pixels of tissue in all, inside the slide."""
    r = math.sqrt(tissue_px / n / math.pi)
    rng = np.random.default_rng(seed)
    return [(float(rng.uniform(r + 1, size - r - 1)), float(rng.uniform(r + 1, size - r - 1)), r) for _ in range(n)]


def write_sparse_slide(path: Path, size: int, tissue_fraction: float, mpp: float = 0.5, seed: int = 0) -> float:
    """Write the slide; return the tissue fraction actually drawn."""
    discs = islands(size, tissue_fraction * size * size, seed=seed)
    cfg = SynthConfig(size=(size, size), tissue_fraction=1.0, seed=seed, mpp=mpp)
    root = zarr.open_group(path, mode="w", zarr_format=2)
    levels = []
    level, shape = 0, (size, size)
    while True:
        levels.append(level)
        arr = root.create_array(str(level), shape=(*shape, 3), chunks=(CHUNK, CHUNK, 3), dtype="uint8",
                                fill_value=GLASS, compressors=Blosc(cname="zstd", clevel=3),
                                chunk_key_encoding={"name": "v2", "separator": "/"})
        f = 2**level
        for y0 in range(0, shape[0], CHUNK):
            for x0 in range(0, shape[1], CHUNK):
                y1, x1 = min(y0 + CHUNK, shape[0]), min(x0 + CHUNK, shape[1])
                if not any(_touches(d, y0 * f, y1 * f, x0 * f, x1 * f) for d in discs):
                    continue
                rgb, _, _ = render_region(cfg, y0, y1, x0, x1, level=level)
                yy, xx = np.mgrid[y0:y1, x0:x1] * f
                inside = np.zeros(yy.shape, bool)
                for cy, cx, r in discs:
                    inside |= (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
                rgb[~inside] = GLASS
                arr[y0:y1, x0:x1] = rgb
        if max(shape) <= 1024:
            break
        level, shape = level + 1, (math.ceil(shape[0] / 2), math.ceil(shape[1] / 2))
    root.attrs["multiscales"] = [{
        "version": "0.4", "name": path.stem,
        "axes": [{"name": "y", "type": "space", "unit": "micrometer"},
                 {"name": "x", "type": "space", "unit": "micrometer"}, {"name": "c", "type": "channel"}],
        "datasets": [{"path": str(lv), "coordinateTransformations": [
            {"type": "scale", "scale": [mpp * 2**lv, mpp * 2**lv, 1.0]}]} for lv in levels],
    }]
    return sum(math.pi * r * r for _, _, r in discs) / size**2


def _touches(disc: tuple[float, float, float], y0: int, y1: int, x0: int, x1: int) -> bool:
    cy, cx, r = disc
    dy = max(y0 - cy, 0, cy - y1)
    dx = max(x0 - cx, 0, cx - x1)
    return dy * dy + dx * dx <= r * r
