"""Axes and channels: which stored axis is Y, X and the channel axis, and which channels to keep.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from slideseg.errors import ConfigError, SlideReadError

CHANNEL_AXES = "CSI"
"""tifffile axis letters read as the channel axis: channel, sample (RGB), image sequence."""


@dataclass(frozen=True)
class AxisMap:
    """Where Y, X and the channel axis sit in a stored array; every other axis has size 1.

    >>> m = parse_axes("CYX", (3, 10, 20), "a.tif")
    >>> m.selection(0, 2, 5, 9)
    (slice(None, None, None), slice(0, 2, None), slice(5, 9, None))
    >>> m.to_yxc(np.zeros((3, 2, 4))).shape
    (2, 4, 3)
    """

    ndim: int
    y: int
    x: int
    c: int | None

    def selection(self, y0: int, y1: int, x0: int, x1: int, c: slice = slice(None)) -> tuple[slice | int, ...]:
        """Index of region ``[y0:y1, x0:x1]`` (channels ``c``) in the stored array."""
        sel: list[slice | int] = [0] * self.ndim  # size-1 axes are indexed away
        sel[self.y], sel[self.x] = slice(y0, y1), slice(x0, x1)
        if self.c is not None:
            sel[self.c] = c
        return tuple(sel)

    def to_yxc(self, region: np.ndarray) -> np.ndarray:
        """Transpose a region read with :meth:`selection` to (y, x, c)."""
        kept = sorted(i for i in (self.y, self.x, self.c) if i is not None)
        order = [kept.index(self.y), kept.index(self.x)]
        if self.c is None:
            return np.ascontiguousarray(region.transpose(order)[:, :, None])
        return np.ascontiguousarray(region.transpose([*order, kept.index(self.c)]))

    def yx(self, shape: Sequence[int]) -> tuple[int, int]:
        """(H, W) of a stored shape."""
        return int(shape[self.y]), int(shape[self.x])

    def channels(self, shape: Sequence[int]) -> int:
        """Number of channels of a stored shape (1 without a channel axis)."""
        return 1 if self.c is None else int(shape[self.c])


def parse_axes(axes: str, shape: Sequence[int], path: str | os.PathLike[str]) -> AxisMap:
    """Locate Y, X and the channel axis in tifffile-style axis letters.

    Axes other than Y and X must have size 1, except one channel axis (``C``, ``S`` or ``I``).
    """
    if len(axes) != len(shape) or axes.count("Y") != 1 or axes.count("X") != 1:
        raise SlideReadError(
            f"{path}: expected axes with one Y and one X, one letter per dimension, "
            f"found axes {axes!r} for shape {tuple(shape)}: convert the image to OME-TIFF"
        )
    c: int | None = None
    for i, (a, n) in enumerate(zip(axes, shape, strict=True)):
        if a in "YX" or n == 1:
            continue
        if a not in CHANNEL_AXES or c is not None:
            raise SlideReadError(
                f"{path}: expected a 2-D image (axes Y, X and at most one channel axis), found "
                f"axes {axes!r} with shape {tuple(shape)} ({a} has size {n}): export one Z plane "
                f"or time point, with channels on one axis, as OME-TIFF first"
            )
        c = i
    if c is None:  # a size-1 channel axis still counts as the channel axis
        c = next((i for i, a in enumerate(axes) if a in CHANNEL_AXES), None)
    return AxisMap(ndim=len(axes), y=axes.index("Y"), x=axes.index("X"), c=c)


def parse_channels(channels: str | Sequence[int] | None) -> tuple[int, ...] | None:
    """A channel selection as a tuple: ``"0,2"`` or ``[0, 2]`` -> ``(0, 2)``; None keeps all.

    Whether the channels exist is checked when the slide is opened.

    >>> parse_channels("2, 0"), parse_channels([1]), parse_channels(None)
    ((2, 0), (1,), None)
    """
    if channels is None:
        return None
    try:
        parts = channels.split(",") if isinstance(channels, str) else list(channels)
        picked = tuple(int(str(c).strip()) for c in parts)
    except (TypeError, ValueError):
        picked = ()
    if not picked or min(picked) < 0:
        raise ConfigError(
            f"channels {channels!r} is not a channel selection; expected channel numbers >= 0 "
            f"such as '0,2' (first and third channel, in that order)"
        )
    return picked
