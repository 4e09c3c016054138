"""Validation during training: fixed tiles of the held-out images, the weighted loss on them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from slideseg.plan.tiles import tile_origins
from slideseg.train.loader import BackgroundLoader
from slideseg.train.loss import weighted_cross_entropy


def validation_tiles(items: Sequence[Any], geometry: Any, limit: int, seed: int
                     ) -> list[tuple[Any, int, int, int, int]]:
    """(item, oy, ox, owned h, owned w) of the loss windows that cover each item as predict's
    plan covers a slide (origins on the pooling grid), each owning its pixels once; a seeded
    subset of ``limit`` tiles if there are more."""

    def spans(n: int) -> list[tuple[int, int]]:
        o = tile_origins(0, n, geometry.output, geometry.alignment)
        return [(a, e - a) for a, e in zip(o, [*o[1:], n], strict=True)]

    jobs = [(it, oy, ox, sy, sx) for it in items for oy, sy in spans(it.shape[0]) for ox, sx in spans(it.shape[1])]
    if len(jobs) > limit:
        keep = np.random.default_rng([seed, 4]).choice(len(jobs), limit, replace=False)
        jobs = [jobs[i] for i in sorted(keep)]
    return jobs


def validate(net: Any, sampler: Any, jobs: list[tuple[Any, int, int, int, int]], classes: int,
             forward: Callable[[Any, int], Any], device: Any, workers: int = 2) -> dict[str, float]:
    """Validation loss and per-class IoU/Dice (against the true classes) of ``net`` on ``jobs``.

    ``forward(x, out)`` returns the (N, K, out, out) logits of the loss window for input ``x``.
    """
    import torch


    if not jobs:
        return {}
    k = classes
    confusion = np.zeros((k, k), np.int64)
    losses = []
    net.eval()
    try:
        with torch.no_grad(), BackgroundLoader(lambda j: sampler.fixed(*jobs[j][:3]), 0, len(jobs),
                                                workers, prefetch=4) as loader:
            for (_, _, _, sy, sx), s in zip(jobs, loader, strict=True):
                x = torch.from_numpy(s.image[None]).to(device)  # (1, C, T, T)
                y = torch.from_numpy(s.target[None].astype(np.int64)).to(device)  # (1, t, t)
                logits = forward(x, y.shape[-1])  # (1, K, t, t)
                losses.append(float(weighted_cross_entropy(logits, y, torch.from_numpy(s.weight[None]).to(device))))
                pred = logits.argmax(1)[0].cpu().numpy()
                owned = np.zeros(pred.shape, bool)
                owned[:sy, :sx] = True
                owned &= s.weight > 0
                confusion += np.bincount(s.truth[owned].astype(np.int64) * k + pred[owned],
                                         minlength=k * k).reshape(k, k)
    finally:
        net.train()
    tp = np.diag(confusion).astype(np.float64)
    union = confusion.sum(0) + confusion.sum(1) - tp
    total = confusion.sum(0) + confusion.sum(1)
    row: dict[str, float] = {"val_loss": float(np.mean(losses))}
    for c in range(1, k):
        row[f"val_iou_{c}"] = float(tp[c] / union[c]) if union[c] else 1.0
        row[f"val_dice_{c}"] = float(2 * tp[c] / total[c]) if total[c] else 1.0
    row["val_iou"] = float(np.mean([row[f"val_iou_{c}"] for c in range(1, k)]))
    return row
