"""Scheduling: one Dask task per output chunk reads its haloed window, runs its tiles through the
engine in batches and writes exactly that chunk. No chunk is ever written by two tasks.

The engine serialises its own calls (one inference at a time per device), so the other worker
threads spend that time reading, decoding, post-processing and compressing the next chunks.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from itertools import islice
from typing import Protocol

import numpy as np

from slideseg.engines.base import Engine
from slideseg.plan import Box, ChunkPlan, MirrorMode, Plan, mirror_index


class RegionReader(Protocol):
    """What the scheduler needs of a slide: its (Y, X, C) shape and in-bounds region reads."""

    @property
    def shape(self) -> tuple[int, int, int]: ...

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray: ...


class ChunkSink(Protocol):
    """What the scheduler needs of an output: one write per chunk."""

    def write_chunk(self, iy: int, ix: int, ids: np.ndarray, probs: np.ndarray | None = None) -> None: ...


ProgressFn = Callable[[int], None]
"""Called with the number of output pixels of each finished chunk."""


def read_window(slide: RegionReader, window: Box, mode: MirrorMode) -> np.ndarray:
    """The pixels of ``window`` (Y, X, C), mirrored where it leaves the slide; one slide read."""
    h, w = slide.shape[:2]
    iy = mirror_index(np.arange(window.y0, window.y1), h, mode)
    ix = mirror_index(np.arange(window.x0, window.x1), w, mode)
    y0, y1, x0, x1 = int(iy.min()), int(iy.max()) + 1, int(ix.min()), int(ix.max()) + 1
    region = slide.read(y0, y1, x0, x1)
    if window == Box(y0, y1, x0, x1):  # entirely inside the slide: no mirroring needed
        return region
    return region[np.ix_(iy - y0, ix - x0)]


def infer_chunk(slide: RegionReader, engine: Engine, chunk: ChunkPlan, mode: MirrorMode,
                batch_size: int) -> np.ndarray:
    """Float32 logits (K, h, w) of one chunk, assembled from its tiles."""
    window = read_window(slide, chunk.window, mode)  # (Y, X, C)
    h, w = chunk.box.shape
    out = np.empty((engine.config.classes, h, w), np.float32)
    for group in _batched(chunk.tiles, batch_size):
        batch = np.stack([window[t.read.relative_to(chunk.window)] for t in group])  # (N, T, T, C)
        logits = engine.infer(batch.transpose(0, 3, 1, 2))  # (N, K, t, t)
        margin = (group[0].read.shape[0] - logits.shape[-1]) // 2  # where the network output starts
        for tile, tile_logits in zip(group, logits, strict=True):
            origin = tile.read.shrink(margin)  # the box the network output covers
            out[(slice(None), *tile.write.relative_to(chunk.box))] = tile_logits[
                (slice(None), *tile.write.relative_to(origin))
            ]
    return out


def softmax(logits: np.ndarray, axis: int = 0) -> np.ndarray:
    """Numerically stable softmax over ``axis`` (float32)."""
    z = logits - logits.max(axis=axis, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=axis, keepdims=True)
    return z


def to_uint8_probabilities(probs: np.ndarray) -> np.ndarray:
    """Probabilities in [0, 1] as uint8 0..255 (round to nearest)."""
    return np.rint(probs * 255.0).astype(np.uint8)


@dataclass(frozen=True)
class ChunkJob:
    """Everything one chunk task needs; shared read-only between tasks."""

    plan: Plan
    slide: RegionReader
    engine: Engine
    sink: ChunkSink
    mode: MirrorMode
    batch_size: int
    probabilities: bool

    def run(self, iy: int, ix: int) -> int:
        """Read, infer and write chunk ``(iy, ix)``; return its output pixel count."""
        chunk = self.plan.chunk(iy, ix)
        logits = infer_chunk(self.slide, self.engine, chunk, self.mode, self.batch_size)
        ids = logits.argmax(axis=0).astype(np.uint8)
        probs = to_uint8_probabilities(softmax(logits)) if self.probabilities else None
        self.sink.write_chunk(iy, ix, ids, probs)
        return chunk.box.area


def run_chunks(job: ChunkJob, indices: Iterable[tuple[int, int]], *, workers: int,
               progress: ProgressFn | None = None) -> None:
    """Run ``job`` over the chunk ``indices`` on Dask's threaded scheduler with ``workers`` threads."""
    import dask

    lock = threading.Lock()

    def task(iy: int, ix: int) -> None:
        n = job.run(iy, ix)
        if progress is not None:
            with lock:
                progress(n)

    tasks = [dask.delayed(task, pure=False)(iy, ix) for iy, ix in indices]
    dask.compute(*tasks, scheduler="threads", num_workers=workers)


def _batched(items: tuple, n: int) -> Iterator[tuple]:
    it = iter(items)
    while group := tuple(islice(it, n)):
        yield group
