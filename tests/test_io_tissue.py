"""Tissue detection: Otsu thresholds, cleaning, the low-resolution mask and the boxes it covers (the
chunks predict skips: tests/test_predict_output.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

from slideseg.errors import ConfigError
from slideseg.io.tissue import TissueMask, classify, clean, detect_tissue, load_tissue_mask, otsu_threshold
from slideseg.plan.tiles import Box
from slideseg.tools.synth import SynthConfig, render_region, write_synthetic_slide


def test_otsu_splits_two_populations() -> None:
    r = np.random.default_rng(0)
    values = np.concatenate([r.normal(0.1, 0.02, 5000), r.normal(0.6, 0.05, 5000)])
    assert 0.2 < otsu_threshold(values) < 0.5
    assert otsu_threshold(np.full(10, 3.0)) == 3.0


def test_classify_brightfield_and_fluorescence() -> None:
    glass = np.full((100, 100, 3), 240, np.uint8)
    glass[30:70, 30:70] = (220, 140, 180)  # stained tissue
    mask, method, t = classify(glass)
    assert method == "otsu-saturation" and 0.04 <= t <= 0.15
    assert mask[35:65, 35:65].all() and not mask[:20].any() and not mask[:, 90:].any()
    dark = np.full((100, 100, 1), 5, np.uint16)
    dark[10:40, 50:90] = 3000  # fluorescent signal
    mask, method, _ = classify(dark)
    assert method == "otsu-intensity" and mask[15:35, 55:85].all() and not mask[60:].any()


def test_all_tissue_slide_keeps_all_tissue() -> None:
    """Saturation's Otsu threshold is capped so a slide that is all tissue is not cut in half."""
    img, _, _ = render_region(SynthConfig(size=(512, 512), tissue_fraction=1.0, seed=3), 0, 512, 0, 512)
    mask, _, _ = classify(img)
    assert mask.mean() > 0.99


def test_detect_tissue_on_a_synthetic_slide(tmp_path: Path) -> None:
    res = write_synthetic_slide(tmp_path / "s.ome.tif", SynthConfig(size=(3000, 2500), tissue_fraction=0.4, seed=5))
    tissue = detect_tissue(res.image_path, (3000, 2500), side=512)
    assert tissue.scale[0] == pytest.approx(3000 / tissue.mask.shape[0])
    # the detected mask (grown by a margin) covers the true tissue and not much more
    assert 0.35 < tissue.fraction < 0.6
    assert tissue.covers(Box(0, 3000, 0, 2500))


def test_covers_maps_boxes_with_a_margin() -> None:
    mask = np.zeros((10, 10), bool)
    mask[5, 5] = True
    t = TissueMask(mask, (100.0, 100.0), "test")
    assert t.covers(Box(500, 600, 500, 600))
    assert t.covers(Box(600, 700, 600, 700))  # neighbour: one mask pixel of margin
    assert not t.covers(Box(0, 300, 0, 300))


def test_user_tissue_mask(tmp_path: Path) -> None:
    mask = np.zeros((32, 64), np.uint8)
    mask[:, :8] = 1
    tifffile.imwrite(tmp_path / "t.tif", mask)
    t = load_tissue_mask(tmp_path / "t.tif", (1000, 2000))
    assert t.scale == (1000 / 32, 2000 / 64) and t.covers(Box(0, 64, 0, 64)) and not t.covers(Box(0, 64, 900, 1000))
    with pytest.raises(ConfigError, match="aspect ratios differ"):
        load_tissue_mask(tmp_path / "t.tif", (2000, 1000))


def test_tissue_touching_the_border_survives_cleaning() -> None:
    thin = np.zeros((2, 40), bool)
    thin[:, 10:30] = True
    assert clean(thin)[:, 12:28].all()
    edge = np.zeros((50, 50), bool)
    edge[:, :2] = True
    assert clean(edge)[:, :2].all()
    speck = np.zeros((50, 50), bool)
    speck[25, 25] = True  # the control: cleaning does remove a lone pixel
    assert not clean(speck).any()
