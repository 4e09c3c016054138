"""Mutations: each takes a random generator and a copy of a seed, breaks it in one way, and says
what it did in a short, stable name (the mutation's column in the summary) plus details.

Families: bytes (flips, truncation, zeroed runs), TIFF structure (sizes, tiles, offsets, byte
counts, bits and samples per pixel, compression, photometric, SubIFD and IFD loops, tag types
and counts), TIFF text (OME-XML and Aperio ImageDescription values), Zarr (array JSON: shapes,
chunks, dtypes, codecs; NGFF attributes: axes, scales, dataset paths, versions; chunk files),
PNG and JPEG headers, label masks, and training pairs (mask values, sizes, alpha).

>>> rng = np.random.default_rng(0)
>>> sorted(MUTATIONS)[:3]
['bytes.flip', 'bytes.truncate', 'bytes.zero']
"""

from __future__ import annotations

import json
import math
import re
import shutil
import struct
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from tests.fuzz.seeds import JPEG, MASK, PAIR, PNG, TIFF, ZARR, Seed
from tests.fuzz.tiffedit import Tiff

Rng = np.random.Generator
Mutation = Callable[[Rng, Path], str]
"""Break the input at the path in place; return what was done (one line)."""

MUTATIONS: dict[str, tuple[tuple[str, ...], Mutation]] = {}
"""name -> (families it applies to, function)."""


def mutation(name: str, *families: str) -> Callable[[Mutation], Mutation]:
    def register(fn: Mutation) -> Mutation:
        MUTATIONS[name] = (families, fn)
        return fn
    return register


def _pick(rng: Rng, options: Any) -> Any:
    options = list(options)
    return options[int(rng.integers(len(options)))]


def _files(path: Path) -> list[Path]:
    """The files of an input (itself, or every file of a directory), in a stable order."""
    return sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]


def _data_file(rng: Rng, path: Path) -> Path:
    """A random file of the input; in a directory, chunk files are as likely as metadata."""
    return _pick(rng, _files(path))


# --- bytes -----------------------------------------------------------------------------------


@mutation("bytes.flip", TIFF, ZARR, PNG, JPEG, MASK, PAIR)
def flip_bytes(rng: Rng, path: Path) -> str:
    target = _data_file(rng, path)
    data = bytearray(target.read_bytes())
    if not data:
        return f"{target.name}: empty"
    n = int(rng.integers(1, 17))
    for pos in rng.integers(0, len(data), n):
        data[pos] ^= int(rng.integers(1, 256))
    target.write_bytes(bytes(data))
    return f"{target.name}: {n} bytes flipped"


@mutation("bytes.truncate", TIFF, ZARR, PNG, JPEG, MASK, PAIR)
def truncate(rng: Rng, path: Path) -> str:
    target = _data_file(rng, path)
    data = target.read_bytes()
    keep = int(rng.integers(0, max(1, len(data))))
    target.write_bytes(data[:keep])
    return f"{target.name}: cut to {keep} of {len(data)} bytes"


@mutation("bytes.zero", TIFF, ZARR, PNG, JPEG, MASK, PAIR)
def zero_run(rng: Rng, path: Path) -> str:
    target = _data_file(rng, path)
    data = bytearray(target.read_bytes())
    if not data:
        return f"{target.name}: empty"
    start = int(rng.integers(len(data)))
    length = int(rng.integers(1, 257))
    data[start: start + length] = bytes(len(data[start: start + length]))
    target.write_bytes(bytes(data))
    return f"{target.name}: {length} bytes zeroed at {start}"


# --- TIFF structure ----------------------------------------------------------------------------


def _tiff_files(path: Path) -> list[Path]:
    return [p for p in _files(path) if p.read_bytes()[:4] in (b"II*\0", b"MM\0*", b"II+\0", b"MM\0+")]


def _edit_tiff(rng: Rng, path: Path, edit: Callable[[Rng, Tiff], str]) -> str:
    files = _tiff_files(path)
    if not files:
        return "no TIFF"
    target = _pick(rng, files)
    tiff = Tiff(bytearray(target.read_bytes()))
    if not tiff.ifds:
        return f"{target.name}: no IFD"
    what = edit(rng, tiff)
    target.write_bytes(bytes(tiff.data))
    return f"{target.name}: {what}"


def _tag_edit(codes: tuple[int, ...], values: Callable[[Rng, int], list[int | float]], every: bool = False
              ) -> Callable[[Rng, Tiff], str]:
    """An edit that sets one item (or all items) of a random tag among ``codes`` to a value drawn
    from ``values(rng, old)``."""

    def edit(rng: Rng, tiff: Tiff) -> str:
        found = [(ifd, e) for code in codes for ifd, e in tiff.entries(code)]
        if not found:
            return f"no tag {codes}"
        ifd, entry = _pick(rng, found)
        old = entry.values(tiff, 64)
        index = int(rng.integers(max(1, min(entry.count, 64))))
        value = _pick(rng, values(rng, int(old[index]) if old and math.isfinite(old[index]) else 0))
        if entry.dtype == 3 and value > 65535 and rng.random() < 0.5:  # widen SHORT to LONG where it fits inline
            tiff.set_header(entry, dtype=4) if entry.count == 1 else None
            entry.dtype = 4 if entry.count == 1 else entry.dtype
        for i in range(entry.count if every else 1):
            tiff.set_value(entry, i if every else index, value)
        return f"tag {entry.code}[{'*' if every else index}] of IFD@{ifd.pos}: {old[:4]} -> {value}"

    return edit


def _sizes(rng: Rng, old: int) -> list[int | float]:
    return [0, 1, 2, 17, old + 1, old * 2, old * 1000, 65535, 2**31 - 1, 2**32 - 1]


@mutation("tiff.size", TIFF)
def tiff_size(rng: Rng, path: Path) -> str:
    return _edit_tiff(rng, path, _tag_edit((256, 257), _sizes))


@mutation("tiff.tile", TIFF)
def tiff_tile(rng: Rng, path: Path) -> str:
    return _edit_tiff(rng, path, _tag_edit((322, 323, 278), lambda r, o: [0, 1, 8, 15, 16, o * 2, 65535, 2**31]))


@mutation("tiff.offset", TIFF)
def tiff_offset(rng: Rng, path: Path) -> str:
    def values(r: Rng, old: int) -> list[int | float]:
        return [0, 1, 8, old + 1, old - 7, old + 10**6, 2**31, 2**32 - 1]
    return _edit_tiff(rng, path, _tag_edit((273, 324), values))


@mutation("tiff.bytecount", TIFF)
def tiff_bytecount(rng: Rng, path: Path) -> str:
    def values(r: Rng, old: int) -> list[int | float]:
        return [0, 1, old // 2, old * 10, 2**31, 2**32 - 1]
    return _edit_tiff(rng, path, _tag_edit((279, 325), values))


@mutation("tiff.bits", TIFF)
def tiff_bits(rng: Rng, path: Path) -> str:
    every = bool(rng.random() < 0.7)
    return _edit_tiff(rng, path, _tag_edit((258,), lambda r, o: [0, 1, 2, 4, 7, 12, 16, 24, 32, 64, 255], every))


@mutation("tiff.samples", TIFF)
def tiff_samples(rng: Rng, path: Path) -> str:
    return _edit_tiff(rng, path, _tag_edit((277,), lambda r, o: [0, 1, 2, 4, 5, 255, 65535]))


@mutation("tiff.compression", TIFF)
def tiff_compression(rng: Rng, path: Path) -> str:
    codes = [0, 1, 2, 5, 6, 7, 8, 32773, 33003, 34712, 34887, 50000, 50001, 65535]
    return _edit_tiff(rng, path, _tag_edit((259,), lambda r, o: codes))


@mutation("tiff.photometric", TIFF)
def tiff_photometric(rng: Rng, path: Path) -> str:
    codes = [0, 1, 2, 3, 4, 5, 6, 8, 9, 10, 32803, 32844, 34892, 65535]
    return _edit_tiff(rng, path, _tag_edit((262,), lambda r, o: codes))


@mutation("tiff.sampleformat", TIFF)
def tiff_sampleformat(rng: Rng, path: Path) -> str:
    return _edit_tiff(rng, path, _tag_edit((339, 284, 338), lambda r, o: [0, 1, 2, 3, 4, 5, 6, 99], True))


@mutation("tiff.resolution", TIFF)
def tiff_resolution(rng: Rng, path: Path) -> str:
    return _edit_tiff(rng, path, _tag_edit((282, 283, 296, 65421, 65420),
                                           lambda r, o: [0, 1, 2, 3, 5, 9, -1, 1e-30, 1e30, 2**32 - 1]))


def _subifd_loop(rng: Rng, tiff: Tiff) -> str:
    found = tiff.entries(330)
    if not found:
        return _ifd_loop(rng, tiff)
    ifd, entry = _pick(rng, found)
    target = _pick(rng, [ifd.pos, tiff.ifds[0].pos, 0, len(tiff.data) + 10, 3])
    tiff.set_value(entry, 0, target)
    return f"SubIFD of IFD@{ifd.pos} -> {target}"


def _ifd_loop(rng: Rng, tiff: Tiff) -> str:
    ifd = _pick(rng, tiff.ifds)
    target = _pick(rng, [ifd.pos, tiff.ifds[0].pos, 1, len(tiff.data) - 2, 2**32 - 1])
    tiff.set_next(ifd, target)
    return f"next IFD of IFD@{ifd.pos} -> {target}"


@mutation("tiff.loop", TIFF)
def tiff_loop(rng: Rng, path: Path) -> str:
    return _edit_tiff(rng, path, _pick(rng, [_subifd_loop, _ifd_loop]))


@mutation("tiff.entry", TIFF)
def tiff_entry(rng: Rng, path: Path) -> str:
    """A random entry gets another type, a huge or zero count, or another code (a missing tag)."""

    def edit(r: Rng, tiff: Tiff) -> str:
        ifd = _pick(r, tiff.ifds)
        if not ifd.entries:
            return "empty IFD"
        entry = _pick(r, ifd.entries)
        how = _pick(r, ["dtype", "count", "code", "n"])
        if how == "dtype":
            new = _pick(r, [0, 2, 5, 7, 12, 13, 16, 99])
            tiff.set_header(entry, dtype=new)
        elif how == "count":
            new = _pick(r, [0, 2, entry.count + 1, 2**20, 2**31 - 1])
            tiff.set_header(entry, count=new)
        elif how == "code":
            new = 65000
            tiff.set_header(entry, code=new)
        else:
            new = _pick(r, [0, 1, len(ifd.entries) + 3, 65535])
            tiff.pack("Q" if tiff.big else "H", ifd.pos, new)
            return f"IFD@{ifd.pos} entry count -> {new}"
        return f"tag {entry.code} of IFD@{ifd.pos}: {how} -> {new}"

    return _edit_tiff(rng, path, edit)


@mutation("tiff.header", TIFF)
def tiff_header(rng: Rng, path: Path) -> str:
    def edit(r: Rng, tiff: Tiff) -> str:
        how = _pick(r, ["order", "version", "first"])
        if how == "order":
            tiff.data[:2] = b"MM" if tiff.data[:2] == b"II" else b"II"
        elif how == "version":
            tiff.pack("H", 2, _pick(r, [0, 43, 44, 85]))
        else:
            tiff.pack("I", 4, _pick(r, [0, 1, 3, len(tiff.data), 2**32 - 1]))
        return f"header {how}"
    return _edit_tiff(rng, path, edit)


# --- TIFF text: OME-XML and ImageDescription --------------------------------------------------

_NUMBERS = ["0", "-0.5", "NaN", "inf", "-inf", "1e-30", "1e30", "abc", "", "0.5e", "1e400"]
_OME_EDITS: dict[str, list[str]] = {
    "PhysicalSizeX": _NUMBERS, "PhysicalSizeY": _NUMBERS,
    "PhysicalSizeXUnit": ["furlong", "pixel", "", "nm", "m", "reference frame", "Å", "ly"],
    "SizeZ": ["2", "0", "-1", "1000000", "x"], "SizeT": ["2", "0", "1000000"], "SizeC": ["0", "2", "7", "1000000"],
    "SizeX": ["0", "1", "999999999", "-5"], "SizeY": ["0", "1", "999999999", "-5"],
    "Type": ["uint8", "complex", "double", "bit", "int64", "foo"],
    "DimensionOrder": ["XYZCT", "XYCZT", "garbage", ""], "SamplesPerPixel": ["0", "2", "4", "1000"],
    "IFD": ["0", "1", "99", "-1"], "PlaneCount": ["0", "99", "-1"],
    "NominalMagnification": ["NaN", "-1", "1e400", "x"],
}
_SVS_EDITS = {"MPP": _NUMBERS, "AppMag": _NUMBERS}


def _description_edit(rng: Rng, tiff: Tiff) -> str:
    found = tiff.entries(270)
    if not found:
        return "no ImageDescription"
    ifd, entry = _pick(rng, found)
    text = tiff.text(entry)
    how = _pick(rng, ["value", "value", "value", "cut", "bytes", "drop", "duplicate"])
    new, what = text, how
    if how == "value":
        edits = _OME_EDITS if b"<OME" in text else _SVS_EDITS
        key = _pick(rng, edits)
        value = _pick(rng, edits[key])
        if b"<OME" in text:
            pattern = rf'\b{key}="[^"]*"'.encode()
            new = re.sub(pattern, f'{key}="{value}"'.encode(), text, count=0 if rng.random() < 0.5 else 1)
        else:
            pattern = rf"\b{key} = [^|\x00]*".encode()
            new = re.sub(pattern, f"{key} = {value}".encode(), text) if re.search(pattern, text) else (
                text.rstrip(b"\0") + f"|{key} = {value}".encode() + b"\0")
        what = f"{key}={value!r}"
    elif how == "cut":
        new = text[: int(rng.integers(len(text) + 1))]
    elif how == "bytes":
        data = bytearray(text)
        for pos in rng.integers(0, max(1, len(data)), 4):
            if data:
                data[pos] = _pick(rng, [0xFF, 0xC3, 0x80, 0x00, ord("<"), ord("|")])
        new = bytes(data)
    elif how == "drop":
        tag = _pick(rng, [b"Pixels", b"Channel", b"TiffData", b"Image"])
        new = re.sub(rb"<" + tag + rb"\b[^>]*?/?>", b"", text, count=1)
        what = f"drop <{tag.decode()}>"
    else:
        new = re.sub(rb"(<Image\b.*?</Image>)", rb"\1\1", text, count=1, flags=re.S)
    tiff.replace_value(entry, new if new.endswith(b"\0") else new + b"\0", dtype=2)
    return f"ImageDescription of IFD@{ifd.pos}: {what}"


@mutation("tiff.description", TIFF)
def tiff_description(rng: Rng, path: Path) -> str:
    return _edit_tiff(rng, path, _description_edit)


# --- Zarr ----------------------------------------------------------------------------------------


def _json_files(path: Path) -> list[Path]:
    return [p for p in _files(path) if p.name in (".zarray", ".zattrs", "zarr.json", ".zgroup")]


def _is_array_meta(meta: dict[str, Any], name: str) -> bool:
    return name == ".zarray" or meta.get("node_type") == "array"


def _weird(rng: Rng, old: Any) -> Any:
    """A replacement for a JSON value: out of range, of the wrong type, missing, or garbage."""
    options: list[Any] = [0, -1, 1, 2**40, 1.5, "x", None, [], {}, float("nan"), True]
    if isinstance(old, int) and not isinstance(old, bool):
        options += [old + 1, old * 1000, old // 2]
    if isinstance(old, float):
        options += [old * 1e30, -old, 1e-30, float("inf")]
    if isinstance(old, str):
        options += ["", old + "x", old.upper(), "furlong", "pixel", "\udcff"]
    if isinstance(old, list):
        options += [old[:-1], old + old[-1:], list(reversed(old)), [None] * len(old)]
    return _pick(rng, options)


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every key path into a JSON value (dict keys and list indices), leaves and inner nodes."""
    found = [prefix] if prefix else []
    if isinstance(node, dict):
        for k, v in node.items():
            found += _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node[:16]):
            found += _paths(v, (*prefix, i))
    return found


def _get(node: Any, path: tuple[Any, ...]) -> Any:
    for k in path:
        node = node[k]
    return node


_ARRAY_KEYS = ("shape", "chunks", "dtype", "data_type", "fill_value", "compressor", "codecs", "order", "zarr_format",
               "dimension_separator", "dimension_names", "filters", "chunk_grid", "chunk_key_encoding")
_ATTR_KEYS = ("axes", "datasets", "coordinateTransformations", "scale", "path", "version", "unit", "type", "name",
              "multiscales", "omero", "channels", "image-label", "colors", "properties", "label-value", "rgba",
              "source", "level", "resample_factor", "complete", "slideseg", "scale_yx")
_DTYPES = ["|b1", "<c16", "<M8[ns]", "|S5", "|O", "<f8", ">u2", "<i8", "<f2", "garbage", "bool", "complex128",
           "string", "float64", "int8", "uint64", "r16"]
_CODECS = [{"id": "foo"}, {"id": "blosc", "cname": "nope", "clevel": 99, "shuffle": 7}, {"id": "zstd", "level": "x"},
           None, {"name": "foo"}, {"name": "bytes", "configuration": {"endian": "middle"}}, [], {"id": "delta"}]


def _edit_json(rng: Rng, meta: Any, array: bool) -> str:
    wanted = _ARRAY_KEYS if array else _ATTR_KEYS
    paths = [p for p in _paths(meta) if any(k in wanted for k in p if isinstance(k, str))] or _paths(meta)
    if not paths:
        return "empty JSON"
    path = _pick(rng, paths)
    parent = _get(meta, path[:-1])
    key = path[-1]
    old = parent[key]
    how = _pick(rng, ["value", "value", "value", "delete", "special"])
    if how == "delete" and isinstance(parent, dict):
        del parent[key]
        return f"{'/'.join(map(str, path))} deleted"
    if how == "special" and key in ("dtype", "data_type"):
        new: Any = _pick(rng, _DTYPES)
    elif how == "special" and key in ("compressor", "codecs", "filters", "id", "name", "cname"):
        new = _pick(rng, _CODECS)
    else:
        new = _weird(rng, old)
    parent[key] = new
    return f"{'/'.join(map(str, path))}: {str(old)[:40]} -> {str(new)[:40]}"


@mutation("zarr.array-json", ZARR, MASK)
def zarr_array_json(rng: Rng, path: Path) -> str:
    return _zarr_json(rng, path, array=True)


@mutation("zarr.attrs-json", ZARR, MASK)
def zarr_attrs_json(rng: Rng, path: Path) -> str:
    return _zarr_json(rng, path, array=False)


def _zarr_json(rng: Rng, path: Path, array: bool) -> str:
    candidates = []
    for p in _json_files(path):
        try:
            meta = json.loads(p.read_text())
        except (ValueError, UnicodeDecodeError):
            continue
        is_array = _is_array_meta(meta, p.name) if isinstance(meta, dict) else False
        if is_array == array or (not array and p.name == "zarr.json"):
            candidates.append((p, meta))
    if not candidates:
        return "no JSON to edit"
    target, meta = _pick(rng, candidates)
    what = _edit_json(rng, meta, array)
    target.write_text(json.dumps(meta))
    return f"{target.relative_to(path)}: {what}"


@mutation("zarr.chunk", ZARR, MASK)
def zarr_chunk(rng: Rng, path: Path) -> str:
    chunks = [p for p in _files(path) if p.name not in (".zarray", ".zattrs", "zarr.json", ".zgroup", ".zmetadata")]
    if not chunks:
        return "no chunk files"
    target = _pick(rng, chunks)
    how = _pick(rng, ["delete", "empty", "random", "swap", "cut"])
    if how == "delete":
        target.unlink()
    elif how == "empty":
        target.write_bytes(b"")
    elif how == "random":
        target.write_bytes(rng.integers(0, 256, int(rng.integers(1, 4096)), dtype=np.uint8).tobytes())
    elif how == "swap" and len(chunks) > 1:
        shutil.copyfile(_pick(rng, [c for c in chunks if c != target]), target)
    else:
        data = target.read_bytes()
        target.write_bytes(data[: len(data) // 2])
    return f"{target.relative_to(path)}: {how}"


# --- PNG and JPEG ---------------------------------------------------------------------------------


def _png_chunks(data: bytes) -> list[tuple[int, bytes]]:
    """(offset, type) of every PNG chunk."""
    found, pos = [], 8
    while pos + 8 <= len(data):
        (length,) = struct.unpack(">I", data[pos: pos + 4])
        found.append((pos, data[pos + 4: pos + 8]))
        pos += 12 + length
    return found


def _fix_crc(data: bytearray, pos: int) -> None:
    (length,) = struct.unpack(">I", data[pos: pos + 4])
    end = pos + 8 + length
    if end + 4 <= len(data):
        data[end: end + 4] = struct.pack(">I", zlib.crc32(bytes(data[pos + 4: end])))


@mutation("png.header", PNG, PAIR)
def png_header(rng: Rng, path: Path) -> str:
    files = [p for p in _files(path) if p.read_bytes()[:4] == b"\x89PNG"]
    if not files:
        return "no PNG"
    target = _pick(rng, files)
    data = bytearray(target.read_bytes())
    chunks = _png_chunks(bytes(data))
    if not chunks or chunks[0][1] != b"IHDR":
        return f"{target.name}: no IHDR"
    field = _pick(rng, ["width", "height", "depth", "colour", "interlace", "idat", "length"])
    at = {"width": (16, ">I"), "height": (20, ">I"), "depth": (24, "B"), "colour": (25, "B"), "interlace": (28, "B")}
    if field in at:
        pos, fmt = at[field]
        value = _pick(rng, [0, 1, 2**31 - 1, 16384, 60000, 3, 7, 16] if fmt == ">I" else [0, 1, 2, 3, 4, 6, 7, 16, 255])
        struct.pack_into(fmt, data, pos, value)
        _fix_crc(data, 8)
    elif field == "idat":
        idat = [p for p, t in chunks if t == b"IDAT"]
        if idat:
            pos = _pick(rng, idat)
            (length,) = struct.unpack(">I", data[pos: pos + 4])
            for k in rng.integers(pos + 8, pos + 8 + max(1, length), 3):
                data[k] ^= 0x55
            _fix_crc(data, pos)
        value = "flipped with a valid CRC"
    else:
        pos, _ = _pick(rng, chunks)
        value = _pick(rng, [0, 2**31 - 1, 2**32 - 1])
        struct.pack_into(">I", data, pos, value)
    target.write_bytes(bytes(data))
    return f"{target.name}: {field} -> {value}"


@mutation("jpeg.header", JPEG)
def jpeg_header(rng: Rng, path: Path) -> str:
    data = bytearray(path.read_bytes())
    sof = next((m.start() for m in re.finditer(rb"\xff[\xc0-\xc3]", bytes(data))), None)
    if sof is None:
        return "no SOF"
    field = _pick(rng, ["height", "width", "precision", "components"])
    pos, fmt = {"precision": (sof + 4, "B"), "height": (sof + 5, ">H"), "width": (sof + 7, ">H"),
                "components": (sof + 9, "B")}[field]
    value = _pick(rng, [0, 1, 65535, 30000] if fmt == ">H" else [0, 1, 2, 4, 12, 16, 255])
    struct.pack_into(fmt, data, pos, value)
    path.write_bytes(bytes(data))
    return f"SOF {field} -> {value}"


# --- training pairs --------------------------------------------------------------------------------


def _write_image(path: Path, pixels: np.ndarray) -> None:
    import imagecodecs
    import tifffile

    if path.suffix == ".png":
        path.write_bytes(imagecodecs.png_encode(pixels))
    else:
        tifffile.imwrite(path, pixels, metadata=None)


@mutation("pair.mask-values", PAIR)
def pair_mask_values(rng: Rng, path: Path) -> str:
    """Masks as people save them by mistake: sparse ids, 0/255, uint16 ids, a class only in a
    corner, a single class, a mask of another size, an RGB mask."""
    mask_path = next((path / "masks").iterdir())
    image_path = next((path / "images").iterdir())
    h, w = 96, 112
    base = (np.indices((h, w)).sum(0) // 37 % 2).astype(np.uint8)
    how = _pick(rng, ["sparse", "binary255", "uint16", "corner", "single", "size", "rgb", "alpha-image", "grey-image"])
    if how == "sparse":
        mask = base * 100 + (np.indices((h, w))[0] > 60) * 100
    elif how == "binary255":
        mask = base * 255
    elif how == "uint16":
        mask = base.astype(np.uint16) * 300
    elif how == "corner":
        mask = base.copy()
        mask[-3:, -3:] = 2
    elif how == "single":
        mask = np.zeros((h, w), np.uint8)
    elif how == "size":
        mask = base[: h - 5]
    elif how == "rgb":
        mask = np.stack([base, base, 1 - base], axis=2)
    else:
        mask = None
        import imagecodecs

        image = (imagecodecs.imread(image_path) if image_path.suffix == ".png" else
                 __import__("tifffile").imread(image_path))
        if how == "alpha-image":
            alpha = np.full((h, w, 1), 255, np.uint8)
            alpha[:20] = 30
            image = np.concatenate([image[..., :3], alpha], axis=2)
        else:
            image = image[..., 0]
        _write_image(image_path, np.ascontiguousarray(image))
    if mask is not None:
        _write_image(mask_path, np.ascontiguousarray(mask.astype(mask.dtype if how == "uint16" else np.uint8)))
    return how


# --- cases ----------------------------------------------------------------------------------------


def applicable(family: str) -> list[str]:
    """Names of the mutations that apply to a family, sorted."""
    return sorted(name for name, (families, _) in MUTATIONS.items() if family in families)


def mutate(seed: Seed, target: Path, rng: Rng) -> list[str]:
    """Copy ``seed`` to ``target`` and apply one to three mutations; return ``name: details`` of each."""
    if seed.path.is_dir():
        shutil.copytree(seed.path, target)
    else:
        shutil.copyfile(seed.path, target)
    names = applicable(seed.family)
    count = 1 if rng.random() < 0.7 else 2 if rng.random() < 0.85 else 3
    done = []
    for _ in range(count):
        name = _pick(rng, names)
        try:
            done.append(f"{name}: {MUTATIONS[name][1](rng, target)}")
        except Exception as e:  # a mutator that trips over an earlier mutation: the case runs as it is
            done.append(f"{name}: not applied ({type(e).__name__}: {e})")
    return done
