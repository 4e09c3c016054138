"""Exact pixel size: level choice, on-the-fly resampling, and seamlessness on the resampled grid
(predict at each pixel size: tests/test_predict_formats.py)."""

from __future__ import annotations

import numpy as np
import pytest

from slideseg.engines.torch_engine import TorchEngine
from slideseg.errors import ConfigError
from slideseg.io.resample import ResampledSlide, choose_level, output_shape, taps
from slideseg.plan.tiles import make_plan
from slideseg.schedule.chunks import infer_chunk, softmax
from tests.conftest import ArraySlide, random_rgb, tiny_model, whole_image_probabilities


def test_choose_level() -> None:
    assert choose_level([0.25, 0.5, 1.0], 0.5).level == 1  # exact match: no resampling
    c = choose_level([0.3, 1.2], 0.5)
    assert (c.level, c.mpp) == (0, 0.5) and c.factor == pytest.approx(0.5 / 0.3)
    assert choose_level([0.252, 0.504], 0.5) == choose_level([0.252, 0.504], 0.5, level=1)  # within 1 %
    assert choose_level([0.252, 0.504], 0.5).factor == 1.0
    assert choose_level([0.6, 1.2], 0.5).level == 0  # nothing fine enough: the finest, upsampled
    assert choose_level([None, None], None).level == 0
    assert choose_level([0.25, 0.5], 0.5, level=0).factor == 2.0
    with pytest.raises(ConfigError, match=r"no pixel size .* pass --mpp"):
        choose_level([None, None], 0.5)
    with pytest.raises(ConfigError, match="--level 3 does not exist"):
        choose_level([0.25, 0.5], 0.5, level=3)


def test_taps_are_normalised_and_local() -> None:
    idx, w = taps(0, 50, 1.7, 85)
    np.testing.assert_allclose(w.sum(axis=1), 1.0, rtol=1e-6)
    centre = (np.arange(50) + 0.5) * 1.7 - 0.5
    assert (np.abs((idx * w).sum(axis=1) - np.clip(centre, 0, 84)) < 1.0).all()


def test_resampled_reads_are_region_independent() -> None:
    img = random_rgb((301, 257), seed=2)
    r = ResampledSlide(ArraySlide(img), 1.7)
    assert r.shape == (*output_shape((301, 257), 1.7), 3)
    whole = r.read(0, r.shape[0], 0, r.shape[1])
    part = r.read(37, 120, 5, 99)
    assert np.array_equal(part, whole[37:120, 5:99])  # bit for bit
    assert abs(float(whole.mean()) - float(img.mean())) < 2.0


def test_resampled_tiling_is_seamless() -> None:
    model = tiny_model(seed=4)
    r = ResampledSlide(ArraySlide(random_rgb((400, 350), seed=3)), 1.6)
    whole = whole_image_probabilities(model, r.read(0, r.shape[0], 0, r.shape[1]))
    g = model.config.geometry
    plan = make_plan(whole.shape[1:], tile=108, context=g.context, alignment=g.alignment, chunk=64)
    engine = TorchEngine(model, device="cpu")
    tiled = np.full_like(whole, np.nan)
    for c in plan:
        tiled[:, c.box.y0:c.box.y1, c.box.x0:c.box.x1] = softmax(infer_chunk(r, engine, c, "reflect", 4))
    np.testing.assert_allclose(tiled, whole, atol=1e-5)
