"""Per-object pixel sums, merged exactly across the blocks an object spans.

:func:`block_sums` computes, for each local label of a block (:func:`slideseg.tools.components.
label_block`), the sums a table of objects is made of (:class:`Sums`: counts, centroids and second
moments, bounding boxes, edge counts, means and variances of values). :func:`merge_sums` merges
rows of one id with the pairwise update of Chan et al., so the statistics of an object that crosses
blocks equal those of one pass over its pixels; :class:`SumsMerger` returns each object once all of
its blocks are in, so memory follows the objects that cross block borders.

>>> labels = np.array([[1, 1, 0],
...                    [0, 1, 2]], np.int32)
>>> s = block_sums(labels, np.array([3, 4]), (10, 20))
>>> s.count.tolist(), s.mean_y.tolist(), s.x_max.tolist()
([3, 1], [10.333333333333334, 11.0], [21, 22])
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
from numpy.typing import NDArray

from slideseg.tools.components import BlockIds

__all__ = ["Sums", "SumsMerger", "block_sums", "edge_counts", "merge_sums", "unit_sums"]

I64 = NDArray[np.int64]
F64 = NDArray[np.float64]


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
