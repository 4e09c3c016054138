"""Connected components of a label mask read in blocks: exact global ids in flat memory.

Objects are the connected regions of each selected value (4- or 8-connected); regions of different
values are different objects even where they touch (``by_class=False`` joins all selected values
into one foreground instead). Ids are global and stable: 1, 2, ... in raster order (row-major) of
each object's first pixel, so they do not depend on the block size, the order blocks are processed
in or the number of workers. The work is three steps over blocks:

1. :func:`summarise_block` (any order, in parallel): label one block on its own and keep what
   stitching needs: each local label's value, first pixel and area, and the labels along the
   block's four edges (a small :class:`BlockSummary`, which can be saved to resume).
2. :func:`stitch` (blocks in raster order): join the labels that touch across block borders (same
   value, adjacent under the connectivity) as the connected components of a sparse graph. Only
   labels on block edges take part, so memory follows the objects that cross borders.
   :class:`Numbering` then numbers objects band by band (a band is one row of blocks) and gives
   each block the map from its local labels to global ids.
3. :func:`relabel_block` (any order, in parallel): label the block again (labelling is
   deterministic) and map it: what it returns is final.

Per-object pixel sums (:class:`Sums`: counts, centroids and second moments, bounding boxes, edge
counts, means and variances of values) are computed per block by :func:`block_sums` and merged per
id by :func:`merge_sums` (the pairwise update of Chan et al.), so the statistics of objects that
cross blocks are exact too.

>>> mask = np.array([[1, 1, 0, 2],
...                  [0, 1, 0, 2],
...                  [2, 0, 0, 1]], np.uint8)
>>> label_image(mask, LabelSpec((1, 2)), block=2).tolist()
[[1, 1, 0, 2], [0, 1, 0, 2], [3, 0, 0, 4]]
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from slideseg.errors import ConfigError
from slideseg.plan.tiles import grid_boxes

__all__ = ["MAX_OBJECTS", "BlockIds", "BlockSummary", "LabelSpec", "Numbering", "Stitched", "Sums", "SumsMerger",
           "block_sums", "edge_counts", "label_block", "label_blocks", "label_image", "merge_sums", "relabel_block",
           "stitch", "summarise_block", "unit_sums"]

MAX_OBJECTS = 2**32 - 1
"""Most objects a uint32 instance image can number (0 is the background)."""

I64 = NDArray[np.int64]
I32 = NDArray[np.int32]
F64 = NDArray[np.float64]
Box = tuple[int, int, int, int]
ReadBlock = Callable[[int, int, int, int], np.ndarray]
"""``read(y0, y1, x0, x1) -> (y1 - y0, x1 - x0)`` label values of the mask."""


@dataclass(frozen=True)
class LabelSpec:
    """Which pixels form objects and how they connect."""

    values: tuple[int, ...]
    """Label values that become objects (other values are background)."""
    connectivity: int = 4
    """4: pixels joined by an edge; 8: by an edge or a corner."""
    by_class: bool = True
    """True: regions of different values are different objects. False: the selected values form
    one foreground and objects are its components (an object's value is that of its first pixel)."""

    def __post_init__(self) -> None:
        if self.connectivity not in (4, 8):
            raise ConfigError(f"--connectivity is {self.connectivity}; expected 4 (edges) or 8 (edges and corners)")
        values = tuple(sorted({int(v) for v in self.values}))
        if not values or min(values) < 0:
            raise ConfigError(f"object values {list(self.values)}; expected one or more values >= 0: pass --classes")
        object.__setattr__(self, "values", values)

    @property
    def structure(self) -> NDArray[np.bool_]:
        """The 3 x 3 neighbourhood given to :func:`scipy.ndimage.label`."""
        return ndimage.generate_binary_structure(2, 1 if self.connectivity == 4 else 2)


# ------------------------------------------------------------------------------ one block


def label_block(block: np.ndarray, spec: LabelSpec) -> tuple[I32, I64, I64]:
    """Label one block on its own: ``(labels (h, w) int32, values (n,), first (n,))``.

    Local labels 1..n are numbered in raster order of their first pixel; ``first`` holds those
    pixels as flat indices into the block and ``values`` the label value of each.
    """
    if block.ndim != 2 or block.dtype.kind not in "iub":
        raise ConfigError(f"expected a 2-D integer label block, got {block.dtype} {block.shape}")
    selected = _present(block, spec.values)
    groups = [[v] for v in selected] if spec.by_class else [selected] if selected else []
    labels = np.zeros(block.shape, np.int32)
    values, first = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    for group in groups:
        lab, _ = ndimage.label(block == group[0] if len(group) == 1 else np.isin(block, group), spec.structure,
                               output=np.int32)
        idx = np.flatnonzero(lab)
        _, starts = np.unique(lab.ravel()[idx], return_index=True)  # first pixel of labels 1..k
        offset = sum(len(f) for f in first)
        labels += np.where(lab > 0, lab + offset, 0).astype(np.int32) if offset else lab
        first.append(idx[starts].astype(np.int64))
        values.append(block.ravel()[first[-1]].astype(np.int64))
    firsts, vals = np.concatenate(first), np.concatenate(values)
    order = np.argsort(firsts, kind="stable")
    if np.any(order != np.arange(len(order))):  # several values: number all labels in raster order
        remap = np.zeros(len(order) + 1, np.int32)
        remap[1 + order] = np.arange(1, len(order) + 1, dtype=np.int32)
        labels, firsts, vals = remap[labels], firsts[order], vals[order]
    return labels, vals, firsts


def _present(block: np.ndarray, values: tuple[int, ...]) -> list[int]:
    """The selected values that occur in ``block``, ascending."""
    if block.dtype.kind in "ub" and block.dtype.itemsize <= 2:
        counts = np.bincount(block.ravel(), minlength=max(values) + 1)
        return [v for v in values if v < len(counts) and counts[v]]
    found = set(np.unique(block).tolist())
    return [v for v in values if v in found]


@dataclass(frozen=True)
class BlockSummary:
    """What stitching needs to know of one block (pass 1); small, and saved to resume."""

    box: Box
    """``(y0, y1, x0, x1)`` of the block in the mask."""
    values: I64
    """(n,) label value of each local label 1..n."""
    first: I64
    """(n,) raster key ``y * width + x`` (mask coordinates) of each local label's first pixel."""
    area: I64
    """(n,) pixels of each local label."""
    top: I32
    bottom: I32
    left: I32
    right: I32
    """Local labels along the block's first and last row and first and last column (0: none)."""

    @property
    def n(self) -> int:
        """Number of local labels."""
        return len(self.values)

    def border_labels(self) -> I32:
        """The local labels on any edge of the block, ascending (each one a stitching node)."""
        edges = np.concatenate([self.top, self.bottom, self.left, self.right])
        return np.unique(edges[edges > 0]).astype(np.int32)

    def to_arrays(self) -> dict[str, np.ndarray]:
        """The summary as named arrays (for ``np.savez``)."""
        return {f.name: np.asarray(getattr(self, f.name)) for f in fields(self)}

    @classmethod
    def from_arrays(cls, arrays: Any) -> BlockSummary:
        """The summary from :meth:`to_arrays` (or an ``np.load`` of it)."""
        box = tuple(int(v) for v in arrays["box"])
        return cls(box, *(np.asarray(arrays[f.name]) for f in fields(cls)[1:]))  # type: ignore[arg-type]


def summarise_block(block: np.ndarray, box: Box, width: int, spec: LabelSpec) -> BlockSummary:
    """Pass 1 for the block at ``box`` of a mask ``width`` pixels wide (:class:`BlockSummary`)."""
    return _summary(*label_block(block, spec), box, width)


def relabel_block(block: np.ndarray, spec: LabelSpec, mapping: np.ndarray) -> tuple[np.ndarray, I32, I64]:
    """Pass 3: ``(global ids, local labels, local values)`` of a block, ``ids = mapping[labels]``."""
    labels, values, _ = label_block(block, spec)
    if len(mapping) != len(values) + 1:
        raise ValueError(f"the block has {len(values)} labels but its map has {len(mapping) - 1}; expected the map "
                         "made for this block from the same mask and settings")
    return mapping[labels], labels, values


# ------------------------------------------------------------------------------ stitching


@dataclass(frozen=True)
class Stitched:
    """Objects that cross block borders: the component of every border label ("node")."""

    grid: tuple[int, int]
    node_offset: I64
    """(blocks + 1,) the nodes of block ``b`` (raster index) are ``node_offset[b]:node_offset[b + 1]``,
    one per :meth:`BlockSummary.border_labels`, in that order."""
    node_comp: I64
    """(nodes,) component of each node."""
    comp_first: I64
    """(components,) raster key of each component's first pixel."""
    comp_area: I64
    comp_blocks: I64
    """(components,) number of blocks each component spans."""

    def comps(self, b: int) -> I64:
        """Components of block ``b``'s border labels."""
        return self.node_comp[self.node_offset[b]:self.node_offset[b + 1]]


def stitch(summaries: Iterable[BlockSummary], grid: tuple[int, int], spec: LabelSpec) -> Stitched:
    """Join border labels across block borders; ``summaries`` come in raster order of the grid."""
    gx, offsets = grid[1], [0]
    first: list[I64] = []
    area: list[I64] = []
    block: list[I64] = []
    pairs: list[I64] = []  # node pairs as keys a << 32 | b
    above = None  # (nodes, values) along the last row of the previous band
    tops: list[tuple[I64, I64]] = []
    bottoms: list[tuple[I64, I64]] = []
    left = (np.zeros(0, np.int64), np.zeros(0, np.int64))
    b = -1
    for b, s in enumerate(summaries):
        border = s.border_labels()
        nodes = np.full(s.n + 1, -1, np.int64)  # local label -> node (-1: none)
        nodes[border] = offsets[-1] + np.arange(len(border))
        vals = np.r_[np.int64(-1), s.values]

        def line(labels: I32, nodes: I64 = nodes, vals: I64 = vals) -> tuple[I64, I64]:
            return nodes[labels], vals[labels]

        first.append(s.first[border - 1])
        area.append(s.area[border - 1])
        block.append(np.full(len(border), b, np.int64))
        offsets.append(offsets[-1] + len(border))
        if b % gx:
            pairs.append(_joins(left, line(s.left), spec))
        left = line(s.right)
        tops.append(line(s.top))
        bottoms.append(line(s.bottom))
        if b % gx == gx - 1:  # a band is complete: join its first row to the previous band's last
            if above is not None:
                pairs.append(_joins(above, _concat(tops), spec))
            above, tops, bottoms = _concat(bottoms), [], []
    if b + 1 != grid[0] * grid[1]:
        raise ValueError(f"stitch got {b + 1} block summaries; expected {grid[0]} x {grid[1]} = {grid[0] * grid[1]}")
    none = np.zeros(0, np.int64)
    return _components(np.asarray(offsets, np.int64), np.unique(np.concatenate([none, *pairs])),
                       np.concatenate([none, *first]), np.concatenate([none, *area]), np.concatenate([none, *block]),
                       grid)


def _concat(parts: list[tuple[I64, I64]]) -> tuple[I64, I64]:
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def _joins(a: tuple[I64, I64], b: tuple[I64, I64], spec: LabelSpec) -> I64:
    """Node pairs (keys ``a << 32 | b``, unique) that touch across a border: ``a`` and ``b`` are the
    facing lines of pixels (nodes and values, aligned); 8-connectivity adds diagonal neighbours."""
    (na, va), (nb, vb) = a, b
    keys = []
    for d in (0,) if spec.connectivity == 4 else (-1, 0, 1):
        lo, hi = max(0, -d), len(na) - max(0, d)  # pixel i of a faces pixel i + d of b
        xa, xb = na[lo:hi], nb[lo + d : hi + d]
        touch = (xa >= 0) & (xb >= 0) & ((va[lo:hi] == vb[lo + d : hi + d]) | (not spec.by_class))
        keys.append((xa[touch] << 32) | xb[touch])
    return np.unique(np.concatenate(keys))


def _components(offsets: I64, pairs: I64, first: I64, area: I64, block: I64, grid: tuple[int, int]) -> Stitched:
    """Connected components of the node graph, with each component's first pixel, area and blocks."""
    n, n_blocks = int(offsets[-1]), max(1, grid[0] * grid[1])
    graph = coo_matrix((np.ones(len(pairs), np.int32), (pairs >> 32, pairs & 0xFFFFFFFF)), shape=(n, n))
    n_comp, labels = connected_components(graph.tocsr(), directed=False) if n else (0, np.zeros(0))
    comp: I64 = np.asarray(labels, np.int64)
    comp_first = np.full(n_comp, np.iinfo(np.int64).max, np.int64)
    np.minimum.at(comp_first, comp, first)
    comp_area = np.zeros(n_comp, np.int64)
    np.add.at(comp_area, comp, area)
    spans = np.unique(comp * n_blocks + block) // n_blocks  # one entry per (component, block)
    return Stitched(grid, offsets, comp, comp_first, comp_area, np.bincount(spans, minlength=n_comp).astype(np.int64))


# ------------------------------------------------------------------------------ numbering


@dataclass(frozen=True)
class BlockIds:
    """The map of one block's local labels to global ids (pass 3 input)."""

    mapping: NDArray[np.uint32]
    """(n + 1,) global id of each local label; 0 for the background and for dropped objects."""
    spans: NDArray[np.uint32]
    """(n + 1,) number of blocks the object of each local label spans (1 inside a block)."""


@dataclass
class Numbering:
    """Numbers objects band by band, in raster order of their first pixel.

    Feed :meth:`band` every band in order, each with the summaries of its blocks; it returns the
    map of each block. Objects smaller than ``min_area`` pixels are dropped (id 0) and ids stay
    consecutive among the objects kept.
    """

    stitched: Stitched
    min_area: int = 0
    limit: int = MAX_OBJECTS
    """Most ids there may be (the uint32 instance image holds up to 2**32 - 1)."""
    objects: int = 0
    """Objects numbered so far."""
    dropped: int = 0
    """Objects dropped for ``min_area`` so far."""
    _comp_id: I64 = field(init=False, repr=False)
    _band: int = field(default=0, init=False, repr=False)

    def __post_init__(self) -> None:
        self._comp_id = np.zeros(len(self.stitched.comp_first), np.int64)

    def band(self, summaries: Sequence[BlockSummary]) -> list[BlockIds]:
        """The maps of the blocks of the next band (its summaries, left to right)."""
        st = self.stitched
        gy, gx = st.grid
        if self._band >= gy or len(summaries) != gx:
            raise ValueError(f"band {self._band} with {len(summaries)} blocks; expected bands 0..{gy - 1} of {gx}")
        blocks = range(self._band * gx, (self._band + 1) * gx)
        parts, keys = [], []
        for b, s in zip(blocks, summaries, strict=True):
            comp = np.full(s.n, -1, np.int64)  # component of each local label 1..n (-1: inside the block)
            comp[s.border_labels() - 1] = st.comps(b)
            on = comp >= 0
            first, area = s.first.copy(), s.area.copy()
            first[on], area[on] = st.comp_first[comp[on]], st.comp_area[comp[on]]
            starts = first == s.first  # the label that holds its object's first pixel numbers the object
            keep = starts & (area >= self.min_area)
            self.dropped += int((starts & ~keep).sum())
            keys.append(s.first[keep])
            parts.append((s, comp, on, keep))
        key = np.concatenate([np.zeros(0, np.int64), *keys])
        if self.objects + len(key) > self.limit:
            raise ConfigError(f"the mask holds more than {self.limit} objects, the most a uint32 instance image can "
                              "number; drop small objects with --min-area or select fewer --classes")
        ids = np.empty(len(key), np.int64)
        ids[np.argsort(key, kind="stable")] = self.objects + 1 + np.arange(len(key))
        self.objects += len(key)
        maps = []
        for (s, comp, on, keep), got in zip(parts, np.split(ids, np.cumsum([len(k) for k in keys])[:-1]), strict=True):
            mapping = np.zeros(s.n + 1, np.uint32)
            mapping[1:][keep] = got
            self._comp_id[comp[keep & on]] = got[on[keep]]
            maps.append(mapping)
        out = []
        for (s, comp, on, _), mapping in zip(parts, maps, strict=True):  # all of the band's objects have ids now
            mapping[1:][on] = self._comp_id[comp[on]]
            spans = np.ones(s.n + 1, np.uint32)
            spans[0] = 0
            spans[1:][on] = st.comp_blocks[comp[on]]
            out.append(BlockIds(mapping, spans))
        self._band += 1
        return out


# ------------------------------------------------------------------------------ streaming helpers


def label_blocks(read: ReadBlock, shape: tuple[int, int], block: int, spec: LabelSpec, *, min_area: int = 0
                 ) -> Iterator[tuple[Box, NDArray[np.uint32]]]:
    """Global ids of a mask, block by block in raster order, reading each block twice.

    Memory holds the labels of one band of blocks and the objects that cross block borders; use it
    where the blocks are read in one process (the ``objects`` command runs the same steps as Dask
    tasks).
    """
    h, w = int(shape[0]), int(shape[1])
    if block < 1 or min(h, w) < 1:
        raise ConfigError(f"block {block} over a {h} x {w} mask; expected a block >= 1 px and a non-empty mask")
    grid = (-(-h // block), -(-w // block))
    boxes = grid_boxes((h, w), block)
    stitched = stitch((summarise_block(read(*box), box, w, spec) for box in boxes), grid, spec)
    numbering = Numbering(stitched, min_area)
    for band in range(grid[0]):
        row = boxes[band * grid[1]:(band + 1) * grid[1]]
        labelled = [label_block(np.asarray(read(*box)), spec) for box in row]
        summaries = [_summary(lab, vals, first, box, w) for (lab, vals, first), box in zip(labelled, row, strict=True)]
        for box, (lab, _, _), ids in zip(row, labelled, numbering.band(summaries), strict=True):
            yield box, ids.mapping[lab]


def label_image(mask: np.ndarray, spec: LabelSpec, *, block: int | None = None, min_area: int = 0
                ) -> NDArray[np.uint32]:
    """Global ids (uint32) of a whole in-memory label image, computed in blocks of ``block`` px
    (default: one block); the result does not depend on ``block``."""
    out = np.zeros(mask.shape, np.uint32)
    for (y0, y1, x0, x1), ids in label_blocks(lambda y0, y1, x0, x1: mask[y0:y1, x0:x1], mask.shape,
                                              block or max(mask.shape), spec, min_area=min_area):
        out[y0:y1, x0:x1] = ids
    return out


# ------------------------------------------------------------------------------ pixel sums


@dataclass(frozen=True)
class Sums:
    """Per-object sums over some of their pixels (one block's, or all once merged): one row per
    object. Coordinates are mask pixel indices (row ``y``, column ``x``); second moments and value
    variances are kept as central sums (``m2``) so that merging them stays exact."""

    ids: I64
    value: I64
    """The object's label value (its class)."""
    count: I64
    mean_y: F64
    mean_x: F64
    m2_yy: F64
    m2_xx: F64
    m2_xy: F64
    """Sums of ``(y - mean_y)**2``, ``(x - mean_x)**2`` and ``(y - mean_y) * (x - mean_x)``."""
    y_min: I64
    y_max: I64
    x_min: I64
    x_max: I64
    """Bounding box, inclusive."""
    edges: I64
    """Pixel edges between the object and another value or the outside of the mask."""
    mean_v: F64
    """(rows, K) mean of each value channel (K may be 0)."""
    m2_v: F64
    """(rows, K) sum of squared deviations from that mean."""

    def __len__(self) -> int:
        return len(self.ids)

    def take(self, index: np.ndarray) -> Sums:
        """The rows at ``index`` (an integer or boolean array)."""
        return Sums(*(getattr(self, f.name)[index] for f in fields(self)))

    def with_ids(self, ids: np.ndarray) -> Sums:
        """The same rows under new ids."""
        return Sums(np.asarray(ids, np.int64), *(getattr(self, f.name) for f in fields(self)[1:]))

    def to_arrays(self) -> dict[str, np.ndarray]:
        """The sums as named arrays (for ``np.savez``)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_arrays(cls, arrays: Any) -> Sums:
        """The sums from :meth:`to_arrays` (or an ``np.load`` of it)."""
        return cls(*(np.asarray(arrays[f.name]) for f in fields(cls)))

    @classmethod
    def concat(cls, parts: Sequence[Sums], channels: int = 0) -> Sums:
        """All rows of ``parts``, one after another."""
        if not parts:
            empty: dict[str, Any] = {f.name: np.zeros(0, np.float64 if f.name.startswith(("mean", "m2")) else np.int64)
                                     for f in fields(cls)}
            return cls(**{**empty, "mean_v": np.zeros((0, channels)), "m2_v": np.zeros((0, channels))})
        return cls(*(np.concatenate([getattr(p, f.name) for p in parts]) for f in fields(cls)))


def edge_counts(padded: np.ndarray) -> NDArray[np.uint8]:
    """For each inner pixel of ``padded`` ((h + 2, w + 2): a block with a one-pixel frame of its
    neighbours, outside the mask a value no pixel has), how many of its 4 neighbours differ: (h, w).

    >>> edge_counts(np.pad(np.array([[1, 1], [0, 1]]), 1, constant_values=-1)).tolist()
    [[3, 2], [4, 3]]
    """
    c = padded[1:-1, 1:-1]
    out = (c != padded[:-2, 1:-1]).astype(np.uint8)
    out += c != padded[2:, 1:-1]
    out += c != padded[1:-1, :-2]
    out += c != padded[1:-1, 2:]
    return out


def _bincount(index: np.ndarray, weights: np.ndarray, n: int) -> F64:
    return np.asarray(np.bincount(index, weights, minlength=n), np.float64)


def block_sums(labels: np.ndarray, values: I64, origin: tuple[int, int], *, edges: np.ndarray | None = None,
               channels: np.ndarray | None = None) -> Sums:
    """Sums of each local label 1..n of a block (rows in label order, ids = local labels).

    Parameters
    ----------
    labels
        (h, w) local labels of the block (:func:`label_block`).
    values
        (n,) label value of each local label.
    origin
        ``(y0, x0)`` of the block in the mask.
    edges
        (h, w) :func:`edge_counts` of the block, or None (edge sums are then 0).
    channels
        (h, w, K) values to average inside each object (slide channels, probabilities), or None.
    """
    n = len(values)
    ys, xs = np.nonzero(labels)  # raster order
    lab = labels[ys, xs]
    count = np.bincount(lab, minlength=n + 1)
    safe = np.maximum(count, 1)
    my = _bincount(lab, ys, n + 1) / safe  # local, relative to the block: small numbers
    mx = _bincount(lab, xs, n + 1) / safe
    dy, dx = ys - my[lab], xs - mx[lab]
    y_min, y_max = np.full(n + 1, np.iinfo(np.int64).max), np.full(n + 1, -1)
    x_min, x_max = y_min.copy(), y_max.copy()
    np.minimum.at(y_min, lab, ys)
    np.maximum.at(y_max, lab, ys)
    np.minimum.at(x_min, lab, xs)
    np.maximum.at(x_max, lab, xs)
    k = 0 if channels is None else channels.shape[2]
    mean_v, m2_v = np.zeros((n, k)), np.zeros((n, k))
    for c in range(k):
        assert channels is not None
        v = channels[ys, xs, c].astype(np.float64)
        mv = _bincount(lab, v, n + 1) / safe
        mean_v[:, c] = mv[1:]
        m2_v[:, c] = _bincount(lab, (v - mv[lab]) ** 2, n + 1)[1:]
    e = np.zeros(n, np.int64) if edges is None else _bincount(lab, edges[ys, xs], n + 1)[1:]
    y0, x0 = origin
    return Sums(np.arange(1, n + 1, dtype=np.int64), np.asarray(values, np.int64), count[1:].astype(np.int64),
                my[1:] + y0, mx[1:] + x0, _bincount(lab, dy * dy, n + 1)[1:],
                _bincount(lab, dx * dx, n + 1)[1:], _bincount(lab, dy * dx, n + 1)[1:],
                y_min[1:] + y0, y_max[1:] + y0, x_min[1:] + x0, x_max[1:] + x0, np.rint(e).astype(np.int64),
                mean_v, m2_v)


def merge_sums(parts: Sums) -> Sums:
    """One row per id (ascending) from rows that may repeat ids (parts of one object in several
    blocks, or several local labels of one object in a block): counts, edges and extremes add up,
    means are count-weighted and central sums take the pairwise update
    ``m2 = sum(m2_p + n_p * (mean_p - mean) ** 2)``."""
    if len(parts) == 0:
        return parts
    order = np.argsort(parts.ids, kind="stable")
    p = parts.take(order)
    ids, starts, inv = np.unique(p.ids, return_index=True, return_inverse=True)
    if len(ids) == len(p):
        return p
    n = np.add.reduceat(p.count, starts)
    w = p.count.astype(np.float64)

    def mean(m: F64) -> F64:
        return _bincount(inv, w * m, len(ids)) / n

    my, mx = mean(p.mean_y), mean(p.mean_x)
    dy, dx = p.mean_y - my[inv], p.mean_x - mx[inv]

    def central(m2: F64, d1: F64, d2: F64) -> F64:
        return _bincount(inv, m2 + w * d1 * d2, len(ids))

    k = p.mean_v.shape[1]
    mean_v = np.zeros((len(ids), k))
    m2_v = np.zeros((len(ids), k))
    for c in range(k):
        mean_v[:, c] = mean(p.mean_v[:, c])
        d = p.mean_v[:, c] - mean_v[inv, c]
        m2_v[:, c] = central(p.m2_v[:, c], d, d)
    return Sums(ids, p.value[starts], n, my, mx, central(p.m2_yy, dy, dy), central(p.m2_xx, dx, dx),
                central(p.m2_xy, dy, dx), np.minimum.reduceat(p.y_min, starts), np.maximum.reduceat(p.y_max, starts),
                np.minimum.reduceat(p.x_min, starts), np.maximum.reduceat(p.x_max, starts),
                np.add.reduceat(p.edges, starts), mean_v, m2_v)


def unit_sums(labels: np.ndarray, values: I64, ids: BlockIds, origin: tuple[int, int], *,
              edges: np.ndarray | None = None, channels: np.ndarray | None = None) -> tuple[Sums, NDArray[np.uint32]]:
    """The sums of one block's objects by global id (dropped objects left out), and the number of
    blocks each object spans (for :class:`SumsMerger`); arguments as :func:`block_sums`."""
    local = block_sums(labels, values, origin, edges=edges, channels=channels)
    keep = ids.mapping[1:] > 0
    gids = ids.mapping[1:][keep].astype(np.int64)
    _, first = np.unique(gids, return_index=True)
    return merge_sums(local.take(keep).with_ids(gids)), ids.spans[1:][keep][first]


class SumsMerger:
    """Merges blocks' sums (:func:`unit_sums`, blocks in any order) into whole objects: an object
    that spans ``k`` blocks is returned by the :meth:`add` of its ``k``-th part; until then its
    parts wait here, so memory follows the objects that cross block borders."""

    def __init__(self) -> None:
        self._pending: list[Sums] = []
        self._missing: dict[int, int] = {}  # id -> parts not yet added

    @property
    def open(self) -> int:
        """Objects with parts still to come."""
        return len(self._missing)

    def add(self, sums: Sums, spans: np.ndarray) -> Sums:
        """Add one block's sums; return the objects now complete (any order)."""
        whole, multi = sums.take(spans == 1), spans > 1
        if not multi.any():
            return whole
        part = sums.take(multi)
        done = []
        for i, k in zip(part.ids.tolist(), spans[multi].tolist(), strict=True):
            left = self._missing.get(i, int(k)) - 1
            if left:
                self._missing[i] = left
            else:
                self._missing.pop(i, None)
                done.append(i)
        self._pending.append(part)
        if not done:
            return whole
        parts = Sums.concat(self._pending)
        ready = np.isin(parts.ids, done)
        self._pending = [parts.take(~ready)]
        return Sums.concat([whole, merge_sums(parts.take(ready))])


def _summary(labels: I32, values: I64, first: I64, box: Box, width: int) -> BlockSummary:
    y0, _, x0, _ = box
    w = labels.shape[1]
    keys = (y0 + first // w) * width + x0 + first % w
    area = np.bincount(labels.ravel(), minlength=len(values) + 1)[1:].astype(np.int64)
    return BlockSummary(box, values, keys, area, labels[0].copy(), labels[-1].copy(), labels[:, 0].copy(),
                        labels[:, -1].copy())
