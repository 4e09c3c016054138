"""Augmentation: seeded, consistent between image and labels, labels stay labels; and the tile
sampler, whose tiles are mirrored exactly as predict mirrors them."""

from __future__ import annotations

import numpy as np
import pytest

from slideseg.errors import ConfigError
from slideseg.model.config import UNetConfig
from slideseg.train.augment import (
    NONE,
    AugmentConfig,
    TileSampler,
    augment_sample,
    brightness_contrast,
    elastic_field,
    flip_rotate,
    stain_jitter,
    warp,
)
from slideseg.train.data import TileGeometry, load_cache
from slideseg.train.loss import TargetSpec
from tests.conftest import array_item, random_rgb


def blocks(size: int, seed: int = 0, step: int = 8) -> np.ndarray:
    """Piecewise-constant labels in ``step``-px blocks (so bilinear and nearest agree inside)."""
    r = np.random.default_rng(seed)
    coarse = r.integers(1, 50, (size // step + 1, size // step + 1))
    return np.kron(coarse, np.ones((step, step), np.int64))[:size, :size]


def test_flips_and_rotations_move_image_and_labels_together() -> None:
    lab = blocks(20)
    img = np.stack([lab, lab * 2], -1).astype(np.float32)
    for seed in range(8):
        out_img, out_lab = flip_rotate([img, lab], np.random.default_rng(seed), True, True)
        np.testing.assert_array_equal(out_img[..., 0], out_lab)
        np.testing.assert_array_equal(out_img[..., 1], out_lab * 2)
    same = flip_rotate([img], np.random.default_rng(0), False, False)[0]
    np.testing.assert_array_equal(same, img)


def test_elastic_field_passes_through_the_coarse_grid() -> None:
    dy, dx = elastic_field(41, np.random.default_rng(3), 10.0, 3)
    coarse = np.random.default_rng(3).normal(0.0, 10.0, (2, 3, 3))
    for gy, y in enumerate((0, 20, 40)):
        for gx, x in enumerate((0, 20, 40)):
            assert dy[y, x] == pytest.approx(coarse[0, gy, gx], abs=1e-4)
            assert dx[y, x] == pytest.approx(coarse[1, gy, gx], abs=1e-4)
    assert np.abs(np.diff(dy, axis=0)).max() < 3.0  # smooth: small steps between neighbours


def test_warp_without_displacement_is_a_crop() -> None:
    lab = blocks(30)
    img = lab[..., None].astype(np.float32)
    zero = np.zeros((20, 20), np.float32)
    out_img, (out_lab,) = warp(img, [lab], 20, 5, zero, zero)
    np.testing.assert_array_equal(out_img[..., 0], lab[5:25, 5:25])
    np.testing.assert_array_equal(out_lab, lab[5:25, 5:25])


def test_elastic_keeps_labels_labels_and_agrees_with_the_image() -> None:
    cfg = AugmentConfig()
    m = cfg.margin
    lab = blocks(64 + 2 * m, seed=1, step=16)
    weight = (lab * 0.5).astype(np.float32)
    img = np.stack([lab, lab], -1).astype(np.float32)
    out_img, (out_lab, out_w) = augment_sample(img, [lab, weight], 64, m, np.random.default_rng(5), cfg)
    assert out_img.shape == (64, 64, 2) and out_lab.shape == (64, 64) and out_w.dtype == np.float32
    assert set(np.unique(out_lab)) <= set(np.unique(lab))  # nearest neighbour: no new values
    np.testing.assert_array_equal(out_w, out_lab * 0.5)
    agree = np.isclose(out_img[..., 0], out_lab)  # inside blocks (15/16)² of pixels: bilinear == nearest
    assert agree.mean() > 0.8
    assert not np.array_equal(out_lab, lab[m:-m, m:-m])  # it did deform


def test_augmentation_is_a_function_of_the_seed() -> None:
    cfg = AugmentConfig()
    m = cfg.margin
    lab = blocks(48 + 2 * m)
    img = np.stack([lab] * 3, -1).astype(np.float32)

    def run(seed: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng(seed)
        i, (labels,) = augment_sample(img, [lab], 48, m, rng, cfg)
        return brightness_contrast(i, rng, 0.1, 0.1), labels

    a, b, c = run(1), run(1), run(2)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


def test_brightness_contrast_stay_in_their_bounds() -> None:
    img = np.ones((4, 4, 1), np.float32)
    for seed in range(20):
        out = brightness_contrast(img, np.random.default_rng(seed), 0.1, 0.2)
        assert 0.7 <= out[0, 0, 0] <= 1.3
        assert np.all(out == out[0, 0, 0])
    assert brightness_contrast(img, np.random.default_rng(0), 0.0, 0.0) is img


def test_stain_jitter() -> None:
    rgb = np.random.default_rng(0).uniform(40, 250, (16, 16, 3)).astype(np.float32)
    assert stain_jitter(rgb, np.random.default_rng(0), 0.0, 255.0) is rgb
    out = stain_jitter(rgb, np.random.default_rng(0), 0.05, 255.0)
    assert out.shape == rgb.shape and out.min() >= 0 and out.max() <= 255
    assert 0 < np.abs(out - rgb).mean() < 40
    # zero optical density (white) stays near white: only the shift moves it
    white = np.full((2, 2, 3), 255.0, np.float32)
    assert stain_jitter(white, np.random.default_rng(1), 0.01, 255.0).min() > 200
    with pytest.raises(ConfigError, match="RGB"):
        stain_jitter(np.zeros((2, 2, 1), np.float32), np.random.default_rng(0), 0.05, 255.0)


@pytest.mark.parametrize(("kw", "match"), [
    ({"elastic_sigma": -1.0}, "elastic_sigma"),
    ({"elastic_grid": 1}, "elastic_grid"),
    ({"contrast": 1.0}, "contrast"),
])
def test_bad_augment_config(kw: dict[str, float], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        AugmentConfig(**kw)  # type: ignore[arg-type]


def test_config_round_trip_and_margin() -> None:
    cfg = AugmentConfig(stain_jitter=0.05)
    assert AugmentConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.margin == 30 and AugmentConfig(elastic=False).margin == 0


# --------------------------------------------------------------------------------- tile sampler


def test_fixed_tiles_are_mirror_padded_exactly_as_predict() -> None:
    """The network input of a tile at the image corner equals predict's: np.pad(..., 'reflect')."""
    cfg = UNetConfig(depth=2, width=4)
    g = cfg.geometry
    tile = 92
    out = g.usable_output(tile)  # 52
    image = random_rgb((70, 61))
    item = array_item(image, np.zeros((70, 61), np.uint8))
    sampler = TileSampler([item], TileGeometry(tile, out, g.alignment), TargetSpec("instances", 2), NONE,
                          (10.0, 20.0, 30.0), (2.0, 4.0, 8.0), "reflect", seed=0)
    for cached in (False, True):
        if cached:
            load_cache(item, sampler.spec)
        for oy, ox in ((0, 0), (20, 56)):
            s = sampler.fixed(item, oy, ox)
            c = g.context
            padded = np.pad(image, ((c + 100, 100 + c), (c + 100, 100 + c), (0, 0)), mode="reflect")
            ref = padded[oy + 100: oy + 100 + tile, ox + 100: ox + 100 + tile].astype(np.float32)
            ref = (ref - np.array([10, 20, 30], np.float32)) / np.array([2, 4, 8], np.float32)
            np.testing.assert_allclose(s.image.transpose(1, 2, 0), ref, rtol=1e-6)
            inside = np.zeros((out, out), bool)
            inside[: 70 - oy, : 61 - ox] = True
            assert ((s.weight > 0) == inside).all()  # no loss beyond the image


def test_training_tiles_are_seeded_by_index() -> None:
    image = random_rgb((100, 120))
    mask = np.zeros((100, 120), np.uint8)
    mask[30:60, 40:80] = 1
    item = array_item(image, mask)
    spec = TargetSpec("instances", 2, class_weights=(1.0, 2.0))
    aug = AugmentConfig(stain_jitter=0.05)
    g = TileGeometry(92, 52, 4, aug.margin)
    sampler = TileSampler([item], g, spec, aug, (128.0,), (64.0,), "reflect", seed=3, class_balanced=True)
    a, b, c = sampler(7), sampler(7), sampler(8)
    assert a.image.shape == (3, 92, 92) and a.target.shape == (52, 52) and a.weight.shape == (52, 52)
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.weight, b.weight)
    assert not np.array_equal(a.image, c.image)
