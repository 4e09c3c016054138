"""Validation during training: the held-out part of the data, fixed tiles of it, and the scores
that choose the best checkpoint and stop a run that no longer improves.

- :func:`hold_out` sets validation data aside when none is given: whole images when there are
  many, else a band at the end of each image.
- :class:`Validator` runs the tiles that cover each validation image as predict's plan does and
  measures the weighted loss, per-class IoU/Dice and, on the stitched prediction, object F1 and the
  merge rate of touching objects (:func:`slideseg.tools.evaluate.object_scores`).
- :func:`improves` says whether an epoch beats the best so far.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from slideseg.plan.tiles import Box, tile_origins
from slideseg.tools.evaluate import object_scores
from slideseg.train.data import Item
from slideseg.train.loader import BackgroundLoader
from slideseg.train.loss import weighted_cross_entropy

HOLDOUT_MIN_IMAGES = 5
"""With this many training images or more, :func:`hold_out` sets whole images aside."""
HOLDOUT_MIN_PX = 64
"""Otherwise it holds out a band of at least this many px (at most a quarter of each image) ..."""
HOLDOUT_SMALLEST_PX = 16
"""... and leaves an image whole when the band or the rest would be narrower than this."""
F1_TOLERANCE = 0.01
"""Object F1 differences up to this are ties, which the validation loss decides."""

Job = tuple[Item, int, int, int, int]
"""(item, oy, ox, owned h, owned w) of one validation tile."""


@dataclass(frozen=True)
class HeldOut:
    """Training data split for validation by :func:`hold_out`."""

    train: list[Item]
    val: list[Item]
    description: str
    """What was held out, in words ('' when nothing was)."""


def hold_out(items: Sequence[Item], fraction: float, seed: int) -> HeldOut:
    """Set ``fraction`` of the training data aside for validation.

    With :data:`HOLDOUT_MIN_IMAGES` images or more, a seeded ``fraction`` of the images (at least
    one); with fewer, the last ``fraction`` of each image along its longer side, at least
    :data:`HOLDOUT_MIN_PX` px but at most a quarter of it. An image too small to split stays whole
    in training. The held-out parts are crops: tiles of one part never read pixels of the other.
    """
    items = list(items)
    if fraction <= 0 or not items:
        return HeldOut(items, [], "")
    if len(items) >= HOLDOUT_MIN_IMAGES:
        order = np.random.default_rng([seed, 8]).permutation(len(items))
        chosen = set(order[: max(1, round(fraction * len(items)))].tolist())
        return HeldOut([it for i, it in enumerate(items) if i not in chosen],
                       [it for i, it in enumerate(items) if i in chosen],
                       f"{len(chosen)} of {len(items)} images held out for validation")
    train, val, held, total = [], [], 0, 0
    for it in items:
        h, w = it.shape
        total += h * w
        n = max(h, w)
        band = max(round(fraction * n), min(HOLDOUT_MIN_PX, n // 4))
        if band < HOLDOUT_SMALLEST_PX or n - band < HOLDOUT_SMALLEST_PX:
            train.append(it)
            continue
        if h >= w:
            keep, rest = Box(0, h - band, 0, w), Box(h - band, h, 0, w)
        else:
            keep, rest = Box(0, h, 0, w - band), Box(0, h, w - band, w)
        train.append(it.crop(keep, "[train]"))
        val.append(it.crop(rest, "[val]"))
        held += rest.shape[0] * rest.shape[1]
    if not val:
        return HeldOut(items, [], "")
    return HeldOut(train, val, f"{held / total:.0%} of the training pixels held out for validation: a band at "
                               f"the end of the longer side of {len(val)} of {len(items)} image(s)")


def covering_tiles(items: Sequence[Any], geometry: Any) -> list[Job]:
    """(item, oy, ox, owned h, owned w) of the loss windows that cover each item as predict's
    plan covers a slide (origins on the pooling grid), each owning its pixels once."""

    def spans(n: int) -> list[tuple[int, int]]:
        o = tile_origins(0, n, geometry.output, geometry.alignment)
        return [(a, e - a) for a, e in zip(o, [*o[1:], n], strict=True)]

    return [(it, oy, ox, sy, sx) for it in items for oy, sy in spans(it.shape[0]) for ox, sx in spans(it.shape[1])]


def validation_tiles(items: Sequence[Any], geometry: Any, limit: int, seed: int) -> list[Job]:
    """:func:`covering_tiles`, or a seeded subset of ``limit`` of them if there are more."""
    jobs = covering_tiles(items, geometry)
    if len(jobs) > limit:
        keep = np.random.default_rng([seed, 4]).choice(len(jobs), limit, replace=False)
        jobs = [jobs[i] for i in sorted(keep)]
    return jobs


class Validator:
    """Validation of a model on fixed tiles of held-out items.

    Object scores need whole objects: an item whose tiles are all run is scored on its stitched
    prediction; an item only partly covered (more tiles than ``limit``) is scored tile by tile,
    on each tile's own pixels.
    """

    def __init__(self, items: Sequence[Item], geometry: Any, limit: int, seed: int, kind: str) -> None:
        self.jobs = validation_tiles(items, geometry, limit, seed)
        self.kind = kind
        chosen = Counter(id(it) for it, *_ in self.jobs)
        total = Counter(id(it) for it, *_ in covering_tiles(items, geometry))
        self._whole = {k for k, n in chosen.items() if n == total[k]}
        self._truth: dict[tuple[int, int, int], NDArray[np.int64]] = {}

    def __bool__(self) -> bool:
        return bool(self.jobs)

    def _instances(self, item: Item, box: Box) -> NDArray[np.int64]:
        """True instance ids of ``box`` of ``item``: the mask's ids, or the 4-connected components
        of a class mask's foreground (as ``evaluate`` reads a class-only truth)."""
        labels = np.asarray(item.mask.read(box.y0, box.y1, box.x0, box.x1)).astype(np.int64)
        if self.kind != "instances":
            labels = ndimage.label(labels > 0)[0].astype(np.int64)
        return labels

    def _truth_of(self, item: Item, oy: int, ox: int, sy: int, sx: int) -> NDArray[np.int64]:
        whole = id(item) in self._whole
        key = (id(item), -1, -1) if whole else (id(item), oy, ox)
        if key not in self._truth:
            h, w = item.shape
            self._truth[key] = self._instances(item, Box(0, h, 0, w) if whole else Box(oy, oy + sy, ox, ox + sx))
        return self._truth[key]

    def __call__(self, net: Any, sampler: Any, classes: int, forward: Callable[[Any, int], Any], device: Any,
                 workers: int = 2) -> dict[str, float]:
        """Validation loss, per-class IoU/Dice (against the true classes), object F1 and merge rate
        of ``net``; ``forward(x, out)`` returns the (N, K, out, out) logits of the loss window."""
        import torch

        if not self.jobs:
            return {}
        jobs, k = self.jobs, classes
        confusion = np.zeros((k, k), np.int64)
        losses = []
        canvases = {id(it): np.zeros(it.shape, np.uint8) for it, *_ in jobs if id(it) in self._whole}
        units: list[tuple[NDArray[np.uint8], NDArray[np.int64]]] = []
        net.eval()
        try:
            with torch.no_grad(), BackgroundLoader(lambda j: sampler.fixed(*jobs[j][:3]), 0, len(jobs),
                                                    workers, prefetch=4) as loader:
                for (item, oy, ox, sy, sx), s in zip(jobs, loader, strict=True):
                    x = torch.from_numpy(s.image[None]).to(device)  # (1, C, T, T)
                    y = torch.from_numpy(s.target[None].astype(np.int64)).to(device)  # (1, t, t)
                    logits = forward(x, y.shape[-1])  # (1, K, t, t)
                    w = torch.from_numpy(s.weight[None]).to(device)  # (1, t, t)
                    losses.append(float(weighted_cross_entropy(logits, y, w)))
                    pred = logits.argmax(1)[0].cpu().numpy().astype(np.uint8)  # (t, t)
                    owned = np.zeros(pred.shape, bool)
                    owned[:sy, :sx] = True
                    owned &= s.weight > 0
                    confusion += np.bincount(s.truth[owned].astype(np.int64) * k + pred[owned],
                                             minlength=k * k).reshape(k, k)
                    if id(item) in canvases:
                        canvases[id(item)][oy : oy + sy, ox : ox + sx] = pred[:sy, :sx]
                    else:
                        units.append((pred[:sy, :sx], self._truth_of(item, oy, ox, sy, sx)))
        finally:
            net.train()
        done: set[int] = set()
        for item, oy, ox, sy, sx in jobs:
            if id(item) in canvases and id(item) not in done:
                done.add(id(item))
                units.append((canvases[id(item)], self._truth_of(item, oy, ox, sy, sx)))
        return {"val_loss": float(np.mean(losses)), **_pixel_scores(confusion), **_object_scores(units)}


def _pixel_scores(confusion: NDArray[np.int64]) -> dict[str, float]:
    k = confusion.shape[0]
    tp = np.diag(confusion).astype(np.float64)
    union = confusion.sum(0) + confusion.sum(1) - tp
    total = confusion.sum(0) + confusion.sum(1)
    row: dict[str, float] = {}
    for c in range(1, k):
        row[f"val_iou_{c}"] = float(tp[c] / union[c]) if union[c] else 1.0
        row[f"val_dice_{c}"] = float(2 * tp[c] / total[c]) if total[c] else 1.0
    row["val_iou"] = float(np.mean([row[f"val_iou_{c}"] for c in range(1, k)]))
    return row


def _object_scores(units: list[tuple[NDArray[np.uint8], NDArray[np.int64]]]) -> dict[str, float]:
    """Object F1 and merge rate pooled over the scored units (counts summed, then the ratios)."""
    counts = {"gt": 0.0, "pred": 0.0, "matched": 0.0, "touching_pairs": 0.0, "merged_pairs": 0.0}
    for pred, truth in units:
        s = object_scores(pred, truth)
        for part in ("objects", "merges"):
            for key, value in s[part].items():
                if key in counts:
                    counts[key] += value
    n_gt, n_pred, matched = counts["gt"], counts["pred"], counts["matched"]
    touching, merged = counts["touching_pairs"], counts["merged_pairs"]
    return {"val_f1": 2 * matched / (n_gt + n_pred) if n_gt + n_pred else math.nan,
            "val_merge_rate": merged / touching if touching else math.nan,
            "val_objects": float(n_gt)}


def improves(row: Mapping[str, Any], best: Mapping[str, float] | None) -> bool:
    """Whether the validation ``row`` beats ``best`` (``{'f1', 'loss'}`` of the best so far).

    Higher object F1 wins; F1 within :data:`F1_TOLERANCE` of the best is a tie, which the lower
    validation loss wins. Without object F1 (no objects), the loss alone decides.

    >>> improves({"val_f1": 0.80, "val_loss": 0.3}, {"f1": 0.70, "loss": 0.2})
    True
    >>> improves({"val_f1": 0.795, "val_loss": 0.2}, {"f1": 0.80, "loss": 0.3})
    True
    >>> improves({"val_f1": 0.75, "val_loss": 0.1}, {"f1": 0.80, "loss": 0.3})
    False
    """
    if "val_loss" not in row:
        return False
    if best is None:
        return True
    f1, best_f1 = row.get("val_f1", math.nan), best.get("f1", math.nan)
    if math.isnan(f1) or best_f1 is None or math.isnan(best_f1):
        return bool(row["val_loss"] < best["loss"])
    return bool(f1 > best_f1 + F1_TOLERANCE or (f1 >= best_f1 - F1_TOLERANCE and row["val_loss"] < best["loss"]))


def record_best(row: Mapping[str, Any], best: Mapping[str, float] | None) -> dict[str, float]:
    """The best-so-far record after ``row`` improved on ``best``: its loss and epoch, and the
    highest F1 of the records kept (so ties cannot drift F1 down by more than the tolerance)."""
    f1 = row.get("val_f1", math.nan)
    if best is not None and not math.isnan(best.get("f1", math.nan)) and not math.isnan(f1):
        f1 = max(f1, best["f1"])
    return {"f1": f1, "loss": float(row["val_loss"]), "epoch": float(row["epoch"])}


__all__ = ["F1_TOLERANCE", "HeldOut", "Validator", "covering_tiles", "hold_out", "improves", "record_best",
           "validation_tiles"]
