"""Open whole-slide images and read regions of them lazily.

One :class:`Slide` is one resolution level of one image series, read through a Zarr array:
tifffile's Zarr store for TIFF-based formats (OME-TIFF, SVS, NDPI, tiled TIFF), the array itself
for (OME-)Zarr, and an in-memory array for small PNG/JPEG images. A region read decodes only the
tiles it touches and comes back as ``(y, x, c)``, whatever the axis order on disk; alpha is
dropped and ``channels=`` picks and orders the channels. What the metadata says (format, pixel
size, objective, series) is parsed by :mod:`slideseg.io.formats`.

>>> with open_slide("slide.svs", channels=(0, 2)) as slide:  # doctest: +SKIP
...     region = slide.read(0, 512, 1024, 1536)   # (512, 512, 2)
"""

from __future__ import annotations

import inspect
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
import zarr

from slideseg.errors import ConfigError, SlideReadError
from slideseg.io import checks, formats, ngff
from slideseg.io.axes import AxisMap, parse_axes, parse_channels
from slideseg.io.formats import SeriesInfo, SourceInfo, resolution_to_mpp, unit_to_um
from slideseg.io.guard import one_line, reading
from slideseg.plan.tiles import Box, MirrorMode, mirror_index

__all__ = [
    "LevelInfo", "Slide", "SlideHandle", "SourceInfo", "open_slide", "parse_channels", "resolution_to_mpp",
    "unit_to_um",
]  # fmt: skip

@dataclass(frozen=True)
class LevelInfo:
    """One resolution level of a slide."""

    shape: tuple[int, int]
    """(H, W) of this level in pixels."""
    downsample: float
    """Level-0 width / this level's width (1.0 for level 0)."""
    tile: tuple[int, int] | None
    """Storage tile or chunk (H, W), if known; read in multiples of it."""
    mpp: float | None = None
    """Micrometres per pixel of this level (an OME-Zarr dataset's own scale), None if unknown."""


@dataclass(frozen=True)
class SlideHandle:
    """What a worker needs to reopen a slide: small and picklable, unlike the open file."""

    path: str
    level: int = 0
    series: int = 0
    channels: tuple[int, ...] | None = None
    """Channel selection (after alpha is dropped), as given to :func:`open_slide`."""

    def open(self) -> Slide:
        """Open the slide this handle names (see :func:`open_slide`)."""
        return open_slide(self.path, level=self.level, series=self.series, channels=self.channels)


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
    """(H, W, C) of what :meth:`read` returns: alpha dropped, selected channels only."""
    dtype: np.dtype[Any]
    mpp: float | None
    """Micrometres per pixel at this level; None if the file does not say."""
    levels: tuple[LevelInfo, ...]
    compression: str | None
    channels: tuple[int, ...] | None
    """The channel selection given to :func:`open_slide` (None: all channels)."""
    channel_names: tuple[str | None, ...]
    """Name of each returned channel, None where the file gives none."""
    objective_power: float | None
    source: SourceInfo

    def __init__(
        self, path: Path, level: int, series: int, array: zarr.Array[Any] | np.ndarray,
        axes: AxisMap, levels: tuple[LevelInfo, ...], source: SourceInfo,
        channels: tuple[int, ...] | None = None, closers: Sequence[Callable[[], None]] = (),
    ) -> None:  # fmt: skip
        self._closers = list(closers)
        self._closed = False
        self._lock = threading.Lock()
        try:
            stored = axes.channels(array.shape)
            keep = _keep_channels(stored, source, channels, path)
        except BaseException:
            self.close()
            raise
        self.path, self.format, self.level, self.series = path, source.format, level, series
        self._array, self._axes = array, axes
        self._keep = None if keep == tuple(range(stored)) else keep
        self.shape = (*axes.yx(array.shape), len(keep))
        self.dtype = np.dtype(array.dtype)
        self.levels, self.source, self.channels = levels, source, channels
        self.mpp, self.compression = levels[level].mpp, source.compression
        self.objective_power = source.objective_power
        names = source.channel_names if len(source.channel_names) == stored else (None,) * stored
        self.channel_names = tuple(names[k] for k in keep)

    @property
    def handle(self) -> SlideHandle:
        """A picklable handle that reopens this slide (same path, level, series and channels)."""
        return SlideHandle(str(self.path), self.level, self.series, self.channels)

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
        keep = self._keep
        lo, hi = (0, self.shape[2]) if keep is None else (min(keep), max(keep) + 1)
        with reading(self.path, f"read region y {y0}:{y1}, x {x0}:{x1} of {{path}} level {self.level}"):
            region = np.asarray(self._array[self._axes.selection(y0, y1, x0, x1, slice(lo, hi))])
        if isinstance(self._array, np.ndarray):  # an in-memory image: never hand out a view of it
            region = region.copy()
        yxc = self._axes.to_yxc(region)  # (y, x, channels lo..hi-1)
        if keep is None or keep == tuple(range(lo, hi)):
            return yxc
        return np.ascontiguousarray(yxc[:, :, [k - lo for k in keep]])

    def describe(self) -> dict[str, Any]:
        """JSON-able summary for ``slideseg info``: format, levels with shapes and mpp, tiles,
        compression, channels, dtype, objective power and the file's image series."""
        levels = [
            {"level": i, "shape": list(info.shape), "downsample": info.downsample,
             "tile": None if info.tile is None else list(info.tile), "mpp": info.mpp}
            for i, info in enumerate(self.levels)
        ]  # fmt: skip
        return {
            "path": str(self.path), "format": self.format, "format_version": self.source.format_version,
            "series": self.series, "level": self.level, "shape": list(self.shape), "channels": self.shape[2],
            "channel_names": list(self.channel_names),
            "channel_selection": None if self.channels is None else list(self.channels),
            "alpha_dropped": bool(self.source.alpha), "dtype": str(self.dtype), "mpp": self.mpp,
            "objective_power": self.objective_power, "tile": levels[self.level]["tile"],
            "compression": self.compression, "levels": levels,
            "all_series": [s.to_dict() for s in self.source.series],
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
        return (SlideHandle.open, (self.handle,))

    def __repr__(self) -> str:
        h, w, c = self.shape
        return f"<Slide {self.path.name} {self.format} level {self.level}: {h}x{w}x{c} {self.dtype}>"


def _keep_channels(stored: int, source: SourceInfo, channels: tuple[int, ...] | None, path: Path) -> tuple[int, ...]:
    """Stored channel indices to return, in order: alpha dropped, then ``channels`` picked."""
    visible = [i for i in range(stored) if i not in source.alpha]
    if channels is None:
        return tuple(visible)
    bad = [c for c in channels if c >= len(visible)]
    if bad:
        names = source.channel_names if len(source.channel_names) == stored else (None,) * stored
        listed = ", ".join(f"{i}" + (f" ({names[k]})" if names[k] else "") for i, k in enumerate(visible))
        alpha = ", alpha dropped" if source.alpha else ""
        raise ConfigError(
            f"channel {bad[0]} is out of range: {path.name} has {len(visible)} channel(s){alpha}: {listed}; "
            f"pass --channels with numbers between 0 and {len(visible) - 1}"
        )
    return tuple(visible[c] for c in channels)


def open_slide(
    path: str | os.PathLike[str], level: int = 0, series: int | None = None, *,
    channels: str | Sequence[int] | None = None,
) -> Slide:  # fmt: skip
    """Open one level of one series of a slide or image, optionally picking channels.

    Reads OME-TIFF, SVS, NDPI, tiled or plain TIFF (recognised by content, whatever the name),
    OME-Zarr 0.4/0.5 images and plain Zarr arrays (directories), and PNG/JPEG (decoded whole,
    up to :data:`slideseg.io.formats.MAX_IN_MEMORY_PIXELS`).

    Parameters
    ----------
    path
        A file or a Zarr directory.
    level
        Resolution level: 0 is full resolution.
    series
        Image series in the file (TIFF), or image in a bioformats2raw Zarr. None chooses by the
        rule of :func:`slideseg.io.formats.choose_series`: never a label, macro or thumbnail; the
        only image, or else the only pyramidal one; otherwise an error listing the series.
    channels
        Channels to return, in this order, counted after alpha is dropped (``(0, 2)`` or
        ``"0,2"``); None returns all.

    Raises
    ------
    SlideReadError
        Missing file, unknown format, corrupt file, level or series out of range, or a
        multi-series file without an obvious slide and no ``series``.
    ConfigError
        A channel that the slide does not have.
    """
    picked = parse_channels(channels)
    p = Path(path)
    if not p.exists():
        raise SlideReadError(f"{p} does not exist; expected a slide ({formats.SUPPORTED_FORMATS}): check the path")
    with reading(p, "open {path}"):
        if p.is_dir():
            return _open_zarr(p, level, series, picked)
        with p.open("rb") as f:
            head = f.read(8)
        kind = formats.sniff(head)
        if kind == "tiff":
            return _open_tiff(p, level, series, picked)
        if kind in ("png", "jpeg"):
            return _open_image(p, kind, level, series, picked)
    raise SlideReadError(
        f"{p} is not an image of a supported format (found {head[:4]!r} at the start); supported: "
        f"{formats.SUPPORTED_FORMATS}: check the path or convert the slide to OME-TIFF"
    )


# --- TIFF: OME-TIFF, SVS, NDPI, generic ----------------------------------------------------


def _open_tiff(path: Path, level: int, series: int | None, channels: tuple[int, ...] | None) -> Slide:
    with path.open("rb") as f:
        checks.check_ifd_chain(f, path)
    try:
        tif = tifffile.TiffFile(path)
    except (tifffile.TiffFileError, OSError, ValueError, EOFError) as e:
        raise SlideReadError(
            f"{path} is a corrupt or truncated TIFF ({type(e).__name__}: {one_line(e)}); expected a "
            f"complete TIFF file: copy or export it again"
        ) from e
    try:
        return _tiff_slide(tif, path, level, series, channels)
    except BaseException:
        tif.close()
        raise


def _tiff_slide(
    tif: tifffile.TiffFile, path: Path, level: int, series: int | None, channels: tuple[int, ...] | None
) -> Slide:
    try:
        all_series = list(tif.series)
    except (tifffile.TiffFileError, OSError, ValueError, EOFError) as e:
        raise SlideReadError(
            f"{path} has a corrupt TIFF structure ({type(e).__name__}: {one_line(e)}); expected a "
            f"readable TIFF: copy or export it again"
        ) from e
    listing = formats.tiff_series_listing(tif, all_series)
    index = formats.choose_series(listing, path) if series is None else series
    _check_index("series", index, [s.text() for s in listing], path)
    s = all_series[index]
    levels = list(s.levels)
    maps = [parse_axes(lv.axes, lv.shape, path) for lv in levels]
    sizes = [m.yx(lv.shape) for m, lv in zip(maps, levels, strict=True)]
    file_size = path.stat().st_size
    for lv, m, yx in zip(levels, maps, sizes, strict=True):
        checks.check_image_shape(yx, m.channels(lv.shape), lv.dtype, path, f"level {_yx_text(yx)}")
        checks.check_tiff_level(lv, path, file_size)
    checks.check_level_order(sizes, path)
    source = formats.tiff_source(tif, s, index, listing)
    infos = level_infos(sizes, [formats.tiff_tile(lv.keyframe) for lv in levels], source.mpp)
    _check_index("level", level, [_yx_text(info.shape) for info in infos], path)
    _check_chunk_size(infos[level], path)
    array, close_store = _tiff_level_zarr(tif, path, index, level)
    # the store's array is squeezed like the series; fall back to unsqueezed axes if not
    axes = next((a for a in (levels[level].axes, levels[level].get_axes(False)) if len(a) == array.ndim), "")
    m = parse_axes(axes, array.shape, path)
    if m.c is None or axes[m.c] != "S":  # ExtraSamples describe samples only
        source = replace(source, alpha=())
    return Slide(path, level, index, array, m, infos, source, channels, closers=[tif.close, close_store])


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


def _check_chunk_size(info: LevelInfo, path: Path) -> None:
    """Refuse levels stored in strips so big that every region read decodes gigabytes."""
    if info.tile is not None and info.tile[0] * info.tile[1] > formats.MAX_IN_MEMORY_PIXELS:
        raise SlideReadError(
            f"{path} stores {_yx_text(info.shape)} px in strips of {_yx_text(info.tile)} px, over the "
            f"{formats.MAX_IN_MEMORY_PIXELS / 1e6:.0f} MP slideseg decodes at once; expected a tiled TIFF: convert "
            f"it, e.g. `vips tiffsave {path.name} tiled.tif --tile --pyramid --compression jpeg`"
        )


# --- PNG and JPEG ---------------------------------------------------------------------------


def _open_image(path: Path, kind: str, level: int, series: int | None, channels: tuple[int, ...] | None) -> Slide:
    """A small PNG or JPEG, decoded whole into memory (format ``image``)."""
    with path.open("rb") as f:
        size = formats.image_size(f, kind)
    if size is None:
        raise SlideReadError(f"{path} is a corrupt {kind.upper()} (no image size in its header): export it again")
    if size[0] * size[1] > formats.MAX_IN_MEMORY_PIXELS:
        raise SlideReadError(
            f"{path} is a {_yx_text(size)} px {kind.upper()} ({size[0] * size[1] / 1e6:.0f} MP), over the "
            f"{formats.MAX_IN_MEMORY_PIXELS / 1e6:.0f} MP slideseg decodes whole: convert it to a tiled TIFF, e.g. "
            f"`vips tiffsave {path.name} tiled.tif --tile --pyramid --compression jpeg`"
        )
    checks.check_image_shape(size, 1, np.dtype(np.uint8), path, kind.upper())
    checks.check_compressed_size(kind, size, path)
    import imagecodecs

    with reading(path, corrupt=kind.upper()):
        pixels = np.asarray(imagecodecs.imread(path, codec="png" if kind == "png" else "jpeg8"))
    axes = "YX" if pixels.ndim == 2 else "YXC"
    checks.check_image_shape(pixels.shape[:2], 1 if pixels.ndim == 2 else pixels.shape[2], pixels.dtype, path)
    m = parse_axes(axes, pixels.shape, path)
    n = m.channels(pixels.shape)
    alpha = (n - 1,) if kind == "png" and n in (2, 4) else ()  # grey + alpha, RGB + alpha
    names = (*formats.RGB_NAMES, "alpha")[:n] if n in (3, 4) else ()
    listing = (SeriesInfo.make(0, path.stem, pixels.shape, axes, 1),)
    _check_index("series", 0 if series is None else series, [listing[0].text()], path)
    infos = level_infos([m.yx(pixels.shape)], [None], None)
    _check_index("level", level, [_yx_text(infos[0].shape)], path)
    return Slide(path, level, 0, pixels, m, infos, SourceInfo("image", None, None, names, alpha, kind, listing),
                 channels)  # fmt: skip


# --- Zarr and OME-Zarr ----------------------------------------------------------------------


def _open_zarr(path: Path, level: int, series: int | None, channels: tuple[int, ...] | None) -> Slide:
    try:
        node = zarr.open(path, mode="r")
    except (OSError, ValueError, KeyError) as e:
        raise SlideReadError(
            f"{path} is a directory but not a readable Zarr ({type(e).__name__}: {one_line(e)}); "
            f"expected a Zarr array or an OME-Zarr image: check the path"
        ) from e
    if isinstance(node, zarr.Group) and "bioformats2raw.layout" in node.attrs:
        images = sorted(((k, g) for k, g in node.groups() if k.isdigit()), key=lambda kg: int(kg[0]))
        names = formats.bioformats2raw_names(path)
        listing = tuple(
            formats.ngff_series_info(i, g.attrs, _first_dataset_shape(g), names[i] if i < len(names) else k)
            for i, (k, g) in enumerate(images)
        )
        index = formats.choose_series(listing, path) if series is None and listing else (series or 0)
        _check_index("series", index, [s.text() for s in listing], path)
        return _ome_zarr_slide(path, images[index][1], level, index, channels, listing)
    if isinstance(node, zarr.Array):
        _check_index("series", series or 0, ["array"], path)
        return _zarr_array_slide(path, node, level, channels)
    _check_index("series", series or 0, ["multiscale image"], path)
    return _ome_zarr_slide(path, node, level, 0, channels, None)


def _zarr_array_slide(path: Path, array: zarr.Array[Any], level: int, channels: tuple[int, ...] | None) -> Slide:
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
    checks.check_zarr_level(array, m, path)
    checks.check_zarr_stored(array, path)
    infos = level_infos([m.yx(shape)], [m.yx(array.chunks)], None)
    _check_index("level", level, [_yx_text(infos[0].shape)], path)
    listing = (SeriesInfo.make(0, "", shape, axes, 1),)
    return Slide(path, level, 0, array, m, infos, SourceInfo("zarr", None, compression=formats.zarr_codec_name(array),
                                                             series=listing), channels)  # fmt: skip


def _ome_zarr_slide(
    path: Path, group: zarr.Group, level: int, series: int, channels: tuple[int, ...] | None,
    listing: tuple[SeriesInfo, ...] | None,
) -> Slide:  # fmt: skip
    """An OME-NGFF 0.4 (attributes at top level) or 0.5 (under ``ome``) multiscale image."""
    attrs: dict[str, Any] = dict(group.attrs)
    multiscales, version = ngff.ngff_multiscales(attrs)
    if not multiscales:
        raise SlideReadError(
            f"{path} is a Zarr group without OME-NGFF 'multiscales' metadata; expected a Zarr "
            f"array or an OME-Zarr image: pass the path of the image array or group"
        )
    ms = ngff.parse_multiscale(multiscales[0], str(path))
    arrays = [_ngff_level(group, key, path) for key in ms.paths]
    maps = [parse_axes(ms.axes, a.shape, path) for a in arrays]
    for a, m in zip(arrays, maps, strict=True):
        checks.check_zarr_level(a, m, path)
    sizes = [m.yx(a.shape) for a, m in zip(arrays, maps, strict=True)]
    checks.check_level_order(sizes, path)
    checks.check_ngff_scales(sizes, ms, maps[0], path)
    tiles = [m.yx(a.chunks) for a, m in zip(arrays, maps, strict=True)]
    x = maps[0].x
    mpps = [unit_to_um(scale[x], ms.units[x]) for scale in ms.scales]  # each dataset's own scale
    infos = tuple(replace(i, mpp=mpp) for i, mpp in zip(level_infos(sizes, tiles), mpps, strict=True))
    _check_index("level", level, [_yx_text(info.shape) for info in infos], path)
    checks.check_zarr_stored(arrays[level], path)
    listing = listing or (SeriesInfo.make(0, ms.name, arrays[0].shape, ms.axes, len(arrays)),)
    source = SourceInfo("ome-zarr", mpps[0], None, ngff.ngff_channel_names(attrs), (),
                        formats.zarr_codec_name(arrays[level]), listing, version)  # fmt: skip
    return Slide(path, level, series, arrays[level], maps[level], infos, source, channels)


def _first_dataset_shape(group: zarr.Group) -> tuple[int, ...]:
    """Shape of the finest level of an image of a bioformats2raw Zarr; () if it has none."""
    try:
        multiscales, _ = ngff.ngff_multiscales(dict(group.attrs))
        first = group.get(ngff.parse_multiscale(multiscales[0], "").paths[0]) if multiscales else None
    except SlideReadError:
        return ()
    return tuple(first.shape) if isinstance(first, zarr.Array) else ()


def _ngff_level(group: zarr.Group, key: str, path: Path) -> zarr.Array[Any]:
    node = group.get(key)
    if not isinstance(node, zarr.Array):
        raise SlideReadError(
            f"{path}: OME-Zarr multiscales lists dataset {key!r}, which is not an array in the "
            f"group; expected every listed level to exist: export the OME-Zarr again"
        )
    return node


# --- small helpers --------------------------------------------------------------------------


def _check_index(what: str, index: int, found: Sequence[str], path: Path) -> None:
    """Raise SlideReadError if ``index`` does not pick one of ``found`` (descriptions)."""
    if not 0 <= index < len(found):
        listed = "; ".join(text if what == "series" else f"{i}: {text}" for i, text in enumerate(found))
        plural = "levels" if what == "level" else what
        raise SlideReadError(
            f"{what} {index} is out of range: {path.name} has {len(found)} {plural} "
            f"({listed}); pass --{what} between 0 and {len(found) - 1}"
        )


def level_infos(
    sizes: Sequence[tuple[int, int]], tiles: Sequence[tuple[int, int] | None], mpp0: float | None = None
) -> tuple[LevelInfo, ...]:
    """Level records from (H, W) per level, level 0 first; downsample is by width, mpp scales with it.

    >>> [(i.downsample, i.mpp) for i in level_infos([(100, 200), (50, 100)], [None, None], 0.25)]
    [(1.0, 0.25), (2.0, 0.5)]
    """
    downsamples = [sizes[0][1] / yx[1] for yx in sizes]
    return tuple(
        LevelInfo(yx, d, tile, None if mpp0 is None else mpp0 * d)
        for yx, d, tile in zip(sizes, downsamples, tiles, strict=True)
    )


def _yx_text(yx: tuple[int, int]) -> str:
    return f"{yx[0]}x{yx[1]}"



def read_window(slide: Any, window: Box, mode: MirrorMode) -> np.ndarray:
    """The pixels of ``window`` (Y, X, C), mirrored where it leaves the slide; one slide read."""
    h, w = slide.shape[:2]
    iy = mirror_index(np.arange(window.y0, window.y1), h, mode)
    ix = mirror_index(np.arange(window.x0, window.x1), w, mode)
    y0, y1, x0, x1 = int(iy.min()), int(iy.max()) + 1, int(ix.min()), int(ix.max()) + 1
    region = slide.read(y0, y1, x0, x1)
    if window == Box(y0, y1, x0, x1):  # entirely inside the slide: no mirroring needed
        return region
    return region[np.ix_(iy - y0, ix - x0)]

