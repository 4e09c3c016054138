"""Mask → GeoJSON: one polygon per connected region of each class, holes kept, for QuPath.

Polygons come from :mod:`slideseg.tools.trace` (pixel edges, so they rasterise back to the mask exactly;
streamed in stripes, so memory stays flat), are scaled to slide level-0 pixels and written as a
``FeatureCollection`` as QuPath imports it (``objectType``, ``classification`` name and colour).

With ``objects=True`` the features are the objects ``slideseg objects`` numbered instead: one
detection per object, traced from the instance image ``MASK/objects``, with a stable UUID ``id``
and the object's row of the object table as its ``measurements``.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import IO, Any

import numpy as np

from slideseg.errors import ConfigError, OutputExistsError, OutputFormatError, SlideReadError
from slideseg.io.checks import check_block
from slideseg.io.guard import reading
from slideseg.io.slide import open_slide
from slideseg.tools.trace import Polygon, iter_polygons, trace_polygons
from slideseg.write.instances import instances_record
from slideseg.write.labels import ParentLevels
from slideseg.write.mask import OBJECTS, MaskLevels, read_mask
from slideseg.write.mask_meta import read_rows

__all__ = [
    "OBJECT_BAND_ROWS",
    "OBJECT_TYPES",
    "STRIPE_PIXELS",
    "GeoJSONResult",
    "Level0Scale",
    "Polygon",
    "export_geojson",
    "level0_scale",
    "objects_namespace",
    "parse_classes",
    "trace_polygons",
]

STRIPE_PIXELS = 1 << 22
"""Pixels traced at once (a stripe of full rows): bounds memory to ~50 bytes per stripe pixel."""
OBJECT_TYPES = ("annotation", "detection")
"""QuPath object types a feature can be imported as."""


@dataclass(frozen=True)
class Level0Scale:
    """How a traced mask level maps to slide level-0 pixels: ``x0 = x * sx``, ``y0 = y * sy``."""

    sx: float
    sy: float
    how: str
    """Where the factors come from, in words (an assumption is said to be one)."""
    assumed: bool = False
    """True when the slide could not be opened and the factors are a guess."""


@dataclass(frozen=True)
class GeoJSONResult:
    """What :func:`export_geojson` wrote: features, polygons per class name, polygons dropped
    for ``min_area``, the mask level traced and its scale to slide level 0."""

    output: Path
    level: int
    features: int
    polygons: dict[str, int]
    dropped: int
    scale: Level0Scale
    seconds: float


def export_geojson(mask_path: str | os.PathLike[str], output: str | os.PathLike[str], *, level: int = 0,
                   min_area: float = 0.0, classes: str | Sequence[int | str] | None = None,
                   object_type: str | None = None, by_class: bool = False,
                   slide_path: str | os.PathLike[str] | None = None, overwrite: bool = False,
                   objects: bool = False) -> GeoJSONResult:
    """Write the regions of a mask as a GeoJSON FeatureCollection in slide level-0 pixels (QuPath).

    Parameters
    ----------
    mask_path
        A complete mask written by ``slideseg predict``.
    output
        The ``.geojson`` file; written to a temporary file, then renamed.
    level
        Mask pyramid level to trace: 0 is exact; level ``l`` is the x2**l nearest-neighbour
        reduction (smaller files; regions thinner than 2**l px vanish).
    min_area
        Drop regions smaller than this many square pixels of slide level 0 (holes subtracted).
    classes
        Values or names (``"1,2"``, ``[1, "stroma"]``); default: all but the background 0.
    object_type
        QuPath object type: ``"annotation"`` or ``"detection"`` (lighter for many objects);
        default: annotation for regions, detection for objects.
    by_class
        One MultiPolygon feature per class instead of one Polygon feature per region.
    slide_path
        The slide the mask was made from, if it moved; read only to scale a mask that is not at
        slide level 0 (see :func:`level0_scale`).
    overwrite
        Replace an existing ``output``.
    objects
        Export the objects of ``MASK/objects`` (written by ``slideseg objects``) instead of the
        regions: one feature per object (a MultiPolygon where an 8-connected object has parts that
        touch only at corners), its UUID ``id`` the same on every export of the same objects, its
        table row under ``measurements``. Traces level 0; ``slide_path`` is not needed (the
        objects record their scale).

    Raises
    ------
    OutputExistsError, OutputFormatError, ConfigError, SlideReadError
        Existing output, not a (complete) mask, bad option, unreadable slide.
    """
    t0 = time.perf_counter()

    out = Path(output)
    kind = object_type or ("detection" if objects else "annotation")
    _check_args(out, overwrite, min_area, kind)
    mask = read_mask(mask_path)
    if objects:
        return _export_objects(mask, out, level, min_area, classes, kind, by_class, t0)
    arrays = mask.levels
    if not 0 <= level < len(arrays):
        shapes = "; ".join(f"{i}: {a.shape[0]}x{a.shape[1]}" for i, a in enumerate(arrays))
        raise ConfigError(f"--level {level} is out of range: {mask_path} has {len(arrays)} levels ({shapes}); "
                          f"pass --level between 0 and {len(arrays) - 1}")
    names = mask.names
    colours = {c.value: list(c.rgba[:3]) for c in mask.classes}
    values = parse_classes(classes, names)
    scale = mask_level_scale(mask, 0, slide_path)
    traced = mask_level_scale(mask, level, slide_path) if level else scale
    array = arrays[level]
    shape = (int(array.shape[0]), int(array.shape[1]))
    sx, sy = traced.sx, traced.sy
    rows = _stripe_rows(shape[1], int(array.chunks[0]))
    polygons = iter_polygons(partial(read_rows, array, path=mask_path, what=f"level {level}"), shape, values, rows)
    meta = {"mask": str(Path(mask_path).resolve()), "level": level, "scale_to_level0": [sx, sy],
            "scale_how": scale.how, "min_area": min_area, "object_type": kind}
    counts = dict.fromkeys((names[v] for v in values), 0)
    dropped = 0
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        with tmp.open("w") as f, tempfile.TemporaryDirectory(dir=out.parent) as parts:
            writer = _FeatureWriter(f, kind, Path(parts) if by_class else None, names, colours)
            for poly in polygons:
                if poly.area * sx * sy < min_area:
                    dropped += 1
                    continue
                writer.add(poly.value, _coordinates(poly, sx, sy))
                counts[names[poly.value]] += 1
            writer.finish({**meta, "polygons": counts, "dropped": dropped})
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return GeoJSONResult(out, level, writer.features, counts, dropped, scale, time.perf_counter() - t0)


OBJECT_BAND_ROWS = 128
"""Fewest rows of the instance image held at once while objects are traced (more for narrow images)."""
NOT_MEASUREMENTS = ("class_name",)
"""Table columns left out of a feature's ``measurements`` (QuPath measurements are numbers; the
class name is the feature's ``classification``)."""


def _export_objects(mask: MaskLevels, out: Path, level: int, min_area: float,
                    classes: str | Sequence[int | str] | None, object_type: str, by_class: bool,
                    t0: float) -> GeoJSONResult:
    """:func:`export_geojson` with ``objects=True``: objects in id order, joined to their table rows."""
    import pyarrow.parquet as pq
    import zarr

    if level != 0 or by_class:
        raise ConfigError("--objects traces every object at level 0, one feature each; drop --level and --by-class")
    record = instances_record(mask.path)
    if record is None or not record.get("complete"):
        state = "has no objects/" if record is None else "has an unfinished objects/"
        raise OutputFormatError(f"{mask.path} {state}; expected the objects of the mask: run `slideseg objects "
                                f"{mask.path}` first")
    table = Path(str(record.get("table", "")))
    with reading(table, "read the object table {path}"):
        source = pq.ParquetFile(table, pre_buffer=False) if table.is_file() else None
        meta = json.loads((source.schema_arrow.metadata or {}).get(b"slideseg", b"{}")) if source else {}
    if source is None or meta.get("mask_record_sha256") != record.get("mask_record_sha256") or \
            meta.get("objects") != record.get("objects"):
        raise OutputFormatError(f"the object table {table} is missing or not that of {mask.path / OBJECTS}; expected "
                                f"the table slideseg objects wrote with it: run `slideseg objects {mask.path} "
                                "--overwrite`")
    scale = _objects_scale(record, mask.path)
    sx, sy = scale.sx, scale.sy
    names = mask.names
    colours = {c.value: list(c.rgba[:3]) for c in mask.classes}
    values = set(parse_classes(classes, names))
    namespace = objects_namespace(record)
    where = mask.path / OBJECTS / "0"
    with reading(where, "open the instance image {path}"):
        instances = zarr.open_array(where, mode="r")
    if instances.ndim != 2 or tuple(instances.shape) != tuple(mask.levels[0].shape) or instances.dtype != np.uint32:
        raise SlideReadError(f"{where} is {instances.dtype} {tuple(instances.shape)}; expected uint32 "
                             f"{tuple(mask.levels[0].shape)} (the mask's level 0): it is damaged: run `slideseg "
                             f"objects {mask.path} --overwrite`")
    check_block(instances.chunks, 4, where, "a chunk of the instance image")
    band = _RowBand(instances, max(OBJECT_BAND_ROWS, STRIPE_PIXELS // max(int(instances.shape[1]), 1)), where)
    counts = dict.fromkeys((names[v] for v in sorted(values)), 0)
    dropped = 0
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        with tmp.open("w") as f:
            writer = _FeatureWriter(f, object_type, None, names, colours)
            for row in _rows(source):
                value = int(row["class"])
                if value not in values:
                    continue
                if row["pixels"] * sx * sy < min_area:
                    dropped += 1
                    continue
                polygons = band.trace(int(row["id"]), _mask_box(row, sx, sy))
                coords = [_coordinates(p, sx, sy) for p in polygons]
                writer.add(value, coords[0] if len(coords) == 1 else coords, str(uuid.uuid5(namespace, str(row["id"]))),
                           _measurements(row), "Polygon" if len(coords) == 1 else "MultiPolygon")
                counts[names[value]] += 1
            writer.finish({"mask": str(mask.path.resolve()), "objects": str(mask.path.resolve() / OBJECTS),
                           "table": str(table.resolve()), "level": 0, "scale_to_level0": [sx, sy],
                           "scale_how": scale.how, "min_area": min_area, "object_type": object_type,
                           "polygons": counts, "dropped": dropped})
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return GeoJSONResult(out, 0, writer.features, counts, dropped, scale, time.perf_counter() - t0)


def _objects_scale(record: Mapping[str, Any], mask: Path) -> Level0Scale:
    """The scale to slide level 0 that ``slideseg objects`` recorded, checked."""
    scale = record.get("level0_scale")
    sx, sy = (scale.get("sx"), scale.get("sy")) if isinstance(scale, Mapping) else (None, None)
    if not all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) and v > 0
               for v in (sx, sy)):
        raise SlideReadError(f"{mask / OBJECTS}: its record's level0_scale is {scale!r:.80}; expected "
                             f"{{'sx': number > 0, 'sy': number > 0}}: run `slideseg objects {mask} --overwrite`")
    assert isinstance(scale, Mapping)
    return Level0Scale(float(sx), float(sy), str(scale.get("how", "")))  # type: ignore[arg-type]


def objects_namespace(record: Mapping[str, Any]) -> uuid.UUID:
    """The UUID namespace of one set of objects: from the hash of the mask's record and the options
    ``slideseg objects`` ran with, so exporting the same objects again gives the same feature ids
    (``uuid5(namespace, str(object id))``) and other objects (another mask, other options) others."""
    key = json.dumps({"mask": record.get("mask_record_sha256"), "options": record.get("objects_config")},
                     sort_keys=True, separators=(",", ":"))
    return uuid.uuid5(uuid.NAMESPACE_URL, f"slideseg:objects:{key}")


def _rows(source: Any) -> Iterator[dict[str, Any]]:
    """Rows of the object table in file order (sorted by id), a row group at a time."""
    for batch in source.iter_batches(batch_size=4096, use_threads=False):
        yield from batch.to_pylist()


def _measurements(row: Mapping[str, Any]) -> dict[str, Any]:
    """A table row as QuPath measurements: numeric columns, missing values (NaN) left out."""
    return {k: v for k, v in row.items()
            if k not in NOT_MEASUREMENTS and v is not None and not (isinstance(v, float) and math.isnan(v))}


def _mask_box(row: Mapping[str, Any], sx: float, sy: float) -> tuple[int, int, int, int]:
    """``(y0, y1, x0, x1)`` of an object's bounding box in mask pixels, from its level-0 columns."""
    return (round(row["bbox_y0_px"] / sy), round(row["bbox_y1_px"] / sy), round(row["bbox_x0_px"] / sx),
            round(row["bbox_x1_px"] / sx))


class _RowBand:
    """Full-width rows of the instance image held in memory for the objects being traced.

    Objects come in id order, which is raster order of their first pixel, so the top of their
    boxes only moves down: the band is reloaded from an object's top when it does not hold the
    object's box. Objects taller than the band are traced from the image in stripes.
    """

    def __init__(self, array: Any, rows: int, path: Path) -> None:
        self.array, self.rows, self.path = array, rows, path
        self.y0, self.y1 = 0, 0
        self.data = np.zeros((0, int(array.shape[1])), np.uint32)

    def trace(self, oid: int, box: tuple[int, int, int, int]) -> list[Polygon]:
        """Polygons (mask pixels) of object ``oid`` inside ``box``: one per 4-connected part."""
        y0, y1, x0, x1 = box
        if y1 - y0 <= self.rows:
            if not (self.y0 <= y0 and y1 <= self.y1):
                self.y0, self.y1 = y0, min(int(self.array.shape[0]), y0 + self.rows)
                self.data = read_rows(self.array, self.y0, self.y1, self.path, "the instance image")
            window = self.data[y0 - self.y0:y1 - self.y0, x0:x1]
            found = trace_polygons((window == oid).view(np.uint8), [1])
        else:
            stripe = max(1, STRIPE_PIXELS // max(x1 - x0, 1))

            def read(a: int, b: int) -> np.ndarray:
                with reading(self.path, f"read rows {y0 + a}:{y0 + b} of the instance image {{path}}"):
                    block = np.asarray(self.array[y0 + a:y0 + b, x0:x1])
                return (block == oid).view(np.uint8)

            found = list(iter_polygons(read, (y1 - y0, x1 - x0), [1], stripe))
        if not found:
            raise OutputFormatError(f"object {oid} of the table has no pixels in its box of the instance image; "
                                    "expected the table and image of one run: rerun slideseg objects --overwrite")
        shift = np.array([x0, y0], np.int64)
        polygons = [Polygon(oid, _from_top_left(p.exterior + shift),
                            tuple(sorted((_from_top_left(h + shift) for h in p.holes), key=_top_left)), p.area)
                    for p in found]
        return sorted(polygons, key=lambda p: _top_left(p.exterior))


def _top_left(ring: np.ndarray) -> tuple[int, int]:
    """``(y, x)`` of a ring's top-left vertex."""
    y = int(ring[:, 1].min())
    return y, int(ring[ring[:, 1] == y, 0].min())


def _from_top_left(ring: np.ndarray) -> np.ndarray:
    """The ring started at its top-left vertex (same direction), so that an object's polygons, their
    rings and their vertices come in one order however the image was read."""
    y, x = _top_left(ring)
    start = int(np.flatnonzero((ring[:, 1] == y) & (ring[:, 0] == x))[0])
    return np.roll(ring, -start, axis=0)


def mask_level_scale(mask: MaskLevels, level: int, slide_path: str | os.PathLike[str] | None = None
                     ) -> Level0Scale:
    """Factors from pixels of ``level`` of a mask to its slide's level-0 pixels.

    A mask written into an image (``predict --into``) follows that image's own pyramid, whatever
    its factors (x2, x4...): its level ``l`` maps to the image's level 0 by the ratio of the scales
    the image declares, and no slide is needed. Any other mask is a x2 pyramid over the grid it was
    predicted on: :func:`level0_scale` of level 0, times ``2**level``.
    """
    into = mask.record.get("into")
    if into:
        parent = ParentLevels.from_dict(into)
        (y0, x0), (yl, xl) = parent.scales[0], parent.scales[level]
        return Level0Scale(xl / x0, yl / y0, f"the image's level {level} over its level 0 (its own pyramid)")
    base = level0_scale(tuple(mask.levels[0].shape), mask.source, slide_path)
    return Level0Scale(base.sx * 2**level, base.sy * 2**level, base.how + (f", times 2**{level}" if level else ""),
                       base.assumed)


def level0_scale(mask_shape: tuple[int, ...], source: Mapping[str, Any],
                 slide_path: str | os.PathLike[str] | None = None) -> Level0Scale:
    """Factors from a mask's level-0 pixels to its slide's level-0 pixels.

    The mask's level 0 is the slide level it was predicted on (``source['level']``, resampled by
    ``source['resample_factor']`` when the model's pixel size asked for it). At slide level 0
    with no resampling the factors are 1. Otherwise they are the slide's level-0 size over the
    mask's size (exactly 2**k when the mask is the slide halved k times with rounding up, as
    tifffile-written pyramids are), read from ``slide_path`` or the recorded ``source['path']``;
    if neither can be opened, 2**level * resample_factor is assumed, and said.
    """

    level, resample = int(source.get("level", 0)), float(source.get("resample_factor", 1.0))
    if slide_path is None and level == 0 and resample == 1.0:
        return Level0Scale(1.0, 1.0, "the mask was predicted on slide level 0")
    hm, wm = int(mask_shape[0]), int(mask_shape[1])
    recorded = source.get("level0_shape")
    if slide_path is None and isinstance(recorded, list | tuple) and len(recorded) == 2:
        return _scale_from_shapes((int(recorded[0]), int(recorded[1])), (hm, wm), "the recorded slide level 0")
    path = Path(slide_path) if slide_path is not None else Path(str(source.get("path", "")))
    if slide_path is None and not path.is_file() and not path.is_dir():
        guess = 2.0**level * resample
        return Level0Scale(guess, guess, f"assumed {guess:g}: slide level {level} (x{resample:g} resampled) taken "
                           f"as 2**{level} of level 0, since the slide {path} is not there (pass --slide)", True)
    series = source.get("series")
    with open_slide(path, level=0, series=int(series) if series is not None else None) as slide:
        h0, w0 = slide.shape[:2]
    return _scale_from_shapes((h0, w0), (hm, wm), f"{path.name} level 0", path)


def _scale_from_shapes(level0: tuple[int, int], mask: tuple[int, int], what: str, path: Path | None = None
                       ) -> Level0Scale:
    """Factors from a mask of shape ``mask`` to a slide level 0 of shape ``level0``: exactly 2**k when
    the mask is level 0 halved k times with rounding up (as x2 pyramids are), else the ratio."""
    (h0, w0), (hm, wm) = level0, mask
    for k in range(32):
        if (-(-h0 // 2**k), -(-w0 // 2**k)) == (hm, wm):
            return Level0Scale(2.0**k, 2.0**k, f"{2**k}: {what} ({h0}x{w0}) halved {k} times")
        if 2**k > max(h0, w0):
            break
    sy, sx = h0 / hm, w0 / wm
    if abs(sy / sx - 1) > 0.02:
        where = path if path is not None else what
        raise ConfigError(f"{where} is {h0}x{w0} px, which does not have the mask's shape ({hm}x{wm}) "
                          f"at any scale; expected the slide the mask was predicted on: pass it with --slide")
    return Level0Scale(sx, sy, f"{what} ({h0}x{w0}) over the mask ({hm}x{wm})")


def parse_classes(spec: str | Sequence[int | str] | None, names: Mapping[int, str]) -> list[int]:
    """Class values from ``"1,2"``, ``[1, "stroma"]`` or None (every class but the background 0).

    >>> parse_classes("2, nucleus", {0: "background", 1: "nucleus", 2: "stroma"})
    [1, 2]
    """
    if spec is None:
        return sorted(v for v in names if v != 0)
    items = [s.strip() for s in spec.split(",")] if isinstance(spec, str) else list(spec)
    by_name = {n: v for v, n in names.items()}
    known = ", ".join(f"{v} ({n})" for v, n in sorted(names.items()) if v != 0)
    values = set()
    for item in items:
        text = str(item).strip()
        value = int(text) if text.lstrip("-").isdigit() else by_name.get(text)
        if value is None or value not in names or value == 0:
            why = "is the background" if value == 0 else "is not a class of this mask"
            raise ConfigError(f"--classes: {item!r} {why}; expected some of {known}")
        values.add(value)
    return sorted(values)


class _FeatureWriter:
    """Streams features into ``f``: one per polygon, or (with ``parts``, a directory) one
    MultiPolygon per class, whose polygons wait in a file per class until :meth:`finish`."""

    def __init__(self, f: IO[str], object_type: str, parts: Path | None, names: Mapping[int, str],
                 colours: Mapping[int, list[int]]) -> None:
        self.f, self.object_type, self.parts = f, object_type, parts
        self.names, self.colours = names, colours
        self.features = 0
        self._open: dict[int, IO[str]] = {}
        f.write('{"type": "FeatureCollection", "features": [')

    def add(self, value: int, coords: list[Any], feature_id: str | None = None,
            measurements: Mapping[str, Any] | None = None, kind: str = "Polygon") -> None:
        """One polygon (``coords``: its rings), or with ``kind="MultiPolygon"`` several."""
        if self.parts is None:
            self._feature(kind, value, json.dumps(coords), feature_id=feature_id, measurements=measurements)
            return
        part = self._open.get(value)
        if part is None:
            part = self._open[value] = (self.parts / f"{value}.json").open("w+")
        else:
            part.write(",")
        part.write(json.dumps(coords))

    def finish(self, meta: Mapping[str, Any]) -> None:
        for value, part in sorted(self._open.items()):
            part.seek(0)
            self._feature("MultiPolygon", value, "[", part)
            part.close()
        self.f.write(f'\n], "slideseg": {json.dumps(meta)}}}\n')

    def _feature(self, kind: str, value: int, coords: str, part: IO[str] | None = None, *,
                 feature_id: str | None = None, measurements: Mapping[str, Any] | None = None) -> None:
        props: dict[str, Any] = {
            "objectType": self.object_type,
            "classification": {"name": self.names.get(value, f"class {value}"),
                               "color": self.colours.get(value, [128, 128, 128])}}
        if measurements is not None:
            props["measurements"] = dict(measurements)
        sep = "," if self.features else ""
        head = f'"id": "{feature_id}", ' if feature_id is not None else ""
        self.f.write(f'{sep}\n{{"type": "Feature", {head}"geometry": {{"type": "{kind}", "coordinates": {coords}')
        if part is not None:
            while chunk := part.read(1 << 20):
                self.f.write(chunk)
            self.f.write("]")
        self.f.write(f'}}, "properties": {json.dumps(props)}}}')
        self.features += 1


def _coordinates(poly: Polygon, sx: float, sy: float) -> list[Any]:
    """GeoJSON rings (closed) in level-0 pixels: ints when the scale is whole, else 3 decimals."""
    scale = np.array([sx, sy])
    whole = bool(sx.is_integer() and sy.is_integer())
    rings = []
    for ring in (poly.exterior, *poly.holes):
        closed = np.concatenate([ring, ring[:1]])
        rings.append((closed * scale.astype(np.int64)).tolist() if whole else np.round(closed * scale, 3).tolist())
    return rings


def _stripe_rows(width: int, chunk_rows: int) -> int:
    """Rows per stripe: at most STRIPE_PIXELS, whole chunk rows when that fits (each read once).

    >>> _stripe_rows(1000, 1024), _stripe_rows(1000, 3000), _stripe_rows(1000, 0)
    (4096, 3000, 4194)
    """
    rows = max(1, STRIPE_PIXELS // max(width, 1))
    if chunk_rows < 1:  # read_mask refuses such chunks; never divide by them
        return rows
    return rows // chunk_rows * chunk_rows if rows >= chunk_rows else rows


def _check_args(out: Path, overwrite: bool, min_area: float, object_type: str) -> None:
    if not (math.isfinite(min_area) and min_area >= 0):
        raise ConfigError(f"--min-area is {min_area}; expected a number of level-0 square pixels >= 0")
    if object_type not in OBJECT_TYPES:
        raise ConfigError(f"--object-type is {object_type!r}; expected one of {', '.join(OBJECT_TYPES)}")
    if out.is_dir() or not out.parent.is_dir():
        raise ConfigError(f"{out} is a directory or in a missing one; expected a file name in an existing "
                          f"directory: pass -o DIR/NAME.geojson")
    if out.exists() and not overwrite:
        raise OutputExistsError(f"{out} exists; pass --overwrite to replace it")


