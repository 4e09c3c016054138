"""Tissue detection: which output chunks hold tissue and are worth running.

Whole slides are mostly glass. A low-resolution thumbnail, read from a coarse pyramid level (or
strided from a finer one, block by block), is classified with Otsu's threshold — on saturation
for brightfield RGB (glass is grey-white, stained tissue is coloured), on intensity for
fluorescence and other non-RGB images (signal is bright) — and cleaned with morphology. Chunks
with no tissue are not run; they read as background. A user-supplied mask replaces detection.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from slideseg.errors import ConfigError, OutputFormatError
from slideseg.io.guard import reading
from slideseg.io.slide import open_slide
from slideseg.plan.tiles import Box

THUMBNAIL_SIDE = 1024
"""Longest side of the thumbnail that tissue is detected on."""
READ_PIXELS = 2**24
"""Most slide pixels read at once while the thumbnail is made (16 Mpx: 48 MB of RGB)."""
SATURATION_LIMITS = (0.04, 0.15)
"""Otsu's saturation threshold is kept inside these bounds: below, glass noise would count as
tissue; above, a slide that is all tissue would have its paler half thrown away."""


@dataclass(frozen=True)
class TissueMask:
    """A low-resolution boolean tissue mask and how it maps onto the slide level being segmented."""

    mask: np.ndarray
    """bool (h, w)."""
    scale: tuple[float, float]
    """Slide-level pixels per mask pixel along (y, x)."""
    method: str
    threshold: float | None = None

    @property
    def fraction(self) -> float:
        """Fraction of the slide covered by tissue."""
        return float(self.mask.mean()) if self.mask.size else 0.0

    def covers(self, box: Box) -> bool:
        """Whether any tissue lies in ``box`` (slide-level pixels), with one mask pixel of margin."""
        sy, sx = self.scale
        y0 = max(0, math.floor(box.y0 / sy) - 1)
        x0 = max(0, math.floor(box.x0 / sx) - 1)
        y1 = math.ceil(box.y1 / sy) + 1
        x1 = math.ceil(box.x1 / sx) + 1
        return bool(self.mask[y0:y1, x0:x1].any())

    @classmethod
    def from_zarr(cls, array: Any) -> TissueMask:
        """Read back a mask saved with :meth:`attrs` as the array's attributes.

        Raises
        ------
        OutputFormatError
            The array is not a small 2-D mask, or its attributes are not what :meth:`attrs` writes.
        """
        a = dict(array.attrs)
        scale: Any = a.get("scale_yx")
        threshold: Any = a.get("threshold")
        ok = (isinstance(scale, list) and len(scale) == 2 and all(_finite_positive(v) for v in scale)
              and (threshold is None or isinstance(threshold, int | float)) and len(array.shape) == 2
              and 0 < math.prod(array.shape) <= 64e6)
        if not ok:
            raise OutputFormatError(
                f"the saved tissue mask {getattr(array, 'path', '')!r} has shape {tuple(array.shape)} and attributes "
                f"{str(a)[:120]}; expected a 2-D mask with 'scale_yx' (two numbers > 0): run again with --overwrite"
            )
        with reading(getattr(array, "path", "tissue"), "read the saved tissue mask {path}"):
            mask = np.asarray(array[:]).astype(bool)
        return cls(mask, (float(scale[0]), float(scale[1])), str(a.get("method", "")),
                   None if threshold is None else float(threshold))

    def attrs(self) -> dict[str, Any]:
        return {"scale_yx": list(self.scale), "method": self.method, "threshold": self.threshold,
                "fraction": round(self.fraction, 6)}


def _finite_positive(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of ``values`` (any shape): the cut that maximises between-class variance."""
    v = values[np.isfinite(values)].ravel()
    if v.size == 0 or v.min() == v.max():
        return float(v.max()) if v.size else 0.0
    hist, edges = np.histogram(v, bins=bins)
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m = np.cumsum(hist * centres)
    mu0 = m / np.maximum(w0, 1)
    mu1 = (m[-1] - m) / np.maximum(w1, 1)
    between = w0 * w1 * (mu0 - mu1) ** 2
    best = np.flatnonzero(between >= between.max() * (1 - 1e-9))  # a plateau across an empty gap:
    return float(edges[1:][best].mean())  # take its middle


def classify(image: np.ndarray) -> tuple[np.ndarray, str, float]:
    """Boolean tissue mask of a thumbnail ``image`` (h, w, C), the method used and its threshold."""
    if image.shape[2] in (3, 4):
        rgb = image[..., :3]
        hi = rgb.max(axis=2).astype(np.float32)  # reduce in the input dtype: 4x less memory traffic
        lo = rgb.min(axis=2).astype(np.float32)
        feature = np.where(hi > 0, (hi - lo) / np.maximum(hi, 1e-6), 0.0)
        t = float(np.clip(otsu_threshold(feature), *SATURATION_LIMITS))
        method = "otsu-saturation"
    else:
        feature = image.astype(np.float32).mean(axis=2)
        t = otsu_threshold(feature)
        method = "otsu-intensity"
    return clean(feature > t), method, t


def clean(mask: np.ndarray) -> np.ndarray:
    """Close small gaps, fill holes, drop specks, then grow by two pixels as a safety margin."""
    from scipy import ndimage  # here: the thumbnail readers of this module serve light commands (preview)

    if not mask.any():
        return mask
    pad = 3  # closing erodes from the border too: pad by replicating the edge, then crop
    mask = ndimage.binary_closing(np.pad(mask, pad, mode="edge"), iterations=2)[pad:-pad, pad:-pad]
    mask = ndimage.binary_fill_holes(mask)
    labels, n = ndimage.label(mask)
    if n:
        sizes = ndimage.sum_labels(mask, labels, index=np.arange(1, n + 1))
        keep = np.zeros(n + 1, bool)
        keep[1:] = sizes >= max(4, mask.size * 1e-5)
        mask = keep[labels]
    return ndimage.binary_dilation(mask, iterations=2)


def detect_tissue(path: str | os.PathLike[str], target_shape: tuple[int, int], series: int = 0,
                  side: int = THUMBNAIL_SIDE, **open_kw: Any) -> TissueMask:
    """Detect tissue on a thumbnail of the slide at ``path``, mapped onto a grid of
    ``target_shape`` covering the whole slide (the grid the mask is predicted on)."""
    image, scale = thumbnail(path, target_shape, series, side, **open_kw)
    mask, method, t = classify(image)
    return TissueMask(mask, scale, method, t)


def thumbnail(path: str | os.PathLike[str], target_shape: tuple[int, int], series: int = 0,
              side: int = THUMBNAIL_SIDE, **open_kw: Any) -> tuple[np.ndarray, tuple[float, float]]:
    """A (h, w, C) thumbnail with longest side about ``side`` and its scale onto ``target_shape``.

    Reads the coarsest pyramid level that is still at least ``side`` px long (any level if none
    is), strided block by block (:func:`strided`), so memory stays bounded whatever the slide size.
    """

    with open_slide(path, level=0, series=series, **open_kw) as level0:
        sizes = [lv.shape for lv in level0.levels]
    candidates = [i for i, s in enumerate(sizes) if max(s) >= side] or [0]
    source = max(candidates)
    with open_slide(path, level=source, series=series, **open_kw) as slide:
        h, w = slide.shape[:2]
        image = strided(slide, max(1, max(h, w) // side))
    scale = (target_shape[0] / image.shape[0], target_shape[1] / image.shape[1])
    return image, scale


def strided(slide: Any, stride: int, budget: int = READ_PIXELS) -> np.ndarray:
    """``slide[::stride, ::stride]`` (h, w, C), read in blocks of at most ``budget`` pixels.

    Blocks are whole multiples of ``stride`` high and wide, so each block's own ``[::stride]``
    picks the same pixels as the whole level's; where even one stride-high row is too wide, only
    the sampled rows are read, in pieces.

    >>> class Ramp:
    ...     shape, dtype = (7, 9, 1), np.int64
    ...     def read(self, y0, y1, x0, x1):
    ...         return (np.arange(y0, y1)[:, None, None] * 10 + np.arange(x0, x1)[None, :, None])
    >>> strided(Ramp(), 3, budget=8)[..., 0].tolist()
    [[0, 3, 6], [30, 33, 36], [60, 63, 66]]
    """
    h, w, c = slide.shape
    image = np.zeros((-(-h // stride), -(-w // stride), c), np.dtype(getattr(slide, "dtype", np.int64)))
    if stride * stride <= budget:  # blocks of whole stride cells
        side = max(stride, math.isqrt(budget) // stride * stride)
        bh, bw = side, max(stride, (budget // side) // stride * stride)
        for y0 in range(0, h, bh):
            for x0 in range(0, w, bw):
                region = slide.read(y0, min(h, y0 + bh), x0, min(w, x0 + bw))[::stride, ::stride]
                oy, ox = y0 // stride, x0 // stride
                image[oy: oy + region.shape[0], ox: ox + region.shape[1]] = region
        return image
    piece = max(stride, budget // stride * stride)
    for i, y in enumerate(range(0, h, stride)):  # one sampled row at a time, in pieces
        for x0 in range(0, w, piece):
            row = slide.read(y, y + 1, x0, min(w, x0 + piece))[0, ::stride]
            image[i, x0 // stride: x0 // stride + row.shape[0]] = row
    return image


def load_tissue_mask(path: str | os.PathLike[str], slide_shape: tuple[int, int]) -> TissueMask:
    """A user-supplied mask (any image or Zarr that slideseg reads; non-zero = tissue), at any
    resolution with the slide's aspect ratio."""

    with open_slide(path, channels=(0,)) as m:  # only channel 0 counts: never decode the others
        h, w = m.shape[:2]
        if h * w > 64e6:
            raise ConfigError(f"--tissue-mask {path} is {h} x {w} px; expected a low-resolution mask "
                              "(at most 64 megapixels): save a downsampled mask")
        mask = np.asarray(m.read(0, h, 0, w))[..., 0] > 0
    sy, sx = slide_shape[0] / h, slide_shape[1] / w
    if abs(sy / sx - 1) > 0.05 + 2 * max(sy, sx) / min(slide_shape):
        raise ConfigError(f"--tissue-mask {path} is {h} x {w} px but the slide is {slide_shape[0]} x "
                          f"{slide_shape[1]}: the aspect ratios differ; pass a mask of the whole slide")
    return TissueMask(mask, (sy, sx), f"file:{os.fspath(path)}")
