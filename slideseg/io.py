"""Open whole-slide images and read regions of them lazily.

One :class:`Slide` is one resolution level of one image series, read through a Zarr array:
tifffile's Zarr store for (OME-)TIFF, the array itself for (OME-)Zarr. A region read decodes only
the tiles it touches and comes back as ``(y, x, c)``, whatever the axis order on disk.

>>> with open_slide("slide.ome.tif") as slide:  # doctest: +SKIP
...     rgb = slide.read(0, 512, 1024, 1536)   # (512, 512, 3)
"""

from __future__ import annotations

import inspect
import math
import os
import threading
import xml.etree.ElementTree as ET
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
import zarr

from slideseg.errors import ConfigError, SlideReadError

__all__ = ["LevelInfo", "Slide", "SlideHandle", "open_slide", "resolution_to_mpp", "unit_to_um"]

TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
CHANNEL_AXES = "CSI"
"""tifffile axis letters read as the channel axis: channel, sample (RGB), image sequence."""

# Length units of OME-XML and OME-NGFF, in micrometres.
_UM_PER_UNIT = {
    "µm": 1.0, "μm": 1.0, "um": 1.0, "micron": 1.0, "micrometer": 1.0,
    "nm": 1e-3, "nanometer": 1e-3,
    "mm": 1e3, "millimeter": 1e3,
    "cm": 1e4, "centimeter": 1e4,
    "m": 1e6, "meter": 1e6,
}  # fmt: skip
# TIFF ResolutionUnit -> micrometres per unit (4 and 5 are tifffile's non-standard mm and µm).
_UM_PER_RESUNIT = {2: 25400.0, 3: 1e4, 4: 1e3, 5: 1.0}
# What a decoder or a truncated file raises from inside a region read.
_DECODE_ERRORS = (OSError, ValueError, RuntimeError, KeyError, EOFError)


@dataclass(frozen=True)
class LevelInfo:
    """One resolution level of a slide."""

    shape: tuple[int, int]
    """(H, W) of this level in pixels."""
    downsample: float
    """Level-0 width / this level's width (1.0 for level 0)."""
    tile: tuple[int, int] | None
    """Storage tile or chunk (H, W), if known; read in multiples of it."""


@dataclass(frozen=True)
class SlideHandle:
    """What a worker needs to reopen a slide: small and picklable, unlike the open file."""

    path: str
    level: int = 0
    series: int = 0

    def open(self) -> Slide:
        """Open the slide this handle names (see :func:`open_slide`)."""
        return open_slide(self.path, level=self.level, series=self.series)


@dataclass(frozen=True)
class _AxisMap:
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

    def selection(self, y0: int, y1: int, x0: int, x1: int) -> tuple[slice | int, ...]:
        """Index of region ``[y0:y1, x0:x1]`` (all channels) in the stored array."""
        sel: list[slice | int] = [0] * self.ndim  # size-1 axes are indexed away
        sel[self.y], sel[self.x] = slice(y0, y1), slice(x0, x1)
        if self.c is not None:
            sel[self.c] = slice(None)
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


def parse_axes(axes: str, shape: Sequence[int], path: str | os.PathLike[str]) -> _AxisMap:
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
    return _AxisMap(ndim=len(axes), y=axes.index("Y"), x=axes.index("X"), c=c)


def unit_to_um(value: float, unit: str | None) -> float | None:
    """A length in an OME unit as micrometres, or None if the unit is unknown or the value bad.

    >>> unit_to_um(250.0, "nm")
    0.25
    >>> unit_to_um(0.5, None) is None
    True
    """
    factor = _UM_PER_UNIT.get(unit or "")
    if factor is None or not math.isfinite(value) or value <= 0:
        return None
    return value * factor


def resolution_to_mpp(resolution: float, unit: int) -> float | None:
    """Micrometres per pixel from TIFF XResolution (pixels per unit) and ResolutionUnit.

    Resolution 1 and unit NONE (1) are what writers store when they know nothing: None.

    >>> resolution_to_mpp(40000.0, 3)  # pixels per centimetre
    0.25
    >>> resolution_to_mpp(72.0, 1) is None
    True
    """
    per_unit = _UM_PER_RESUNIT.get(int(unit))
    if per_unit is None or not math.isfinite(resolution) or resolution <= 0 or resolution == 1:
        return None
    return per_unit / resolution


class Slide:
    """One resolution level of one image series, read region by region.

    Use as a context manager or call :meth:`close`. Reads may run in many threads at once.
    Pickling a slide pickles its :class:`SlideHandle`; the copy reopens the file.
    """

    path: Path
    format: str
    level: int
    series: int
    shape: tuple[int, int, int]
    dtype: np.dtype[Any]
    mpp: float | None
    levels: tuple[LevelInfo, ...]
    compression: str | None

    def __init__(
        self, path: Path, format: str, level: int, series: int, array: zarr.Array[Any],
        axes: _AxisMap, levels: tuple[LevelInfo, ...], mpp: float | None,
        compression: str | None, closers: Sequence[Callable[[], None]] = (),
    ) -> None:  # fmt: skip
        self.path, self.format, self.level, self.series = path, format, level, series
        self._array, self._axes, self._closers = array, axes, list(closers)
        self.shape = (*axes.yx(array.shape), axes.channels(array.shape))
        self.dtype = np.dtype(array.dtype)
        self.levels, self.mpp, self.compression = levels, mpp, compression
        self._closed = False
        self._lock = threading.Lock()

    @property
    def handle(self) -> SlideHandle:
        """A picklable handle that reopens this slide (same path, level and series)."""
        return SlideHandle(str(self.path), self.level, self.series)

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """Read region ``[y0:y1, x0:x1]`` of this level as a ``(y1 - y0, x1 - x0, C)`` array.

        Only the tiles that the region touches are decoded.

        Raises
        ------
        ConfigError
            The region is not inside the level.
        SlideReadError
            The slide is closed, or a tile of the region is corrupt or missing.
        """
        h, w, _ = self.shape
        if not (0 <= y0 <= y1 <= h and 0 <= x0 <= x1 <= w):
            raise ConfigError(
                f"region y {y0}:{y1}, x {x0}:{x1} is not inside {self.path.name} level "
                f"{self.level} ({h} x {w} px); expected 0 <= y0 <= y1 <= {h} and "
                f"0 <= x0 <= x1 <= {w}: clip the region to the slide"
            )
        if self._closed:
            raise SlideReadError(f"{self.path} is closed; expected an open slide: reopen it with open_slide()")
        try:
            region = np.asarray(self._array[self._axes.selection(y0, y1, x0, x1)])
        except _DECODE_ERRORS as e:
            raise SlideReadError(
                f"could not read region y {y0}:{y1}, x {x0}:{x1} of {self.path} level "
                f"{self.level} ({type(e).__name__}: {e}); the file is probably truncated or "
                f"corrupt: copy or export it again"
            ) from e
        return self._axes.to_yxc(region)

    def describe(self) -> dict[str, Any]:
        """JSON-able summary for ``slideseg info``: format, levels, pixel size, tiles, dtype."""
        here = self.levels[self.level].downsample
        levels = [
            {"level": i, "shape": list(info.shape), "downsample": info.downsample,
             "tile": None if info.tile is None else list(info.tile),
             "mpp": None if self.mpp is None else self.mpp * info.downsample / here}
            for i, info in enumerate(self.levels)
        ]  # fmt: skip
        return {
            "path": str(self.path), "format": self.format, "series": self.series,
            "level": self.level, "shape": list(self.shape), "channels": self.shape[2],
            "dtype": str(self.dtype), "mpp": self.mpp, "tile": levels[self.level]["tile"],
            "compression": self.compression, "levels": levels,
        }  # fmt: skip

    def close(self) -> None:
        """Close the file; later reads raise :class:`SlideReadError`. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            for close in reversed(self._closers):
                close()

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __reduce__(self) -> tuple[Any, ...]:
        return (open_slide, (str(self.path), self.level, self.series))

    def __repr__(self) -> str:
        h, w, c = self.shape
        return f"<Slide {self.path.name} {self.format} level {self.level}: {h}x{w}x{c} {self.dtype}>"


def open_slide(path: str | os.PathLike[str], level: int = 0, series: int = 0) -> Slide:
    """Open one level of one series of a TIFF, OME-TIFF, Zarr or OME-Zarr slide.

    Parameters
    ----------
    path
        A TIFF file (recognised by its content, whatever its name) or a Zarr directory.
    level
        Resolution level: 0 is full resolution.
    series
        Image series in the file (TIFF), or image in a bioformats2raw Zarr.

    Raises
    ------
    SlideReadError
        Missing file, not an image, corrupt file, or level or series out of range.
    """
    p = Path(path)
    if not p.exists():
        raise SlideReadError(
            f"{p} does not exist; expected a TIFF or OME-TIFF file or a Zarr directory: check the path"
        )
    if p.is_dir():
        return _open_zarr(p, level, series)
    with p.open("rb") as f:
        magic = f.read(4)
    if magic not in TIFF_MAGIC:
        raise SlideReadError(
            f"{p} is not an image: expected a TIFF file (starting with II* or MM*) or a Zarr "
            f"directory, found {magic!r} at the start: check the path or convert the slide to "
            f"OME-TIFF"
        )
    return _open_tiff(p, level, series)


# --- TIFF -----------------------------------------------------------------------------------


def _open_tiff(path: Path, level: int, series: int) -> Slide:
    try:
        tif = tifffile.TiffFile(path)
    except (tifffile.TiffFileError, OSError, ValueError, EOFError) as e:
        raise SlideReadError(
            f"{path} is a corrupt or truncated TIFF ({type(e).__name__}: {e}); expected a "
            f"complete TIFF file: copy or export it again"
        ) from e
    try:
        return _tiff_slide(tif, path, level, series)
    except BaseException:
        tif.close()
        raise


def _tiff_slide(tif: tifffile.TiffFile, path: Path, level: int, series: int) -> Slide:
    try:
        all_series = list(tif.series)
    except (tifffile.TiffFileError, OSError, ValueError, EOFError) as e:
        raise SlideReadError(
            f"{path} has a corrupt TIFF structure ({type(e).__name__}: {e}); expected a "
            f"readable TIFF: copy or export it again"
        ) from e
    found = [f"{s.axes} {'x'.join(map(str, s.shape))}" for s in all_series]
    _check_index("series", series, found, path)
    s = all_series[series]
    levels = list(s.levels)
    sizes = [parse_axes(lv.axes, lv.shape, path).yx(lv.shape) for lv in levels]
    infos = level_infos(sizes, [_tiff_tile(lv.keyframe) for lv in levels])
    _check_index("level", level, [_yx_text(info.shape) for info in infos], path)
    array, close_store = _tiff_level_zarr(tif, path, series, level)
    # the store's array is squeezed like the series; fall back to unsqueezed axes if not
    axes = next((a for a in (levels[level].axes, levels[level].get_axes(False)) if len(a) == array.ndim), "")
    mpp0 = _tiff_mpp(tif, series)
    compression = tifffile.COMPRESSION(s.keyframe.compression)
    return Slide(
        path, "ome-tiff" if tif.is_ome else "tiff", level, series, array,
        parse_axes(axes, array.shape, path), infos,
        None if mpp0 is None else mpp0 * infos[level].downsample,
        None if compression == tifffile.COMPRESSION.NONE else compression.name.lower(),
        closers=[tif.close, close_store],
    )  # fmt: skip


@cache
def _tifffile_has_return_as() -> bool:
    """tifffile >= 2026.5 takes ``imread(..., return_as='zarr')`` and deprecates ``aszarr``."""
    return "return_as" in inspect.signature(tifffile.imread).parameters


def _tiff_level_zarr(
    tif: tifffile.TiffFile, path: Path, series: int, level: int
) -> tuple[zarr.Array[Any], Callable[[], None]]:
    """One level of a series as a lazily decoded Zarr array, and the function that closes it.

    Uses ``return_as='zarr'`` where tifffile has it (its own file handle), else the older
    ``series.aszarr(level=...)`` (sharing ``tif``), so neither raises a DeprecationWarning.
    """
    store: Any
    if _tifffile_has_return_as():
        store = tifffile.imread(path, series=series, level=level, return_as="zarr")
    else:
        store = tif.series[series].aszarr(level=level)
    node = store if isinstance(store, zarr.Array | zarr.Group) else zarr.open(store, mode="r")
    if isinstance(node, zarr.Group):  # a multiscales store: take the level's array
        arrays = dict(node.arrays())
        node = arrays[str(level)] if len(arrays) > 1 else next(iter(arrays.values()))
    return node, getattr(store, "close", lambda: None)


def _tiff_tile(page: Any) -> tuple[int, int] | None:
    if page.is_tiled:
        return int(page.tilelength), int(page.tilewidth)
    rows = int(page.rowsperstrip or 0)
    return (min(rows, int(page.imagelength)), int(page.imagewidth)) if rows > 0 else None


def _tiff_mpp(tif: tifffile.TiffFile, series: int) -> float | None:
    """Level-0 pixel size: OME-XML, else TIFF resolution tags (room for SVS/NDPI between)."""
    mpp = _ome_mpp(tif.ome_metadata, series) if tif.is_ome and tif.ome_metadata else None
    if mpp is None:
        page = tif.series[series].keyframe
        mpp = resolution_to_mpp(float(page.resolution[0]), int(page.resolutionunit))
    return mpp


def _ome_mpp(omexml: str, image: int) -> float | None:
    """PhysicalSizeX (in µm) of the ``image``-th OME Image, or None if absent or malformed."""
    try:
        images = [e for e in ET.fromstring(omexml) if e.tag.rsplit("}", 1)[-1] == "Image"]
        px = next(e for e in images[image] if e.tag.rsplit("}", 1)[-1] == "Pixels")
        return unit_to_um(float(px.attrib["PhysicalSizeX"]), px.get("PhysicalSizeXUnit", "µm"))
    except (ET.ParseError, IndexError, StopIteration, KeyError, ValueError):
        return None


# --- Zarr and OME-Zarr ----------------------------------------------------------------------


def _open_zarr(path: Path, level: int, series: int) -> Slide:
    try:
        node = zarr.open(path, mode="r")
    except (OSError, ValueError, KeyError) as e:
        raise SlideReadError(
            f"{path} is a directory but not a readable Zarr ({type(e).__name__}: {e}); "
            f"expected a Zarr array or an OME-Zarr image: check the path"
        ) from e
    if isinstance(node, zarr.Group) and "bioformats2raw.layout" in node.attrs:
        images = sorted((k for k, _ in node.groups() if k.isdigit()), key=int)
        _check_index("series", series, images, path)
        node, series_in_node = node[str(series)], 0
    else:
        series_in_node = series
    if isinstance(node, zarr.Array):
        _check_index("series", series_in_node, ["array"], path)
        return _zarr_array_slide(path, node, level, series)
    _check_index("series", series_in_node, ["multiscale image"], path)
    return _ome_zarr_slide(path, node, level, series)


def _zarr_array_slide(path: Path, array: zarr.Array[Any], level: int, series: int) -> Slide:
    """A plain 2-D (YX) or 3-D (YXC if the last axis is <= 4 long, else CYX) Zarr array."""
    shape = array.shape
    if len(shape) == 2:
        axes = "YX"
    elif len(shape) == 3 and shape[2] <= 4:
        axes = "YXC"
    elif len(shape) == 3 and shape[0] <= 4:
        axes = "CYX"
    else:
        raise SlideReadError(
            f"{path}: expected a 2-D (Y, X) or 3-D (Y, X, C or C, Y, X with C <= 4) Zarr array, "
            f"found shape {shape}: write it as an OME-Zarr image with named axes"
        )
    m = parse_axes(axes, shape, path)
    infos = level_infos([m.yx(shape)], [m.yx(array.chunks)])
    _check_index("level", level, [_yx_text(infos[0].shape)], path)
    return Slide(path, "zarr", level, series, array, m, infos, None, _codec_name(array))


def _ome_zarr_slide(path: Path, group: zarr.Group, level: int, series: int) -> Slide:
    """An OME-NGFF 0.4 (attributes at top level) or 0.5 (under ``ome``) multiscale image."""
    attrs: dict[str, Any] = dict(group.attrs)
    multiscales = attrs.get("multiscales") or dict(attrs.get("ome") or {}).get("multiscales")
    if not multiscales:
        raise SlideReadError(
            f"{path} is a Zarr group without OME-NGFF 'multiscales' metadata; expected a Zarr "
            f"array or an OME-Zarr image: pass the path of the image array or group"
        )
    ms = multiscales[0]
    axes_meta = [a if isinstance(a, Mapping) else {"name": a} for a in ms["axes"]]
    axes = "".join("C" if a.get("type") == "channel" else str(a["name"]).upper() for a in axes_meta)
    datasets = ms["datasets"]
    arrays = [_ngff_level(group, d["path"], path) for d in datasets]
    maps = [parse_axes(axes, a.shape, path) for a in arrays]
    infos = level_infos(
        [m.yx(a.shape) for a, m in zip(arrays, maps, strict=True)],
        [m.yx(a.chunks) for a, m in zip(arrays, maps, strict=True)],
    )
    _check_index("level", level, [_yx_text(info.shape) for info in infos], path)
    x_unit = axes_meta[maps[level].x].get("unit")
    x_scale = _ngff_scale(datasets[level], maps[level].x) * _ngff_scale(ms, maps[level].x)
    return Slide(
        path, "ome-zarr", level, series, arrays[level], maps[level], infos,
        unit_to_um(x_scale, x_unit), _codec_name(arrays[level]),
    )  # fmt: skip


def _ngff_level(group: zarr.Group, key: str, path: Path) -> zarr.Array[Any]:
    node = group.get(key)
    if not isinstance(node, zarr.Array):
        raise SlideReadError(
            f"{path}: OME-Zarr multiscales lists dataset {key!r}, which is not an array in the "
            f"group; expected every listed level to exist: export the OME-Zarr again"
        )
    return node


def _ngff_scale(meta: Mapping[str, Any], axis: int) -> float:
    """The ``scale`` of one axis in an NGFF ``coordinateTransformations`` list (1.0 if none)."""
    for t in meta.get("coordinateTransformations") or ():
        if t.get("type") == "scale" and "scale" in t:
            return float(t["scale"][axis])
    return 1.0


def _codec_name(array: zarr.Array[Any]) -> str | None:
    codecs = array.compressors
    if not codecs:
        return None
    codec = codecs[0]
    name = getattr(codec, "codec_id", None) or type(codec).__name__.removesuffix("Codec").lower()
    cname = getattr(codec, "cname", None)
    return f"{name}/{getattr(cname, 'value', cname)}" if cname else str(name)


# --- small helpers --------------------------------------------------------------------------


def _check_index(what: str, index: int, found: Sequence[str], path: Path) -> None:
    """Raise SlideReadError if ``index`` does not pick one of ``found`` (descriptions)."""
    if not 0 <= index < len(found):
        listed = "; ".join(f"{i}: {text}" for i, text in enumerate(found))
        plural = "levels" if what == "level" else what
        raise SlideReadError(
            f"{what} {index} is out of range: {path.name} has {len(found)} {plural} "
            f"({listed}); pass --{what} between 0 and {len(found) - 1}"
        )


def level_infos(sizes: Sequence[tuple[int, int]], tiles: Sequence[tuple[int, int] | None]) -> tuple[LevelInfo, ...]:
    """Level records from (H, W) per level, level 0 first; downsample is by width.

    >>> [i.downsample for i in level_infos([(100, 200), (50, 100)], [None, None])]
    [1.0, 2.0]
    """
    return tuple(LevelInfo(yx, sizes[0][1] / yx[1], tile) for yx, tile in zip(sizes, tiles, strict=True))


def _yx_text(yx: tuple[int, int]) -> str:
    return f"{yx[0]}x{yx[1]}"
