"""Checks of what a file declares, made before anything is allocated or decoded.

A file's metadata is a claim: a 100 x 100 px file can say it is 300,000 px wide, hold 65,535
channels, tiles of 4 G px, samples of a type nobody reads, or an IFD chain that loops. These
functions compare each claim with what slideseg can decode and with the rest of the file, and
raise :class:`~slideseg.errors.SlideReadError` saying what is wrong, so that reading never
allocates gigabytes or loops forever on a broken file.

>>> check_image_shape((100, 300_000), 3, np.dtype("uint8"), Path("a.tif"))
>>> check_image_shape((0, 300), 3, np.dtype("uint8"), Path("a.tif"))
Traceback (most recent call last):
slideseg.errors.SlideReadError: a.tif: the image declares 0 x 300 px; expected sides of 1 to 16777216 px: \
the file's size metadata is corrupt: export the image again
"""

from __future__ import annotations

import math
import os
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np
import tifffile
import zarr

from slideseg.errors import SlideReadError
from slideseg.io.axes import AxisMap
from slideseg.io.ngff import Multiscale
from slideseg.plan.tiles import MAX_SIDE

__all__ = ["MAX_CHANNELS", "MAX_DECODE_BYTES", "MAX_IFDS", "MAX_SIDE", "check_block", "check_compressed_size",
           "check_ifd_chain", "check_image_shape", "check_level_order", "check_ngff_scales", "check_tiff_level",
           "check_zarr_level", "check_zarr_stored"]

MAX_CHANNELS = 1024
"""Most channels an image may have."""
MAX_DECODE_BYTES = 2**30
"""Largest block (a tile, strip, Zarr chunk or whole PNG/JPEG) decoded at once, in bytes."""
MAX_IFDS = 2**16
"""Most IFDs (pages and SubIFDs) a TIFF may have."""
DTYPE_KINDS = "biuf"
"""numpy kinds of the pixel types slideseg reads: bool, signed and unsigned integers, floats."""


def check_image_shape(yx: Sequence[int], channels: int, dtype: Any, path: Path, what: str = "the image") -> None:
    """Refuse sizes and pixel types slideseg cannot (or should not try to) read.

    Raises
    ------
    SlideReadError
        A side that is not 1..:data:`MAX_SIDE` px, a channel count that is not
        1..:data:`MAX_CHANNELS`, or a pixel type that is not bool, integer or float.
    """
    h, w = (int(n) for n in yx)
    if not (1 <= h <= MAX_SIDE and 1 <= w <= MAX_SIDE):
        raise SlideReadError(
            f"{path}: {what} declares {h} x {w} px; expected sides of 1 to {MAX_SIDE} px: the file's size "
            f"metadata is corrupt: export the image again"
        )
    if not 1 <= channels <= MAX_CHANNELS:
        raise SlideReadError(
            f"{path}: {what} declares {channels} channels; expected 1 to {MAX_CHANNELS}: the file's metadata "
            f"is corrupt: export the image again"
        )
    kind = getattr(dtype, "kind", None)
    if kind is None or kind not in DTYPE_KINDS or dtype.itemsize > 8:
        raise SlideReadError(
            f"{path}: {what} stores pixels as {dtype}; expected bool, integer or float samples (uint8, uint16, "
            f"float32...): convert the image"
        )


def check_block(shape: Sequence[int], itemsize: int, path: Path, what: str) -> None:
    """Refuse a storage block (tile, strip, chunk) too big to decode at once."""
    n = math.prod(int(v) for v in shape)
    if n * itemsize > MAX_DECODE_BYTES or n <= 0:
        size = " x ".join(str(int(v)) for v in shape)
        raise SlideReadError(
            f"{path}: {what} of {size} ({n * itemsize / 2**30:.1f} GiB) cannot be decoded; expected blocks "
            f"of 1 B to {MAX_DECODE_BYTES / 2**30:.0f} GiB: store the image in smaller tiles or chunks"
        )


PIXELS_PER_BYTE = {"png": 8 * 1100, "jpeg": 1024}
"""Most pixels one byte of a file can hold: Deflate expands at most ~1032x and a PNG pixel takes
at least 1 bit; a Huffman-coded JPEG spends at least 1 bit on each 8 x 8 block (its DC code),
512 px per byte, and half that is allowed for the rare arithmetic-coded ones."""


def check_compressed_size(kind: str, yx: tuple[int, int], path: Path) -> None:
    """Refuse a PNG or JPEG header that declares more pixels than the file's bytes can encode
    (plus 1 Mpx of slack): the decoder would allocate them, and fill what is missing.

    >>> check_compressed_size("png", (100, 100), Path(__file__))
    """
    size = path.stat().st_size
    if yx[0] * yx[1] > PIXELS_PER_BYTE[kind] * size + 2**20:
        raise SlideReadError(
            f"{path} declares {_yx(yx)} px in a {size}-byte {kind.upper()}, more than its compressed data can "
            f"hold; the header is corrupt: export the image again"
        )


def check_tiff_level(level: Any, path: Path, file_size: int) -> None:
    """Check that the pages of one TIFF level (a tifffile ``TiffPageSeries``) can be decoded and
    that their tile (or strip) tables match what they declare: one offset and byte count per
    tile, no tile longer than the file (reading one allocates its byte count first), a
    compression and a sample format slideseg can decode, tiles small enough to decode.

    (Tiles past the end of a truncated file are found when they are read.)

    A level whose size was corrupted (say 300 px wide -> 300,000) keeps its old tile table, so the
    table no longer covers the level: tifffile would read the missing tiles as black and
    ``predict`` would run for hours on a file of a few kB.
    """
    key = level.keyframe
    pages = [p for p in level.pages if p is not None] or [key]
    code = key.compression
    if not isinstance(code, int) or code not in tifffile.TIFF.DECOMPRESSORS:
        raise SlideReadError(
            f"{path}: the image is compressed with TIFF compression {_compression_name(code)}, which slideseg "
            f"cannot decode; expected e.g. JPEG, LZW, Deflate, JPEG 2000 or none: convert the slide to OME-TIFF"
        )
    if key.dtype is None:
        raise SlideReadError(
            f"{path}: the image stores {key.bitspersample}-bit samples of format {key.sampleformat}, which "
            f"slideseg cannot read; expected 8, 16 or 32-bit integer or floating-point samples: convert the slide"
        )
    expected = math.prod(int(n) for n in key.chunked)
    check_block(key.chunks, key.dtype.itemsize, path, "a TIFF tile or strip")
    for page in pages[:MAX_CHANNELS]:
        offsets, counts = page.dataoffsets, page.databytecounts
        if len(offsets) != expected or len(counts) != expected:
            raise SlideReadError(
                f"{path}: a {key.imagelength} x {key.imagewidth} px image in blocks of "
                f"{' x '.join(map(str, key.chunks[:2]))} needs {expected} tile (or strip) offsets, but the file "
                f"lists {len(offsets)} offsets and {len(counts)} byte counts: its size or tile metadata is corrupt"
            )
        longest = max(counts, default=0)
        if longest > min(file_size, MAX_DECODE_BYTES):
            raise SlideReadError(
                f"{path}: a tile (or strip) of the image claims {longest} bytes, more than the {file_size}-byte "
                f"file holds; its byte counts are corrupt: copy or export it again"
            )


def _compression_name(code: Any) -> str:
    if not isinstance(code, int):
        return repr(code)
    try:
        return tifffile.COMPRESSION(code).name.lower()
    except ValueError:
        return str(code)


_NDPI_TAG = 65420


def check_ifd_chain(f: IO[bytes], path: Path) -> None:
    """Walk a TIFF's IFDs (the main chain and every SubIFD chain) before tifffile does, and
    refuse a loop or more than :data:`MAX_IFDS` IFDs.

    tifffile notices some loops and not others (NDPI's 64-bit next-IFD offsets): a corrupt
    offset that points back at an earlier IFD would make it read pages forever. Offsets past
    the end of the file end the walk; tifffile reports those itself.
    """
    f.seek(0, 2)
    size = f.tell()
    f.seek(0)
    head = f.read(16)
    order = "<" if head[:2] == b"II" else ">"
    big = struct.unpack_from(order + "H", head, 2)[0] == 43
    count_fmt, entry_size, offset_fmt = ("Q", 20, "Q") if big else ("H", 12, "I")
    todo = [struct.unpack_from(order + offset_fmt, head, 8 if big else 4)[0]]
    seen: set[int] = set()
    ndpi = False
    while todo:
        pos = todo.pop()
        chain: set[int] = set()  # a chain that comes back to one of its own IFDs never ends
        while 8 <= pos < size:
            if pos in chain:
                raise SlideReadError(
                    f"{path}: the TIFF's IFD at byte {pos} points back to itself or an earlier IFD of its chain "
                    f"(a loop); expected a chain that ends: the file is corrupt: copy or export it again"
                )
            if pos in seen:  # a SubIFD chain also listed one by one: walked already
                break
            chain.add(pos)
            seen.add(pos)
            if len(seen) > MAX_IFDS:
                raise SlideReadError(
                    f"{path}: the TIFF has more than {MAX_IFDS} IFDs (pages); expected a slide with a few "
                    f"pyramid levels and images: the file is corrupt or not a slide"
                )
            f.seek(pos)
            raw = f.read(struct.calcsize(count_fmt))
            if len(raw) < struct.calcsize(count_fmt):
                break
            (n,) = struct.unpack(order + count_fmt, raw)
            entries = f.read(min(n, 2**16) * entry_size)
            if len(entries) < n * entry_size:
                break
            codes = {struct.unpack_from(order + "H", entries, i * entry_size)[0]: i for i in range(n)}
            if len(seen) == 1 and not big:
                ndpi = _NDPI_TAG in codes
            if 330 in codes:  # SubIFDs
                todo.extend(_subifd_offsets(f, order, big, entries, codes[330] * entry_size, size))
            raw = f.read(8 if big or ndpi else 4)
            if len(raw) < (8 if big or ndpi else 4):
                break
            pos = struct.unpack(order + ("Q" if big or ndpi else "I"), raw)[0]


def _subifd_offsets(f: IO[bytes], order: str, big: bool, entries: bytes, at: int, size: int) -> list[int]:
    """The offsets a SubIFDs entry lists (LONG/IFD, or LONG8/IFD8 in BigTIFF)."""
    dtype, count = struct.unpack_from(order + ("HQ" if big else "HI"), entries, at + 2)
    item = 8 if dtype in (16, 18) else 4
    inline = 8 if big else 4
    if count * item <= inline:
        raw = entries[at + (12 if big else 8): at + (12 if big else 8) + count * item]
    else:
        (pointer,) = struct.unpack_from(order + ("Q" if big else "I"), entries, at + (12 if big else 8))
        if pointer + count * item > size or count > MAX_IFDS:
            return []
        here = f.tell()
        f.seek(pointer)
        raw = f.read(count * item)
        f.seek(here)
    return list(struct.unpack(order + ("Q" if item == 8 else "I") * (len(raw) // item), raw))


# --- Zarr and pyramids ------------------------------------------------------------------------

SPARSE_GRID = 4096
"""Zarr arrays of at least this many chunks (or shards) must store at least 1 % of them."""
ZARR_METADATA = {".zarray", ".zattrs", ".zgroup", ".zmetadata", "zarr.json"}
"""File names in a Zarr directory that are metadata, not chunks."""


def check_zarr_stored(array: zarr.Array[Any], path: Path) -> None:
    """Refuse an array that stores almost none of the chunks its shape declares.

    Zarr leaves out chunks that hold only the fill value, so a missing chunk is not an error;
    but a shape whose chunk grid is 99 % empty is almost always a corrupt shape (a 250-px-wide
    image declared 250,000 px wide), and ``predict`` would spend hours on fill values. Counting
    stops as soon as 1 % is found, so a real image costs a few directory entries.
    """
    unit = getattr(array, "shards", None) or array.chunks
    grid = math.prod(-(-int(n) // int(c)) for n, c in zip(array.shape, unit, strict=True))
    root = getattr(array.store, "root", None)
    if grid < SPARSE_GRID or root is None:
        return
    need, stored = grid // 100, 0
    for _, _, files in os.walk(Path(root) / array.path):
        stored += sum(name not in ZARR_METADATA for name in files)
        if stored >= need:
            return
    raise SlideReadError(
        f"{path}: array {array.path or '/'} declares shape {tuple(array.shape)}, {grid} chunks of {tuple(unit)}, "
        f"but stores only {stored} of them; expected at least 1 %: its shape metadata is probably corrupt (an "
        f"image that is really this empty: crop it, or write it with write_empty_chunks=True)"
    )


def check_zarr_level(array: zarr.Array[Any], axes: AxisMap, path: Path) -> None:
    """Sizes, pixel type and chunk size of one Zarr level (see :func:`check_image_shape`)."""
    name = f"array {array.path or '/'}"
    check_image_shape(axes.yx(array.shape), axes.channels(array.shape), array.dtype, path, name)
    check_block(array.chunks, np.dtype(array.dtype).itemsize, path, f"a chunk of {name}")


def check_ngff_scales(sizes: Sequence[tuple[int, int]], ms: Multiscale, axes: AxisMap, path: Path) -> None:
    """Every level must cover the same physical extent as level 0, to within one of its pixels."""
    for i, (yx, scale) in enumerate(zip(sizes, ms.scales, strict=True)):
        for axis, n, n0 in ((axes.y, yx[0], sizes[0][0]), (axes.x, yx[1], sizes[0][1])):
            extent, extent0 = n * scale[axis], n0 * ms.scales[0][axis]
            if abs(extent - extent0) > scale[axis] * (1 + 1e-6):
                raise SlideReadError(
                    f"{path}: OME-Zarr level {i} ({ms.paths[i]!r}) is {yx[0]} x {yx[1]} px at scale "
                    f"{scale[axis]:g} but level 0 is {sizes[0][0]} x {sizes[0][1]} at {ms.scales[0][axis]:g}: "
                    f"they do not cover the same extent; expected scales that match the level shapes: "
                    f"export the OME-Zarr again"
                )


def check_level_order(sizes: Sequence[tuple[int, int]], path: Path) -> None:
    """Levels must not grow: each is at most as large as the one before, on both sides."""
    for i in range(1, len(sizes)):
        if sizes[i][0] > sizes[i - 1][0] or sizes[i][1] > sizes[i - 1][1]:
            raise SlideReadError(
                f"{path}: pyramid level {i} ({_yx(sizes[i])} px) is larger than level {i - 1} "
                f"({_yx(sizes[i - 1])} px); expected levels from the finest to the coarsest: the size "
                f"metadata is corrupt: export the slide again"
            )


def _yx(yx: tuple[int, int]) -> str:
    return f"{yx[0]}x{yx[1]}"
