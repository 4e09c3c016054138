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

The statistics of the objects (sums over their pixels, merged exactly across blocks) are in
:mod:`slideseg.tools.pixel_sums`.

Where a mask is read once, top to bottom, in full-width stripes (the polygon tracer of
:mod:`slideseg.tools.trace`), :class:`StripeStitcher` is the one-pass form of the same stitching:
it names each region by the raster key of its first pixel, joins regions across each seam with the
same rule as :func:`stitch`, and says which regions end with each stripe, holding only the last
row of the stripe before.

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

__all__ = ["MAX_OBJECTS", "BlockIds", "BlockSummary", "LabelSpec", "Numbering", "Stitched", "Stripe", "StripeStitcher",
           "label_block", "label_blocks", "label_image", "relabel_block", "stitch", "summarise_block"]

MAX_OBJECTS = 2**32 - 1
"""Most objects a uint32 instance image can number (0 is the background)."""

I64 = NDArray[np.int64]
I32 = NDArray[np.int32]
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
    labels, values, first = _label_values(block, spec)
    order = np.argsort(first, kind="stable")
    if np.any(order != np.arange(len(order))):  # several values: number all labels in raster order
        remap = np.zeros(len(order) + 1, np.int32)
        remap[1 + order] = np.arange(1, len(order) + 1, dtype=np.int32)
        labels, first, values = remap[labels], first[order], values[order]
    return labels, values, first


def _label_values(block: np.ndarray, spec: LabelSpec) -> tuple[I32, I64, I64]:
    """:func:`label_block` with the labels numbered value by value (ascending), each value's in
    raster order of their first pixel: what stitching needs, without renumbering the block."""
    if block.ndim != 2 or block.dtype.kind not in "iub":
        raise ConfigError(f"expected a 2-D integer label block, got {block.dtype} {block.shape}")
    labels: I32 | None = None
    values, first = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    n = 0
    for selected in _selections(block, spec):
        if not selected.any():
            continue
        lab, k = ndimage.label(selected, spec.structure, output=np.int32)
        first.append(_first_pixels(lab))
        values.append(block.ravel()[first[-1]].astype(np.int64))
        if labels is None:
            labels = lab
        else:  # the selections do not overlap
            np.add(labels, lab + n, out=labels, where=selected)
        n += k
    if labels is None:
        labels = np.zeros(block.shape, np.int32)
    return labels, np.concatenate(values), np.concatenate(first)


def _selections(block: np.ndarray, spec: LabelSpec) -> Iterator[NDArray[np.bool_]]:
    """The pixels of each selected value (ascending) in ``block``, one at a time; without
    ``by_class``, all selected values at once."""
    if spec.by_class and len(spec.values) <= 16:
        yield from (block == v for v in spec.values)
        return
    selected = _present(block, spec.values)
    if spec.by_class:
        yield from (block == v for v in selected)
    elif selected:
        yield block == selected[0] if len(selected) == 1 else np.isin(block, selected)


def _present(block: np.ndarray, values: tuple[int, ...]) -> list[int]:
    """The selected values that occur in ``block``, ascending."""
    if block.dtype.kind in "ub" and block.dtype.itemsize <= 2:
        counts = np.bincount(block.ravel(), minlength=max(values) + 1)
        return [v for v in values if v < len(counts) and counts[v]]
    found = set(np.unique(block).tolist())
    return [v for v in values if v in found]


def _first_pixels(lab: I32) -> I64:
    """Flat index of the first pixel (in raster order) of each label of ``lab``, by label. A first
    pixel has no pixel of its label to its left or above it (those come earlier), so only such
    pixels, a few per label, are sorted."""
    candidate = lab > 0
    candidate[:, 1:] &= lab[:, 1:] != lab[:, :-1]
    candidate[1:] &= lab[1:] != lab[:-1]
    idx = np.flatnonzero(candidate)
    _, at = np.unique(lab.ravel()[idx], return_index=True)
    return idx[at].astype(np.int64)


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



# ------------------------------------------------------------------------------ stripes, in one pass


@dataclass(frozen=True)
class Stripe:
    """The regions of one stripe (:meth:`StripeStitcher.feed`).

    A region is named by the raster key ``y * width + x`` of its first pixel among the rows fed so
    far; once it is complete (:attr:`done`) that is its first pixel in the whole mask, so complete
    regions sort in raster order of their first pixel, as :func:`label_image` numbers them.
    """

    labels: I32
    """(h, W) local labels 1..n of the stripe, value by value (0: not a selected value)."""
    regions: I64
    """(n + 1,) region of each local label (``regions[0]`` is -1)."""
    above: I64
    """(W,) region of each pixel of the row above the stripe, after this stripe's joins (-1: none)."""
    joined: dict[int, int]
    """Regions named before this stripe that this stripe joined to an older one: old name -> new name."""
    done: I64
    """Regions that end with this stripe (no pixel of theirs is in a later row), ascending."""
    done_values: I64
    """The label value of each region of :attr:`done` (that of its first pixel)."""


class StripeStitcher:
    """Connected components of a mask read once, top to bottom, in full-width stripes.

    Each :meth:`feed` labels a stripe (:func:`label_block`), joins its first row to the regions of
    the row above with the rule of :func:`stitch` (same value unless ``by_class`` is False,
    adjacent under the connectivity) and says which regions end there. It holds the last row fed
    and the regions open in it, nothing else; regions and where they end do not depend on the
    stripe heights.

    >>> mask = np.array([[1, 0, 1],
    ...                  [1, 1, 1],
    ...                  [0, 0, 0],
    ...                  [2, 2, 0]], np.uint8)
    >>> st = StripeStitcher(mask.shape, LabelSpec((1, 2)))
    >>> [(s.done.tolist(), s.joined) for s in (st.feed(mask[:1]), st.feed(mask[1:3]), st.feed(mask[3:]))]
    [([], {}), ([0], {2: 0}), ([9], {})]
    """

    def __init__(self, shape: tuple[int, int], spec: LabelSpec) -> None:
        h, w = int(shape[0]), int(shape[1])
        if min(h, w) < 1:
            raise ConfigError(f"a {h} x {w} mask; expected a non-empty one")
        self.shape, self.spec = (h, w), spec
        self.rows = 0
        """Rows fed so far."""
        self._last = np.full(w, -1, np.int64)  # region of each pixel of the last row fed (-1: none)
        self._last_values = np.zeros(w, np.int64)  # that row's label values
        self._open = np.zeros(0, np.int64)  # regions in that row, ascending
        self._open_values = np.zeros(0, np.int64)  # their values

    def feed(self, block: np.ndarray) -> Stripe:
        """The regions of the next stripe ``block`` ((h, W) label values, the rows after those fed)."""
        h, w = self.shape
        if block.ndim != 2 or block.shape[1] != w or not 1 <= block.shape[0] <= h - self.rows:
            raise ValueError(f"a stripe of shape {block.shape} after row {self.rows} of a {h} x {w} mask; expected "
                             f"(1..{h - self.rows}, {w})")
        labels, values, first = _label_values(block, self.spec)
        m = len(self._open)  # nodes: the open regions 0..m-1, then the stripe's labels m..m+n-1
        node_above = np.searchsorted(self._open, self._last)
        node_above[self._last < 0] = -1
        node_row = labels[0].astype(np.int64) + (m - 1)
        node_row[labels[0] == 0] = -1
        pairs = _joins((node_above, self._last_values), (node_row, block[0].astype(np.int64)), self.spec)
        key = np.concatenate([self._open, self.rows * w + first])  # each node's first pixel so far
        node_value = np.concatenate([self._open_values, values])
        comp_key, comp_value, region = _merge_nodes(pairs, key, node_value)
        changed = np.flatnonzero(region[:m] != self._open)
        joined = dict(zip(self._open[changed].tolist(), region[changed].tolist(), strict=True))
        regions = np.concatenate([np.full(1, -1, np.int64), region[m:]])
        above = np.full(w, -1, np.int64)
        above[node_above >= 0] = region[node_above[node_above >= 0]]
        bottom = regions[labels[-1]]
        self.rows += block.shape[0]
        still = np.unique(bottom[bottom >= 0]) if self.rows < h else np.zeros(0, np.int64)
        order = np.argsort(comp_key)
        done = np.setdiff1d(comp_key, still, assume_unique=True)

        def value_of(names: I64) -> I64:
            return comp_value[order[np.searchsorted(comp_key, names, sorter=order)]]

        self._last, self._last_values = bottom, block[-1].astype(np.int64)
        self._open, self._open_values = still, value_of(still)
        return Stripe(labels, regions, above, joined, done, value_of(done))


def _merge_nodes(pairs: I64, key: I64, value: I64) -> tuple[I64, I64, I64]:
    """Connected components of nodes joined by ``pairs`` (keys ``a << 32 | b``): each component's
    smallest ``key`` (its name) and the ``value`` of the node holding it, and each node's name."""
    n = len(key)
    if len(pairs) == 0:
        return key, value, key
    graph = coo_matrix((np.ones(len(pairs), np.int8), (pairs >> 32, pairs & 0xFFFFFFFF)), shape=(n, n))
    _, labels = connected_components(graph.tocsr(), directed=False)
    comp = np.asarray(labels, np.int64)
    comp_key = np.full(int(comp.max()) + 1, np.iinfo(np.int64).max, np.int64)
    np.minimum.at(comp_key, comp, key)
    holder = np.flatnonzero(key == comp_key[comp])  # one node per component holds its smallest key
    comp_value = np.zeros(len(comp_key), np.int64)
    comp_value[comp[holder]] = value[holder]
    return comp_key, comp_value, comp_key[comp]

def _summary(labels: I32, values: I64, first: I64, box: Box, width: int) -> BlockSummary:
    y0, _, x0, _ = box
    w = labels.shape[1]
    keys = (y0 + first // w) * width + x0 + first % w
    area = np.bincount(labels.ravel(), minlength=len(values) + 1)[1:].astype(np.int64)
    return BlockSummary(box, values, keys, area, labels[0].copy(), labels[-1].copy(), labels[:, 0].copy(),
                        labels[:, -1].copy())
