"""Preview PNG: a slide thumbnail with the mask over it in its label colours, and a legend.

The mask covers the whole slide, so both are scaled to one thumbnail grid: the slide from the
pyramid level closest to the thumbnail (never more than it must read; a slide with no pyramid is
read in bounded blocks and subsampled as it goes), the mask from its own pyramid, nearest-neighbour
(only the rows and columns it samples are read).
Without the slide (moved, deleted) the mask is drawn on white.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from slideseg.errors import ConfigError, OutputExistsError
from slideseg.io.guard import reading
from slideseg.io.slide import open_slide
from slideseg.io.tissue import strided
from slideseg.plan.tiles import nearest_index
from slideseg.write.mask import read_mask

__all__ = ["PreviewResult", "overlay", "pick_level", "reduction_step", "thumbnail_shape", "write_preview"]

MAX_SIZE = 16384
"""Largest --size: a preview is a thumbnail, not an export."""
_STRIP_PIXELS = 1 << 24  # most pixels read at once from a slide level (see slideseg.io.tissue.strided)
_WHITE = 255
_INK = (30, 30, 30)

U8 = NDArray[np.uint8]


@dataclass(frozen=True)
class PreviewResult:
    """What :func:`write_preview` wrote, and from what."""

    path: Path
    shape: tuple[int, int]
    """(H, W) of the PNG: the thumbnail, and the legend below it."""
    thumbnail: tuple[int, int]
    """(H, W) of the thumbnail; its longer side is ``size``."""
    mask_level: int
    slide: Path | None
    """The slide drawn under the mask; None: the mask is on white."""
    slide_level: int | None
    note: str | None = None
    """Why the slide is missing, if it is."""


def write_preview(mask_path: str | os.PathLike[str], out_png: str | os.PathLike[str],
                  slide_path: str | os.PathLike[str] | None = None, size: int = 1024, alpha: float = 0.5,
                  *, overwrite: bool = False) -> PreviewResult:
    """Write a PNG of the slide with the mask overlaid in its label colours and a legend.

    Parameters
    ----------
    mask_path
        A complete mask written by ``slideseg predict``.
    out_png
        The PNG to write (``.png``).
    slide_path
        The slide to draw under the mask. Default: the slide recorded in the mask, if it is
        still there; else the mask is drawn on white (and :attr:`PreviewResult.note` says why).
    size
        Longer side of the thumbnail in pixels (16 to 16384); the legend goes below it.
    alpha
        Opacity of the mask colours, 0 to 1 (times each class colour's own alpha).
    overwrite
        Replace an existing ``out_png``.

    Raises
    ------
    OutputExistsError, OutputFormatError, ConfigError, SlideReadError
        Existing output, not a (complete) mask, bad option, unreadable ``slide_path``.
    """

    out = Path(out_png)
    _check_args(out, size, alpha, overwrite)
    mask = read_mask(mask_path)
    levels = mask.levels
    thumb = thumbnail_shape(tuple(levels[0].shape), size)
    mask_level = pick_level([tuple(a.shape) for a in levels], thumb)
    labels = _sample_labels(levels[mask_level], thumb, f"level {mask_level} of the mask {{path}}", mask_path)
    source = mask.source
    slide, note = _find_slide(slide_path, source)
    background, slide_level = _background(slide, source.get("series"), thumb)
    classes = {c.value: (c.name, c.rgba) for c in mask.classes}
    image = overlay(background, labels, {v: c for v, (_, c) in classes.items()}, alpha)
    title = f"{Path(mask_path).name} over {slide.name}" if slide is not None else f"{Path(mask_path).name} (no slide)"
    canvas = _with_legend(image, title, [(n, c) for v, (n, c) in sorted(classes.items()) if v != 0])
    _save_png(canvas, out)
    return PreviewResult(out, canvas.shape[:2], thumb, mask_level, slide, slide_level, note)


def thumbnail_shape(shape: tuple[int, ...], size: int) -> tuple[int, int]:
    """(h, w) with the aspect of ``shape`` (H, W) and the longer side ``size``.

    >>> thumbnail_shape((3000, 1000), 600)
    (600, 200)
    """
    h, w = int(shape[0]), int(shape[1])
    scale = size / max(h, w)
    return max(1, round(h * scale)), max(1, round(w * scale))


def pick_level(shapes: list[tuple[int, ...]], target: tuple[int, int]) -> int:
    """The coarsest level at least as large as ``target`` (H, W) on both sides, else level 0.

    >>> pick_level([(4000, 3000), (2000, 1500), (1000, 750), (500, 375)], (800, 600))
    2
    """
    big_enough = [i for i, s in enumerate(shapes) if s[0] >= target[0] and s[1] >= target[1]]
    return big_enough[-1] if big_enough else 0


def overlay(rgb: U8, labels: np.ndarray, colours: dict[int, tuple[int, int, int, int]], alpha: float) -> U8:
    """``rgb`` (h, w, 3) with each labelled pixel blended towards its class colour.

    A pixel of class ``v`` with colour (r, g, b, a) becomes ``(1 - k) * rgb + k * (r, g, b)``
    with ``k = alpha * a / 255``; the background 0 is never drawn.

    >>> overlay(np.zeros((1, 2, 3), np.uint8), np.array([[0, 1]]), {1: (200, 100, 0, 255)}, 0.5)[0].tolist()
    [[0, 0, 0], [100, 50, 0]]
    """
    lut_rgb = np.zeros((256, 3), np.float32)
    lut_k = np.zeros(256, np.float32)
    for value, (r, g, b, a) in colours.items():
        if value != 0:
            lut_rgb[value], lut_k[value] = (r, g, b), alpha * a / 255
    k = lut_k[labels][..., None]
    return np.rint((1 - k) * rgb + k * lut_rgb[labels]).astype(np.uint8)


def _sample_labels(array: Any, thumb: tuple[int, int], what: str, path: str | os.PathLike[str]) -> np.ndarray:
    """``array`` (H, W) resized to ``thumb`` by nearest neighbour, reading only the rows and columns
    sampled (a level of a checked mask: see :func:`slideseg.write.mask.read_mask`)."""
    rows = nearest_index(int(array.shape[0]), thumb[0])
    cols = nearest_index(int(array.shape[1]), thumb[1])
    unique_rows, row_of = np.unique(rows, return_inverse=True)
    unique_cols, col_of = np.unique(cols, return_inverse=True)
    with reading(path, f"read {what}"):
        sampled = np.asarray(array.oindex[unique_rows, unique_cols])
    return sampled[np.ix_(row_of, col_of)]


# --------------------------------------------------------------------------------- the slide


def _find_slide(slide_path: str | os.PathLike[str] | None, source: dict[str, Any]) -> tuple[Path | None, str | None]:
    if slide_path is not None:
        return Path(slide_path), None  # the user's choice: a missing file is their error, raised on open
    recorded = source.get("path")
    if not recorded:
        return None, "the mask records no slide: pass --slide to draw one"
    path = Path(str(recorded))
    if not path.exists():
        return None, f"the slide {path} recorded in the mask is not there: pass --slide to draw it"
    return path, None


def _background(slide: Path | None, series: Any, thumb: tuple[int, int]) -> tuple[U8, int | None]:
    """The slide's thumbnail and the level it was read from, or white and None without a slide."""
    if slide is None:
        return np.full((*thumb, 3), _WHITE, np.uint8), None
    return _slide_thumbnail(slide, None if series is None else int(series), thumb)


def _slide_thumbnail(path: Path, series: int | None, thumb: tuple[int, int]) -> tuple[U8, int]:
    """RGB (h, w, 3) uint8 of the whole slide at ``thumb``, read from the level closest to it."""

    with open_slide(path, level=0, series=series) as slide0:
        level = pick_level([info.shape for info in slide0.levels], thumb)
    with open_slide(path, level=level, series=series) as slide:
        pixels = strided(slide, reduction_step(slide.shape[:2], thumb), _STRIP_PIXELS)
    return _resize_rgb(_to_rgb8(pixels), thumb), level


def reduction_step(shape: tuple[int, int], thumb: tuple[int, int]) -> int:
    """The stride a slide level of ``shape`` (H, W) is sampled at for a ``thumb`` (h, w) thumbnail:
    at least 2x the thumbnail on the side that needs less reduction, but never more than 16x its
    pixels (a slide whose aspect differs wildly from the mask's would otherwise be read whole).

    >>> reduction_step((4000, 3000), (400, 300)), reduction_step((300, 10**7), (256, 200))
    (5, 61)
    """
    (h, w), (th, tw) = shape, thumb
    step = max(1, min(h // (2 * th), w // (2 * tw)))
    return max(step, math.ceil(math.sqrt(h * w / (16 * th * tw))))


def _to_rgb8(pixels: np.ndarray) -> U8:
    """(h, w, C) of any dtype as RGB uint8: channels 0-2 (RGB, RGBA), else channel 0 as grey;
    other dtypes stretched from their 0.5th to 99.5th percentile."""
    rgb = pixels[..., :3] if pixels.shape[2] >= 3 else np.repeat(pixels[..., :1], 3, axis=2)
    if rgb.dtype == np.uint8:
        return np.ascontiguousarray(rgb)
    data = rgb.astype(np.float32)
    lo, hi = np.percentile(data, [0.5, 99.5])
    return np.clip((data - lo) * (255 / max(float(hi - lo), 1e-12)), 0, 255).astype(np.uint8)


def _resize_rgb(rgb: U8, shape: tuple[int, int]) -> U8:
    from PIL import Image

    if rgb.shape[:2] == shape:
        return rgb
    shrink = rgb.shape[0] >= shape[0] and rgb.shape[1] >= shape[1]
    method = Image.Resampling.BOX if shrink else Image.Resampling.BILINEAR
    return np.asarray(Image.fromarray(rgb).resize((shape[1], shape[0]), method))


# --------------------------------------------------------------------------------- the legend


def _with_legend(image: U8, title: str, entries: list[tuple[str, tuple[int, int, int, int]]]) -> U8:
    """``image`` above a white legend: the title, then a colour swatch and the name of each class."""
    from PIL import Image, ImageDraw

    h, w = image.shape[:2]
    font = _font(max(12, min(28, max(h, w) // 64)))
    line = int(font.size * 1.5)
    pad = line // 2
    widths = [font.getbbox(title)[2]] + [line + font.getbbox(name)[2] for name, _ in entries]
    legend_w = max(widths) + 2 * pad
    canvas = Image.new("RGB", (max(w, legend_w), h + line * (1 + len(entries)) + 2 * pad), (_WHITE,) * 3)
    canvas.paste(Image.fromarray(image), (0, 0))
    draw = ImageDraw.Draw(canvas)
    draw.text((pad, h + pad), title, fill=_INK, font=font)
    for i, (name, (r, g, b, _)) in enumerate(entries):
        top = h + pad + line * (i + 1)
        swatch = font.size
        draw.rectangle([pad, top + (line - swatch) // 2, pad + swatch, top + (line + swatch) // 2],
                       fill=(r, g, b), outline=_INK)
        draw.text((pad + line, top), name, fill=_INK, font=font)
    return np.asarray(canvas)


def _font(size: int) -> Any:
    """Pillow's built-in font at ``size`` px (its bitmap font where Pillow has no FreeType)."""
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except (ImportError, OSError):  # pragma: no cover - Pillow built without FreeType
        return ImageFont.load_default()


def _check_args(out: Path, size: int, alpha: float, overwrite: bool) -> None:
    if out.suffix.lower() != ".png":
        raise ConfigError(f"{out} does not end in .png; expected a PNG file name: pass -o NAME.png")
    if not 16 <= size <= MAX_SIZE:
        raise ConfigError(f"--size is {size}; expected 16 to {MAX_SIZE} px (the thumbnail's longer side)")
    if not 0 <= alpha <= 1:
        raise ConfigError(f"--alpha is {alpha}; expected an opacity from 0 to 1")
    if out.exists() and not overwrite:
        raise OutputExistsError(f"{out} exists; pass --overwrite to replace it")
    if not out.parent.is_dir():
        raise ConfigError(f"{out.parent} does not exist; expected an existing directory for -o: create it first")


def _save_png(image: U8, out: Path) -> None:
    """Write atomically: a half-written preview never replaces a good one."""
    from PIL import Image

    tmp = out.with_name(f".{out.name}.tmp")
    try:
        Image.fromarray(image).save(tmp, format="PNG")
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
