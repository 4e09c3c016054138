"""One chunk, pure apart from its reads: a haloed window is read (mirrored beyond the slide), cut
into phase-aligned tiles, run through an engine in batches and assembled into the chunk's logits.
"""

from __future__ import annotations

from collections.abc import Iterator
from itertools import islice
from typing import Protocol

import numpy as np

from slideseg.io.slide import read_window
from slideseg.model.config import UNetConfig
from slideseg.plan.tiles import ChunkPlan, MirrorMode


class RegionReader(Protocol):
    """What the scheduler needs of a slide: its (Y, X, C) shape and in-bounds region reads."""

    @property
    def shape(self) -> tuple[int, int, int]: ...

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray: ...


class Inferrer(Protocol):
    """An engine, or a :class:`Batcher` in front of one."""

    config: UNetConfig

    def infer(self, batch: np.ndarray) -> np.ndarray: ...


def infer_chunk(slide: RegionReader, engine: Inferrer, chunk: ChunkPlan, mode: MirrorMode,
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


def _batched(items: tuple, n: int) -> Iterator[tuple]:
    it = iter(items)
    while group := tuple(islice(it, n)):
        yield group
