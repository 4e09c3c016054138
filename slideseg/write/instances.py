"""The instance label image that ``slideseg objects`` writes inside a mask, and its object table.

Layout, inside the mask's own directory::

    mask.zarr/objects/
        .zattrs / zarr.json   multiscales ("objects"), image-label (no colours or properties: an
                              object's class is in the table), slideseg (how it was made; complete)
        0/ 1/ ...             uint32 object ids (0: background), the mask level 0's chunks (and
                              shards), x2 nearest-neighbour pyramid with as many levels as the mask
        chunks_done           uint8 (grid Y, grid X): 1 once a level-0 chunk and its sums are on disk

It has the mask's NGFF version (0.4: Zarr v2; 0.5: Zarr v3, sharded like the mask). As for the mask,
each level-0 write unit (chunk, or shard) has one writer, and a unit is marked done only after it
is written, so a killed run can be resumed. The table is Parquet (optionally also CSV), written by
:class:`TableWriter` from runs of rows sorted by id, merged into one file sorted by id.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import zarr

from slideseg.errors import ConfigError, OutputExistsError, OutputFormatError
from slideseg.io.ngff import NgffVersion, multiscales_attrs, unwrap, wrap
from slideseg.plan.tiles import grid_box, grid_boxes, pyramid_shapes
from slideseg.write.mask import DONE, OBJECTS, _array, _create_level, _halve_box, _json_record
from slideseg.write.mask_meta import OBJECTS_KIND, instances_record

COLUMNS: dict[str, str] = {
    "id": "Object id: its value in the instance image, 1, 2, ... in raster order of the object's first pixel.",
    "class": "Class value of the object in the mask.",
    "class_name": "Class name, from the mask's image-label properties.",
    "pixels": "Pixels of the object in the mask (which has the mask's pixel size, not necessarily level 0's).",
    "area_um2": "Area in µm²: pixels x mask pixel size². Empty (NaN) when the mask has no pixel size.",
    "perimeter_um": "Length in µm of the pixel edges between the object and another class or the outside of the "
                    "mask (edges around holes count).",
    "equivalent_diameter_um": "Diameter in µm of the disc of the same area: sqrt(4 area / pi).",
    "eccentricity": "sqrt(1 - l2 / l1) of the eigenvalues l1 >= l2 of the covariance of the object's pixel "
                    "coordinates: 0 for a disc, towards 1 for a line; 0 when l1 is 0.",
    "centroid_x_px": "Mean of the pixel centres, x, in slide level-0 pixels (integers at pixel corners).",
    "centroid_y_px": "Mean of the pixel centres, y, in slide level-0 pixels (integers at pixel corners).",
    "centroid_x_um": "Centroid x in µm: mask pixel coordinate (integers at corners) x mask pixel size.",
    "centroid_y_um": "Centroid y in µm: mask pixel coordinate (integers at corners) x mask pixel size.",
    "bbox_x0_px": "Bounding box, left edge, slide level-0 pixels.",
    "bbox_y0_px": "Bounding box, top edge, slide level-0 pixels.",
    "bbox_x1_px": "Bounding box, right edge (exclusive: the last column's right side), slide level-0 pixels.",
    "bbox_y1_px": "Bounding box, bottom edge (exclusive), slide level-0 pixels.",
    "bbox_x0_um": "Bounding box, left edge, µm.",
    "bbox_y0_um": "Bounding box, top edge, µm.",
    "bbox_x1_um": "Bounding box, right edge, µm.",
    "bbox_y1_um": "Bounding box, bottom edge, µm.",
    "mean_probability": "Mean over the object's pixels of the probability of its class, 0-1 (masks written with "
                        "--probabilities only).",
    "channel_K_mean": "Mean of slide channel K inside the object, read at the mask's pixel grid (with a slide).",
    "channel_K_std": "Standard deviation (population) of slide channel K inside the object (with a slide).",
}
"""Columns of the object table and what each holds (``channel_K_*``: one pair per slide channel)."""


"""``record["kind"]`` of an instance image written by slideseg."""
LEVEL_DTYPE = "uint32"


class InstanceWriter:
    """An open instance image: write level 0 unit by unit (any threads or processes), then finalize."""

    def __init__(self, path: Path, group: zarr.Group, shape: tuple[int, int], unit: int, version: NgffVersion,
                 mpp: float | None, record: dict[str, Any]) -> None:
        self.path, self.shape, self.unit, self.version = path, shape, unit, version
        self.mpp, self.record = mpp, record
        self._group = group
        self._level0 = _array(group, "0")
        self._done = _array(group, DONE)

    @property
    def grid(self) -> tuple[int, int]:
        """Write units along y and x."""
        return math.ceil(self.shape[0] / self.unit), math.ceil(self.shape[1] / self.unit)

    def box(self, iy: int, ix: int) -> tuple[int, int, int, int]:
        """``(y0, y1, x0, x1)`` of write unit ``(iy, ix)``."""
        return grid_box(iy, ix, self.shape, self.unit)

    def write_chunk(self, iy: int, ix: int, ids: np.ndarray) -> None:
        """Write unit ``(iy, ix)`` of level 0: uint32 ids of exactly its extent."""
        y0, y1, x0, x1 = self.box(iy, ix)
        if ids.dtype != np.uint32 or ids.shape != (y1 - y0, x1 - x0):
            raise ValueError(f"ids for unit ({iy}, {ix}) must be uint32 {(y1 - y0, x1 - x0)}; got {ids.dtype} "
                             f"{ids.shape}")
        self._level0[y0:y1, x0:x1] = ids  # an all-background unit is stored as nothing (fill value 0)

    def mark_done(self, iy: int, ix: int) -> None:
        """Record unit ``(iy, ix)`` as complete (call only once everything of it is on disk)."""
        self._done[iy, ix] = 1

    def done(self) -> np.ndarray:
        """Boolean (grid Y, grid X): which level-0 units are complete."""
        return np.asarray(self._done[:]).astype(bool)

    def finalize(self, summary: Mapping[str, Any], num_workers: int | None = None) -> None:
        """Build the x2 pyramid (one output chunk per task) and mark the image complete, adding
        ``summary`` (e.g. the number of objects) to its record."""
        shapes = pyramid_shapes(self.shape)
        chunks = tuple(self._level0.chunks)
        with ThreadPoolExecutor(max_workers=num_workers or min(8, os.cpu_count() or 1)) as pool:
            for level in range(1, len(shapes)):
                src = _array(self._group, str(level - 1))
                dst = _create_level(self._group, str(level), shapes[level], chunks, self.version, self.unit,
                                    dtype=LEVEL_DTYPE)
                list(pool.map(partial(_halve_box, src, dst), grid_boxes(shapes[level], self.unit)))
        self.record = _json_record({**self.record, **summary})
        self._group.attrs.put(_attrs(self.version, len(shapes), self.mpp, self.record, complete=True))


def create_instances(mask_path: str | os.PathLike[str], shape: tuple[int, int], chunks: tuple[int, int],
                     unit: int, version: NgffVersion, mpp: float | None, record: Mapping[str, Any]) -> InstanceWriter:
    """Create an empty instance image at ``MASK/objects`` (replacing one slideseg wrote, if any).

    ``chunks`` are the Zarr chunks of level 0 and ``unit`` the write unit (a shard with 0.5 when
    larger than the chunks), both the mask's by default.
    """
    path = Path(mask_path) / OBJECTS
    remove_instances(mask_path)
    rec = _json_record({**record, "kind": OBJECTS_KIND})
    root = zarr.open_group(mask_path, mode="r+")
    group = root.create_group(OBJECTS, attributes=_attrs(version, 1, mpp, rec, complete=False))
    _create_level(group, "0", shape, chunks, version, unit, dtype=LEVEL_DTYPE)
    _create_level(group, DONE, (math.ceil(shape[0] / unit), math.ceil(shape[1] / unit)), (1, 1), version,
                  compress=False)
    return InstanceWriter(path, group, shape, unit, version, mpp, rec)


def open_instances(mask_path: str | os.PathLike[str]) -> InstanceWriter:
    """Reopen ``MASK/objects`` to write more units (resume, or a worker process)."""
    path = Path(mask_path) / OBJECTS
    if instances_record(mask_path) is None:
        raise OutputFormatError(f"{path} does not exist; expected an instance image started by slideseg objects")
    group = zarr.open_group(path, mode="r+")
    version, ome = unwrap(dict(group.attrs))
    level0 = _array(group, "0")
    unit = int((getattr(level0, "shards", None) or level0.chunks)[0])
    ms = ome["multiscales"][0]
    scale = ms["datasets"][0]["coordinateTransformations"][0]["scale"][-1]
    mpp = float(scale) if ms["axes"][-1].get("unit") == "micrometer" else None
    attrs: dict[str, Any] = dict(group.attrs)
    record = {k: v for k, v in attrs["slideseg"].items() if k != "complete"}
    shape = (int(level0.shape[0]), int(level0.shape[1]))
    return InstanceWriter(path, group, shape, unit, version or "0.4", mpp, record)


def remove_instances(mask_path: str | os.PathLike[str]) -> None:
    """Delete ``MASK/objects`` if slideseg wrote it (OutputFormatError if it did not)."""
    if instances_record(mask_path) is not None:
        shutil.rmtree(Path(mask_path) / OBJECTS)


def _attrs(version: NgffVersion, n_levels: int, mpp: float | None, record: Mapping[str, Any],
           complete: bool) -> dict[str, Any]:
    ome = {"multiscales": multiscales_attrs(OBJECTS, n_levels, mpp, channel=False, version=version),
           "image-label": {"version": version} if version == "0.4" else {}}
    return wrap(version, ome, {"slideseg": {**record, "complete": complete}})


# ------------------------------------------------------------------------------------- the table


def table_schema(channels: int, probabilities: bool) -> pa.Schema:
    """The table's columns (:data:`COLUMNS`), with ``mean_probability`` and ``channels`` pairs as asked."""
    names = [k for k in COLUMNS if not k.startswith(("channel_", "mean_probability"))]
    if probabilities:
        names.append("mean_probability")
    for k in range(channels):
        names += [f"channel_{k}_mean", f"channel_{k}_std"]
    types = {"id": pa.uint32(), "class": pa.int64(), "class_name": pa.string(), "pixels": pa.int64()}
    return pa.schema([(n, types.get(n, pa.float64())) for n in names])


def object_rows(sums: Mapping[str, np.ndarray], *, mpp: float | None, scale: tuple[float, float],
                names: Mapping[int, str], channels: int, probabilities: bool) -> pa.Table:
    """Rows of complete objects from their pixel sums (the arrays of
    :class:`slideseg.tools.pixel_sums.Sums`): ``scale`` is ``(sx, sy)`` from mask to level-0 pixels;
    value channel 0 is the class probability (uint8) when ``probabilities``, then the slide's."""
    n = sums["count"].astype(np.float64)
    um = np.nan if mpp is None else float(mpp)
    sx, sy = scale
    cx, cy = sums["mean_x"] + 0.5, sums["mean_y"] + 0.5  # pixel corners at integers
    x0, y0 = sums["x_min"].astype(np.float64), sums["y_min"].astype(np.float64)
    x1, y1 = sums["x_max"] + 1.0, sums["y_max"] + 1.0
    cols: dict[str, Any] = {
        "id": sums["ids"].astype(np.uint32), "class": sums["value"],
        "class_name": [names.get(int(v), f"class {v}") for v in sums["value"].tolist()], "pixels": sums["count"],
        "area_um2": n * um**2, "perimeter_um": sums["edges"] * um,
        "equivalent_diameter_um": np.sqrt(4 * n / np.pi) * um, "eccentricity": _eccentricity(sums),
        "centroid_x_px": cx * sx, "centroid_y_px": cy * sy, "centroid_x_um": cx * um, "centroid_y_um": cy * um,
        "bbox_x0_px": x0 * sx, "bbox_y0_px": y0 * sy, "bbox_x1_px": x1 * sx, "bbox_y1_px": y1 * sy,
        "bbox_x0_um": x0 * um, "bbox_y0_um": y0 * um, "bbox_x1_um": x1 * um, "bbox_y1_um": y1 * um,
    }
    if probabilities:
        cols["mean_probability"] = sums["mean_v"][:, 0] / 255.0
    first = int(probabilities)
    for c in range(channels):
        cols[f"channel_{c}_mean"] = sums["mean_v"][:, first + c]
        cols[f"channel_{c}_std"] = np.sqrt(sums["m2_v"][:, first + c] / n)
    return pa.table(cols)


def _eccentricity(sums: Mapping[str, np.ndarray]) -> np.ndarray:
    """From the eigenvalues of the coordinates' covariance ``[[m2_yy, m2_xy], [m2_xy, m2_xx]] / n``."""
    n = sums["count"].astype(np.float64)
    a, c, b = sums["m2_yy"] / n, sums["m2_xx"] / n, sums["m2_xy"] / n
    mid, half = (a + c) / 2, np.hypot((a - c) / 2, b)
    l1, l2 = mid + half, np.maximum(mid - half, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(l1 > 0, np.sqrt(np.clip(1 - l2 / l1, 0.0, 1.0)), 0.0)


class TableWriter:
    """Writes a table of objects sorted by id from rows that arrive in any order.

    :meth:`add` takes rows (any order), which are kept until ``run_rows`` of them are there, then
    sorted and saved as one run in ``staging``, in row groups of ``group_rows``; :meth:`finish`
    merges the runs (``fan_in`` at a time, in rounds) into one Parquet file sorted by id, holding
    one row group of each run and about ``merge_rows`` output rows at a time, and optionally
    writes a CSV copy.
    """

    def __init__(self, schema: pa.Schema, staging: Path, run_rows: int = 1 << 15, merge_rows: int = 1 << 15,
                 group_rows: int = 4096, fan_in: int = 32) -> None:
        self.schema, self.staging = schema, staging
        self.run_rows, self.merge_rows, self.group_rows, self.fan_in = run_rows, merge_rows, group_rows, fan_in
        if staging.exists():
            shutil.rmtree(staging)
        staging.mkdir(parents=True)
        self._rows: list[pa.Table] = []
        self._n = 0
        self._runs: list[Path] = []
        self.rows = 0

    def add(self, rows: pa.Table) -> None:
        """Rows of some objects (``id`` column and the schema's other columns)."""
        self._rows.append(rows.select(self.schema.names).cast(self.schema))
        self._n += rows.num_rows
        self.rows += rows.num_rows
        if self._n >= self.run_rows:
            self._flush()

    def finish(self, out: Path, metadata: Mapping[str, Any], csv: Path | None = None) -> None:
        """Write ``out`` (and ``csv``): all rows sorted by id, ``metadata`` as the ``slideseg`` key."""
        self._flush()
        runs = self._runs
        while len(runs) > self.fan_in:  # merge in rounds, so that few runs are open at once
            groups = [runs[i : i + self.fan_in] for i in range(0, len(runs), self.fan_in)]
            runs = [self._merge_run(g, f"{len(runs)}-{i}") for i, g in enumerate(groups)]
        schema = self.schema.with_metadata({"slideseg": json.dumps(metadata)})
        tmp = out.with_name(f".{out.name}.tmp")
        try:
            with pq.ParquetWriter(tmp, schema) as writer:
                for table in _merged(runs, self.group_rows, self.merge_rows):
                    writer.write_table(table.cast(schema))
            if csv is not None:
                _write_csv(tmp, csv)
            os.replace(tmp, out)
        finally:
            tmp.unlink(missing_ok=True)
        shutil.rmtree(self.staging, ignore_errors=True)

    def _merge_run(self, runs: list[Path], name: str) -> Path:
        """One run from several (which are deleted)."""
        path = self.staging / f"merged-{name}.parquet"
        with pq.ParquetWriter(path, self.schema) as writer:
            for table in _merged(runs, self.group_rows, self.merge_rows):
                writer.write_table(table, row_group_size=self.group_rows)
        for r in runs:
            r.unlink()
        return path

    def _flush(self) -> None:
        if not self._rows:
            return
        table = pa.concat_tables(self._rows).sort_by("id")
        run = self.staging / f"{len(self._runs):06d}.parquet"
        pq.write_table(table, run, row_group_size=self.group_rows)  # a reader holds one group at a time
        self._runs.append(run)
        self._rows, self._n = [], 0


def _merged(runs: list[Path], batch: int, max_rows: int) -> Iterator[pa.Table]:
    """Tables of about ``max_rows`` rows, in id order, from runs each sorted by id (read ``batch``
    rows at a time)."""
    # pre_buffer=False: a reader holds the row group it is in, not the whole file
    iters = [pq.ParquetFile(r, pre_buffer=False).iter_batches(batch_size=batch, use_threads=False) for r in runs]
    heads: list[pa.RecordBatch | None] = [_next(it) for it in iters]
    pending: list[pa.Table] = []
    n = 0
    while any(h is not None for h in heads):
        last = min(int(h.column("id")[-1].as_py()) for h in heads if h is not None)
        pieces = []  # every row with id <= last: each run's rows up to there are in its head
        for i, head in enumerate(heads):
            if head is None:
                continue
            k = int(np.searchsorted(head.column("id").to_numpy(), last, side="right"))
            pieces.append(pa.Table.from_batches([head.slice(0, k)]))
            heads[i] = head.slice(k) if k < head.num_rows else _next(iters[i])
        pending.append(pa.concat_tables(pieces).sort_by("id"))  # a sorted copy: the heads' buffers go
        n += pending[-1].num_rows
        if n >= max_rows:
            yield pa.concat_tables(pending)  # rounds follow each other in id order
            pending, n = [], 0
    if pending:
        yield pa.concat_tables(pending)


def _next(batches: Iterator[pa.RecordBatch]) -> pa.RecordBatch | None:
    for b in batches:
        if b.num_rows:
            return b
    return None


def _write_csv(parquet: Path, csv: Path) -> None:
    """A CSV copy of a Parquet file, batch by batch (written to a temporary file, then renamed)."""
    tmp = csv.with_name(f".{csv.name}.tmp")
    try:
        source = pq.ParquetFile(parquet, pre_buffer=False)
        with pacsv.CSVWriter(tmp, source.schema_arrow) as writer:
            for batch in source.iter_batches():
                writer.write_batch(batch)
        os.replace(tmp, csv)
    finally:
        tmp.unlink(missing_ok=True)


def check_table_path(path: Path, overwrite: bool) -> None:
    """Refuse an existing table without ``overwrite`` (and a directory, or a missing folder, always)."""
    if path.is_dir() or not path.parent.is_dir():
        raise ConfigError(f"{path} is a directory or in a missing one; expected a file name in an existing "
                          "directory: pass --table DIR/NAME.parquet")
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{path} exists; pass --overwrite to replace it")
