"""Evaluation: pixel and object metrics on hand-made cases, independent of the block size."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr
from scipy import ndimage

from slideseg.errors import ConfigError
from slideseg.io.ngff import LabelClass
from slideseg.tools.evaluate import evaluate
from slideseg.train.loss import separation_borders
from tests.conftest import write_mask


def tif(path: Path, a: np.ndarray) -> Path:
    tifffile.imwrite(path, a)
    return path


def truth_group(path: Path, instances: np.ndarray) -> Path:
    g = zarr.open_group(path, mode="w", zarr_format=3)
    g.create_array("instances", data=instances.astype(np.uint32), chunks=(32, 32))
    g.create_array("classes", data=(instances > 0).astype(np.uint8), chunks=(32, 32))
    return path


def test_hand_made_case(tmp_path: Path) -> None:
    inst = np.zeros((10, 12), np.uint32)
    inst[1:5, 1:4], inst[1:5, 4:7] = 1, 2  # two touching objects, 12 px each
    inst[7:9, 9:11] = 3  # a lone object, 4 px
    pred = np.zeros((10, 12), np.uint8)
    pred[1:5, 1:7] = 1  # one blob over objects 1 and 2: merged
    pred[0, 11] = 1  # a false positive pixel
    r = evaluate(tif(tmp_path / "p.tif", pred), truth_group(tmp_path / "t.zarr", inst))
    assert r.confusion == ((91, 1), (4, 24))
    assert r.iou[1] == pytest.approx(24 / 29) and r.dice[1] == pytest.approx(48 / 53)
    assert r.foreground_iou == pytest.approx(24 / 29)
    # 3 true objects, 2 predicted; the blob has IoU 12/24 = 0.5 with each: not > 0.5, so no match
    assert r.objects == {"gt": 3, "pred": 2, "matched": 0, "precision": 0.0, "recall": 0.0, "f1": 0.0}
    assert r.merges == {"touching_pairs": 1, "merged_pairs": 1, "merge_rate": 1.0}


def test_separated_prediction_has_no_merges(tmp_path: Path) -> None:
    inst = np.kron(np.arange(1, 43).reshape(6, 7) * 7, np.ones((9, 9), np.int64))[:50, :60]  # a mosaic: all touching
    sep = ((inst > 0) & ~separation_borders(inst)).astype(np.uint8)
    result = evaluate(tif(tmp_path / "p.tif", sep), tif(tmp_path / "t.tif", inst), gt_kind="instances")
    n = len(np.unique(inst))
    assert result.merges["merge_rate"] == 0.0 and result.merges["touching_pairs"] > 40
    assert result.objects["gt"] == n and result.objects["pred"] == n and result.objects["matched"] == n
    merged = evaluate(tif(tmp_path / "q.tif", (inst > 0).astype(np.uint8)), tmp_path / "t.tif", gt_kind="instances")
    assert merged.merges["merge_rate"] == 1.0 and merged.objects["pred"] == 1


@pytest.mark.parametrize("block", [16, 37, 4096])
def test_block_size_does_not_change_the_result(tmp_path: Path, block: int) -> None:
    r = np.random.default_rng(1)
    noise = ndimage.gaussian_filter(r.normal(size=(150, 170)), 3)
    pred = (noise > 0.02).astype(np.uint8) + (noise > 0.2)  # classes 0, 1, 2; snaking components
    seeds = np.zeros((150, 170), np.int64)
    seeds[r.integers(0, 150, 60), r.integers(0, 170, 60)] = np.arange(1, 61)
    _, (iy, ix) = ndimage.distance_transform_edt(seeds == 0, return_indices=True)
    inst = seeds[iy, ix] * (ndimage.gaussian_filter(r.normal(size=(150, 170)), 3) > 0)  # touching Voronoi cells
    reference = evaluate(tif(tmp_path / "p.tif", pred), tif(tmp_path / "t.tif", inst.astype(np.uint16)),
                         gt_kind="instances", block=4096)
    assert reference.merges["touching_pairs"] > 20
    got = evaluate(tmp_path / "p.tif", tmp_path / "t.tif", gt_kind="instances", block=block)
    assert got.to_json() == reference.to_json()
    cls = evaluate(tmp_path / "p.tif", tif(tmp_path / "c.tif", (inst > 0).astype(np.uint8)), block=block)
    assert cls.objects["gt"] == ndimage.label(inst > 0)[1]  # components of the class map
    assert math.isnan(cls.merges["merge_rate"])  # components never touch one another


def test_reads_predict_masks_with_class_names(tmp_path: Path) -> None:
    ids = np.zeros((64, 80), np.uint8)
    ids[10:30, 10:30] = 1
    write_mask(tmp_path / "m.zarr", ids, [LabelClass(0, "background", (0, 0, 0, 0)),
                                          LabelClass(1, "nucleus", (255, 0, 0, 255))], chunk=32)
    r = evaluate(tmp_path / "m.zarr", truth_group(tmp_path / "t.zarr", ids.astype(np.uint32)))
    assert r.class_names == ("background", "nucleus") and r.iou == (1.0, 1.0)
    assert r.objects["f1"] == 1.0 and '"merge_rate": null' in r.to_json()


def test_size_mismatch(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"is 10 x 12 px but the truth .* is 10 x 13"):
        evaluate(tif(tmp_path / "p.tif", np.zeros((10, 12), np.uint8)), tif(tmp_path / "t.tif", np.zeros((10, 13),
                                                                                                         np.uint8)))
