"""Mask → GeoJSON: one polygon per connected region of each class, holes kept, for QuPath.

Polygons follow pixel edges, so rasterising them (even-odd, pixel centres) gives back the mask
exactly at the traced level. Regions are 4-connected (pixels that touch only at a corner are
separate regions), every ring is simple, exterior rings are counterclockwise in (x, y) (positive
shoelace area; RFC 7946's right-hand rule) and holes clockwise. A hole may touch its exterior or
another hole at one vertex, which OGC Simple Features (and so QuPath's JTS) allows.

Tracing streams: the mask is read in full-width stripes of at most :data:`STRIPE_PIXELS` pixels.
Boundary pieces that cross a stripe seam are joined with the next stripe, regions are unioned
across seams, and each polygon is written as soon as its region ends, so memory holds one stripe
plus the regions that cross the current seam, whatever the mask size.

>>> mask = np.array([[1, 1, 1],
...                  [1, 0, 1],
...                  [1, 1, 1]], np.uint8)
>>> [(p.value, p.exterior.tolist(), [h.tolist() for h in p.holes], p.area) for p in trace_polygons(mask)]
[(1, [[0, 0], [3, 0], [3, 3], [0, 3]], [[[2, 1], [1, 1], [1, 2], [2, 2]]], 8)]
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
from numpy.typing import NDArray

from slideseg.errors import ConfigError, OutputExistsError, OutputFormatError

__all__ = [
    "OBJECT_TYPES",
    "STRIPE_PIXELS",
    "GeoJSONResult",
    "Level0Scale",
    "Polygon",
    "export_geojson",
    "level0_scale",
    "parse_classes",
    "trace_polygons",
]

STRIPE_PIXELS = 1 << 22
"""Pixels traced at once (a stripe of full rows): bounds memory to ~50 bytes per stripe pixel."""
OBJECT_TYPES = ("annotation", "detection")
"""QuPath object types a feature can be imported as."""

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
    completes them.
    """
    h, w = int(shape[0]), int(shape[1])
    tracers = [_ClassTracer(int(v), w) for v in values]
    for y0 in range(0, h, stripe_rows):
        y1 = min(h, y0 + stripe_rows)
        rows = np.asarray(read_rows(y0, y1))
        for tracer in tracers:
            yield from tracer.feed(rows == tracer.value, y0, last=y1 == h)
    for tracer in tracers:
        assert not (tracer.heads or tracer.pending), "open boundaries left after the last stripe"


class _ClassTracer:
    """Streaming tracer of one class: stripes in, finished polygons out."""

    def __init__(self, value: int, width: int) -> None:
        self.value, self.width = value, width
        self.ctx = np.zeros(width, bool)  # the previous stripe's last row
        self.ctx_labels = np.zeros(width, np.int64)  # its region labels
        self.next_label = 1
        self.parent: dict[int, int] = {}  # union-find over labels of regions crossing seams
        self.pending: dict[int, list[_Ring]] = {}  # closed rings of regions that go on below
        self.heads: dict[_Key, _Chain] = {}
        self.tails: dict[_Key, _Chain] = {}

    def feed(self, rows: np.ndarray, y0: int, last: bool) -> list[Polygon]:
        """Trace rows ``y0 .. y0 + len(rows)`` (bool, this class); return the regions completed."""
        from scipy import ndimage

        cols = np.flatnonzero(rows.any(axis=0) | self.ctx)
        if cols.size == 0:
            return []  # nothing here, and nothing open above (pending regions touch ctx)
        x0, x1 = int(cols[0]), int(cols[-1]) + 1  # trace only the columns the class is in
        h, w = rows.shape
        padded = np.zeros((h + 2, x1 - x0 + 2), bool)  # ctx row, rows, a background row; background columns
        padded[0, 1:-1], padded[1:-1, 1:-1] = self.ctx[x0:x1], rows[:, x0:x1]
        local, n = ndimage.label(padded[: h + 1, 1:-1])  # 4-connected, over ctx + rows
        offset = self.next_label - 1  # labels of this stripe are local + offset
        self.next_label += n
        ctx = self.ctx[x0:x1]
        above, here = self.ctx_labels[x0:x1][ctx], local[0][ctx].astype(np.int64) + offset
        for a, b in set(zip(above.tolist(), here.tolist(), strict=True)):  # same pixels, labelled twice
            self._union(a, b)
        rings, chains = _trace_stripe(padded, local, offset, x0, y0, last)
        for chain in chains:
            closed = self._attach(chain)
            if closed is not None:
                rings.extend(_close(closed))
        bottom = local[h]
        active = set() if last else {self._find(a + offset) for a in np.unique(bottom[bottom > 0]).tolist()}
        done: dict[int, list[_Ring]] = {}
        for ring in rings:
            root = self._find(ring.label)
            if root in active:  # a copy: a view would keep this stripe's vertex array alive
                self.pending.setdefault(root, []).append(_Ring(ring.label, ring.vertices.copy(), ring.area))
            else:
                done.setdefault(root, []).append(ring)
        for root in [r for r in self.pending if r not in active]:
            done.setdefault(root, []).extend(self.pending.pop(root))
        self.ctx = rows[-1].copy()
        self.ctx_labels = np.zeros(w, np.int64)
        self.ctx_labels[x0:x1] = np.where(bottom > 0, bottom.astype(np.int64) + offset, 0)
        return [_polygon(self.value, done[root]) for root in sorted(done)]

    def _find(self, a: int) -> int:
        root = a
        while root in self.parent:
            root = self.parent[root]
        while a != root:  # path compression
            self.parent[a], a = root, self.parent[a]
        return root

    def _union(self, a: int, b: int) -> None:
        ra, rb = self._find(a), self._find(b)
        if ra != rb:
            keep, drop = min(ra, rb), max(ra, rb)
            self.parent[drop] = keep
            if drop in self.pending:
                self.pending.setdefault(keep, []).extend(self.pending.pop(drop))

    def _attach(self, chain: _Chain) -> _Chain | None:
        """Join a chain to the open chains it meets; return it once it closes into a ring."""
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


def _trace_stripe(padded: np.ndarray, labels: np.ndarray, offset: int, x0: int, y0: int, last: bool
                  ) -> tuple[list[_Ring], list[_Chain]]:
    """Boundary of one class in one stripe: closed rings, and chains open at the seams.

    ``padded`` (h + 2, w + 2) bool holds mask columns ``x0 .. x0 + w`` between background
    columns: row 0 is row y0 - 1, then the stripe, then background; ``labels + offset`` label
    rows 0..h. The stripe links the boundary at vertex rows y0 .. y0 + h - 1 (and H if last);
    vertical edges in row y0 - 1 are shared with the stripe above, in its last row with the next.
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
    label = labels[sy[first] + _LEFT_DY[d[first]] - y0 + 1, sx[first] + _LEFT_DX[d[first]]].astype(np.int64) + offset
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


@dataclass(frozen=True)
class Level0Scale:
    """How a traced mask level maps to slide level-0 pixels: ``x0 = x * sx``, ``y0 = y * sy``."""

    sx: float
    sy: float
    how: str
    """Where the factors come from, in words (an assumption is said to be one)."""
    assumed: bool = False
    """True when the slide could not be opened and the factors are a guess."""


@dataclass(frozen=True)
class GeoJSONResult:
    """What :func:`export_geojson` wrote: features, polygons per class name, polygons dropped
    for ``min_area``, the mask level traced and its scale to slide level 0."""

    output: Path
    level: int
    features: int
    polygons: dict[str, int]
    dropped: int
    scale: Level0Scale
    seconds: float


def export_geojson(mask_path: str | os.PathLike[str], output: str | os.PathLike[str], *, level: int = 0,
                   min_area: float = 0.0, classes: str | Sequence[int | str] | None = None,
                   object_type: str = "annotation", by_class: bool = False,
                   slide_path: str | os.PathLike[str] | None = None, overwrite: bool = False) -> GeoJSONResult:
    """Write the regions of a mask as a GeoJSON FeatureCollection in slide level-0 pixels (QuPath).

    Parameters
    ----------
    mask_path
        A complete mask written by ``slideseg predict``.
    output
        The ``.geojson`` file; written to a temporary file, then renamed.
    level
        Mask pyramid level to trace: 0 is exact; level ``l`` is the x2**l nearest-neighbour
        reduction (smaller files; regions thinner than 2**l px vanish).
    min_area
        Drop regions smaller than this many square pixels of slide level 0 (holes subtracted).
    classes
        Values or names (``"1,2"``, ``[1, "stroma"]``); default: all but the background 0.
    object_type
        QuPath object type: ``"annotation"`` or ``"detection"`` (lighter for many objects).
    by_class
        One MultiPolygon feature per class instead of one Polygon feature per region.
    slide_path
        The slide the mask was made from, if it moved; read only to scale a mask that is not at
        slide level 0 (see :func:`level0_scale`).
    overwrite
        Replace an existing ``output``.

    Raises
    ------
    OutputExistsError, OutputFormatError, ConfigError, SlideReadError
        Existing output, not a (complete) mask, bad option, unreadable slide.
    """
    t0 = time.perf_counter()
    from slideseg.write import open_mask

    out = Path(output)
    _check_args(out, overwrite, min_area, object_type)
    group = open_mask(mask_path)
    attrs: dict[str, Any] = dict(group.attrs)
    _check_complete(mask_path, attrs)
    arrays = _levels(group, attrs)
    if not 0 <= level < len(arrays):
        shapes = "; ".join(f"{i}: {a.shape[0]}x{a.shape[1]}" for i, a in enumerate(arrays))
        raise ConfigError(f"--level {level} is out of range: {mask_path} has {len(arrays)} levels ({shapes}); "
                          f"pass --level between 0 and {len(arrays) - 1}")
    names, colours = _classes(attrs)
    values = parse_classes(classes, names)
    source = dict(attrs["slideseg"].get("source") or {})
    scale = level0_scale(tuple(arrays[0].shape), source, slide_path)
    array = arrays[level]
    shape = (int(array.shape[0]), int(array.shape[1]))
    factor = 2**level  # level l pixel i is level-0 pixel i * 2**l (x2 nearest pyramid)
    sx, sy = scale.sx * factor, scale.sy * factor
    rows = _stripe_rows(shape[1], int(array.chunks[0]))
    polygons = iter_polygons(lambda y0, y1: array[y0:y1], shape, values, rows)
    meta = {"mask": str(Path(mask_path).resolve()), "level": level, "scale_to_level0": [sx, sy],
            "scale_how": scale.how, "min_area": min_area, "object_type": object_type}
    counts = dict.fromkeys((names[v] for v in values), 0)
    dropped = 0
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        with tmp.open("w") as f, tempfile.TemporaryDirectory(dir=out.parent) as parts:
            writer = _FeatureWriter(f, object_type, Path(parts) if by_class else None, names, colours)
            for poly in polygons:
                if poly.area * sx * sy < min_area:
                    dropped += 1
                    continue
                writer.add(poly.value, _coordinates(poly, sx, sy))
                counts[names[poly.value]] += 1
            writer.finish({**meta, "polygons": counts, "dropped": dropped})
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return GeoJSONResult(out, level, writer.features, counts, dropped, scale, time.perf_counter() - t0)


def level0_scale(mask_shape: tuple[int, ...], source: Mapping[str, Any],
                 slide_path: str | os.PathLike[str] | None = None) -> Level0Scale:
    """Factors from a mask's level-0 pixels to its slide's level-0 pixels.

    The mask's level 0 is the slide level it was predicted on (``source['level']``, resampled by
    ``source['resample_factor']`` when the model's pixel size asked for it). At slide level 0
    with no resampling the factors are 1. Otherwise they are the slide's level-0 size over the
    mask's size (exactly 2**k when the mask is the slide halved k times with rounding up, as
    tifffile-written pyramids are), read from ``slide_path`` or the recorded ``source['path']``;
    if neither can be opened, 2**level * resample_factor is assumed, and said.
    """
    from slideseg.io import open_slide

    level, resample = int(source.get("level", 0)), float(source.get("resample_factor", 1.0))
    if slide_path is None and level == 0 and resample == 1.0:
        return Level0Scale(1.0, 1.0, "the mask was predicted on slide level 0")
    path = Path(slide_path) if slide_path is not None else Path(str(source.get("path", "")))
    if slide_path is None and not path.is_file() and not path.is_dir():
        guess = 2.0**level * resample
        return Level0Scale(guess, guess, f"assumed {guess:g}: slide level {level} (x{resample:g} resampled) taken "
                           f"as 2**{level} of level 0, since the slide {path} is not there (pass --slide)", True)
    series = source.get("series")
    with open_slide(path, level=0, series=int(series) if series is not None else None) as slide:
        h0, w0 = slide.shape[:2]
    hm, wm = int(mask_shape[0]), int(mask_shape[1])
    for k in range(32):
        if (-(-h0 // 2**k), -(-w0 // 2**k)) == (hm, wm):
            return Level0Scale(2.0**k, 2.0**k, f"{2**k}: {path.name} level 0 ({h0}x{w0}) halved {k} times")
        if 2**k > max(h0, w0):
            break
    sy, sx = h0 / hm, w0 / wm
    if abs(sy / sx - 1) > 0.02:
        raise ConfigError(f"{path} level 0 is {h0}x{w0} px, which does not have the mask's shape ({hm}x{wm}) "
                          f"at any scale; expected the slide the mask was predicted on: pass it with --slide")
    return Level0Scale(sx, sy, f"{path.name} level 0 ({h0}x{w0}) over the mask ({hm}x{wm})")


def parse_classes(spec: str | Sequence[int | str] | None, names: Mapping[int, str]) -> list[int]:
    """Class values from ``"1,2"``, ``[1, "stroma"]`` or None (every class but the background 0).

    >>> parse_classes("2, nucleus", {0: "background", 1: "nucleus", 2: "stroma"})
    [1, 2]
    """
    if spec is None:
        return sorted(v for v in names if v != 0)
    items = [s.strip() for s in spec.split(",")] if isinstance(spec, str) else list(spec)
    by_name = {n: v for v, n in names.items()}
    known = ", ".join(f"{v} ({n})" for v, n in sorted(names.items()) if v != 0)
    values = set()
    for item in items:
        text = str(item).strip()
        value = int(text) if text.lstrip("-").isdigit() else by_name.get(text)
        if value is None or value not in names or value == 0:
            why = "is the background" if value == 0 else "is not a class of this mask"
            raise ConfigError(f"--classes: {item!r} {why}; expected some of {known}")
        values.add(value)
    return sorted(values)


class _FeatureWriter:
    """Streams features into ``f``: one per polygon, or (with ``parts``, a directory) one
    MultiPolygon per class, whose polygons wait in a file per class until :meth:`finish`."""

    def __init__(self, f: IO[str], object_type: str, parts: Path | None, names: Mapping[int, str],
                 colours: Mapping[int, list[int]]) -> None:
        self.f, self.object_type, self.parts = f, object_type, parts
        self.names, self.colours = names, colours
        self.features = 0
        self._open: dict[int, IO[str]] = {}
        f.write('{"type": "FeatureCollection", "features": [')

    def add(self, value: int, coords: list[Any]) -> None:
        if self.parts is None:
            self._feature("Polygon", value, json.dumps(coords))
            return
        part = self._open.get(value)
        if part is None:
            part = self._open[value] = (self.parts / f"{value}.json").open("w+")
        else:
            part.write(",")
        part.write(json.dumps(coords))

    def finish(self, meta: Mapping[str, Any]) -> None:
        for value, part in sorted(self._open.items()):
            part.seek(0)
            self._feature("MultiPolygon", value, "[", part)
            part.close()
        self.f.write(f'\n], "slideseg": {json.dumps(meta)}}}\n')

    def _feature(self, kind: str, value: int, coords: str, part: IO[str] | None = None) -> None:
        props = {"objectType": self.object_type,
                 "classification": {"name": self.names[value], "color": self.colours.get(value, [128, 128, 128])}}
        sep = "," if self.features else ""
        self.f.write(f'{sep}\n{{"type": "Feature", "geometry": {{"type": "{kind}", "coordinates": {coords}')
        if part is not None:
            while chunk := part.read(1 << 20):
                self.f.write(chunk)
            self.f.write("]")
        self.f.write(f'}}, "properties": {json.dumps(props)}}}')
        self.features += 1


def _coordinates(poly: Polygon, sx: float, sy: float) -> list[Any]:
    """GeoJSON rings (closed) in level-0 pixels: ints when the scale is whole, else 3 decimals."""
    scale = np.array([sx, sy])
    whole = bool(sx.is_integer() and sy.is_integer())
    rings = []
    for ring in (poly.exterior, *poly.holes):
        closed = np.concatenate([ring, ring[:1]])
        rings.append((closed * scale.astype(np.int64)).tolist() if whole else np.round(closed * scale, 3).tolist())
    return rings


def _stripe_rows(width: int, chunk_rows: int) -> int:
    """Rows per stripe: at most STRIPE_PIXELS, whole chunk rows when that fits (each read once)."""
    rows = max(1, STRIPE_PIXELS // max(width, 1))
    return rows // chunk_rows * chunk_rows if rows >= chunk_rows else rows


def _check_args(out: Path, overwrite: bool, min_area: float, object_type: str) -> None:
    if not (math.isfinite(min_area) and min_area >= 0):
        raise ConfigError(f"--min-area is {min_area}; expected a number of level-0 square pixels >= 0")
    if object_type not in OBJECT_TYPES:
        raise ConfigError(f"--object-type is {object_type!r}; expected one of {', '.join(OBJECT_TYPES)}")
    if out.is_dir() or not out.parent.is_dir():
        raise ConfigError(f"{out} is a directory or in a missing one; expected a file name in an existing "
                          f"directory: pass -o DIR/NAME.geojson")
    if out.exists() and not overwrite:
        raise OutputExistsError(f"{out} exists; pass --overwrite to replace it")


def _check_complete(path: str | os.PathLike[str], attrs: Mapping[str, Any]) -> None:
    if not attrs["slideseg"].get("complete", False):
        raise OutputFormatError(f"{path} is incomplete (a predict run that stopped); expected a finished mask: "
                                f"finish it with `slideseg predict ... --resume` first")


def _levels(group: Any, attrs: Mapping[str, Any]) -> list[Any]:
    import zarr

    paths = [d["path"] for d in attrs["multiscales"][0]["datasets"]]
    arrays = [group.get(p) for p in paths]
    if not all(isinstance(a, zarr.Array) and a.ndim == 2 for a in arrays):
        raise OutputFormatError(f"{group.store} lists levels {paths} that are not all 2-D arrays; expected a "
                                "slideseg mask: write it again with slideseg predict")
    return arrays


def _classes(attrs: Mapping[str, Any]) -> tuple[dict[int, str], dict[int, list[int]]]:
    """Class names and RGB colours from the mask's ``image-label`` metadata."""
    label = attrs["image-label"]
    names = {int(p["label-value"]): str(p.get("class", p["label-value"])) for p in label.get("properties", [])}
    colours = {int(c["label-value"]): [int(v) for v in c["rgba"][:3]] for c in label.get("colors", [])}
    return {v: names.get(v, f"class {v}") for v in names | colours}, colours
