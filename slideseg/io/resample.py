"""Reading a slide at the pixel size the model was trained at.

The model declares its pixel size (mpp). ``predict`` reads the pyramid level closest to it but
not coarser (:func:`choose_level`) and, unless that level is already within 1 % of it, resamples
on the fly to exactly the model's mpp (:class:`ResampledSlide`). The output grid is then the
resampled image, and the mask's scale metadata is exact.

Resampling is a separable triangle (linear) filter, widened by the reduction factor so that it
averages rather than aliases. Every output pixel is computed from the same input pixels with the
same arithmetic in the same order, whatever region is asked for, so chunks read independently
join exactly: the seamless guarantee holds for "the network over the whole resampled,
mirror-padded slide".
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from slideseg.errors import ConfigError

TOLERANCE = 0.01
"""A level within this relative difference of the model's mpp is read as it is."""
MAX_REDUCTION = 64.0
"""Largest reduction (level pixels per output pixel) slideseg resamples by."""
MAX_ENLARGEMENT = 16.0
"""Largest enlargement (output pixels per level pixel) slideseg resamples by."""
BAND_VALUES = 2**25
"""Most input values (pixels x channels) one resampling step holds at once (128 MB as float32)."""


class _Reader(Protocol):
    @property
    def shape(self) -> tuple[int, int, int]: ...

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray: ...


@dataclass(frozen=True)
class LevelChoice:
    """Which level to read and how to scale it: ``factor`` input pixels per output pixel."""

    level: int
    factor: float
    mpp: float | None
    """Pixel size of the output grid (None when unknown)."""



def choose_level(level_mpps: Sequence[float | None], model_mpp: float | None, *, level: int | None = None,
                 tolerance: float = TOLERANCE, name: str = "the slide") -> LevelChoice:
    """The pyramid level to read for a model trained at ``model_mpp``.

    ``level_mpps`` are the slide's pixel sizes per level (None where unknown). With ``level``
    given, that level is read; otherwise the coarsest level that is not coarser than the model
    (within ``tolerance``). The read level is resampled to ``model_mpp`` unless it is within
    ``tolerance`` of it or either pixel size is unknown.

    >>> choose_level([0.25, 0.5, 1.0], 0.5)
    LevelChoice(level=1, factor=1.0, mpp=0.5)
    >>> choose_level([0.3, 1.2], 0.5)
    LevelChoice(level=0, factor=1.6666666666666667, mpp=0.5)
    """
    if level is not None:
        if not 0 <= level < len(level_mpps):
            raise ConfigError(f"--level {level} does not exist; {name} has levels 0..{len(level_mpps) - 1}")
        chosen = level
    elif model_mpp is None:
        chosen = 0
    else:
        if level_mpps[0] is None:
            raise ConfigError(
                f"{name} has no pixel size and the model expects {model_mpp:g} µm/px; pass --mpp "
                "with the slide's µm/px, or --level N to read a level as it is.")
        fine_enough = [i for i, m in enumerate(level_mpps) if m is not None and m <= model_mpp * (1 + tolerance)]
        chosen = max(fine_enough, key=lambda i: level_mpps[i] or 0.0) if fine_enough else 0
    mpp = level_mpps[chosen]
    if mpp is None or model_mpp is None or abs(mpp / model_mpp - 1) <= tolerance:
        return LevelChoice(chosen, 1.0, mpp)
    factor = model_mpp / mpp
    if not 1 / MAX_ENLARGEMENT <= factor <= MAX_REDUCTION:
        how = f"a x{factor:.3g} reduction" if factor > 1 else f"a x{1 / factor:.3g} enlargement"
        raise ConfigError(
            f"the model expects {model_mpp:g} µm/px but {name} level {chosen} is {mpp:g} µm/px: {how}, beyond "
            f"the x{MAX_REDUCTION:g} reduction and x{MAX_ENLARGEMENT:g} enlargement slideseg resamples by; the "
            f"slide's pixel size is probably wrong: pass --mpp with its real level-0 µm/px")
    return LevelChoice(chosen, factor, model_mpp)


def output_shape(shape: tuple[int, int], factor: float) -> tuple[int, int]:
    """Shape of the resampled grid of a level of ``shape`` (at least 1 x 1)."""
    return max(1, round(shape[0] / factor)), max(1, round(shape[1] / factor))


def taps(start: int, stop: int, factor: float, n_in: int) -> tuple[np.ndarray, np.ndarray]:
    """Input indices (n, K) and weights (n, K) of output pixels ``start..stop-1`` along one axis.

    Output pixel ``i`` is centred on input coordinate ``(i + 0.5) * factor - 0.5``; the filter is
    a triangle of half-width ``max(1, factor)``; indices beyond the level are clamped to its edge.
    """
    support = max(1.0, factor)
    centre = (np.arange(start, stop, dtype=np.float64) + 0.5) * factor - 0.5  # (n,)
    k = 2 * math.ceil(support) + 1
    first = np.floor(centre - support).astype(np.int64) + 1  # (n,)
    idx = first[:, None] + np.arange(k)[None, :]  # (n, K)
    w = np.maximum(0.0, 1.0 - np.abs(idx - centre[:, None]) / support)
    w /= w.sum(axis=1, keepdims=True)
    return np.clip(idx, 0, n_in - 1), w.astype(np.float32)


class ResampledSlide:
    """A slide level seen at ``factor`` input pixels per output pixel (float32 pixels)."""

    def __init__(self, slide: _Reader, factor: float) -> None:
        if not (math.isfinite(factor) and 1 / MAX_ENLARGEMENT <= factor <= MAX_REDUCTION):
            raise ConfigError(f"resampling factor must be between 1/{MAX_ENLARGEMENT:g} and {MAX_REDUCTION:g}, "
                              f"got {factor}")
        self.slide = slide
        self.factor = factor
        h, w, c = slide.shape
        self._in_shape = (h, w)
        self.shape: tuple[int, int, int] = (*output_shape((h, w), factor), c)

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """Output pixels ``[y0:y1, x0:x1]`` (in bounds), float32 (h, w, C).

        Read in bands of output rows whose input holds at most :data:`BAND_VALUES` values, so a
        large reduction never holds its whole input window; each output pixel is the same sum
        whatever the band.
        """
        ix, wx = taps(x0, x1, self.factor, self._in_shape[1])
        rx0, rx1 = int(ix.min()), int(ix.max()) + 1
        c = self.shape[2]
        out = np.zeros((y1 - y0, x1 - x0, c), np.float32)
        support_rows = 2 * math.ceil(max(1.0, self.factor)) + 1
        band = max(1, int((BAND_VALUES / ((rx1 - rx0) * c) - support_rows) / max(1.0, self.factor)))
        for b0 in range(y0, y1, band):
            b1 = min(y1, b0 + band)
            out[b0 - y0: b1 - y0] = self._band(b0, b1, ix, wx, rx0, rx1)
        return out

    def _band(self, y0: int, y1: int, ix: np.ndarray, wx: np.ndarray, rx0: int, rx1: int) -> np.ndarray:
        """Output rows ``y0..y1-1`` over the columns whose taps are ``ix``, ``wx``: (h, w, C)."""
        iy, wy = taps(y0, y1, self.factor, self._in_shape[0])
        ry0, ry1 = int(iy.min()), int(iy.max()) + 1
        region = self.slide.read(ry0, ry1, rx0, rx1).astype(np.float32)  # (Y, X, C)
        rows = np.zeros((y1 - y0, region.shape[1], region.shape[2]), np.float32)
        for k in range(iy.shape[1]):  # fixed tap order: the same sum for a pixel in any read
            rows += region[iy[:, k] - ry0] * wy[:, k, None, None]
        out = np.zeros((y1 - y0, ix.shape[0], region.shape[2]), np.float32)
        for k in range(ix.shape[1]):
            out += rows[:, ix[:, k] - rx0] * wx[None, :, k, None]
        return out
