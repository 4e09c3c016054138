"""Training augmentation: flips, 90° rotations, elastic deformation, brightness/contrast and H&E
stain jitter; and :class:`TileSampler`, which draws a tile, augments and normalises it. Every
function draws from the ``numpy.random.Generator`` it is given, so a sample's augmentation is a
pure function of its seed.

Elastic deformation follows the U-Net paper: random displacements on a coarse 3x3 grid (standard
deviation 10 px), interpolated smoothly (cubic spline) to one displacement per pixel; the image is
resampled bilinearly, masks and weight maps with nearest neighbour so labels stay labels.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from slideseg.config import Config
from slideseg.errors import ConfigError
from slideseg.plan.tiles import Box, mirror_index
from slideseg.train.data import Item, TileGeometry, draw_origin, item_weights, window_arrays
from slideseg.train.loss import TargetSpec

F32 = NDArray[np.float32]

# Ruifrok & Johnston (2001) stain vectors, rows: haematoxylin, eosin, DAB (as skimage.color).
_RGB_FROM_HED = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])
_RGB_FROM_HED = _RGB_FROM_HED / np.linalg.norm(_RGB_FROM_HED, axis=1, keepdims=True)
_HED_FROM_RGB = np.linalg.inv(_RGB_FROM_HED)


@dataclass(frozen=True)
class AugmentConfig(Config):
    """Which augmentations a training run applies, and how strongly; saved in checkpoints."""

    flips: bool = True
    """Random horizontal and vertical flips."""
    rotations: bool = True
    """Random rotations by multiples of 90°."""
    elastic: bool = True
    """Elastic deformation on a coarse grid (the U-Net paper's main augmentation)."""
    elastic_sigma: float = 10.0
    """Standard deviation of the displacements at the grid points, px."""
    elastic_grid: int = 3
    """Grid points per side (3 = corners, edge midpoints and centre)."""
    brightness: float = 0.1
    """Largest brightness shift, in units of the per-channel standard deviation of the data."""
    contrast: float = 0.1
    """Largest relative contrast change (factor drawn from [1 - c, 1 + c])."""
    stain_jitter: float = 0.0
    """H&E stain jitter strength (0 = off; RGB only): each stain's optical density is scaled by
    [1 - s, 1 + s] and shifted by [-s, s] (Tellez et al., 2018); 0.05 is typical."""

    def __post_init__(self) -> None:
        for name in ("elastic_sigma", "brightness", "contrast", "stain_jitter"):
            if not getattr(self, name) >= 0:
                raise ConfigError(f"augment {name} must be >= 0, got {getattr(self, name)}")
        if self.elastic_grid < 2:
            raise ConfigError(f"augment elastic_grid must be >= 2, got {self.elastic_grid}")
        if self.contrast >= 1:
            raise ConfigError(f"augment contrast must be < 1 (a factor in [1 - c, 1 + c]), got {self.contrast}")

    @property
    def margin(self) -> int:
        """Extra context (px per side) read around a tile so deformation rarely leaves it: 3 sigma."""
        return math.ceil(3 * self.elastic_sigma) if self.elastic and self.elastic_sigma > 0 else 0


NONE = AugmentConfig(flips=False, rotations=False, elastic=False, brightness=0.0, contrast=0.0)
"""No augmentation (validation)."""


def flip_rotate(arrays: list[np.ndarray], rng: np.random.Generator, flips: bool, rotations: bool
                ) -> list[np.ndarray]:
    """Apply one random flip / 90° rotation to every array alike (axes 0, 1 are Y, X)."""
    k = int(rng.integers(4)) if rotations else 0
    fy, fx = (bool(v) for v in rng.integers(2, size=2)) if flips else (False, False)
    out = []
    for a in arrays:
        if fy:
            a = a[::-1]
        if fx:
            a = a[:, ::-1]
        out.append(np.ascontiguousarray(np.rot90(a, k, axes=(0, 1))))
    return out


def elastic_field(size: int, rng: np.random.Generator, sigma: float, grid: int) -> tuple[F32, F32]:
    """Per-pixel displacements (dy, dx) of a ``size`` x ``size`` tile, each (size, size) float32.

    Displacements are drawn from N(0, sigma²) on a ``grid`` x ``grid`` lattice spanning the tile
    (corners included) and interpolated with a cubic spline. The spline interpolation of a lattice
    is separable, so it is computed as ``W @ coarse @ W.T`` with the (size, grid) weights ``W`` of
    the 1-D interpolation: the same values as 2-D ``map_coordinates``, in a fraction of the time.
    """
    coarse = rng.normal(0.0, sigma, (2, grid, grid))  # (2, g, g)
    weights = _spline_weights(size, grid)  # (size, g)
    dy, dx = (_outer_sum(weights @ c, weights) for c in coarse)
    return dy, dx


def _outer_sum(left: NDArray[np.float64], right: NDArray[np.float64]) -> F32:
    """``left @ right.T`` for a small inner dimension, as a sum of outer products: a BLAS call for
    this shape costs ~30 times as much (thread start-up), in the loader's threads beside training."""
    out = left[:, :1] * right[:, 0]  # (size, size)
    for k in range(1, left.shape[1]):
        out += left[:, k : k + 1] * right[:, k]
    return out.astype(np.float32)


@functools.lru_cache(maxsize=16)
def _spline_weights(size: int, grid: int) -> NDArray[np.float64]:
    """(size, grid): row i interpolates a ``grid``-point signal at ``i * (grid - 1) / (size - 1)``
    with the cubic spline (order ``min(3, grid - 1)``, 'nearest' beyond the ends) of scipy."""
    u = np.linspace(0.0, grid - 1.0, size)
    order = min(3, grid - 1)
    columns = [ndimage.map_coordinates(np.eye(grid)[j], [u], order=order, mode="nearest") for j in range(grid)]
    weights = np.stack(columns, axis=1)
    weights.flags.writeable = False
    return weights


def warp(image: F32, labels: list[np.ndarray], size: int, margin: int, dy: F32, dx: F32
         ) -> tuple[F32, list[np.ndarray]]:
    """Resample the centre ``size`` x ``size`` of arrays that have ``margin`` px extra per side.

    Output pixel (i, j) takes the input at ``(margin + i + dy, margin + j + dx)``: bilinear for
    ``image`` (Y, X, C), nearest for each of ``labels`` (Y, X). Beyond the input it mirrors.
    """
    grid = np.arange(margin, margin + size, dtype=np.float32)
    coords = np.empty((2, size, size), np.float32)
    np.add(grid[:, None], dy, out=coords[0])
    np.add(grid[None, :], dx, out=coords[1])
    img = np.empty((size, size, image.shape[2]), np.float32)
    for c in range(image.shape[2]):
        ndimage.map_coordinates(image[..., c], coords, output=img[..., c], order=1, mode="mirror")
    h, w = image.shape[:2]
    ny, nx = (_inside_or_mirrored(np.rint(a).astype(np.intp), n) for a, n in ((coords[0], h), (coords[1], w)))
    flat = ny * w + nx  # one gather per label array
    return img, [np.take(np.ascontiguousarray(lab).reshape(-1), flat) for lab in labels]


def _inside_or_mirrored(idx: NDArray[np.intp], n: int) -> NDArray[np.intp]:
    """``idx`` mirrored into [0, n) ('reflect'); as it is when it is inside already (the usual case)."""
    if idx.size and int(idx.min()) >= 0 and int(idx.max()) < n:
        return idx
    return mirror_index(idx, n, "reflect")


def brightness_contrast(image: F32, rng: np.random.Generator, brightness: float, contrast: float) -> F32:
    """``image * c + b`` per tile on normalised values: c in [1 - contrast, 1 + contrast],
    b in [-brightness, brightness] (one draw for all channels)."""
    c = rng.uniform(1.0 - contrast, 1.0 + contrast) if contrast else 1.0
    b = rng.uniform(-brightness, brightness) if brightness else 0.0
    if c == 1.0 and b == 0.0:
        return image
    return (image * np.float32(c) + np.float32(b)).astype(np.float32)


def stain_jitter(rgb: F32, rng: np.random.Generator, strength: float, white: float) -> F32:
    """H&E stain jitter on raw RGB values (Y, X, 3) in [0, ``white``].

    Colour deconvolution into haematoxylin, eosin and DAB optical densities, a random scale in
    [1 - s, 1 + s] and shift in [-s, s] per stain, and back to RGB.
    """
    if rgb.shape[-1] != 3:
        raise ConfigError(f"stain jitter needs RGB images (3 channels), got {rgb.shape[-1]}; "
                          "use --stain-jitter 0 for other images.")
    if strength == 0:
        return rgb
    alpha = rng.uniform(1.0 - strength, 1.0 + strength, 3)
    beta = rng.uniform(-strength, strength, 3)
    od = -np.log10(np.maximum(rgb, 1.0) / white)  # (Y, X, 3) optical density
    stains = od @ _HED_FROM_RGB  # (Y, X, 3): H, E, DAB
    stains = stains * alpha + beta
    out = white * np.power(10.0, -(stains @ _RGB_FROM_HED))
    return np.clip(out, 0.0, white).astype(np.float32)


def augment_sample(image: F32, labels: list[np.ndarray], size: int, margin: int, rng: np.random.Generator,
                   cfg: AugmentConfig) -> tuple[F32, list[np.ndarray]]:
    """Geometric augmentation of one training window: flip/rotate, then elastic deformation.

    Parameters
    ----------
    image : (S, S, C) float32 raw values, ``S = size + 2 * margin``.
    labels : (S, S) arrays warped with nearest neighbour (targets, weights).
    size : edge of the network input tile.
    margin : extra px per side around the tile in the inputs.

    Returns
    -------
    image (size, size, C) and labels (size, size), same dtypes.
    """
    if image.shape[0] != size + 2 * margin or image.shape[1] != size + 2 * margin:
        raise ValueError(f"expected a window of {size + 2 * margin} px, got {image.shape}")
    image, *labels = flip_rotate([image, *labels], rng, cfg.flips, cfg.rotations)
    if cfg.elastic and cfg.elastic_sigma > 0:
        dy, dx = elastic_field(size, rng, cfg.elastic_sigma, cfg.elastic_grid)
        return warp(image, labels, size, margin, dy, dx)
    crop = (slice(margin, margin + size), slice(margin, margin + size))
    return np.ascontiguousarray(image[crop]), [np.ascontiguousarray(lab[crop]) for lab in labels]


# ------------------------------------------------------------------------------- training tiles


@dataclass(frozen=True)
class Sample:
    """One training tile: the normalised network input and the loss window's target and weights."""

    image: NDArray[np.float32]
    """(C, T, T) normalised input."""
    target: NDArray[np.uint8]
    """(t, t) class ids the loss wants."""
    weight: NDArray[np.float32]
    """(t, t) loss weights, 0 where there is no label (beyond the image)."""
    truth: NDArray[np.uint8]
    """(t, t) true class ids (no separation borders), for metrics."""


class TileSampler:
    """Random (augmented) training tiles, or fixed validation tiles, each a function of its index."""

    def __init__(self, items: Sequence[Item], geometry: TileGeometry, spec: TargetSpec, augment: AugmentConfig,
                 mean: Sequence[float], std: Sequence[float], mirror: str, seed: int,
                 class_balanced: bool = False, white: float = 255.0) -> None:
        self.items, self.geometry, self.spec, self.augment = list(items), geometry, spec, augment
        self.mean = np.asarray(mean, np.float32)
        self.inv_std = np.float32(1.0) / np.asarray(std, np.float32)
        self.mirror, self.seed, self.class_balanced, self.white = mirror, seed, class_balanced, white
        self._p = item_weights(self.items)

    def __call__(self, index: int) -> Sample:
        """Training tile number ``index``: random item, origin and augmentation, all seeded by it."""
        rng = np.random.default_rng([self.seed, 1, index])
        item = self.items[int(rng.choice(len(self.items), p=self._p))]
        g, aug = self.geometry, self.augment
        oy, ox = draw_origin(item, g, self.spec, self.mirror, rng, self.class_balanced)
        image, target, weight, truth = window_arrays(item, g.window(oy, ox), self.spec, self.mirror)
        image = image.astype(np.float32)
        if aug.stain_jitter:
            image = stain_jitter(image, rng, aug.stain_jitter, self.white)
        image, (target, weight, truth) = augment_sample(image, [target, weight, truth], g.tile, g.margin, rng, aug)
        image = brightness_contrast(self._normalise(image), rng, aug.brightness, aug.contrast)
        return self._sample(image, target, weight, truth)

    def fixed(self, item: Item, oy: int, ox: int) -> Sample:
        """The un-augmented tile whose loss window starts at (oy, ox) (validation)."""
        g = self.geometry
        window = Box(oy - g.context, oy - g.context + g.tile, ox - g.context, ox - g.context + g.tile)
        image, target, weight, truth = window_arrays(item, window, self.spec, self.mirror)
        return self._sample(self._normalise(image.astype(np.float32)), target, weight, truth)

    def _normalise(self, image: NDArray[np.float32]) -> NDArray[np.float32]:
        return (image - self.mean) * self.inv_std  # (T, T, C), as the engine does it on its device

    def _sample(self, image: np.ndarray, target: np.ndarray, weight: np.ndarray, truth: np.ndarray) -> Sample:
        c, t = self.geometry.context, self.geometry.output
        out = (slice(c, c + t), slice(c, c + t))
        return Sample(np.ascontiguousarray(image.transpose(2, 0, 1), np.float32), np.ascontiguousarray(target[out]),
                      np.ascontiguousarray(weight[out], np.float32), np.ascontiguousarray(truth[out]))
