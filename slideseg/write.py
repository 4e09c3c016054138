"""Write the segmentation mask as an OME-NGFF 0.4 label image (Zarr v2), chunk by chunk.

Layout of ``mask.zarr`` (the root group is the label image)::

    mask.zarr/
        .zattrs          multiscales, image-label, slideseg (how it was made; complete or not)
        0/ 1/ ...        uint8 class ids (Y, X), chunks (chunk, chunk), x2 nearest-neighbour pyramid
        probabilities/   optional multiscale image, uint8 (K, Y, X), chunks (1, chunk, chunk)
        chunks_done      uint8 (grid Y, grid X), one Zarr chunk per element: 1 once a level-0 chunk
                         (and its probabilities) is on disk; how --resume knows what is left
        tissue           optional uint8 low-resolution tissue mask that decided which chunks ran

Level 0 is written by :meth:`MaskWriter.write_chunk`, one call per chunk, from any thread or
process (one writer per chunk is what Zarr v2 makes safe). Each Zarr chunk file is replaced
atomically, and a chunk is marked done only after its data is written, so a run killed at any
moment leaves every chunk either done or to be redone. :meth:`MaskWriter.finalize` then builds
the pyramid one output chunk at a time and marks the mask complete.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from numcodecs import Blosc

from slideseg.errors import ConfigError, OutputExistsError, OutputFormatError, SlideReadError

__all__ = [
    "PYRAMID_STOP",
    "LabelClass",
    "MaskWriter",
    "chunk_box",
    "create_mask",
    "describe_mask",
    "open_mask",
    "pyramid_shapes",
]

NGFF_VERSION = "0.4"
PYRAMID_STOP = 1024
"""The pyramid ends at the first level whose longer side is at most this many pixels."""
PROBABILITIES = "probabilities"
DONE = "chunks_done"
TISSUE = "tissue"
_CODEC = {"cname": "zstd", "clevel": 5, "shuffle": Blosc.BITSHUFFLE}
# Entries a mask directory may hold; anything else means it is not ours to delete.
_OWN_ENTRIES = {".zgroup", ".zattrs", ".zmetadata", PROBABILITIES, DONE, TISSUE}
_REQUIRED_ATTRS = ("multiscales", "image-label", "slideseg")


@dataclass(frozen=True)
class LabelClass:
    """One class of the mask: its pixel value, name and display colour."""

    value: int
    """Pixel value in the mask, 0-255; 0 is the background (and the fill value)."""
    name: str
    """Class name, written as the label's ``class`` property."""
    rgba: tuple[int, int, int, int]
    """Display colour, four integers 0-255."""

    def __post_init__(self) -> None:
        if not 0 <= self.value <= 255:
            raise ConfigError(
                f"class {self.name!r} has value {self.value}; expected 0-255 (the mask is uint8): renumber the classes"
            )
        if len(self.rgba) != 4 or not all(0 <= int(c) <= 255 for c in self.rgba):
            raise ConfigError(
                f"class {self.name!r} has colour {self.rgba}; expected four integers 0-255 "
                f"(r, g, b, a): fix the class colour"
            )


def pyramid_shapes(shape: tuple[int, int], stop: int = PYRAMID_STOP) -> list[tuple[int, int]]:
    """Shapes of the x2 pyramid, down to the first level whose longer side is <= ``stop``.

    >>> pyramid_shapes((1000, 1500))
    [(1000, 1500), (500, 750)]
    >>> pyramid_shapes((5, 3000), stop=1000)
    [(5, 3000), (3, 1500), (2, 750)]
    """
    shapes = [shape]
    while max(shapes[-1]) > stop:
        h, w = shapes[-1]
        shapes.append(((h + 1) // 2, (w + 1) // 2))
    return shapes


def chunk_box(iy: int, ix: int, shape: tuple[int, int], chunk: int) -> tuple[int, int, int, int]:
    """``(y0, y1, x0, x1)`` of chunk ``(iy, ix)`` of an array, clipped to the array.

    >>> chunk_box(1, 1, (300, 500), 256)
    (256, 300, 256, 500)
    """
    ny, nx = math.ceil(shape[0] / chunk), math.ceil(shape[1] / chunk)
    if not (0 <= iy < ny and 0 <= ix < nx):
        raise ValueError(
            f"chunk ({iy}, {ix}) is outside the {ny} x {nx} chunk grid of a {shape[0]} x "
            f"{shape[1]} mask with chunk {chunk}; expected 0 <= iy < {ny} and 0 <= ix < {nx}"
        )
    return iy * chunk, min((iy + 1) * chunk, shape[0]), ix * chunk, min((ix + 1) * chunk, shape[1])


def _chunk_boxes(shape: tuple[int, int], chunk: int) -> Iterator[tuple[int, int, int, int]]:
    for iy in range(math.ceil(shape[0] / chunk)):
        for ix in range(math.ceil(shape[1] / chunk)):
            yield chunk_box(iy, ix, shape, chunk)


def multiscales_attrs(name: str, n_levels: int, mpp: float | None, channel: bool) -> list[Any]:
    """NGFF 0.4 ``multiscales`` for an x2 pyramid: (c,) y, x; scale ``mpp * 2**level``.

    Without a pixel size the scale is in pixels (1.0 at level 0) and the axes have no unit.
    """
    unit = {} if mpp is None else {"unit": "micrometer"}
    axes = [{"name": n, "type": "space", **unit} for n in "yx"]
    lead = [1.0] if channel else []
    datasets = [
        {
            "path": str(level),
            "coordinateTransformations": [{"type": "scale", "scale": [*lead, *[(mpp or 1.0) * 2**level] * 2]}],
        }
        for level in range(n_levels)
    ]
    return [
        {
            "version": NGFF_VERSION,
            "name": name,
            "axes": ([{"name": "c", "type": "channel"}] if channel else []) + axes,
            "datasets": datasets,
        }
    ]


def image_label_attrs(classes: Sequence[LabelClass]) -> dict[str, Any]:
    """NGFF 0.4 ``image-label``: a colour and a ``class`` property for every class value."""
    return {
        "version": NGFF_VERSION,
        "colors": [{"label-value": c.value, "rgba": [int(v) for v in c.rgba]} for c in classes],
        "properties": [{"label-value": c.value, "class": c.name} for c in classes],
    }


class MaskWriter:
    """An open mask: write level 0 chunk by chunk (from any threads), then :meth:`finalize`."""

    path: Path
    shape: tuple[int, int]
    chunk: int
    n_classes: int

    def __init__(
        self,
        path: Path,
        group: zarr.Group,
        shape: tuple[int, int],
        chunk: int,
        classes: tuple[LabelClass, ...],
        mpp: float | None,
        attrs: dict[str, Any],
    ) -> None:
        self.path, self.shape, self.chunk, self.n_classes = path, shape, chunk, len(classes)
        self._group, self._classes, self._mpp, self._attrs = group, classes, mpp, attrs
        self._level0 = _array(group, "0")
        self._probs = _array(group, f"{PROBABILITIES}/0") if PROBABILITIES in group else None
        self._done = _array(group, DONE)
        self._finalized = False

    @property
    def grid(self) -> tuple[int, int]:
        """Number of chunks along y and x."""
        return math.ceil(self.shape[0] / self.chunk), math.ceil(self.shape[1] / self.chunk)

    def write_chunk(self, iy: int, ix: int, ids: np.ndarray, probs: np.ndarray | None = None) -> None:
        """Write chunk ``(iy, ix)`` of level 0.

        Parameters
        ----------
        ids
            uint8 class ids, ``(h, w)``: exactly the chunk's extent, clipped to the mask.
        probs
            uint8 class probabilities ``(K, h, w)``; required if and only if the mask was
            created with ``probabilities=True``.

        Raises
        ------
        ValueError
            Chunk index outside the grid, wrong shape or dtype, probabilities given or missing,
            or the mask already finalized.
        """
        if self._finalized:
            raise ValueError(f"{self.path} is finalized; expected writes before finalize()")
        y0, y1, x0, x1 = chunk_box(iy, ix, self.shape, self.chunk)
        _check_block("ids", ids, (y1 - y0, x1 - x0), (iy, ix))
        if (probs is None) != (self._probs is None):
            raise ValueError(
                f"chunk ({iy}, {ix}): probabilities were {'not ' if probs is None else ''}given, "
                f"but the mask was created with probabilities={self._probs is not None}; "
                f"expected them exactly when probabilities=True"
            )
        if probs is not None and self._probs is not None:
            _check_block("probs", probs, (self.n_classes, y1 - y0, x1 - x0), (iy, ix))
            self._probs[:, y0:y1, x0:x1] = probs
        self._level0[y0:y1, x0:x1] = ids
        self._done[iy, ix] = 1  # only after the data: a killed run never marks a missing chunk

    def write_background(self, iy: int, ix: int) -> None:
        """Write chunk ``(iy, ix)`` as all background (a chunk skipped for having no tissue)."""
        y0, y1, x0, x1 = chunk_box(iy, ix, self.shape, self.chunk)
        probs = None
        if self._probs is not None:
            probs = np.zeros((self.n_classes, y1 - y0, x1 - x0), np.uint8)
            probs[0] = 255
        self.write_chunk(iy, ix, np.zeros((y1 - y0, x1 - x0), np.uint8), probs)

    def done(self) -> np.ndarray:
        """Boolean (grid Y, grid X): which level-0 chunks are on disk."""
        return np.asarray(self._done[:]).astype(bool)

    def write_tissue(self, mask: np.ndarray, attrs: Mapping[str, Any]) -> None:
        """Save the low-resolution tissue mask (bool or uint8 (h, w)) that chose the chunks to run."""
        arr = self._group.create_array(
            TISSUE, shape=mask.shape, chunks=mask.shape, dtype="uint8", compressors=Blosc(**_CODEC),
            fill_value=0, chunk_key_encoding={"name": "v2", "separator": "/"}, overwrite=True,
        )
        arr[...] = mask.astype(np.uint8)
        arr.attrs.put(_json_record(attrs))

    def finalize(self, num_workers: int | None = None) -> None:
        """Build the x2 nearest-neighbour pyramid and mark the mask complete.

        Level ``l + 1`` is ``level_l[::2, ::2]``, built one output chunk per task on a thread
        pool (``num_workers`` threads; default ``min(8, cpu count)``), so no level is ever
        held in memory whole. Levels stop at the first whose longer side is <= 1024.
        """
        if num_workers is not None and num_workers < 1:
            raise ConfigError(f"num_workers is {num_workers}; expected at least 1: pass a positive number")
        shapes = pyramid_shapes(self.shape)
        workers = num_workers or min(8, os.cpu_count() or 1)
        pyramids: list[tuple[zarr.Group, tuple[int, ...]]] = [(self._group, (self.chunk, self.chunk))]
        if self._probs is not None:
            pyramids.append((_subgroup(self._group, PROBABILITIES), (1, self.chunk, self.chunk)))
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for group, chunks in pyramids:
                for level in range(1, len(shapes)):
                    src = _array(group, str(level - 1))
                    lead = src.shape[:-2]
                    dst = _create_level(group, str(level), (*lead, *shapes[level]), chunks)
                    boxes = _chunk_boxes(shapes[level], self.chunk)
                    list(pool.map(partial(_halve_box, src, dst), boxes))  # one task per chunk
        self._write_attrs(len(shapes), complete=True)
        self._finalized = True

    def _write_attrs(self, n_levels: int, complete: bool) -> None:
        if self._probs is not None:
            probs_ms = multiscales_attrs(PROBABILITIES, n_levels, self._mpp, channel=True)
            _subgroup(self._group, PROBABILITIES).attrs.put({"multiscales": probs_ms})
        self._group.attrs.put(_root_attrs(self._classes, self._mpp, n_levels, self._attrs, complete))


def create_mask(
    path: str | os.PathLike[str],
    shape: tuple[int, int],
    chunk: int,
    classes: Sequence[LabelClass],
    mpp: float | None,
    attrs: Mapping[str, Any],
    *,
    probabilities: bool = False,
    overwrite: bool = False,
) -> MaskWriter:
    """Create an empty mask (all background) and return its writer.

    Parameters
    ----------
    path
        Output directory, conventionally ``*.zarr``.
    shape
        (H, W) of level 0, the slide level being segmented.
    chunk
        Chunk side in pixels of every level.
    classes
        Every class, including the background value 0.
    mpp
        Micrometres per pixel of level 0, or None if unknown (scales are then in pixels).
    attrs
        JSON-able record of how the mask is made (configs, weights hash, version); stored as
        the ``slideseg`` attribute with ``complete: false`` until :meth:`MaskWriter.finalize`.
    probabilities
        Also write per-class probabilities, uint8 (K, Y, X), in ``probabilities/``.
    overwrite
        Replace an existing mask. Only a directory that slideseg could have written is removed.

    Raises
    ------
    OutputExistsError
        ``path`` exists and ``overwrite`` is False.
    OutputFormatError
        ``path`` exists but is not a slideseg mask, so it is never replaced.
    ConfigError
        Bad shape, chunk, classes, mpp or attrs.
    """
    p = Path(path)
    shape, chunk = _parse_geometry(shape, chunk)
    sorted_classes = _check_classes(classes)
    if mpp is not None and not (math.isfinite(mpp) and mpp > 0):
        raise ConfigError(f"mpp is {mpp}; expected a positive number of µm per pixel: pass the slide mpp or None")
    record = _json_record(attrs)
    _clear_output(p, overwrite)
    root = _root_attrs(sorted_classes, mpp, 1, record, complete=False)
    group = zarr.open_group(p, mode="w-", zarr_format=2, attributes=root)
    _create_level(group, "0", shape, (chunk, chunk))
    grid = (math.ceil(shape[0] / chunk), math.ceil(shape[1] / chunk))
    group.create_array(DONE, shape=grid, chunks=(1, 1), dtype="uint8", compressors=None, fill_value=0,
                       chunk_key_encoding={"name": "v2", "separator": "/"})
    if probabilities:
        probs_ms = multiscales_attrs(PROBABILITIES, 1, mpp, channel=True)
        sub = group.create_group(PROBABILITIES, attributes={"multiscales": probs_ms})
        _create_level(sub, "0", (len(sorted_classes), *shape), (1, chunk, chunk))
    return MaskWriter(p, group, shape, chunk, sorted_classes, mpp, record)


def open_mask_writer(path: str | os.PathLike[str]) -> MaskWriter:
    """Reopen an existing mask to write more chunks (resume, or a worker of a distributed run)."""
    group = open_mask(path, mode="r+")
    attrs: dict[str, Any] = dict(group.attrs)
    record = {k: v for k, v in attrs["slideseg"].items() if k != "complete"}
    classes = tuple(
        LabelClass(c["label-value"], p.get("class", str(c["label-value"])), tuple(c["rgba"]))
        for c, p in zip(attrs["image-label"]["colors"], attrs["image-label"]["properties"], strict=True)
    )
    level0 = _array(group, "0")
    if DONE not in group:
        raise OutputFormatError(f"{path} has no '{DONE}' record, so what is done cannot be known; "
                                "it was written by an older slideseg: run again with --overwrite")
    ms = _multiscale(group)
    unit = ms["axes"][-1].get("unit")
    mpp = ms["datasets"][0]["coordinateTransformations"][0]["scale"][-1] if unit == "micrometer" else None
    shape = (int(level0.shape[0]), int(level0.shape[1]))
    return MaskWriter(Path(path), group, shape, int(level0.chunks[0]), classes, mpp, record)


def open_mask(path: str | os.PathLike[str], mode: str = "r") -> zarr.Group:
    """Open a mask written by slideseg (read-only unless ``mode='r+'``).

    Raises
    ------
    SlideReadError
        ``path`` does not exist.
    OutputFormatError
        ``path`` is not a Zarr v2 group with slideseg's label-image attributes.
    """
    p = Path(path)
    if not p.exists():
        raise SlideReadError(f"{p} does not exist; expected a slideseg mask directory: check the path")
    try:
        group = zarr.open_group(p, mode=mode, zarr_format=2)  # type: ignore[arg-type]
    except (OSError, ValueError, KeyError) as e:
        raise OutputFormatError(
            f"{p} is not a Zarr v2 group ({type(e).__name__}); expected a slideseg mask "
            f"(OME-Zarr 0.4): pass the mask.zarr written by slideseg predict"
        ) from e
    missing = [k for k in _REQUIRED_ATTRS if k not in group.attrs]
    if missing:
        raise OutputFormatError(
            f"{p} is not a slideseg mask: expected attributes {list(_REQUIRED_ATTRS)}, "
            f"{', '.join(missing)} missing: pass the mask.zarr written by slideseg predict"
        )
    return group


def describe_mask(path: str | os.PathLike[str]) -> dict[str, Any]:
    """JSON-able summary of a mask: levels, pixel size, classes, provenance, completeness."""
    group = open_mask(path)
    attrs: dict[str, Any] = dict(group.attrs)
    record = dict(attrs["slideseg"])
    ms = _multiscale(group)
    x_axis = ms["axes"][-1]
    scale0 = ms["datasets"][0]["coordinateTransformations"][0]["scale"][-1]
    names = {p["label-value"]: p.get("class") for p in attrs["image-label"].get("properties", [])}
    probs = group.get(PROBABILITIES)
    done = group.get(DONE)
    chunks_done = int(np.count_nonzero(done[:])) if isinstance(done, zarr.Array) else None
    return {
        "path": str(Path(path)),
        "complete": bool(record.get("complete", False)),
        "chunks_done": chunks_done,
        "chunks_total": int(np.prod(done.shape)) if isinstance(done, zarr.Array) else None,
        "mpp": scale0 if x_axis.get("unit") == "micrometer" else None,
        "levels": _describe_levels(group, ms),
        "classes": [
            {"value": c["label-value"], "name": names.get(c["label-value"]), "rgba": c["rgba"]}
            for c in attrs["image-label"]["colors"]
        ],
        "probabilities": (_describe_levels(probs, _multiscale(probs)) if isinstance(probs, zarr.Group) else None),
        "slideseg": record,
    }


# --- helpers ---------------------------------------------------------------------------------


def _root_attrs(
    classes: Sequence[LabelClass], mpp: float | None, n_levels: int, record: dict[str, Any], complete: bool
) -> dict[str, Any]:
    return {
        "multiscales": multiscales_attrs("mask", n_levels, mpp, channel=False),
        "image-label": image_label_attrs(classes),
        "slideseg": {**record, "complete": complete},
    }


def _create_level(group: zarr.Group, name: str, shape: tuple[int, ...], chunks: tuple[int, ...]) -> zarr.Array[Any]:
    """A uint8 Zarr v2 array, '/'-separated chunk keys, Blosc zstd, fill 0 (replacing any old)."""
    return group.create_array(
        name,
        shape=shape,
        chunks=chunks,
        dtype="uint8",
        compressors=Blosc(**_CODEC),
        fill_value=0,
        chunk_key_encoding={"name": "v2", "separator": "/"},
        overwrite=True,
    )


def _halve_box(src: zarr.Array[Any], dst: zarr.Array[Any], box: tuple[int, int, int, int]) -> None:
    """Write one chunk of the next level: ``dst[..., box] = src[..., 2*box][..., ::2, ::2]``."""
    y0, y1, x0, x1 = box
    block = np.asarray(src[..., 2 * y0 : 2 * y1, 2 * x0 : 2 * x1])[..., ::2, ::2]
    if block.any():  # all-background chunks stay unwritten (fill value 0)
        dst[..., y0:y1, x0:x1] = block


def _check_block(what: str, block: np.ndarray, shape: tuple[int, ...], ij: tuple[int, int]) -> None:
    if not isinstance(block, np.ndarray) or block.dtype != np.uint8 or block.shape != shape:
        found = f"{block.dtype} {block.shape}" if isinstance(block, np.ndarray) else type(block).__name__
        raise ValueError(f"{what} for chunk {ij} must be a uint8 array of shape {shape}; got {found}")


def _parse_geometry(shape: tuple[int, int], chunk: int) -> tuple[tuple[int, int], int]:
    if len(shape) != 2 or min(shape) < 1 or chunk < 1:
        raise ConfigError(
            f"mask shape {tuple(shape)} with chunk {chunk}; expected (H, W) >= 1 and chunk >= 1: "
            f"pass the slide level's (H, W) and a positive chunk size"
        )
    return (int(shape[0]), int(shape[1])), int(chunk)


def _check_classes(classes: Sequence[LabelClass]) -> tuple[LabelClass, ...]:
    values = [c.value for c in classes]
    if len(set(values)) != len(values) or 0 not in values:
        raise ConfigError(
            f"class values {values}; expected distinct values including the background 0: "
            f"give every class its own value and add LabelClass(0, 'background', (0, 0, 0, 0))"
        )
    return tuple(sorted(classes, key=lambda c: c.value))


def _json_record(attrs: Mapping[str, Any]) -> dict[str, Any]:
    try:
        record: dict[str, Any] = json.loads(json.dumps(dict(attrs), allow_nan=False))
    except (TypeError, ValueError) as e:
        raise ConfigError(
            f"mask attributes are not JSON ({e}); expected plain dicts, lists, strings and "
            f"finite numbers: convert configs with to_dict() first"
        ) from e
    return record


def _clear_output(path: Path, overwrite: bool) -> None:
    """Make way for a new mask; only ever delete a directory that slideseg could have written."""
    if not os.path.lexists(path):
        return
    if not overwrite:
        raise OutputExistsError(f"{path} exists; pass --overwrite to replace it")
    if path.is_symlink() or not path.is_dir():
        raise OutputFormatError(
            f"{path} exists and is not a directory (a file or link), so it is not a slideseg "
            f"mask; refusing to replace it even with --overwrite: remove it yourself or choose "
            f"another output path"
        )
    entries = {e.name for e in path.iterdir()}
    foreign = sorted(e for e in entries - _OWN_ENTRIES if not e.isdigit())
    if entries and (foreign or "slideseg" not in _read_json(path / ".zattrs")):
        why = f"it holds {foreign[:3]}" if foreign else "its .zattrs has no 'slideseg' record"
        raise OutputFormatError(
            f"{path} exists and is not a slideseg mask ({why}); refusing to replace it even "
            f"with --overwrite: remove it yourself or choose another output path"
        )
    shutil.rmtree(path)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _array(group: zarr.Group, key: str) -> zarr.Array[Any]:
    node = group[key]
    assert isinstance(node, zarr.Array), f"{key} is not an array"
    return node


def _subgroup(group: zarr.Group, key: str) -> zarr.Group:
    node = group[key]
    assert isinstance(node, zarr.Group), f"{key} is not a group"
    return node


def _multiscale(group: zarr.Group) -> dict[str, Any]:
    attrs: dict[str, Any] = dict(group.attrs)
    return dict(attrs["multiscales"][0])


def _describe_levels(group: zarr.Group, ms: Mapping[str, Any]) -> list[dict[str, Any]]:
    out = []
    for d in ms["datasets"]:
        node = group.get(d["path"])
        out.append(
            {
                "path": d["path"],
                "shape": list(node.shape) if isinstance(node, zarr.Array) else None,
                "chunks": list(node.chunks) if isinstance(node, zarr.Array) else None,
                "scale": d["coordinateTransformations"][0]["scale"],
            }
        )
    return out
