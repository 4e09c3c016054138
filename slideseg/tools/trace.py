"""Tracing a label mask into polygons along pixel edges: pure, no I/O.

Polygons follow pixel edges, so rasterising them (even-odd, pixel centres) gives back the mask
exactly. Regions are 4-connected (pixels that touch only at a corner are separate regions), every
ring is simple, exterior rings are counterclockwise in (x, y) (positive shoelace area; RFC 7946's
right-hand rule) and holes clockwise. A hole may touch its exterior or another hole at one vertex,
which OGC Simple Features (and so QuPath's JTS) allows.

Tracing streams: the mask is read in full-width stripes. Boundary pieces that cross a stripe seam
are joined with the next stripe; which pixels form one region, across seams, and where each region
ends come from :class:`slideseg.tools.components.StripeStitcher` (the components module that
``evaluate`` and ``objects`` use too), and each polygon is yielded as soon as its region ends, so
memory holds one stripe plus the regions that cross the current seam.

>>> mask = np.array([[1, 1, 1],
...                  [1, 0, 1],
...                  [1, 1, 1]], np.uint8)
>>> [(p.value, p.exterior.tolist(), [h.tolist() for h in p.holes], p.area) for p in trace_polygons(mask)]
[(1, [[0, 0], [3, 0], [3, 3], [0, 3]], [[[2, 1], [1, 1], [1, 2], [2, 2]]], 8)]
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from slideseg.errors import ConfigError
from slideseg.tools.components import LabelSpec, Stripe, StripeStitcher

__all__ = ["MAX_STRIPE_BYTES", "STRIPE_BYTES_PER_PIXEL", "Polygon", "iter_polygons", "stripe_height",
           "trace_polygons"]

MAX_STRIPE_BYTES = 2**31
"""Most memory the tracing of one stripe may take; taller stripes are cut to fit."""
STRIPE_BYTES_PER_PIXEL = 192
"""Peak memory per stripe pixel while tracing, at most (the stripe, its labels, boundary segments):
measured 18 B for blobs and 166 B for pixel noise of 3 classes, the worst case."""

Ints = NDArray[np.int64]
_Key = tuple[int, int, int]  # a vertical edge crossing a stripe seam: (x, pixel row, direction)
# Directions of boundary segments: 0 +x, 1 +y, 2 -x, 3 -y; turning left (towards the class) is +1.
# The pixel on the left of a segment's first edge, as (dy, dx) from the segment's start vertex.
_LEFT_DY = np.array([0, 0, -1, -1])
_LEFT_DX = np.array([0, -1, -1, 0])


@dataclass(frozen=True)
class Polygon:
    """One 4-connected region of one class, in pixel-corner coordinates of the traced array."""

    value: int
    """The class value (pixel value in the mask)."""
    exterior: Ints
    """(n, 2) vertices (x, y), counterclockwise (positive shoelace area), not repeated at the end."""
    holes: tuple[Ints, ...]
    """(m, 2) vertices of each hole, clockwise."""
    area: int
    """Pixels in the region (exterior area minus holes)."""


@dataclass
class _Ring:
    label: int
    vertices: Ints
    area: int  # signed: > 0 exterior, < 0 hole


@dataclass
class _Chain:
    """A boundary piece open at stripe seams; ``head``/``tail`` are its first and last edges."""

    head: _Key
    tail: _Key
    label: int
    pieces: list[Ints] = field(default_factory=list)


# --------------------------------------------------------------------------------- tracing


def trace_polygons(mask: np.ndarray, values: Sequence[int] | None = None,
                   stripe_rows: int | None = None) -> list[Polygon]:
    """Polygons of every region of ``values`` (default: all non-zero values) in a 2-D label array.

    ``stripe_rows`` traces in stripes of that many rows (as :func:`export_geojson` does with a
    big mask); the result does not depend on it.
    """
    if mask.ndim != 2 or min(mask.shape) < 1:
        raise ConfigError(f"expected a non-empty 2-D label array, got shape {mask.shape}")
    vals = sorted(int(v) for v in np.unique(mask) if v != 0) if values is None else list(values)
    rows = stripe_rows or mask.shape[0]
    return list(iter_polygons(lambda y0, y1: mask[y0:y1], mask.shape, vals, rows))


def iter_polygons(read_rows: Callable[[int, int], np.ndarray], shape: tuple[int, int],
                  values: Sequence[int], stripe_rows: int) -> Iterator[Polygon]:
    """Trace a label image read as full-width stripes ``read_rows(y0, y1) -> (y1 - y0, W)``.

    Polygons come out as soon as their region is complete, in scan order of the stripe that
    completes them (class by class in the order of ``values``, then in raster order of each
    region's first pixel). Stripes are at most ``stripe_rows`` rows, fewer where a stripe that
    tall would take more than :data:`MAX_STRIPE_BYTES`.

    Raises
    ------
    ConfigError
        An empty shape, or a mask so wide that one row takes more than :data:`MAX_STRIPE_BYTES`.
    """
    h, w = int(shape[0]), int(shape[1])
    rows = stripe_height(h, w, stripe_rows)
    if not values:
        return
    stitcher = StripeStitcher((h, w), LabelSpec(tuple(int(v) for v in values)))
    tracers = [_ClassTracer(int(v), w) for v in dict.fromkeys(values)]
    for y0 in range(0, h, rows):
        y1 = min(h, y0 + rows)
        block = np.asarray(read_rows(y0, y1))
        if block.shape != (y1 - y0, w):
            raise ValueError(f"read_rows({y0}, {y1}) gave an array of shape {block.shape}; expected ({y1 - y0}, {w})")
        stripe = stitcher.feed(block)
        for tracer in tracers:
            yield from tracer.feed(block == tracer.value, stripe, y0, last=y1 == h)
    for tracer in tracers:
        assert not (tracer.heads or tracer.pending), "open boundaries left after the last stripe"


def stripe_height(height: int, width: int, stripe_rows: int) -> int:
    """Rows traced at once: ``stripe_rows``, fewer where that many would take more than
    :data:`MAX_STRIPE_BYTES` (:data:`STRIPE_BYTES_PER_PIXEL` each), at most the mask's height.

    >>> stripe_height(10_000, 2_000, 4096)
    4096
    >>> stripe_height(100, 2_000, 4096)
    100
    >>> stripe_height(100_000, 50_000, 4096)
    223

    Raises
    ------
    ConfigError
        An empty shape, ``stripe_rows`` < 1, or a row wider than :data:`MAX_STRIPE_BYTES` allows.
    """
    if min(height, width) < 1 or stripe_rows < 1:
        raise ConfigError(f"tracing a {height} x {width} px mask in stripes of {stripe_rows} rows; expected a "
                          "non-empty mask and stripes of at least 1 row")
    widest = MAX_STRIPE_BYTES // STRIPE_BYTES_PER_PIXEL
    if width > widest:
        raise ConfigError(f"the mask is {width} px wide: tracing one row of it would take "
                          f"{width * STRIPE_BYTES_PER_PIXEL / 2**30:.1f} GiB, more than the "
                          f"{MAX_STRIPE_BYTES / 2**30:.0f} GiB a stripe may take; expected a mask at most {widest} px "
                          "wide: trace a coarser pyramid level (export-geojson --level)")
    return min(stripe_rows, height, widest // width)


class _ClassTracer:
    """Streaming tracer of one class: stripes in, finished polygons out. Regions, and where they
    end, come from the :class:`~slideseg.tools.components.StripeStitcher` all classes share."""

    def __init__(self, value: int, width: int) -> None:
        self.value, self.width = value, width
        self.ctx = np.zeros(width, bool)  # the previous stripe's last row
        self.pending: dict[int, list[_Ring]] = {}  # closed rings of regions that go on below, by region
        self.heads: dict[_Key, _Chain] = {}
        self.tails: dict[_Key, _Chain] = {}

    def feed(self, rows: np.ndarray, stripe: Stripe, y0: int, last: bool) -> list[Polygon]:
        """Trace rows ``y0 .. y0 + len(rows)`` (bool, this class) whose regions are ``stripe``;
        return the regions of this class that end here."""
        self._rename(stripe.joined)
        cols = np.flatnonzero(rows.any(axis=0) | self.ctx)
        if cols.size == 0:
            return []  # nothing here, and nothing open above (open regions touch ctx)
        x0, x1 = int(cols[0]), int(cols[-1]) + 1  # trace only the columns the class is in
        h = rows.shape[0]
        padded = np.zeros((h + 2, x1 - x0 + 2), bool)  # ctx row, rows, a background row; background columns
        padded[0, 1:-1], padded[1:-1, 1:-1] = self.ctx[x0:x1], rows[:, x0:x1]
        rings, chains = _trace_stripe(padded, _RegionsOf(stripe, x0), x0, y0, last)
        for chain in chains:
            closed = self._attach(chain)
            if closed is not None:
                rings.extend(_close(closed))
        ending = stripe.done[stripe.done_values == self.value].tolist()
        ends = set(ending)
        done: dict[int, list[_Ring]] = {}
        for ring in rings:
            if ring.label in ends:
                done.setdefault(ring.label, []).append(ring)
            else:  # a copy: a view would keep this stripe's vertex array alive
                self.pending.setdefault(ring.label, []).append(_Ring(ring.label, ring.vertices.copy(), ring.area))
        for region in ending:
            done.setdefault(region, []).extend(self.pending.pop(region, []))
        self.ctx = rows[-1].copy()
        return [_polygon(self.value, done[region]) for region in ending]

    def _rename(self, joined: dict[int, int]) -> None:
        """Follow the stitcher's joins: the closed rings of a region joined to another move to it.
        (Open chains need no renaming: a ring takes the region of the piece that closes it,
        traced in the current stripe, see :meth:`_attach`.)"""
        for old in [r for r in self.pending if r in joined]:
            self.pending.setdefault(joined[old], []).extend(self.pending.pop(old))

    def _attach(self, chain: _Chain) -> _Chain | None:
        """Join a chain of this stripe to the open chains it meets; return it once it closes into a
        ring. A ring closes only where the chain meets an open chain at its tail (one it meets at
        its head alone cannot close it), so the ring keeps the chain's region: named after this
        stripe's joins."""
        after = self.heads.pop(chain.tail, None)
        if after is not None:
            del self.tails[after.tail]
            chain = _join(chain, after)
        before = self.tails.pop(chain.head, None)
        if before is not None:
            del self.heads[before.head]
            chain = _join(before, chain)
        if chain.head == chain.tail:
            return chain
        self.heads[chain.head], self.tails[chain.tail] = chain, chain
        return None


@dataclass(frozen=True)
class _RegionsOf:
    """The region of a pixel of a stripe, or of the row above it, in columns from ``x0``."""

    stripe: Stripe
    x0: int

    def __call__(self, r: Ints, c: Ints) -> Ints:
        """Regions of pixels at rows ``r`` (0: the row above the stripe, ``i``: its row ``i - 1``)
        and columns ``x0 + c``."""
        s, x = self.stripe, c + self.x0
        inside = s.regions[s.labels[np.maximum(r - 1, 0), x]]
        return np.where(r == 0, s.above[x], inside)


def _join(a: _Chain, b: _Chain) -> _Chain:
    """``a`` then ``b``: ``a`` ends with the edge ``b`` starts with, so both drop its far vertex."""
    pieces = [*a.pieces[:-1], a.pieces[-1][:-1], b.pieces[0][1:], *b.pieces[1:]]
    return _Chain(a.head, b.tail, a.label, pieces)


def _close(chain: _Chain) -> list[_Ring]:
    """The ring(s) of a chain that starts and ends with the same seam edge."""
    vertices = np.concatenate(chain.pieces)[1:-1]  # both ends of that edge lie inside a straight run
    return [_Ring(chain.label, v, _area(v)) for v in _split_pinched(vertices)]


def _polygon(value: int, rings: list[_Ring]) -> Polygon:
    if len(rings) == 1:
        return Polygon(value, rings[0].vertices, (), rings[0].area)
    outer = [r for r in rings if r.area > 0]
    assert len(outer) == 1, f"a region has {len(outer)} exterior rings"
    holes = tuple(r.vertices for r in rings if r.area < 0)
    return Polygon(value, outer[0].vertices, holes, sum(r.area for r in rings))


def _area(v: Ints) -> int:
    """Signed shoelace area of a closed ring (n, 2) of (x, y)."""
    x, y = v[:, 0], v[:, 1]
    return int(np.dot(x, np.roll(y, -1)) - np.dot(np.roll(x, -1), y)) // 2


def _split_pinched(v: Ints) -> list[Ints]:
    """Split a ring that passes a vertex twice (a region closing on itself at a corner) into
    simple rings: there the outer boundary and a hole touch, and OGC wants them apart."""
    out, todo = [], [v]
    while todo:
        ring = todo.pop()
        seen: dict[tuple[int, int], int] = {}
        for i, xy in enumerate(map(tuple, ring.tolist())):
            j = seen.setdefault(xy, i)
            if j != i:
                todo += [ring[j:i], np.concatenate([ring[:j], ring[i:]])]
                break
        else:
            out.append(ring)
    return out


def _trace_stripe(padded: np.ndarray, regions: Callable[[Ints, Ints], Ints], x0: int, y0: int, last: bool
                  ) -> tuple[list[_Ring], list[_Chain]]:
    """Boundary of one class in one stripe: closed rings, and chains open at the seams.

    ``padded`` (h + 2, w + 2) bool holds mask columns ``x0 .. x0 + w`` between background
    columns: row 0 is row y0 - 1, then the stripe, then background; ``regions(r, c)`` names the
    region of the pixel at row r (0..h) and column c of ``padded[:, 1:-1]``. The stripe links the
    boundary at vertex rows y0 .. y0 + h - 1 (and H if last); vertical edges in row y0 - 1 are
    shared with the stripe above, in its last row with the next.
    """
    h, w = padded.shape[0] - 2, padded.shape[1] - 2
    sx, sy, ex, ey, d = _segments(padded, y0, last)
    n = sx.size
    if n == 0:
        return [], []
    vid_start = ((sy - y0 + 1) * (w + 1) + sx) * 4
    key = vid_start + d
    order = np.argsort(key, kind="stable")
    keys = key[order]
    owned = (ey >= y0) & ((ey < y0 + h) | last)
    succ = np.full(n, -1, np.int64)
    todo = np.flatnonzero(owned)
    base = ((ey[todo] - y0 + 1) * (w + 1) + ex[todo]) * 4
    for turn in (1, 3):  # left first: at a saddle the boundary wraps its own pixel (4-connected)
        want = base + (d[todo] + turn) % 4
        pos = np.minimum(np.searchsorted(keys, want), n - 1)
        hit = keys[pos] == want
        succ[todo[hit]] = order[pos[hit]]
        todo, base = todo[~hit], base[~hit]
    assert todo.size == 0, "a boundary segment has no successor"  # every vertex has in-degree = out-degree
    comp, ordered, is_cycle = _order_chains(succ)
    starts = np.flatnonzero(np.r_[True, comp[ordered][1:] != comp[ordered][:-1]])
    ends = np.r_[starts[1:], n]
    first = ordered[starts]
    label = regions(sy[first] + _LEFT_DY[d[first]] - y0 + 1, sx[first] + _LEFT_DX[d[first]])
    xs, ys = sx[ordered], sy[ordered]
    area = _areas(xs, ys, starts, ends)
    pinched = _repeats(((ys - y0 + 1) * (w + 1) + xs), starts, ends)
    vertices = np.stack([xs + x0, ys], axis=1)
    rings: list[_Ring] = []
    chains: list[_Chain] = []
    for k, (a, b, lab, cycle) in enumerate(zip(starts.tolist(), ends.tolist(), label.tolist(), is_cycle.tolist(),
                                               strict=True)):
        v = vertices[a:b]
        if not cycle:
            i, j = int(ordered[a]), int(ordered[b - 1])
            v = np.concatenate([v, [[ex[j] + x0, ey[j]]]])
            head = (int(sx[i]) + x0, int(sy[i]) - int(d[i] == 3), int(d[i]))
            tail = (int(ex[j]) + x0, int(ey[j]) - int(d[j] == 1), int(d[j]))
            chains.append(_Chain(head, tail, lab, [v]))
        elif k in pinched:
            rings += [_Ring(lab, r, _area(r)) for r in _split_pinched(v)]
        else:
            rings.append(_Ring(lab, v, int(area[k])))
    return rings, chains


def _segments(padded: np.ndarray, y0: int, last: bool) -> tuple[Ints, Ints, Ints, Ints, Ints]:
    """Maximal straight boundary runs (class on the left): start x, y, end x, y, direction."""
    h = padded.shape[0] - 2
    p = padded.view(np.int8)
    nh = h + 1 if last else h
    horiz = p[1 : nh + 1, 1:-1] - p[:nh, 1:-1]  # vertex row y0 + i: +1 class below (+x), -1 above (-x)
    i, a, b, v = _runs(horiz)
    plus = v > 0
    hy = i + y0
    hsx, hex_ = np.where(plus, a, b), np.where(plus, b, a)
    vert = p[: h + 1, 1:] - p[: h + 1, :-1]  # pixel row y0 - 1 + j, line x: +1 class right (-y), -1 left (+y)
    x, ja, jb, v = _runs(vert.T)
    up = v > 0
    top, bottom = ja + y0 - 1, jb + y0 - 1
    return (np.concatenate([hsx, x]), np.concatenate([hy, np.where(up, bottom, top)]),
            np.concatenate([hex_, x]), np.concatenate([hy, np.where(up, top, bottom)]),
            np.concatenate([np.where(plus, 0, 2), np.where(up, 3, 1)]))


def _runs(m: np.ndarray) -> tuple[Ints, Ints, Ints, Ints]:
    """Runs of equal non-zero values along each row of ``m``: row, first, last + 1, value."""
    stride = m.shape[1] + 2
    p = np.zeros((m.shape[0], stride), np.int8)  # zero columns keep runs inside their row
    p[:, 1:-1] = m
    flat = p.ravel()
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1  # a run starts or ends before each
    start = change[flat[change] != 0]
    end = change[flat[change - 1] != 0]
    row, first = np.divmod(start.astype(np.int64), stride)
    return row, first - 1, end - row * stride - 1, flat[start].astype(np.int64)


def _order_chains(succ: Ints) -> tuple[Ints, Ints, NDArray[np.bool_]]:
    """Order the nodes of a successor graph (in- and out-degree <= 1) along its paths and cycles.

    Returns each node's component, the nodes sorted by component and then path order (a cycle
    starts at its smallest node), and per component (in sorted order) whether it is a cycle.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n = succ.size
    src = np.flatnonzero(succ >= 0)
    graph = coo_matrix((np.ones(src.size, np.int8), (src, succ[src])), shape=(n, n)).tocsr()
    _, comp = connected_components(graph, directed=True, connection="weak")
    comp = comp.astype(np.int64)
    pred = np.full(n, -1, np.int64)
    pred[succ[src]] = src
    chain_comps = np.zeros(comp.max() + 1, bool)
    chain_comps[comp[pred < 0]] = True
    first = np.full(comp.max() + 1, n, np.int64)
    np.minimum.at(first, comp, np.arange(n))
    nxt = succ.copy()
    reps = first[~chain_comps]
    nxt[pred[reps]] = -1  # cut each cycle before its smallest node
    dist = (nxt >= 0).astype(np.int64)  # Wyllie's list ranking: distance to the path's end
    active = np.flatnonzero(nxt >= 0)
    while active.size:
        j = nxt[active]
        dist[active] += dist[j]
        nxt[active] = nxt[j]
        active = active[nxt[active] >= 0]
    ordered = np.lexsort((-dist, comp))
    comps = comp[ordered]
    return comp, ordered, ~chain_comps[comps[np.r_[True, comps[1:] != comps[:-1]]]]


def _areas(xs: Ints, ys: Ints, starts: Ints, ends: Ints) -> Ints:
    """Signed shoelace areas of the closed rings ``xs[a:b], ys[a:b]`` for each start/end pair."""
    nxt = np.arange(1, xs.size + 1)
    nxt[ends - 1] = starts
    cross = xs * ys[nxt] - xs[nxt] * ys
    return np.add.reduceat(cross, starts) // 2


def _repeats(vertex: Ints, starts: Ints, ends: Ints) -> set[int]:
    """Indices of the groups ``vertex[a:b]`` that hold some vertex id twice."""
    group = np.repeat(np.arange(starts.size, dtype=np.int64), ends - starts)
    packed = np.sort(group * (int(vertex.max()) + 1) + vertex)
    return set((packed[1:][packed[1:] == packed[:-1]] // (int(vertex.max()) + 1)).tolist())


# --------------------------------------------------------------------------------- export
