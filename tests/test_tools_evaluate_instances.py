"""Instance scores of `evaluate` (PQ, AJI) against direct whole-image implementations of their
published definitions, on random instance masks evaluated in blocks smaller than the mask."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import tifffile
from scipy import ndimage

from slideseg.tools.evaluate import evaluate
from tests.conftest import run_cli


def direct_pq(truth: np.ndarray, pred: np.ndarray) -> tuple[float, float, float]:
    """(PQ, SQ, RQ) by Kirillov et al.: pairs with IoU > 0.5 match; SQ = mean matched IoU,
    RQ = TP / (TP + FP/2 + FN/2)."""
    gids, pids = [g for g in np.unique(truth) if g], [p for p in np.unique(pred) if p]
    ious = []
    for g in gids:
        for p in pids:
            inter = np.sum((truth == g) & (pred == p))
            union = np.sum((truth == g) | (pred == p))
            if inter / union > 0.5:
                ious.append(inter / union)
    tp = len(ious)
    fp, fn = len(pids) - tp, len(gids) - tp
    sq = sum(ious) / tp if tp else 0.0
    rq = tp / (tp + fp / 2 + fn / 2)
    return sq * rq, sq, rq


def direct_aji(truth: np.ndarray, pred: np.ndarray) -> float:
    """AJI by Kumar et al. (2017), Algorithm 1: each true object G takes the predicted S of highest
    IoU (C += |G & S|, U += |G | S|; no overlap: U += |G|); U += |S| for each S never taken."""
    gids, pids = [g for g in np.unique(truth) if g], [p for p in np.unique(pred) if p]
    inter_sum = union_sum = 0
    used: set[int] = set()
    for g in gids:
        gm = truth == g
        best, best_iou = None, 0.0
        for p in pids:  # ascending: ties go to the lowest id
            inter = np.sum(gm & (pred == p))
            iou = inter / np.sum(gm | (pred == p))
            if iou > best_iou:
                best, best_iou = p, iou
        if best is None:
            union_sum += int(gm.sum())
            continue
        inter_sum += int(np.sum(gm & (pred == best)))
        union_sum += int(np.sum(gm | (pred == best)))
        used.add(int(best))
    union_sum += sum(int(np.sum(pred == p)) for p in pids if int(p) not in used)
    return inter_sum / union_sum


def random_instances(rng: np.random.Generator, shape: tuple[int, int], n: int, smooth: float) -> np.ndarray:
    """Touching Voronoi cells over a blobby foreground: instance ids 1..n (some may vanish)."""
    seeds = np.zeros(shape, np.int64)
    seeds[rng.integers(0, shape[0], n), rng.integers(0, shape[1], n)] = np.arange(1, n + 1)
    _, (iy, ix) = ndimage.distance_transform_edt(seeds == 0, return_indices=True)
    return (seeds[iy, ix] * (ndimage.gaussian_filter(rng.normal(size=shape), smooth) > 0)).astype(np.uint16)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pq_and_aji_equal_their_definitions(tmp_path: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    truth = random_instances(rng, (70, 90), 25, 3)
    edges = ndimage.grey_dilation(truth, size=3) != ndimage.grey_erosion(truth, size=3)  # cell borders
    cut = edges & (ndimage.gaussian_filter(rng.normal(size=truth.shape), 4) > 0)  # separate some touching cells
    noise = ndimage.gaussian_filter(rng.normal(size=truth.shape), 2) > 0.25  # false positives and extra pixels
    pred = np.roll((truth > 0) & ~cut, tuple(rng.integers(-2, 3, 2)), (0, 1)) | noise
    pred_ids = ndimage.label(pred)[0]  # evaluate's objects: 4-connected components, raster-ordered ids
    tifffile.imwrite(tmp_path / "t.tif", truth)
    tifffile.imwrite(tmp_path / "p.tif", pred.astype(np.uint8))
    pq, sq, rq = direct_pq(truth, pred_ids)
    aji = direct_aji(truth, pred_ids)
    assert 0 < aji < 1 and rq > 0  # a case that can tell right from wrong
    for block in (16, 23):  # blocks smaller than the mask: objects cross blocks
        r = evaluate(tmp_path / "p.tif", tmp_path / "t.tif", gt_kind="instances", block=block)
        assert r.instances["pq"] == pytest.approx(pq, abs=1e-12)
        assert r.instances["sq"] == pytest.approx(sq, abs=1e-12)
        assert r.instances["rq"] == pytest.approx(rq, abs=1e-12) == pytest.approx(r.objects["f1"])
        assert r.instances["aji"] == pytest.approx(aji, abs=1e-12)


def test_perfect_and_empty_predictions(tmp_path: Path) -> None:
    truth = np.zeros((40, 50), np.uint16)
    truth[2:10, 3:12], truth[20:35, 30:45] = 1, 2  # apart, so components equal instances
    tifffile.imwrite(tmp_path / "t.tif", truth)
    tifffile.imwrite(tmp_path / "p.tif", (truth > 0).astype(np.uint8))
    tifffile.imwrite(tmp_path / "e.tif", np.zeros_like(truth, np.uint8))
    same = evaluate(tmp_path / "p.tif", tmp_path / "t.tif", gt_kind="instances", block=16)
    assert same.instances == {"pq": 1.0, "sq": 1.0, "rq": 1.0, "aji": 1.0}
    empty = evaluate(tmp_path / "e.tif", tmp_path / "t.tif", gt_kind="instances", block=16)
    assert empty.instances == {"pq": 0.0, "sq": 0.0, "rq": 0.0, "aji": 0.0}
    nothing = evaluate(tmp_path / "e.tif", tmp_path / "e.tif", block=16)
    assert all(math.isnan(v) for v in nothing.instances.values()) and '"aji": null' in nothing.to_json()


def test_the_command_prints_the_instance_scores(tmp_path: Path) -> None:
    truth = np.zeros((30, 30), np.uint16)
    truth[2:10, 2:10], truth[15:25, 15:25] = 1, 2
    pred = (truth > 0).astype(np.uint8)
    pred[15:25, 15:17] = 0  # object 2 loses 20 of its 100 px: IoU 0.8
    tifffile.imwrite(tmp_path / "t.tif", truth)
    tifffile.imwrite(tmp_path / "p.tif", pred)
    r = run_cli("evaluate", tmp_path / "p.tif", tmp_path / "t.tif", "--gt-kind", "instances")
    assert r.exit_code == 0, r.output
    assert "instances: PQ 0.9000 (SQ 0.9000 x RQ 1.0000), AJI 0.8780" in " ".join(r.stdout.split())  # 144 / 164
