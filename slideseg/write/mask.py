"""Write the segmentation mask as an OME-NGFF 0.4 label image (Zarr v2), chunk by chunk.

Layout of ``mask.zarr`` (the root group is the label image)::

    mask.zarr/
        .zattrs          multiscales, image-label, slideseg (how it was made; complete or not)
        0/ 1/ ...        uint8 class ids (Y, X), chunks (chunk, chunk), x2 nearest-neighbour pyramid
        probabilities/   optional multiscale image, uint8 (K, Y, X), chunks (1, chunk, chunk)
        chunks_done      uint8 (grid Y, grid X), one Zarr chunk per element: 1 once a level-0 chunk
                         (and its probabilities) is on disk; how --resume knows what is left
        tissue           optional uint8 low-resolution tissue mask that decided which chunks ran
        objects/         optional uint32 instance label image written by ``slideseg objects``

Level 0 is written by :meth:`MaskWriter.write_chunk`, one call per chunk, from any thread or
process (one writer per chunk is what Zarr v2 makes safe). Each Zarr chunk file is replaced
atomically, and a chunk is marked done only after its data is written, so a run killed at any
moment leaves every chunk either done or to be redone. :meth:`MaskWriter.finalize` then builds
the pyramid one output chunk at a time and marks the mask complete.

Reading a mask (:func:`open_mask`, :func:`read_mask`, :func:`describe_mask`, and the checks
:func:`open_mask_writer` makes) lives in :mod:`slideseg.write.mask_meta`, re-exported here.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from numcodecs import Blosc
from zarr.codecs import BloscCodec

from slideseg.errors import ConfigError, OutputExistsError, OutputFormatError
from slideseg.io.ngff import LabelClass, NgffVersion, check_version, image_label_attrs, multiscales_attrs, wrap
from slideseg.plan.tiles import grid_box, grid_boxes, pyramid_shapes
from slideseg.write.labels import ParentLevels, prepare_labels_group, register_label, resample_nearest
from slideseg.write.mask_meta import (
    DONE,
    OBJECTS,
    PREDICTION,
    PROBABILITIES,
    TISSUE,
    MaskLevels,
    check_mask_array,
    check_probabilities,
    count_done,
    describe_mask,
    group_attrs,
    mask_array,
    mask_meta,
    open_mask,
    read_done,
    read_mask,
    write_unit,
)

__all__ = ["DONE", "OBJECTS", "PREDICTION", "PROBABILITIES", "TISSUE", "MaskLevels", "MaskWriter", "create_mask",
           "describe_mask", "open_mask", "open_mask_writer", "read_mask"]

_CODEC = {"cname": "zstd", "clevel": 5, "shuffle": Blosc.BITSHUFFLE}
_WIDE_CODEC = {"cname": "zstd", "clevel": 3, "shuffle": Blosc.SHUFFLE}
# Entries a mask directory may hold; anything else means it is not ours to delete.
_OWN_ENTRIES = {".zgroup", ".zattrs", ".zmetadata", "zarr.json", PROBABILITIES, PREDICTION, DONE, TISSUE,
                f"{TISSUE}.partial", OBJECTS}


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
        version: NgffVersion = "0.4",
        into: ParentLevels | None = None,
    ) -> None:
        self.path, self.shape, self.chunk, self.n_classes = path, shape, chunk, len(classes)
        self._group, self._classes, self._mpp, self._attrs = group, classes, mpp, attrs
        self.version = version
        self.into = into
        self._level0 = _array(group, PREDICTION if into else "0")
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
        y0, y1, x0, x1 = grid_box(iy, ix, self.shape, self.chunk)
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
        y0, y1, x0, x1 = grid_box(iy, ix, self.shape, self.chunk)
        probs = None
        if self._probs is not None:
            probs = np.zeros((self.n_classes, y1 - y0, x1 - x0), np.uint8)
            probs[0] = 255
        self.write_chunk(iy, ix, np.zeros((y1 - y0, x1 - x0), np.uint8), probs)

    def done(self) -> np.ndarray:
        """Boolean (grid Y, grid X): which level-0 chunks are on disk."""
        return count_done(self._done, self.path)

    def write_tissue(self, mask: np.ndarray, attrs: Mapping[str, Any]) -> None:
        """Save the low-resolution tissue mask (bool or uint8 (h, w)) that chose the chunks to run."""
        staging = f"{TISSUE}.partial"
        arr = _create_level(self._group, staging, mask.shape, mask.shape, self.version)
        arr[...] = mask.astype(np.uint8)
        arr.attrs.put(_json_record(attrs))
        os.replace(self.path / staging, self.path / TISSUE)  # appears whole or not at all

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
        pyramids: list[tuple[zarr.Group, tuple[int, ...]]] = []
        if self.into is None:
            pyramids.append((self._group, tuple(self._level0.chunks)))
        else:
            self._write_into_levels(workers)
        if self._probs is not None:
            pyramids.append((_subgroup(self._group, PROBABILITIES), tuple(self._probs.chunks)))
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for group, chunks in pyramids:
                for level in range(1, len(shapes)):
                    src = _array(group, str(level - 1))
                    lead = src.shape[:-2]
                    dst = _create_level(group, str(level), (*lead, *shapes[level]), chunks, self.version, self.chunk)
                    boxes = grid_boxes(shapes[level], self.chunk)
                    list(pool.map(partial(_halve_box, src, dst), boxes))  # one task per chunk
        self._write_attrs(len(shapes), complete=True)
        if self.into is not None:
            register_label(self.path.parent.parent, self.path.name, self.version)
        self._finalized = True

    def _write_into_levels(self, workers: int) -> None:
        """``--into``: every level of the image gets a label level on its own pixel grid."""
        assert self.into is not None
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for path, shape in zip(self.into.paths, self.into.shapes, strict=True):
                dst = _create_level(self._group, path, shape, tuple(self._level0.chunks), self.version, self.chunk)
                list(pool.map(partial(resample_nearest, self._level0, dst), grid_boxes(shape, self.chunk)))

    def _write_attrs(self, n_levels: int, complete: bool) -> None:
        if self._probs is not None:
            probs_ms = multiscales_attrs(PROBABILITIES, n_levels, self._mpp, channel=True, version=self.version)
            _subgroup(self._group, PROBABILITIES).attrs.put(wrap(self.version, {"multiscales": probs_ms}, {}))
        root = _root_attrs(self._classes, self._mpp, n_levels, self._attrs, complete, self.version, self.into)
        self._group.attrs.put(root)


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
    ngff: str = "0.4",
    shard: int | None = None,
    into: ParentLevels | None = None,
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
    ngff
        "0.4": Zarr v2 (QuPath, napari, OMERO read it). "0.5": Zarr v3 with sharding.
    shard
        For 0.5: shard side in pixels, a multiple of ``chunk`` (default ``4 * chunk``). The shard
        is the unit :meth:`MaskWriter.write_chunk` writes, so no two writers share a shard.
    into
        Write a label of an existing image (``path`` is ``IMAGE/labels/NAME``): the prediction is
        staged in ``prediction`` and :meth:`MaskWriter.finalize` makes one label level per image
        level, on the image's pixel grids, then lists the label in ``IMAGE/labels``.
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
    version = check_version(into.version if into else ngff)
    unit = _write_unit(chunk, shard, version)
    record = _json_record({**attrs, **({"into": into.to_dict()} if into else {})})
    _clear_output(p, overwrite)
    if into is not None:
        prepare_labels_group(p.parent.parent, version)
    # Built under a temporary name and renamed into place once every array exists: a run killed
    # while creating leaves no half-made mask at ``path``, only a ``.NAME.creating`` folder that the
    # next creation removes.
    staging = p.with_name(f".{p.name}.creating")
    if staging.exists():
        shutil.rmtree(staging)
    root = _root_attrs(sorted_classes, mpp, 1, record, False, version, into)
    group = zarr.open_group(staging, mode="w-", zarr_format=2 if version == "0.4" else 3, attributes=root)
    _create_level(group, PREDICTION if into else "0", shape, (chunk, chunk), version, unit)
    grid = (math.ceil(shape[0] / unit), math.ceil(shape[1] / unit))
    _create_level(group, DONE, grid, (1, 1), version, compress=False)
    if probabilities:
        probs_ms = multiscales_attrs(PROBABILITIES, 1, mpp, channel=True, version=version)
        sub = group.create_group(PROBABILITIES, attributes=wrap(version, {"multiscales": probs_ms}, {}))
        _create_level(sub, "0", (len(sorted_classes), *shape), (1, chunk, chunk), version, unit)
    os.replace(staging, p)
    group = zarr.open_group(p, mode="r+")
    return MaskWriter(p, group, shape, unit, sorted_classes, mpp, record, version, into)


def _write_unit(chunk: int, shard: int | None, version: NgffVersion) -> int:
    if version == "0.4":
        if shard is not None:
            raise ConfigError("--shard applies to --ngff 0.5 (Zarr v3) only; drop it or add --ngff 0.5")
        return chunk
    unit = shard or 4 * chunk
    if unit % chunk:
        raise ConfigError(f"--shard {unit} must be a multiple of the chunk ({chunk} px); try {chunk * 4}")
    return unit


def open_mask_writer(path: str | os.PathLike[str]) -> MaskWriter:
    """Reopen an existing mask to write more chunks (resume, or a worker of a distributed run).

    Its metadata and arrays are checked as :func:`~slideseg.write.mask_meta.read_mask` checks them
    (:class:`~slideseg.errors.SlideReadError` if the mask is damaged).
    """
    group = open_mask(path, mode="r+")
    meta = mask_meta(group, path)
    record = {k: v for k, v in meta.record.items() if k != "complete"}
    first = meta.write_level
    level0 = mask_array(group, first, path)
    if level0 is None:
        raise OutputFormatError(f"{path} was only half created (its '{first}' array is missing: a run stopped while "
                                "creating it); run again with --overwrite to start it afresh")
    check_mask_array(level0, path, f"level {first!r}")
    if read_done(group, level0, path) is None:
        raise OutputFormatError(f"{path} has no '{DONE}' record, so what is done cannot be known; "
                                "it was written by an older slideseg: run again with --overwrite")
    # the root's scales are the image's when writing into one; the prediction grid has its own
    mpp = meta.mpp if meta.into is None else meta.source.get("mpp")
    shape = (int(level0.shape[0]), int(level0.shape[1]))
    check_probabilities(group, path, shape, len(meta.classes))
    return MaskWriter(Path(path), group, shape, write_unit(level0), meta.classes, mpp, record, meta.version or "0.4",
                      meta.into)


# --- helpers ---------------------------------------------------------------------------------


def _root_attrs(
    classes: Sequence[LabelClass], mpp: float | None, n_levels: int, record: dict[str, Any], complete: bool,
    version: NgffVersion = "0.4", into: ParentLevels | None = None,
) -> dict[str, Any]:
    ms = (into.multiscales("mask") if into is not None
          else multiscales_attrs("mask", n_levels, mpp, channel=False, version=version))
    label = image_label_attrs(classes, version)
    if into is not None:
        label["source"] = {"image": "../../"}
    ome = {"multiscales": ms, "image-label": label}
    return wrap(version, ome, {"slideseg": {**record, "complete": complete}})


def _create_level(group: zarr.Group, name: str, shape: tuple[int, ...], chunks: tuple[int, ...],
                  version: NgffVersion = "0.4", unit: int | None = None, compress: bool = True,
                  dtype: str = "uint8") -> zarr.Array[Any]:
    """A ``dtype`` (uint8) array, fill 0, replacing any old one. 0.4: Zarr v2, '/'-separated keys, Blosc zstd.
    0.5: Zarr v3 with ``dimension_names`` and, when ``unit`` exceeds the chunk, shards of
    ``unit`` x ``unit`` (full extent along any leading axis)."""
    kw: dict[str, Any] = {}
    wide = np.dtype(dtype).itemsize > 1  # ids: byte shuffle at a lower level compresses smaller and 3x faster
    if version == "0.4":
        kw["compressors"] = Blosc(**(_WIDE_CODEC if wide else _CODEC)) if compress else None
        kw["chunk_key_encoding"] = {"name": "v2", "separator": "/"}
    else:
        codec = {"cname": "zstd", "clevel": 3, "shuffle": "shuffle"} if wide else {"cname": "zstd", "clevel": 5,
                                                                                   "shuffle": "bitshuffle"}
        kw["compressors"] = BloscCodec(**codec) if compress else None  # type: ignore[arg-type]
        kw["dimension_names"] = ("c", "y", "x")[-len(shape):]
        if unit and unit > chunks[-1]:
            kw["shards"] = (*shape[:-2], unit, unit)
    return group.create_array(name, shape=shape, chunks=chunks, dtype=dtype, fill_value=0, overwrite=True, **kw)


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
    record = group_attrs(path).get("slideseg")
    into_paths = set((record or {}).get("into", {}).get("paths", [])) if isinstance(record, dict) else set()
    foreign = sorted(e for e in entries - _OWN_ENTRIES - into_paths if not e.isdigit())
    if entries and (foreign or record is None):
        why = f"it holds {foreign[:3]}" if foreign else "its attributes have no 'slideseg' record"
        raise OutputFormatError(
            f"{path} exists and is not a slideseg mask ({why}); refusing to replace it even "
            f"with --overwrite: remove it yourself or choose another output path"
        )
    shutil.rmtree(path)


def _array(group: zarr.Group, key: str) -> zarr.Array[Any]:
    node = group[key]
    assert isinstance(node, zarr.Array), f"{key} is not an array"
    return node


def _subgroup(group: zarr.Group, key: str) -> zarr.Group:
    node = group[key]
    assert isinstance(node, zarr.Group), f"{key} is not a group"
    return node
