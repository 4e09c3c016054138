"""Images and label masks read whole or region by region: PNG into memory, TIFF and Zarr through
:func:`slideseg.io.slide.open_slide` or as Zarr arrays. Training reads its pairs and ``evaluate``
its masks with these.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from slideseg.errors import SlideReadError, TrainingDataError
from slideseg.io.slide import open_slide
from slideseg.train.loss import MaskKind


class ArrayImage:
    """An image held in memory, read like a slide: ``shape`` (H, W, C), ``read`` -> (h, w, C)."""

    def __init__(self, pixels: np.ndarray, name: str = "array") -> None:
        self.pixels = pixels if pixels.ndim == 3 else pixels[..., None]
        self.dtype = self.pixels.dtype
        self.name = name

    @property
    def shape(self) -> tuple[int, int, int]:
        h, w, c = self.pixels.shape
        return h, w, c

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        return self.pixels[y0:y1, x0:x1]


class Mask:
    """A label image read region by region as (h, w); ``shape`` is (H, W, 1) like a slide's."""

    def __init__(self, source: Any, name: str) -> None:
        self._source, self.name = source, name
        h, w = source.shape[:2]
        self._shape = (int(h), int(w), 1)

    @property
    def shape(self) -> tuple[int, int, int]:
        return self._shape

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        region = np.asarray(self._source[y0:y1, x0:x1] if not hasattr(self._source, "read")
                            else self._source.read(y0, y1, x0, x1))
        return region[..., 0] if region.ndim == 3 else region

    def close(self) -> None:
        _close(self._source)


def _close(reader: Any) -> None:
    close = getattr(reader, "close", None)
    if close is not None:
        close()


def open_image(path: Path) -> Any:
    """A training image: PNG into memory, anything else through :func:`slideseg.io.slide.open_slide`."""
    if path.suffix.lower() == ".png":
        pixels = _read_png(path)
        if pixels.ndim == 3 and pixels.shape[2] == 4 and (pixels[..., 3] == np.iinfo(pixels.dtype).max).all():
            pixels = pixels[..., :3]  # an opaque alpha channel carries nothing
        return ArrayImage(pixels, path.name)

    return open_slide(path)


def open_mask(path: Path, kind: MaskKind) -> Mask:
    """A mask: PNG, TIFF, a Zarr array, or a Zarr group with ``instances``/``classes``/``0``."""
    if path.suffix.lower() == ".png":
        pixels = _read_png(path)
        if pixels.ndim == 3:
            if not all((pixels[..., c] == pixels[..., 0]).all() for c in range(1, pixels.shape[2])):
                raise TrainingDataError(f"mask {path} has {pixels.shape[2]} different channels; expected a "
                                        "single-channel label image: save the mask as greyscale.")
            pixels = pixels[..., 0]
        return Mask(pixels, path.name)
    if path.is_dir():
        import zarr

        try:
            node = zarr.open(path, mode="r")
        except (OSError, ValueError, KeyError) as exc:
            raise TrainingDataError(f"mask {path} is not a readable Zarr ({exc}); expected a Zarr array or a "
                                    "group with 'instances' or 'classes'.") from exc
        if isinstance(node, zarr.Group):
            names = [n for n in (kind, "0") if n in node]
            if not names:
                raise TrainingDataError(f"mask group {path} has no {kind!r} array (found {sorted(node.keys())}); "
                                        f"pass --mask-kind {'classes' if kind == 'instances' else 'instances'} "
                                        "or a mask with that array.")
            node = node[names[0]]
        if not isinstance(node, zarr.Array) or node.ndim != 2:
            raise TrainingDataError(f"mask {path} has shape {getattr(node, 'shape', None)}; expected a 2-D (Y, X) "
                                    "label array.")
        return Mask(node, path.name)

    slide = open_slide(path)
    if slide.shape[2] != 1:
        raise TrainingDataError(f"mask {path} has {slide.shape[2]} channels; expected a single-channel label "
                                "image: save the mask as greyscale.")
    return Mask(slide, path.name)


def _read_png(path: Path) -> np.ndarray:
    import imagecodecs

    try:
        return np.asarray(imagecodecs.imread(path, codec="png"))
    except Exception as exc:
        raise SlideReadError(f"{path} is not a readable PNG ({exc}); check the file or convert it to TIFF.") from exc
