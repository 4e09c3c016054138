"""``slideseg evaluate``: compare a predicted mask with ground truth, block by block.

Pixel metrics: per-class IoU and Dice from one confusion matrix. Object metrics: predicted objects
are the 4-connected components of the foreground (any class but 0); ground-truth objects are the
instances where the truth has them (``slideseg synth`` truth, ``--gt-kind instances``), else its
4-connected foreground components. A ground-truth and a predicted object match when their IoU
exceeds 0.5 (such matches are unique), giving precision, recall and F1. The merge rate is the
fraction of touching ground-truth pairs (4-adjacent, different instances) that one predicted
object claims both of, where an object is claimed by the predicted object covering most of it,
if that covers at least half of it.

Masks are read in blocks (2048 px by default), components are stitched across block borders with
union-find, so a 50k x 50k mask is never held whole.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from slideseg.errors import ConfigError, OutputFormatError, SlideReadError, TrainingDataError
from slideseg.io.images import open_mask
from slideseg.plan.tiles import grid_boxes
from slideseg.write.mask import describe_mask

GtKind = Literal["auto", "classes", "instances"]


U64 = NDArray[np.uint64]


_SHIFT = np.uint64(32)


@dataclass(frozen=True)
class EvalResult:
    """Pixel and object metrics of one prediction against its ground truth."""

    class_names: tuple[str, ...]
    iou: tuple[float, ...]
    """Per class id (background included); NaN where a class is in neither mask."""
    dice: tuple[float, ...]
    confusion: tuple[tuple[int, ...], ...]
    """``confusion[truth][pred]`` pixel counts."""
    foreground_iou: float
    """IoU of foreground (class != 0) vs background, whatever the classes."""
    objects: dict[str, float]
    """gt, pred, matched (IoU > 0.5), precision, recall, f1."""
    merges: dict[str, float]
    """touching_pairs, merged_pairs, merge_rate (NaN without touching pairs)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        def clean(v: Any) -> Any:
            if isinstance(v, float) and v != v:
                return None
            if isinstance(v, dict):
                return {k: clean(x) for k, x in v.items()}
            if isinstance(v, list | tuple):
                return [clean(x) for x in v]
            return v

        return json.dumps(clean(self.to_dict()), indent=2)


class _UnionFind:
    """Union-find over provisional component labels 1..n (0 = background), growing as needed."""

    def __init__(self) -> None:
        self.parent = np.zeros(1, np.int64)

    def add(self, n: int) -> int:
        """Reserve ``n`` new labels; return the offset to add to a block's labels 1..n."""
        offset = len(self.parent) - 1
        self.parent = np.concatenate([self.parent, np.arange(offset + 1, offset + 1 + n)])
        return offset

    def find(self, a: int) -> int:
        p = self.parent
        while p[a] != a:
            p[a] = p[p[a]]
            a = int(p[a])
        return a

    def union(self, a: NDArray[np.int64], b: NDArray[np.int64]) -> None:
        for x, y in np.unique(np.stack([a, b], 1), axis=0):
            rx, ry = self.find(int(x)), self.find(int(y))
            if rx != ry:
                self.parent[max(rx, ry)] = min(rx, ry)

    def roots(self) -> NDArray[np.int64]:
        """Root of every label (vectorised path halving until stable)."""
        p = self.parent.copy()
        while True:
            q = p[p]
            if np.array_equal(q, p):
                return p
            p = q


class _Stitcher:
    """Labels 4-connected components block by block (row-major) and joins them across borders."""

    def __init__(self, width: int) -> None:
        self.uf = _UnionFind()
        self.above = np.zeros(width, np.int64)  # labels of the row above the current block row
        self.left: NDArray[np.int64] | None = None

    def label(self, fg: NDArray[np.bool_], y0: int, x0: int, x1: int, new_row: bool) -> NDArray[np.int64]:
        lab, n = ndimage.label(fg)
        lab = lab.astype(np.int64)
        lab[lab > 0] += self.uf.add(n)
        if new_row:
            self.left = None
        top = self.above[x0:x1]
        if y0 > 0:
            join = (top > 0) & (lab[0] > 0)
            if join.any():
                self.uf.union(top[join], lab[0][join])
        if self.left is not None:
            join = (self.left > 0) & (lab[:, 0] > 0)
            if join.any():
                self.uf.union(self.left[join], lab[:, 0][join])
        self.left = lab[:, -1].copy()
        self.above[x0:x1] = lab[-1]
        return lab


def _pairs(a: NDArray[np.int64], b: NDArray[np.int64]) -> tuple[U64, NDArray[np.int64]]:
    """Unique (a, b) keys ``a << 32 | b`` with their counts."""
    keys = (a.astype(np.uint64) << _SHIFT) | b.astype(np.uint64)
    k, c = np.unique(keys, return_counts=True)
    return k, c.astype(np.int64)


def _touching(g: NDArray[np.int64], prev_row: NDArray[np.int64] | None, prev_col: NDArray[np.int64] | None
              ) -> U64:
    """Keys ``min << 32 | max`` of 4-adjacent pairs of different objects (with the previous blocks' edges)."""
    found = []
    edges = [(g[1:], g[:-1]), (g[:, 1:], g[:, :-1])]
    if prev_row is not None:
        edges.append((g[0], prev_row))
    if prev_col is not None:
        edges.append((g[:, 0], prev_col))
    for a, b in edges:
        m = (a != b) & (a > 0) & (b > 0)
        if m.any():
            lo, hi = np.minimum(a[m], b[m]), np.maximum(a[m], b[m])
            found.append(np.unique((lo.astype(np.uint64) << _SHIFT) | hi.astype(np.uint64)))
    return np.unique(np.concatenate(found)) if found else np.zeros(0, np.uint64)


def _reduce(keys: list[U64], counts: list[NDArray[np.int64]]) -> tuple[U64, NDArray[np.int64]]:
    if not keys:
        return np.zeros(0, np.uint64), np.zeros(0, np.int64)
    k, inv = np.unique(np.concatenate(keys), return_inverse=True)
    return k, np.bincount(inv, weights=np.concatenate(counts)).astype(np.int64)


def evaluate(pred: str | Path, gt: str | Path, *, gt_kind: GtKind = "auto", block: int = 2048) -> EvalResult:
    """Compare the mask ``pred`` (a ``predict`` output or a label image) with the truth ``gt``.

    Parameters
    ----------
    pred
        A mask Zarr written by ``predict`` (level 0 is read), a Zarr array, or a TIFF/PNG of class ids.
    gt
        A truth Zarr (``classes`` and ``instances`` arrays, as ``slideseg synth`` writes), a Zarr
        array, or a TIFF/PNG label image.
    gt_kind
        How to read a single-array truth: 'classes' (class ids; objects are its components) or
        'instances' (instance ids; the classes are 0 and 1). 'auto': a truth group gives both,
        a single array is read as classes.
    block
        Edge of the blocks read at once, px.

    Raises
    ------
    ConfigError
        The masks differ in size, or ``block`` is too small.
    SlideReadError, TrainingDataError
        A mask cannot be read or is not a label image.
    """

    if block < 16:
        raise ConfigError(f"block must be >= 16 px, got {block}")
    names = _prediction_names(Path(pred))
    p = open_mask(Path(pred), "classes")
    try:
        classes_gt, instances_gt = _open_truth(Path(gt), gt_kind)
    except BaseException:
        p.close()
        raise
    try:
        return _evaluate(p, classes_gt, instances_gt, pred, gt, block, names)
    finally:
        for reader in {id(r): r for r in (p, classes_gt, instances_gt) if r is not None}.values():
            reader.close()


def _evaluate(p: Any, classes_gt: Any, instances_gt: Any, pred: str | Path, gt: str | Path, block: int,
              names: dict[int, str]) -> EvalResult:
    h, w = p.shape[:2]
    if classes_gt.shape[:2] != (h, w):
        raise ConfigError(f"the prediction {pred} is {h} x {w} px but the truth {gt} is "
                          f"{classes_gt.shape[0]} x {classes_gt.shape[1]}; expected the same size: compare "
                          "the mask with the truth of the slide it was predicted from (level 0).")

    confusion = np.zeros((256, 256), np.int64)
    pred_cc = _Stitcher(w)
    gt_cc = _Stitcher(w) if instances_gt is None else None
    pair_k: list[U64] = []
    parea_k: list[U64] = []
    garea_k: list[U64] = []
    touch: list[U64] = []
    pair_c: list[NDArray[np.int64]] = []
    parea_c: list[NDArray[np.int64]] = []
    garea_c: list[NDArray[np.int64]] = []
    gt_above = np.zeros(w, np.int64)
    gt_left: NDArray[np.int64] | None = None
    for y0, y1, x0, x1 in grid_boxes((h, w), block):
        pb = _ids(p.read(y0, y1, x0, x1), pred)  # (h', w')
        cb = _ids(classes_gt.read(y0, y1, x0, x1), gt)
        if instances_gt is not None:
            gb = cb if instances_gt is classes_gt else _ids(instances_gt.read(y0, y1, x0, x1), gt)
            cb = (gb > 0).astype(np.int64) if instances_gt is classes_gt else cb
        else:
            assert gt_cc is not None
            gb = gt_cc.label(cb > 0, y0, x0, x1, x0 == 0)
        if max(int(cb.max()), int(pb.max())) > 255:
            raise TrainingDataError(f"class ids above 255 in {pred} or {gt}; expected class masks (0..255): for "
                                    "instance labels as truth pass --gt-kind instances.")
        confusion += np.bincount(cb.ravel() * 256 + pb.ravel(), minlength=256 * 256).reshape(256, 256)
        lab = pred_cc.label(pb > 0, y0, x0, x1, x0 == 0)
        fg = lab > 0
        for keys, counts, a, b in ((pair_k, pair_c, gb[fg & (gb > 0)], lab[fg & (gb > 0)]),
                                   (parea_k, parea_c, np.zeros(int(fg.sum()), np.int64), lab[fg]),
                                   (garea_k, garea_c, np.zeros(int((gb > 0).sum()), np.int64), gb[gb > 0])):
            k, c = _pairs(a, b)
            keys.append(k)
            counts.append(c)
        if x0 == 0:
            gt_left = None
        touch.append(_touching(gb, gt_above[x0:x1] if y0 > 0 else None, gt_left))
        gt_left = gb[:, -1].copy()
        gt_above[x0:x1] = gb[-1]

    pred_root = pred_cc.uf.roots()
    gt_root = gt_cc.uf.roots() if gt_cc is not None else None
    return _summarise(confusion, names,
                      _objects(pair_k, pair_c, parea_k, parea_c, garea_k, garea_c, touch, pred_root, gt_root))


def _open_truth(path: Path, kind: GtKind) -> tuple[Any, Any]:
    """(classes reader, instances reader or None) of the truth."""

    if path.is_dir() and kind == "auto":
        import zarr

        node = zarr.open(path, mode="r")
        if isinstance(node, zarr.Group) and "classes" in node and "instances" in node:
            return open_mask(path, "classes"), open_mask(path, "instances")
    if kind == "instances":
        inst = open_mask(path, "instances")
        return inst, inst
    return open_mask(path, "classes"), None


def _ids(region: np.ndarray, path: Any) -> NDArray[np.int64]:
    a = np.asarray(region)
    if a.dtype.kind == "f":
        if (np.mod(a, 1) != 0).any() or (a < 0).any():
            raise TrainingDataError(f"{path} holds non-integer or negative values; expected label ids.")
    elif a.dtype.kind not in "iub":
        raise TrainingDataError(f"{path} has dtype {a.dtype}; expected integer label ids.")
    return a.astype(np.int64)




def _objects(pair_k: list[U64], pair_c: list[Any], parea_k: list[U64], parea_c: list[Any], garea_k: list[U64],
             garea_c: list[Any], touch: list[U64], pred_root: NDArray[np.int64],
             gt_root: NDArray[np.int64] | None) -> dict[str, dict[str, float]]:
    """Object matching and merges from the per-block tables, provisional labels resolved."""
    mask32 = np.uint64(0xFFFFFFFF)

    def resolve(keys: list[U64], hi_root: NDArray[np.int64] | None) -> list[U64]:
        out = []
        for k in keys:
            hi, lo = (k >> _SHIFT).astype(np.int64), (k & mask32).astype(np.int64)
            lo = pred_root[lo]
            if hi_root is not None:
                hi = hi_root[hi]
            out.append((hi.astype(np.uint64) << _SHIFT) | lo.astype(np.uint64))
        return out

    pairs, overlap = _reduce(resolve(pair_k, gt_root), pair_c)
    pk, pc = _reduce(resolve(parea_k, None), parea_c)
    if gt_root is not None:
        garea_k = [(gt_root[(k & mask32).astype(np.int64)]).astype(np.uint64) for k in garea_k]
    gk, gc = _reduce(garea_k, garea_c)
    p_area = dict(zip((pk & mask32).tolist(), pc.tolist(), strict=True))
    g_area = dict(zip((gk & mask32).tolist(), gc.tolist(), strict=True))
    g_of, p_of = (pairs >> _SHIFT).astype(np.int64), (pairs & mask32).astype(np.int64)
    matched = 0
    claim: dict[int, tuple[int, int]] = {}  # gt -> (overlap, pred)
    for g, p, o in zip(g_of.tolist(), p_of.tolist(), overlap.tolist(), strict=True):
        if o / (g_area[g] + p_area[p] - o) > 0.5:
            matched += 1
        if 2 * o >= g_area[g] and o > claim.get(g, (0, 0))[0]:
            claim[g] = (o, p)
    touching = np.unique(np.concatenate(touch)) if touch else np.zeros(0, np.uint64)
    if gt_root is not None and touching.size:
        a = gt_root[(touching >> _SHIFT).astype(np.int64)]
        b = gt_root[(touching & mask32).astype(np.int64)]
        keep = a != b
        lo, hi = np.minimum(a, b)[keep].astype(np.uint64), np.maximum(a, b)[keep].astype(np.uint64)
        touching = np.unique((lo << _SHIFT) | hi)
    merged = 0
    for a, b in zip((touching >> _SHIFT).tolist(), (touching & mask32).tolist(), strict=True):
        ca, cb = claim.get(a), claim.get(b)
        merged += int(ca is not None and cb is not None and ca[1] == cb[1])
    n_gt, n_pred = len(g_area), len(p_area)
    precision = matched / n_pred if n_pred else float("nan")
    recall = matched / n_gt if n_gt else float("nan")
    f1 = 2 * matched / (n_gt + n_pred) if n_gt + n_pred else float("nan")
    return {"objects": {"gt": n_gt, "pred": n_pred, "matched": matched, "precision": precision, "recall": recall,
                        "f1": f1},
            "merges": {"touching_pairs": int(touching.size), "merged_pairs": merged,
                       "merge_rate": merged / touching.size if touching.size else float("nan")}}


def _summarise(confusion: NDArray[np.int64], names: dict[int, str], objects: dict[str, dict[str, float]]
               ) -> EvalResult:
    used = np.flatnonzero(confusion.sum(0) + confusion.sum(1))
    k = max(int(used.max()) + 1 if used.size else 1, 2, max(names, default=0) + 1)
    cm = confusion[:k, :k]
    tp = np.diag(cm).astype(np.float64)
    union = cm.sum(0) + cm.sum(1) - tp
    total = cm.sum(0) + cm.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, tp / union, np.nan)
        dice = np.where(total > 0, 2 * tp / total, np.nan)
    fg_tp = cm[1:, 1:].sum()
    fg_union = cm[1:, :].sum() + cm[:, 1:].sum() - fg_tp
    default = {0: "background"}
    return EvalResult(
        class_names=tuple(names.get(c, default.get(c, f"class {c}")) for c in range(k)),
        iou=tuple(float(v) for v in iou), dice=tuple(float(v) for v in dice),
        confusion=tuple(tuple(int(v) for v in row) for row in cm),
        foreground_iou=float(fg_tp / fg_union) if fg_union else float("nan"),
        objects=objects["objects"], merges=objects["merges"])


def _prediction_names(pred: Path) -> dict[int, str]:
    """Class names of a slideseg mask, after checking it is complete; {} for other label images
    (PNG, TIFF, a plain Zarr array), which are evaluated as they are."""
    try:
        info = describe_mask(pred)
    except (SlideReadError, OutputFormatError):
        return {}
    if not info["complete"]:
        done = f"{info['chunks_done']} of {info['chunks_total']} chunks" if info["chunks_total"] else "not finished"
        raise OutputFormatError(f"{pred} is incomplete ({done}): a predict run that stopped; finish it with "
                                "`slideseg predict ... --resume` before evaluating it")
    return {int(c["value"]): str(c["name"]) for c in info["classes"] if c["name"] is not None}


def object_scores(pred: NDArray[np.integer], truth: NDArray[np.integer]) -> dict[str, dict[str, float]]:
    """The ``objects`` and ``merges`` of :class:`EvalResult` for two label images in memory.

    ``pred`` holds class ids (its objects are the 4-connected components of the foreground) and
    ``truth`` instance ids (0 = background), both (H, W); matching and merges as :func:`evaluate`.

    >>> truth = np.array([[1, 1, 2, 2, 0, 3]])
    >>> s = object_scores(np.array([[1, 1, 1, 1, 0, 0]]), truth)
    >>> s["objects"]["matched"], s["merges"]["merged_pairs"], s["merges"]["touching_pairs"]
    (0, 1, 1)
    """
    lab, n = ndimage.label(np.asarray(pred) > 0)
    lab = lab.astype(np.int64)
    g = np.asarray(truth).astype(np.int64)
    fg, g_fg = lab > 0, g > 0
    tables = [_pairs(g[fg & g_fg], lab[fg & g_fg]), _pairs(np.zeros(int(fg.sum()), np.int64), lab[fg]),
              _pairs(np.zeros(int(g_fg.sum()), np.int64), g[g_fg])]
    (pk, pc), (ak, ac), (gk, gc) = tables
    return _objects([pk], [pc], [ak], [ac], [gk], [gc], [_touching(g, None, None)], np.arange(n + 1), None)
