"""Images and label masks read region by region, through :func:`slideseg.io.slide.open_slide`
(PNG/JPEG decoded into memory, TIFF and Zarr lazily) or as Zarr arrays. Training reads its pairs
and ``evaluate`` its masks with these; ``predict`` reads the same images with the same rules.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np

from slideseg.errors import TrainingDataError
from slideseg.io.guard import reading
from slideseg.io.slide import open_slide

MaskKind = Literal["instances", "classes"]
"""What a mask holds: object instances (0 = background) or class ids."""


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
        with reading(self.name, f"read region y {y0}:{y1}, x {x0}:{x1} of mask {{path}}"):
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
    """A training image, opened exactly as ``predict`` opens a slide (:func:`open_slide`): the
    same formats, and the same alpha rule, so a model trained on an RGBA PNG takes the 3 colour
    channels that ``predict`` feeds it from the same file."""
    return open_slide(path)


def open_mask(path: Path, kind: MaskKind) -> Mask:
    """A mask: PNG, TIFF, a Zarr array, or a Zarr group with ``instances``/``classes``/``0``.

    A mask must have one channel once alpha is dropped; a PNG or JPEG whose channels are all
    equal (a greyscale mask saved as RGB) counts as one channel.
    """
    if path.is_dir():
        return Mask(_mask_array(path, kind), path.name)
    slide = open_slide(path)
    if slide.shape[2] == 1:
        return Mask(slide, path.name)
    h, w, c = slide.shape
    pixels = slide.read(0, h, 0, w) if slide.format == "image" else None  # small: decoded whole anyway
    slide.close()
    if pixels is None or not all((pixels[..., k] == pixels[..., 0]).all() for k in range(1, c)):
        raise TrainingDataError(f"mask {path} has {c} different channels; expected a single-channel label "
                                "image: save the mask as greyscale.")
    return Mask(pixels[..., 0], path.name)


def _mask_array(path: Path, kind: MaskKind) -> Any:
    """The 2-D label array of a Zarr mask: the array itself, or the group's ``kind`` (or ``0``) array."""
    import zarr

    with reading(path, "open the mask {path} as Zarr"):
        node = zarr.open(path, mode="r")
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
    if np.dtype(node.dtype).kind not in "biuf" or node.shape[0] < 1 or node.shape[1] < 1:
        raise TrainingDataError(f"mask {path} is a {node.shape} array of {node.dtype}; expected a non-empty 2-D "
                                "array of integer labels.")
    return node
