"""Tissue detection and skipping: chunks without tissue are not run and read as background."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr

from slideseg.errors import ConfigError
from slideseg.io.tissue import TissueMask, classify, detect_tissue, load_tissue_mask, otsu_threshold
from slideseg.model.config import UNetConfig
from slideseg.model.files import save_model
from slideseg.model.unet import build_unet
from slideseg.plan.tiles import Box
from slideseg.predict import PredictConfig, predict
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


def test_skipped_chunks_read_as_background(tmp_path: Path) -> None:
    cfg = UNetConfig(depth=2, width=4, classes=3)
    save_model(tmp_path / "m.safetensors", build_unet(cfg, seed=1), cfg)
    img = np.full((256, 256, 3), 240, np.uint8)
    img[:100, :100] = np.random.default_rng(0).integers(0, 255, (100, 100, 3))
    tifffile.imwrite(tmp_path / "s.tif", img, tile=(64, 64), photometric="rgb")
    res = predict(tmp_path / "s.tif", tmp_path / "m.zarr", tmp_path / "m.safetensors",
                  PredictConfig(chunk=64, probabilities=True, device="cpu", level=0))
    assert res.chunks_run == 4 and res.chunks_skipped == 12
    g = zarr.open_group(tmp_path / "m.zarr", mode="r")
    ids, probs = g["0"][:], g["probabilities/0"][:]  # type: ignore[index]
    assert not ids[128:].any() and not ids[:, 128:].any()
    assert (probs[0, 128:] == 255).all() and not probs[1:, 128:].any()
    assert g["tissue"].attrs["method"] == "otsu-saturation"  # type: ignore[index]
    full = predict(tmp_path / "s.tif", tmp_path / "all.zarr", tmp_path / "m.safetensors",
                   PredictConfig(chunk=64, probabilities=True, device="cpu", tissue=False, level=0))
    assert full.chunks_run == 16 and full.chunks_skipped == 0
    np.testing.assert_array_equal(zarr.open_group(tmp_path / "all.zarr", mode="r")["0"][:128, :128], ids[:128, :128])  # type: ignore[index]


def test_user_tissue_mask(tmp_path: Path) -> None:
    mask = np.zeros((32, 64), np.uint8)
    mask[:, :8] = 1
    tifffile.imwrite(tmp_path / "t.tif", mask)
    t = load_tissue_mask(tmp_path / "t.tif", (1000, 2000))
    assert t.scale == (1000 / 32, 2000 / 64) and t.covers(Box(0, 64, 0, 64)) and not t.covers(Box(0, 64, 900, 1000))
    with pytest.raises(ConfigError, match="aspect ratios differ"):
        load_tissue_mask(tmp_path / "t.tif", (2000, 1000))
