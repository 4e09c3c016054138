"""Reading a slideseg mask: its metadata validated before any array is used, its arrays checked
against each other before any pixel is read, and every read done inside
:func:`slideseg.io.guard.reading`.

A mask on disk is a claim like any input file: its ``.zattrs`` may have been edited, its
``.zarray`` files truncated, its chunks damaged. So before a tool reads it:

* the NGFF ``multiscales`` is parsed with :func:`slideseg.io.ngff.parse_multiscale` (axes y, x;
  scales finite and > 0), the classes with :func:`slideseg.io.ngff.label_classes`, and the
  ``slideseg`` record's fields that tools use (``source``, ``into``) are type-checked;
* every level is a 2-D uint8 array with sides of 1 to ``MAX_SIDE`` px and chunks that can be
  decoded, level ``l`` has the shape of level 0 halved ``l`` times (or, for a label written into
  an image, the shape the record gives), and ``chunks_done`` is uint8 with one element per
  level-0 chunk; so a corrupt shape is refused instead of read for hours or allocated whole.

A damaged mask raises :class:`~slideseg.errors.SlideReadError`; a directory that is not a slideseg
mask at all (or one that is incomplete) raises :class:`~slideseg.errors.OutputFormatError`.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from slideseg.errors import ConfigError, OutputFormatError, SlideReadError
from slideseg.io.checks import MAX_DECODE_BYTES
from slideseg.io.formats import MPP_RANGE
from slideseg.io.guard import one_line, reading
from slideseg.io.ngff import (
    VERSIONS,
    LabelClass,
    Multiscale,
    NgffVersion,
    label_classes,
    ngff_multiscales,
    parse_multiscale,
    unwrap,
)
from slideseg.plan.tiles import MAX_SIDE, level_shape
from slideseg.write.labels import ParentLevels

__all__ = [
    "DONE",
    "OBJECTS",
    "OBJECTS_KIND",
    "PREDICTION",
    "PROBABILITIES",
    "TISSUE",
    "MaskLevels",
    "MaskMeta",
    "check_mask_array",
    "check_probabilities",
    "count_done",
    "describe_mask",
    "instances_record",
    "mask_array",
    "mask_meta",
    "open_mask",
    "parse_mask_attrs",
    "read_done",
    "read_mask",
    "read_rows",
    "write_unit",
]

PROBABILITIES = "probabilities"
PREDICTION = "prediction"
DONE = "chunks_done"
TISSUE = "tissue"
OBJECTS = "objects"
"""The instance image ``slideseg objects`` writes inside a mask (see :mod:`slideseg.write.instances`)."""
OBJECTS_KIND = "objects"
"""``kind`` in the record of an instance image slideseg wrote."""
_REQUIRED_ATTRS = ("multiscales", "image-label")
_DONE_BAND = 1 << 22
"""Most ``chunks_done`` elements read at once."""


def _damaged(path: object, what: str, expected: str, found: Any) -> SlideReadError:
    text = repr(found)
    text = text if len(text) <= 80 else text[:77] + "..."
    return SlideReadError(
        f"{one_line(path)}: {what} is {one_line(text)}; expected {expected}: the mask is damaged: write it again "
        f"with slideseg predict --overwrite"
    )


# --- opening and metadata --------------------------------------------------------------------------


def open_mask(path: str | os.PathLike[str], mode: str = "r") -> zarr.Group:
    """Open a mask written by slideseg (read-only unless ``mode='r+'``), NGFF 0.4 or 0.5.

    Raises
    ------
    SlideReadError
        ``path`` does not exist.
    OutputFormatError
        ``path`` is not a Zarr group with slideseg's label-image attributes.
    """
    p = Path(path)
    if not p.exists():
        raise SlideReadError(f"{p} does not exist; expected a slideseg mask directory: check the path")
    try:
        with reading(p, "open {path} as a Zarr group"):
            group = zarr.open_group(p, mode=mode)  # type: ignore[arg-type]
            attrs = dict(group.attrs)
    except SlideReadError as e:
        cause = e.__cause__ or e
        raise OutputFormatError(
            f"{one_line(p)} is not a Zarr group ({type(cause).__name__}: {one_line(cause, 120)}); expected a "
            f"slideseg mask (OME-Zarr): pass the mask.zarr written by slideseg predict"
        ) from e
    _check_is_mask(attrs, p)
    return group


def _check_is_mask(attrs: Mapping[str, Any], path: str | os.PathLike[str]) -> None:
    """Refuse group attributes without slideseg's label-image keys (``OutputFormatError``)."""
    _, ome = unwrap(attrs)
    missing = [k for k in _REQUIRED_ATTRS if k not in ome] + ([] if "slideseg" in attrs else ["slideseg"])
    if missing:
        raise OutputFormatError(
            f"{path} is not a slideseg mask: expected attributes {[*_REQUIRED_ATTRS, 'slideseg']}, "
            f"{', '.join(missing)} missing: pass the mask.zarr written by slideseg predict"
        )


@dataclass(frozen=True)
class MaskMeta:
    """The validated attributes of a mask."""

    version: NgffVersion | None
    multiscale: Multiscale
    """The label image's levels: paths and scales, axes ``YX``."""
    classes: tuple[LabelClass, ...]
    record: dict[str, Any]
    """How the mask was made (``.zattrs["slideseg"]``): configs, source slide, completeness."""
    source: dict[str, Any]
    """The record's ``source`` (the slide), its fields that tools use type-checked."""
    into: ParentLevels | None
    """For a label written into an image (``predict --into``): that image's levels."""
    mpp: float | None
    """Micrometres per pixel of level 0: its NGFF scale when the axes are in micrometres and it is
    plausible, else None."""

    @property
    def write_level(self) -> str:
        """The array ``predict`` writes chunk by chunk (level 0, or the staged prediction of a label)."""
        return PREDICTION if self.into is not None else "0"


def mask_meta(group: zarr.Group, path: str | os.PathLike[str]) -> MaskMeta:
    """:func:`parse_mask_attrs` of an open mask's attributes."""
    with reading(path, "read the attributes of {path}"):
        attrs = dict(group.attrs)
    return parse_mask_attrs(attrs, path)


def parse_mask_attrs(attrs: Mapping[str, Any], path: str | os.PathLike[str]) -> MaskMeta:
    """Validate a mask's group attributes (no I/O).

    Raises
    ------
    OutputFormatError
        The attributes are not a slideseg mask's (no ``multiscales``, ``image-label`` or ``slideseg``).
    SlideReadError
        They are, but malformed: an NGFF version other than 0.4 or 0.5, a multiscale whose axes are
        not y, x or whose scales are not finite numbers > 0, malformed classes, or a record whose
        ``source`` or ``into`` fields have the wrong types.
    """
    _check_is_mask(attrs, path)
    version, ome = unwrap(attrs)
    if version is not None and version not in VERSIONS:
        raise _damaged(path, "its NGFF version", "0.4 or 0.5", version)
    record = attrs["slideseg"]
    if not isinstance(record, Mapping):
        raise _damaged(path, "its 'slideseg' record", "an object (how the mask was made)", record)
    multiscales, _ = ngff_multiscales(ome)
    assert multiscales is not None  # "multiscales" is in ome
    ms = parse_multiscale(multiscales[0], str(path))
    if ms.axes != "YX":
        raise _damaged(path, "its axes", "y, x (a 2-D label image)", ms.axes.lower())
    try:
        classes = label_classes(ome)
    except (OutputFormatError, ConfigError) as e:
        raise SlideReadError(f"{path}: {e}") from None
    scale = ms.scales[0][-1]
    mpp = scale if ms.units[-1] == "micrometer" and MPP_RANGE[0] <= scale <= MPP_RANGE[1] else None
    into = _parse_into(record.get("into"), ms, path)
    return MaskMeta(version, ms, classes, dict(record), _parse_source(record.get("source"), path), into, mpp)


def _is_int(value: Any, low: int = 0) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= MAX_SIDE


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def _is_shape(value: Any) -> bool:
    return isinstance(value, list | tuple) and len(value) == 2 and all(_is_int(v, 1) for v in value)


_SOURCE_FIELDS = {
    "path": ("a string", lambda v: isinstance(v, str)),
    "series": ("an integer >= 0 or null", lambda v: v is None or _is_int(v)),
    "level": ("an integer >= 0", _is_int),
    "resample_factor": ("a finite number > 0", _is_number),
    "level0_shape": ("[height, width] in px", _is_shape),
    "shape": ("[height, width] in px", _is_shape),
}


def _parse_source(source: Any, path: str | os.PathLike[str]) -> dict[str, Any]:
    """The record's ``source``: absent is ``{}``; present, it must be an object whose fields that
    tools read (path, series, level, resample_factor, level0_shape, shape) have their types."""
    if source is None:
        return {}
    if not isinstance(source, Mapping):
        raise _damaged(path, "the record of its source slide", "an object", source)
    for key, (expected, ok) in _SOURCE_FIELDS.items():
        if key in source and not ok(source[key]):
            raise _damaged(path, f"the source slide's '{key}' in its record", expected, source[key])
    return dict(source)


def _parse_into(into: Any, ms: Multiscale, path: str | os.PathLike[str]) -> ParentLevels | None:
    """The record's ``into`` (a label written into an image): the image's levels, one per label level."""
    if into is None:
        return None
    ok = (isinstance(into, Mapping) and isinstance(into.get("paths"), list) and isinstance(into.get("shapes"), list)
          and isinstance(into.get("scales"), list) and len(into["paths"]) == len(into["shapes"]) == len(into["scales"])
          and list(into["paths"]) == list(ms.paths) and all(_is_shape(s) for s in into["shapes"])
          and all(isinstance(s, list) and len(s) == 2 and all(_is_number(v) for v in s) for s in into["scales"])
          and (into.get("unit") is None or isinstance(into.get("unit"), str)) and into.get("version") in VERSIONS)
    if not ok:
        raise _damaged(path, "the record of the image it labels ('into')", "the image's level paths (those of its "
                       "multiscales), shapes, scales > 0, unit and NGFF version", into)
    return ParentLevels.from_dict(into)


# --- arrays --------------------------------------------------------------------------------------


def mask_array(group: zarr.Group, key: str, path: str | os.PathLike[str]) -> zarr.Array[Any] | None:
    """The array ``key`` of a mask, or None where there is none (its metadata read inside ``reading``)."""
    with reading(path, f"open the array '{key}' of {{path}}"):
        node = group.get(key)
        if isinstance(node, zarr.Array):
            _ = node.shape, node.chunks, node.dtype, getattr(node, "shards", None)  # parsed now, not mid-read
    return node if isinstance(node, zarr.Array) else None


def check_mask_array(array: zarr.Array[Any], path: str | os.PathLike[str], what: str, ndim: int = 2,
                     shape: tuple[int, ...] | None = None) -> None:
    """Refuse a mask array that is not uint8 with ``ndim`` axes (of ``shape``, if given), sides of
    1 to ``MAX_SIDE`` px, and chunks of at least one and at most ``MAX_DECODE_BYTES`` elements."""
    found = tuple(int(n) for n in array.shape)
    if array.ndim != ndim or np.dtype(array.dtype) != np.uint8:
        raise _damaged(path, what, f"a {ndim}-D uint8 array", f"{array.dtype} {found}")
    if shape is not None and found != shape:
        raise _damaged(path, f"the shape of {what}", f"{shape} (from level 0)", found)
    if not all(1 <= n <= MAX_SIDE for n in found):
        raise _damaged(path, f"the shape of {what}", f"sides of 1 to {MAX_SIDE} px", found)
    chunks = tuple(int(n) for n in array.chunks)
    if not 1 <= math.prod(chunks) <= MAX_DECODE_BYTES or min(chunks) < 1:
        expected = f"sides >= 1 and at most {MAX_DECODE_BYTES} elements"
        raise _damaged(path, f"the chunk shape of {what}", expected, chunks)


def write_unit(array: zarr.Array[Any]) -> int:
    """The side of the block ``predict`` writes at once: the shard (NGFF 0.5) or the chunk."""
    return int((getattr(array, "shards", None) or array.chunks)[0])


def read_done(group: zarr.Group, level0: zarr.Array[Any], path: str | os.PathLike[str]) -> zarr.Array[Any] | None:
    """The ``chunks_done`` array (None if the mask has none), checked to hold one uint8 element per
    chunk (or shard) of ``level0`` before anything is read from it."""
    done = mask_array(group, DONE, path)
    if done is None:
        return None
    unit = write_unit(level0)
    grid = tuple(-(-int(n) // unit) for n in level0.shape)
    check_mask_array(done, path, f"its '{DONE}' record", shape=grid)
    return done


def check_probabilities(group: zarr.Group, path: str | os.PathLike[str], shape: tuple[int, int],
                        n_classes: int) -> None:
    """If the mask has probabilities, level 0 of them must be uint8 ``(n_classes, *shape)``."""
    with reading(path, f"open the group '{PROBABILITIES}' of {{path}}"):
        present = PROBABILITIES in group
    if not present:
        return
    probs = mask_array(group, f"{PROBABILITIES}/0", path)
    if probs is None:
        raise _damaged(path, f"its '{PROBABILITIES}/0' array", "a 3-D uint8 array", "missing")
    check_mask_array(probs, path, f"'{PROBABILITIES}/0'", ndim=3, shape=(n_classes, *shape))


def count_done(done: zarr.Array[Any], path: str | os.PathLike[str]) -> np.ndarray:
    """Boolean (grid Y, grid X) of ``done``, read in bands of rows (a checked array, see :func:`read_done`)."""
    gy, gx = (int(n) for n in done.shape)
    band = max(1, _DONE_BAND // gx)
    out = np.zeros((gy, gx), bool)
    for y in range(0, gy, band):
        out[y:y + band] = read_rows(done, y, min(gy, y + band), path, f"'{DONE}'") != 0
    return out


def read_rows(array: zarr.Array[Any], y0: int, y1: int, path: str | os.PathLike[str], what: str) -> np.ndarray:
    """Rows ``y0:y1`` of a mask array (all columns), read inside ``reading``."""
    with reading(path, f"read rows {y0}:{y1} of {what} in {{path}}"):
        return np.asarray(array[y0:y1])


# --- reading whole masks -------------------------------------------------------------------------


@dataclass(frozen=True)
class MaskLevels:
    """A slideseg mask opened for reading: its 2-D levels (level 0 first), classes and record."""

    path: Path
    version: NgffVersion | None
    levels: tuple[zarr.Array[Any], ...]
    classes: tuple[LabelClass, ...]
    record: Mapping[str, Any]
    """How the mask was made (``.zattrs["slideseg"]``): configs, source slide, completeness."""
    mpp: float | None = None
    """Micrometres per pixel of level 0 (its NGFF scale, when the axes are in micrometres)."""

    @property
    def names(self) -> dict[int, str]:
        """Class name by value."""
        return {c.value: c.name for c in self.classes}

    @property
    def source(self) -> dict[str, Any]:
        """What the record says of the slide the mask was made from (path, level, pixel size...)."""
        return dict(self.record.get("source") or {})


def read_mask(path: str | os.PathLike[str], *, complete: bool = True) -> MaskLevels:
    """Open a slideseg mask for reading, NGFF 0.4 or 0.5: its levels, classes and record, all checked.

    Raises
    ------
    SlideReadError
        The mask is damaged (see the module's docstring).
    OutputFormatError
        As :func:`open_mask`; also when a level is missing, or, with ``complete=True``, when the mask
        is incomplete (a predict run that stopped).
    """
    group = open_mask(path)
    meta = mask_meta(group, path)
    if complete and not meta.record.get("complete", False):
        raise OutputFormatError(f"{path} is incomplete (a predict run that stopped); expected a finished mask: "
                                "finish it with `slideseg predict ... --resume` first")
    paths = list(meta.multiscale.paths)
    levels = [mask_array(group, p, path) for p in paths]
    if not all(a is not None for a in levels):
        raise OutputFormatError(f"{path} lists levels {paths} that are not all arrays; expected a slideseg "
                                "mask: write it again with slideseg predict")
    arrays = [a for a in levels if a is not None]
    check_mask_array(arrays[0], path, f"level {paths[0]!r}")
    shape0 = (int(arrays[0].shape[0]), int(arrays[0].shape[1]))
    for i, (name, array) in enumerate(zip(paths, arrays, strict=True)):
        shape = meta.into.shapes[i] if meta.into is not None else level_shape(shape0, i)
        check_mask_array(array, path, f"level {name!r}", shape=tuple(shape))
    first = arrays[0] if meta.into is None else mask_array(group, PREDICTION, path)
    if first is not None:
        if meta.into is not None:
            check_mask_array(first, path, f"'{PREDICTION}' array")
        read_done(group, first, path)
    return MaskLevels(Path(path), meta.version, tuple(arrays), meta.classes, meta.record, meta.mpp)


def describe_mask(path: str | os.PathLike[str]) -> dict[str, Any]:
    """JSON-able summary of a mask: levels, pixel size, classes, provenance, completeness.

    Raises
    ------
    SlideReadError, OutputFormatError
        As :func:`read_mask` (an incomplete mask is described, not refused).
    """
    group = open_mask(path)
    meta = mask_meta(group, path)
    first = mask_array(group, meta.write_level, path)
    done = None
    if first is not None:
        check_mask_array(first, path, f"level {meta.write_level!r}")
        done = read_done(group, first, path)
    probs = None
    with reading(path, f"open the group '{PROBABILITIES}' of {{path}}"):
        node = group.get(PROBABILITIES)
        sub_attrs = dict(node.attrs) if isinstance(node, zarr.Group) else None
    if isinstance(node, zarr.Group) and sub_attrs is not None:
        multiscales, _ = ngff_multiscales(sub_attrs)
        if multiscales is None:
            raise _damaged(path, f"its '{PROBABILITIES}' group", "an NGFF multiscale image", sub_attrs)
        probs = _describe_levels(node, parse_multiscale(multiscales[0], f"{path}/{PROBABILITIES}"), path)
    return {
        "path": str(Path(path)),
        "ngff": meta.version,
        "complete": bool(meta.record.get("complete", False)),
        "chunks_done": int(count_done(done, path).sum()) if done is not None else None,
        "chunks_total": int(np.prod(done.shape)) if done is not None else None,
        "mpp": meta.mpp,
        "levels": _describe_levels(group, meta.multiscale, path),
        "classes": [{"value": c.value, "name": c.name, "rgba": list(c.rgba)} for c in meta.classes],
        "probabilities": probs,
        "slideseg": meta.record,
    }


def _describe_levels(group: zarr.Group, ms: Multiscale, path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Path, shape, chunks and scale of each level (shape and chunks None where the array is missing)."""
    out = []
    for name, scale in zip(ms.paths, ms.scales, strict=True):
        node = mask_array(group, name, path)
        out.append({"path": name, "shape": None if node is None else [int(n) for n in node.shape],
                    "chunks": None if node is None else [int(n) for n in node.chunks], "scale": list(scale)})
    return out


def instances_record(mask_path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The record of ``MASK/objects`` (with ``complete``), or None when there is none.

    Raises
    ------
    OutputFormatError
        ``MASK/objects`` exists but slideseg did not write it.
    """
    path = Path(mask_path) / OBJECTS
    if not os.path.lexists(path):
        return None
    record = group_attrs(path).get("slideseg")
    if path.is_symlink() or not isinstance(record, dict) or record.get("kind") != OBJECTS_KIND:
        raise OutputFormatError(f"{path} exists but is not an instance image slideseg wrote; refusing to touch it: "
                                "move it away or remove it yourself")
    return record


def group_attrs(path: Path) -> dict[str, Any]:
    """The attributes of the Zarr group at ``path`` (v2 ``.zattrs`` or v3 ``zarr.json``) read as plain
    JSON, without zarr; {} where there are none or they cannot be read."""
    attrs = _json_object(path / ".zattrs") or _json_object(path / "zarr.json").get("attributes", {})
    return attrs if isinstance(attrs, dict) else {}


def _json_object(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
