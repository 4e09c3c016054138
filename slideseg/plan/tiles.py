"""The overlap-tile planner: pure geometry, no I/O, no torch, no Dask.

The output (the mask, at the resolution the network reads) is cut into chunks: the Zarr chunk
grid. Each chunk is covered by network tiles whose *output* origins are multiples of the pooling
step ``2**depth`` in slide coordinates. Every tile then sees the pooling grid in the same phase as
one forward pass over the whole mirror-padded slide would, so for a valid-convolution U-Net the
tiled result equals the whole-image result (the "seamless" promise). Each chunk reads one haloed
input window that holds all its tiles; pixels outside the slide come from mirroring.

>>> p = make_plan((1000, 1500), tile=572, context=92, alignment=16, chunk=1024)
>>> p.grid, p.tile_output, p.stride
((1, 2), 388, 384)
>>> c = p.chunk(0, 1)
>>> c.box, len(c.tiles)
(Box(y0=0, y1=1000, x0=1024, x1=1500), 6)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal

import numpy as np

from slideseg.errors import ConfigError
from slideseg.plan.geometry import Geometry

MirrorMode = Literal["reflect", "symmetric"]

MAX_SIDE = 2**24
"""Longest side of a slide level (or output grid) slideseg plans, in pixels (16.7 M; the largest
slides are ~0.25 M). Beyond it, the metadata is wrong, not the slide large."""


@dataclass(frozen=True, order=True)
class Box:
    """Half-open rectangle ``[y0, y1) x [x0, x1)`` in pixels of one level."""

    y0: int
    y1: int
    x0: int
    x1: int

    @property
    def shape(self) -> tuple[int, int]:
        return self.y1 - self.y0, self.x1 - self.x0

    @property
    def area(self) -> int:
        return (self.y1 - self.y0) * (self.x1 - self.x0)

    def shrink(self, m: int) -> Box:
        """The box with ``m`` px taken off each side."""
        return Box(self.y0 + m, self.y1 - m, self.x0 + m, self.x1 - m)

    def relative_to(self, other: Box) -> tuple[slice, slice]:
        """Slices that cut this box out of an array covering ``other``."""
        return (slice(self.y0 - other.y0, self.y1 - other.y0),
                slice(self.x0 - other.x0, self.x1 - other.x0))


@dataclass(frozen=True)
class Tile:
    """One network input: ``read`` is its input window (slide coordinates, may leave the slide),
    ``write`` the part of its output that lands in the chunk (within the slide)."""

    read: Box
    write: Box


@dataclass(frozen=True)
class ChunkPlan:
    """One output chunk: its index in the chunk grid, its box (clipped to the slide), the haloed
    input window that all its tiles read, and the tiles."""

    index: tuple[int, int]
    box: Box
    window: Box
    tiles: tuple[Tile, ...]


@dataclass(frozen=True)
class Plan:
    """All chunks of a slide. Chunks are made on demand (``chunk``, iteration), so a plan for a
    200k x 200k slide costs nothing until it is walked."""

    shape: tuple[int, int]
    chunk_size: int
    tile: int
    tile_output: int
    context: int
    alignment: int

    @property
    def stride(self) -> int:
        """Distance between tile origins inside a chunk: the largest multiple of the alignment that
        fits in one tile's output."""
        return self.tile_output // self.alignment * self.alignment

    @property
    def grid(self) -> tuple[int, int]:
        return tuple(-(-n // self.chunk_size) for n in self.shape)  # type: ignore[return-value]

    @property
    def n_chunks(self) -> int:
        gy, gx = self.grid
        return gy * gx

    def chunk(self, iy: int, ix: int) -> ChunkPlan:
        """The plan of chunk ``(iy, ix)``."""
        gy, gx = self.grid
        if not (0 <= iy < gy and 0 <= ix < gx):
            raise IndexError(f"chunk ({iy}, {ix}) is outside the chunk grid {self.grid}")
        box = Box(iy * self.chunk_size, min((iy + 1) * self.chunk_size, self.shape[0]),
                  ix * self.chunk_size, min((ix + 1) * self.chunk_size, self.shape[1]))
        ys = self._spans(box.y0, box.y1)
        xs = self._spans(box.x0, box.x1)
        c, t = self.context, self.tile
        tiles = tuple(
            Tile(read=Box(oy - c, oy - c + t, ox - c, ox - c + t), write=Box(wy0, wy1, wx0, wx1))
            for oy, wy0, wy1 in ys
            for ox, wx0, wx1 in xs
        )
        window = Box(ys[0][0] - c, ys[-1][0] - c + t, xs[0][0] - c, xs[-1][0] - c + t)
        return ChunkPlan((iy, ix), box, window, tiles)

    def __iter__(self) -> Iterator[ChunkPlan]:
        gy, gx = self.grid
        for iy in range(gy):
            for ix in range(gx):
                yield self.chunk(iy, ix)

    def _spans(self, lo: int, hi: int) -> list[tuple[int, int, int]]:
        """(output origin, write start, write end) of the tiles covering ``[lo, hi)`` on one axis."""
        origins = tile_origins(lo, hi, self.tile_output, self.alignment)
        ends = [*origins[1:], None]
        return [(o, max(o, lo), hi if e is None else min(e, hi)) for o, e in zip(origins, ends, strict=True)]

    def redundancy(self) -> tuple[float, float]:
        """(network input px per output px, window px read per output px) over the whole slide.

        The axes are independent, so this sums 1-D counts instead of walking every chunk.
        """
        out_px = self.shape[0] * self.shape[1]
        tiles = [0, 0]
        window = [0, 0]
        for axis in (0, 1):
            n = self.shape[axis]
            for lo in range(0, n, self.chunk_size):
                origins = tile_origins(lo, min(lo + self.chunk_size, n), self.tile_output, self.alignment)
                tiles[axis] += len(origins) * self.tile
                window[axis] += origins[-1] - origins[0] + self.tile
        return tiles[0] * tiles[1] / out_px, window[0] * window[1] / out_px

    def describe(self) -> dict[str, object]:
        compute, read = self.redundancy()
        return {
            "shape": list(self.shape), "chunk": self.chunk_size, "grid": list(self.grid),
            "tile": self.tile, "tile_output": self.tile_output, "stride": self.stride,
            "context": self.context, "alignment": self.alignment,
            "compute_redundancy": round(compute, 4), "read_redundancy": round(read, 4),
        }


def tile_origins(lo: int, hi: int, out: int, align: int) -> list[int]:
    """Output origins (multiples of ``align``) of tiles with ``out`` output px covering ``[lo, hi)``.

    Origins step by the largest multiple of ``align`` that fits in ``out``; the last one is pulled
    back as far as alignment allows so it wastes as little as possible.

    >>> tile_origins(0, 1024, 388, 16)
    [0, 384, 640]
    >>> tile_origins(1000, 1100, 388, 16)
    [992]
    """
    if out < align:
        raise ConfigError(f"tile output {out} px is smaller than the pooling step {align} px")
    if hi <= lo:
        raise ValueError(f"empty span [{lo}, {hi})")
    stride = out // align * align
    first = lo // align * align
    last = max(first, -(-(hi - out) // align) * align)
    origins = list(range(first, last, stride))
    if not origins or origins[-1] != last:
        origins.append(last)
    return origins


def make_plan(shape: tuple[int, int], *, tile: int, context: int, alignment: int, chunk: int,
              tile_output: int | None = None) -> Plan:
    """A plan for a slide of ``shape`` (H, W) and a network whose ``tile`` px input gives
    ``tile_output`` px kept output (default ``tile - 2 * context``)."""
    h, w = shape
    if not (1 <= h <= MAX_SIDE and 1 <= w <= MAX_SIDE):
        raise ConfigError(f"slide shape must be positive and at most {MAX_SIDE} px per side, got {shape}: check "
                          "the slide's size metadata, and --mpp (a wrong pixel size resamples to an absurd size)")
    if chunk < 1:
        raise ConfigError(f"chunk must be >= 1 px, got {chunk}")
    out = tile - 2 * context if tile_output is None else tile_output
    if out < alignment:
        raise ConfigError(f"tile {tile} px keeps {out} px of output, less than the pooling step {alignment}")
    return Plan((h, w), chunk, tile, out, context, alignment)


def plan_slide(shape: tuple[int, int], geometry: Geometry, *, chunk: int, tile: int | None = None,
               unit: int | None = None) -> Plan:
    """The plan for a slide of ``shape`` (H, W) tiled by a network of ``geometry``.

    ``tile`` is checked against the geometry, or chosen as the smallest tile whose output covers a
    ``chunk``; each task covers one ``unit`` (default: a chunk; a shard for sharded outputs).

    >>> plan_slide((1000, 1500), Geometry(4), chunk=1024).tile
    1212
    """
    tile = tile or auto_tile(shape, chunk, geometry.alignment, geometry.smallest_tile_covering)
    geometry.check_tile(tile)
    return make_plan(shape, tile=tile, context=geometry.context, alignment=geometry.alignment,
                     chunk=unit or chunk, tile_output=geometry.usable_output(tile))


def auto_tile(shape: tuple[int, int], chunk: int, alignment: int,
              smallest_covering: Callable[[int], int]) -> int:
    """The smallest tile whose output covers one chunk (one tile per chunk: least overlap).

    ``smallest_covering(out)`` returns the smallest valid tile with at least ``out`` px of output.
    A chunk that is not a multiple of the alignment may start mid-step, so it needs one step more.
    """
    span = min(chunk, max(shape))
    need = span if chunk % alignment == 0 else span + alignment
    return smallest_covering(-(-need // alignment) * alignment)


def mirror_index(idx: np.ndarray, n: int, mode: MirrorMode) -> np.ndarray:
    """Map (possibly out-of-range) indices into ``[0, n)`` by mirroring, repeatedly if needed.

    ``'reflect'`` does not repeat the edge (``3 2 1 | 0 1 2``, numpy/torch 'reflect');
    ``'symmetric'`` does (``2 1 0 | 0 1 2``). Matches ``np.pad`` for any pad width.

    >>> mirror_index(np.arange(-3, 6), 3, "reflect").tolist()
    [1, 2, 1, 0, 1, 2, 1, 0, 1]
    >>> mirror_index(np.arange(-3, 6), 3, "symmetric").tolist()
    [2, 1, 0, 0, 1, 2, 2, 1, 0]
    """
    idx = np.asarray(idx, dtype=np.int64)
    if n == 1:
        return np.zeros_like(idx)
    if mode == "reflect":
        period = 2 * n - 2
        m = np.mod(idx, period)
        reflected: np.ndarray = np.where(m >= n, period - m, m)
        return reflected
    if mode == "symmetric":
        period = 2 * n
        m = np.mod(idx, period)
        symmetric: np.ndarray = np.where(m >= n, period - 1 - m, m)
        return symmetric
    raise ConfigError(f"mirror mode must be 'reflect' or 'symmetric', got {mode!r}")


# --------------------------------------------------------------------------------------------
# Grids and pyramids of any array
# --------------------------------------------------------------------------------------------

PYRAMID_STOP = 1024
"""A x2 pyramid ends at the first level whose longer side is at most this many pixels."""


def level_shape(shape: tuple[int, int], level: int) -> tuple[int, int]:
    """Shape of level ``level`` of a x2 pyramid: ``ceil(H / 2**level), ceil(W / 2**level)``.

    >>> level_shape((1000, 513), 1)
    (500, 257)
    """
    return -(-shape[0] // 2**level), -(-shape[1] // 2**level)


def pyramid_shapes(shape: tuple[int, int], stop: int = PYRAMID_STOP) -> list[tuple[int, int]]:
    """Shapes of the x2 pyramid, down to the first level whose longer side is <= ``stop``.

    >>> pyramid_shapes((1000, 1500))
    [(1000, 1500), (500, 750)]
    >>> pyramid_shapes((5, 3000), stop=1000)
    [(5, 3000), (3, 1500), (2, 750)]
    """
    shapes = [level_shape(shape, 0)]
    while max(shapes[-1]) > stop:
        shapes.append(level_shape(shape, len(shapes)))
    return shapes


def grid_box(iy: int, ix: int, shape: tuple[int, int], step: int) -> tuple[int, int, int, int]:
    """``(y0, y1, x0, x1)`` of cell ``(iy, ix)`` of the ``step`` grid over an array, clipped to it.

    >>> grid_box(1, 1, (300, 500), 256)
    (256, 300, 256, 500)
    """
    ny, nx = -(-shape[0] // step), -(-shape[1] // step)
    if not (0 <= iy < ny and 0 <= ix < nx):
        raise ValueError(
            f"cell ({iy}, {ix}) is outside the {ny} x {nx} grid of a {shape[0]} x {shape[1]} array with step "
            f"{step}; expected 0 <= iy < {ny} and 0 <= ix < {nx}"
        )
    return iy * step, min((iy + 1) * step, shape[0]), ix * step, min((ix + 1) * step, shape[1])


def grid_boxes(shape: tuple[int, int], step: int) -> list[tuple[int, int, int, int]]:
    """Every cell of the ``step`` grid over an array, row-major, as ``(y0, y1, x0, x1)``.

    >>> grid_boxes((3, 5), 4)
    [(0, 3, 0, 4), (0, 3, 4, 5)]
    """
    return [(y, min(y + step, shape[0]), x, min(x + step, shape[1]))
            for y in range(0, shape[0], step) for x in range(0, shape[1], step)]


def nearest_index(n_in: int, n_out: int, start: int = 0, stop: int | None = None) -> np.ndarray:
    """Input index that output pixels ``start..stop`` sample when ``n_in`` pixels are resized to
    ``n_out`` by nearest neighbour: each output pixel centre mapped into the input.

    >>> nearest_index(4, 2).tolist(), nearest_index(2, 5).tolist()
    ([1, 3], [0, 0, 1, 1, 1])
    """
    out = np.arange(start, n_out if stop is None else stop)
    return np.minimum(((out + 0.5) * n_in / n_out).astype(np.int64), n_in - 1)
