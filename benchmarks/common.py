"""Pieces the benchmarks share: an untrained model file, and timing the engine alone on exactly
the tiles `predict` runs (read into memory first, so no I/O is timed)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from slideseg.engines.base import Engine
from slideseg.io.slide import open_slide, read_window
from slideseg.model.config import UNetConfig
from slideseg.model.files import save_model
from slideseg.model.unet import build_unet
from slideseg.plan.tiles import ChunkPlan, Plan


def untrained_model(path: Path, width: int = 16, depth: int = 4) -> Path:
    """A He-initialised valid U-Net (the throughput does not depend on the weights)."""
    mc = UNetConfig(depth=depth, width=width)
    save_model(path, build_unet(mc, seed=0), mc, {"trained": False})
    return path


def tile_batches(slide_path: Path, plan: Plan, mirror: str, batch: int,
                 keep: Callable[[ChunkPlan], bool] = lambda c: True) -> list[np.ndarray]:
    """The (N, C, T, T) batches `predict` feeds the engine for the chunks ``keep`` accepts."""
    out = []
    with open_slide(slide_path) as slide:
        for chunk in plan:
            if not keep(chunk):
                continue
            window = read_window(slide, chunk.window, mirror)  # type: ignore[arg-type]
            tiles = [window[t.read.relative_to(chunk.window)] for t in chunk.tiles]
            out += [np.stack(tiles[i : i + batch]).transpose(0, 3, 1, 2) for i in range(0, len(tiles), batch)]
    return out


def time_engine(engine: Engine, batches: list[np.ndarray]) -> float:
    """Seconds for the engine to run ``batches``, after one warm-up call."""
    engine.infer(batches[0])
    t0 = time.perf_counter()
    for b in batches:
        engine.infer(b)
    return time.perf_counter() - t0
