"""Shared fixtures: tiny models and in-memory slides (nothing is downloaded)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import numpy as np
import pytest

os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture(autouse=True, scope="session")
def _engine_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Engine artefacts go to a temporary folder, and `--engine auto` on the CPU runs the PyTorch
    engine (the reference the exactness tests compare with) instead of timing engines; the tests of
    that timing clear the variable themselves."""
    saved = {k: os.environ.get(k) for k in ("SLIDESEG_ENGINES_DIR", "SLIDESEG_CPU_ENGINE")}
    os.environ["SLIDESEG_ENGINES_DIR"] = str(tmp_path_factory.mktemp("engines"))
    os.environ["SLIDESEG_CPU_ENGINE"] = "torch"
    yield
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


class ArraySlide:
    """An in-memory stand-in for :class:`slideseg.io.slide.Slide` (shape + in-bounds reads)."""

    def __init__(self, pixels: np.ndarray) -> None:
        self.pixels = pixels if pixels.ndim == 3 else pixels[..., None]
        self.reads: list[tuple[int, int, int, int]] = []

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.pixels.shape  # type: ignore[return-value]

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        h, w = self.pixels.shape[:2]
        assert 0 <= y0 < y1 <= h and 0 <= x0 < x1 <= w, (y0, y1, x0, x1)
        self.reads.append((y0, y1, x0, x1))
        return self.pixels[y0:y1, x0:x1]


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


def random_rgb(shape: tuple[int, int], seed: int = 0) -> np.ndarray:
    """Smooth-ish random RGB uint8 image (structure at several scales, so logits vary)."""
    r = np.random.default_rng(seed)
    img = r.integers(0, 256, (*shape, 3)).astype(np.float32)
    coarse = r.integers(0, 256, (shape[0] // 8 + 1, shape[1] // 8 + 1, 3)).astype(np.float32)
    img = 0.5 * img + 0.5 * np.repeat(np.repeat(coarse, 8, 0), 8, 1)[: shape[0], : shape[1]]
    return img.astype(np.uint8)
