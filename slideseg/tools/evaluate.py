"""``slideseg evaluate``: compare a predicted mask with ground truth, block by block.

Pixel metrics: per-class IoU and Dice from one confusion matrix. Object metrics: predicted objects
are the 4-connected components of the foreground (any class but 0); ground-truth objects are the
instances where the truth has them (``slideseg synth`` truth, ``--gt-kind instances``), else its
4-connected foreground components. A ground-truth and a predicted object match when their IoU
exceeds 0.5 (such matches are unique), giving precision, recall and F1. The merge rate is the
fraction of touching ground-truth pairs (4-adjacent, different instances) that one predicted
object claims both of, where an object is claimed by the predicted object covering most of it,
if that covers at least half of it.

Instance scores, as nucleus benchmarks (PanNuke, CoNIC, MoNuSAC) report them: panoptic quality
(PQ = SQ x RQ, Kirillov et al. 2019) over the same IoU > 0.5 matches, and the aggregated Jaccard
index (AJI, Kumar et al. 2017). They are meant for instance truth; on a class truth they score its
components.

Masks are read in blocks (2048 px by default) and components get exact global ids block by block
(:func:`slideseg.tools.components.label_blocks`); every score comes from tables of per-object
areas and pairwise overlaps, so a 50k x 50k mask is never held whole.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from slideseg.errors import ConfigError, OutputFormatError, TrainingDataError
from slideseg.io.images import open_mask
from slideseg.tools.components import LabelSpec, label_blocks
from slideseg.write.mask import describe_mask

GtKind = Literal["auto", "classes", "instances"]


U64 = NDArray[np.uint64]


_SHIFT = np.uint64(32)

FOREGROUND = LabelSpec(tuple(range(1, 256)), 4, by_class=False)
"""Objects of a class mask: the 4-connected components of its foreground (any class but 0)."""


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
    instances: dict[str, float]
    """pq (panoptic quality = sq x rq, matches at IoU > 0.5), sq (mean IoU of the matches), rq
    (TP / (TP + FP/2 + FN/2), the object F1) and aji (aggregated Jaccard index); NaN without objects."""

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
    pair_k: list[U64] = []
    parea_k: list[U64] = []
    garea_k: list[U64] = []
    touch: list[U64] = []
    pair_c: list[NDArray[np.int64]] = []
    parea_c: list[NDArray[np.int64]] = []
    garea_c: list[NDArray[np.int64]] = []
    gt_above = np.zeros(w, np.int64)
    gt_left: NDArray[np.int64] | None = None
    pred_ids = label_blocks(lambda y0, y1, x0, x1: _narrow(_ids(p.read(y0, y1, x0, x1), pred)), (h, w), block,
                            FOREGROUND)
    gt_ids = (None if instances_gt is not None else
              label_blocks(lambda y0, y1, x0, x1: _narrow(_ids(classes_gt.read(y0, y1, x0, x1), gt)), (h, w), block,
                           FOREGROUND))
    for (y0, y1, x0, x1), ids in pred_ids:
        pb = _ids(p.read(y0, y1, x0, x1), pred)  # (h', w')
        cb = _ids(classes_gt.read(y0, y1, x0, x1), gt)
        if instances_gt is not None:
            gb = cb if instances_gt is classes_gt else _ids(instances_gt.read(y0, y1, x0, x1), gt)
            cb = (gb > 0).astype(np.int64) if instances_gt is classes_gt else cb
        else:
            assert gt_ids is not None
            gb = next(gt_ids)[1].astype(np.int64)
        if max(int(cb.max()), int(pb.max())) > 255:
            raise TrainingDataError(f"class ids above 255 in {pred} or {gt}; expected class masks (0..255): for "
                                    "instance labels as truth pass --gt-kind instances.")
        confusion += np.bincount(cb.ravel() * 256 + pb.ravel(), minlength=256 * 256).reshape(256, 256)
        lab = ids.astype(np.int64)
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
    return _summarise(confusion, names, _objects(pair_k, pair_c, parea_k, parea_c, garea_k, garea_c, touch))


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




def _narrow(ids: NDArray[np.int64]) -> np.ndarray:
    """``ids`` as uint8 where they fit (labelling is much faster on it), else as they are."""
    return ids.astype(np.uint8) if ids.size and int(ids.min()) >= 0 and int(ids.max()) <= 255 else ids


def _objects(pair_k: list[U64], pair_c: list[Any], parea_k: list[U64], parea_c: list[Any], garea_k: list[U64],
             garea_c: list[Any], touch: list[U64]) -> dict[str, dict[str, float]]:
    """Object matching, merges and instance scores from the per-block tables (global ids)."""
    mask32 = np.uint64(0xFFFFFFFF)
    pairs, overlap = _reduce(pair_k, pair_c)
    pk, pc = _reduce(parea_k, parea_c)
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
                       "merge_rate": merged / touching.size if touching.size else float("nan")},
            "instances": _instance_scores(g_of, p_of, overlap, gk & mask32, gc, pk & mask32, pc)}


def _instance_scores(g_of: NDArray[np.int64], p_of: NDArray[np.int64], overlap: NDArray[np.int64], g_ids: U64,
                     g_areas: NDArray[np.int64], p_ids: U64, p_areas: NDArray[np.int64]) -> dict[str, float]:
    """Panoptic quality and the aggregated Jaccard index from the overlap table.

    ``(g_of[i], p_of[i])`` overlap by ``overlap[i]`` px; ``g_ids``/``p_ids`` (ascending) have areas
    ``g_areas``/``p_areas``. PQ = SQ x RQ with matches at IoU > 0.5 (unique: each object has at most
    one), SQ the mean IoU of matches and RQ = TP / (TP + FP/2 + FN/2). AJI: each true object takes
    the predicted object of highest IoU with it (ties: the lowest id; none if nothing overlaps),
    adding their intersection to the numerator and their union to the denominator (a true object
    with no overlap adds its area); predicted objects that no true object took add their areas.

    >>> s = _instance_scores(np.array([1]), np.array([1]), np.array([3]), np.array([1, 2], np.uint64),
    ...                      np.array([4, 2]), np.array([1], np.uint64), np.array([3]))
    >>> s["rq"], s["sq"], s["aji"]  # one match of IoU 3/4, one missed object of 2 px: AJI 3 / (4 + 2)
    (0.6666666666666666, 0.75, 0.5)
    """
    n_gt, n_pred = len(g_ids), len(p_ids)
    if n_gt + n_pred == 0:
        return {"pq": float("nan"), "sq": float("nan"), "rq": float("nan"), "aji": float("nan")}
    ga = g_areas[np.searchsorted(g_ids, g_of.astype(np.uint64))]
    pa = p_areas[np.searchsorted(p_ids, p_of.astype(np.uint64))]
    union = ga + pa - overlap
    iou = overlap / np.maximum(union, 1)
    match = iou > 0.5
    tp = int(match.sum())
    sq = float(iou[match].sum() / tp) if tp else 0.0
    rq = tp / (tp + 0.5 * (n_pred - tp) + 0.5 * (n_gt - tp))
    order = np.lexsort((p_of, -iou, g_of))  # per true object: highest IoU first, then the lowest id
    best = order[np.r_[True, g_of[order][1:] != g_of[order][:-1]]] if len(order) else order
    taken = np.unique(p_of[best])
    inter = int(overlap[best].sum())
    total = int(union[best].sum()) + int(g_areas.sum()) - int(ga[best].sum())  # true objects left: their area
    total += int(p_areas.sum()) - int(p_areas[np.isin(p_ids, taken.astype(np.uint64))].sum())
    return {"pq": sq * rq, "sq": sq, "rq": rq, "aji": inter / total if total else float("nan")}


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
        objects=objects["objects"], merges=objects["merges"], instances=objects["instances"])


def _prediction_names(pred: Path) -> dict[int, str]:
    """Class names of a slideseg mask, after checking it is complete; {} for other label images
    (PNG, TIFF, a plain Zarr array), which are evaluated as they are."""
    try:
        info = describe_mask(pred)
    except OutputFormatError:  # not a slideseg mask; a damaged one is refused (SlideReadError)
        return {}
    if not info["complete"]:
        done = f"{info['chunks_done']} of {info['chunks_total']} chunks" if info["chunks_total"] else "not finished"
        raise OutputFormatError(f"{pred} is incomplete ({done}): a predict run that stopped; finish it with "
                                "`slideseg predict ... --resume` before evaluating it")
    return {int(c["value"]): str(c["name"]) for c in info["classes"] if c["name"] is not None}


def object_scores(pred: NDArray[np.integer], truth: NDArray[np.integer]) -> dict[str, dict[str, float]]:
    """The ``objects``, ``merges`` and ``instances`` of :class:`EvalResult` for two label images in memory.

    ``pred`` holds class ids (its objects are the 4-connected components of the foreground) and
    ``truth`` instance ids (0 = background), both (H, W); matching and merges as :func:`evaluate`.

    >>> truth = np.array([[1, 1, 2, 2, 0, 3]])
    >>> s = object_scores(np.array([[1, 1, 1, 1, 0, 0]]), truth)
    >>> s["objects"]["matched"], s["merges"]["merged_pairs"], s["merges"]["touching_pairs"]
    (0, 1, 1)
    """
    lab, _ = ndimage.label(np.asarray(pred) > 0)
    lab = lab.astype(np.int64)
    g = np.asarray(truth).astype(np.int64)
    fg, g_fg = lab > 0, g > 0
    tables = [_pairs(g[fg & g_fg], lab[fg & g_fg]), _pairs(np.zeros(int(fg.sum()), np.int64), lab[fg]),
              _pairs(np.zeros(int(g_fg.sum()), np.int64), g[g_fg])]
    (pk, pc), (ak, ac), (gk, gc) = tables
    return _objects([pk], [pc], [ak], [ac], [gk], [gc], [_touching(g, None, None)])
