"""``slideseg objects``: exact instance objects of a whole mask, and a table that measures them.

Objects are the connected regions of each class of a ``predict`` mask (:mod:`slideseg.tools.
components`), numbered 1, 2, ... in raster order of their first pixel, exactly as one pass over the
whole mask would number them, at any size and in flat memory. The run has two passes of one Dask
task per write unit (the mask's chunk, or shard with NGFF 0.5), like ``predict``:

1. label each unit on its own and save a small summary (local labels along its edges, each
   label's first pixel and area);
2. stitch the summaries (in this process), number objects band by band, then label each unit again,
   map it to global ids, write it into the uint32 instance image ``mask.zarr/objects`` and save the
   unit's per-object pixel sums (plus its slide channels and class probabilities where there are).

The sums of objects that cross units are merged per id (exact), measured, and written to a Parquet
table sorted by id (:data:`COLUMNS`). Everything in flight is saved beside the table
(``.TABLE.partial/``), and each unit is marked done in ``objects/chunks_done`` only once it is on
disk, so ``resume=True`` finishes a killed run with an identical result.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import zarr

from slideseg import __version__
from slideseg.config import CHANGES_OUTPUT, Config, flagged, flags
from slideseg.errors import ConfigError, OutputExistsError, OutputFormatError
from slideseg.io.formats import slide_stem
from slideseg.io.ngff import NgffVersion
from slideseg.io.resample import ResampledSlide, output_shape
from slideseg.io.slide import open_slide
from slideseg.plan.tiles import grid_box
from slideseg.schedule.cluster import ClusterConfig, dask_client, return_memory
from slideseg.tools.components import (
    BlockIds,
    BlockSummary,
    LabelSpec,
    Numbering,
    relabel_block,
    stitch,
    summarise_block,
)
from slideseg.tools.geojson import Level0Scale, level0_scale, parse_classes
from slideseg.tools.pixel_sums import Sums, SumsMerger, edge_counts, unit_sums
from slideseg.write.instances import (
    COLUMNS,
    InstanceWriter,
    TableWriter,
    check_table_path,
    create_instances,
    instances_record,
    object_rows,
    open_instances,
    table_schema,
)
from slideseg.write.mask import OBJECTS, PROBABILITIES, MaskLevels, read_mask

__all__ = ["COLUMNS", "ObjectsConfig", "ObjectsResult", "default_table", "objects"]

_STAGING_MARK = "objects-run.json"


_OUT = flags(CHANGES_OUTPUT)


@dataclass(frozen=True)
class ObjectsConfig(Config):
    """Options of one ``objects`` run; saved with the instance image and the table. Fields flagged
    :data:`~slideseg.config.CHANGES_OUTPUT` change the result, so a resumed run must keep them."""

    min_area: float = field(default=0.0, metadata=_OUT)
    """Drop objects smaller than this many µm² (area = pixels x mask pixel size²): their pixels
    become 0 in the instance image (not in the mask) and ids stay consecutive among the rest."""
    connectivity: int = field(default=4, metadata=_OUT)
    """4: pixels joined by an edge are one object; 8: by an edge or a corner."""
    classes: str | tuple[int | str, ...] | None = field(default=None, metadata=_OUT)
    """Classes that become objects, by value or name (``"1,2"``); None: all but the background 0."""
    slide: str | None = field(default=None, metadata=_OUT)
    """The slide to measure channel intensities on; None: the slide recorded in the mask, if it is there."""
    table: str | None = field(default=None, metadata=_OUT)
    """The Parquet table; None: ``MASK.objects.parquet`` beside the mask (``mask.zarr`` -> ``mask.objects.parquet``)."""
    csv: bool = False
    """Also write the table as CSV (same name, ``.csv``)."""
    chunk: int | None = field(default=None, metadata=_OUT)
    """Write unit of the instance image in px (chunks, unsharded); None: the mask's chunks and shards."""
    resume: bool = False
    """Finish an interrupted run (same mask and options)."""
    overwrite: bool = False
    """Replace an existing instance image and table."""

    def __post_init__(self) -> None:
        if not (math.isfinite(self.min_area) and self.min_area >= 0):
            raise ConfigError(f"--min-area is {self.min_area}; expected a number of µm² >= 0")
        if self.connectivity not in (4, 8):
            raise ConfigError(f"--connectivity is {self.connectivity}; expected 4 (edges) or 8 (edges and corners)")
        if self.chunk is not None and self.chunk < 1:
            raise ConfigError(f"chunk is {self.chunk}; expected a positive number of pixels")
        if self.resume and self.overwrite:
            raise ConfigError("--overwrite and --resume contradict each other; pick one.")
        if isinstance(self.classes, list):
            object.__setattr__(self, "classes", tuple(self.classes))


RESULT_FIELDS: tuple[str, ...] = flagged(ObjectsConfig, CHANGES_OUTPUT)
"""The options a resumed run must keep."""


@dataclass(frozen=True)
class ObjectsResult:
    """What a run wrote."""

    instances: Path
    table: Path
    csv: Path | None
    objects: int
    per_class: dict[str, int]
    dropped: int
    """Objects under ``min_area``, left out."""
    shape: tuple[int, int]
    units: int
    units_already_done: int
    scale: Level0Scale
    seconds: float
    notes: tuple[str, ...] = field(default=())

    @property
    def objects_per_second(self) -> float:
        return self.objects / max(self.seconds, 1e-9)

    @property
    def megapixels_per_second(self) -> float:
        return self.shape[0] * self.shape[1] / 1e6 / max(self.seconds, 1e-9)


class Observer(Protocol):
    """Receives progress (:mod:`slideseg.cli.objects` draws it)."""

    def pass_started(self, name: str, n_units: int, n_pixels: int) -> None: ...

    def unit_done(self, pixels: int) -> None: ...


class _Quiet:
    def pass_started(self, name: str, n_units: int, n_pixels: int) -> None:
        pass

    def unit_done(self, pixels: int) -> None:
        pass


@dataclass(frozen=True)
class _SlideRef:
    """A slide read at the mask's pixel grid: this level, resampled by ``factor``."""

    path: str
    level: int
    series: int | None
    factor: float


@dataclass(frozen=True)
class _Job:
    """What a unit task needs: small and picklable; workers reopen the rest."""

    mask: str
    level: str
    """Path of the mask's level 0 inside its group."""
    staging: str
    shape: tuple[int, int]
    unit: int
    spec: LabelSpec
    probabilities: bool
    slide: _SlideRef | None


@dataclass(frozen=True)
class _Plan:
    """What this process needs besides the job: output paths, units and the measuring context."""

    chunks: tuple[int, int]
    min_pixels: int
    scale: Level0Scale
    table: Path
    csv: Path | None
    record: dict[str, Any]
    """The instance image's ``slideseg`` record (also the table's metadata)."""
    channels: tuple[str, ...]
    mpp: float | None
    names: dict[int, str]
    version: NgffVersion
    notes: tuple[str, ...]


def objects(mask_path: str | os.PathLike[str], cfg: ObjectsConfig = ObjectsConfig(),
            cluster: ClusterConfig = ClusterConfig(), observer: Observer | None = None) -> ObjectsResult:
    """Write the instance image ``MASK/objects`` and the object table of a complete mask.

    Raises
    ------
    SlideReadError, OutputFormatError
        Not a slideseg (NGFF label) mask, an incomplete or float mask, an unreadable slide.
    OutputExistsError
        The instance image or the table exists and neither ``overwrite`` nor ``resume`` is set.
    ConfigError
        Bad options, a slide that does not match the mask, more than 2**32 - 1 objects, or a
        resume with other settings.
    """
    t0 = time.perf_counter()
    obs = observer or _Quiet()
    mask = read_mask(mask_path)
    job, plan = _plan(mask, cfg)
    writer, already = _open_output(mask, job, plan, cfg)
    gy, gx = writer.grid
    staging = Path(job.staging)
    with dask_client(cluster) as client:
        try:
            in_flight = 2 * sum(client.nthreads().values()) or 4
            todo = [(iy, ix) for iy in range(gy) for ix in range(gx) if not _pass1_file(staging, iy, ix).exists()]
            obs.pass_started("objects: label", len(todo), sum(_area(job, *ij) for ij in todo))
            _run(client, _label_unit, job, todo, in_flight, obs.unit_done)
            stitched = stitch(_summaries(staging, writer.grid), writer.grid, job.spec)
            numbering = Numbering(stitched, plan.min_pixels)
            done = writer.done()  # a unit whose sums are gone (a removed staging folder) is done again
            done &= np.array([[_sums_file(staging, iy, ix).exists() for ix in range(gx)] for iy in range(gy)])
            left = np.argwhere(~done)
            obs.pass_started("objects: write", len(left), sum(_area(job, *ij) for ij in left))
            _run(client, _write_unit, job, _maps(numbering, staging, done), in_flight, obs.unit_done)
        finally:
            client.run(_close_all)
    dropped = numbering.dropped
    del stitched, numbering, done, left  # the passes are over: what follows needs none of it
    return_memory()
    table = TableWriter(table_schema(len(plan.channels), job.probabilities), staging / "runs")
    per_class = _assemble(table, staging, job, plan, writer.grid)
    meta = {**plan.record, "objects": table.rows, "dropped": dropped, "per_class": per_class}
    table.finish(plan.table, {**meta, "columns": _column_docs(table.schema.names, plan.channels)}, plan.csv)
    return_memory()
    writer.finalize({"objects": table.rows, "dropped": dropped, "table": str(plan.table)})  # complete
    shutil.rmtree(staging, ignore_errors=True)
    return ObjectsResult(writer.path, plan.table, plan.csv, table.rows, per_class, dropped,
                         job.shape, gy * gx, already, plan.scale, time.perf_counter() - t0, plan.notes)


# ----------------------------------------------------------------------------------- checks


def _plan(mask: MaskLevels, cfg: ObjectsConfig) -> tuple[_Job, _Plan]:
    """Check the mask and options; the job for the tasks and what this process needs besides."""
    level0 = mask.levels[0]
    if np.dtype(level0.dtype).kind not in "iu":
        raise OutputFormatError(f"{mask.path} holds {level0.dtype} values; expected integer class ids (a label "
                                "mask): pass the mask.zarr written by slideseg predict")
    shape = (int(level0.shape[0]), int(level0.shape[1]))
    values = parse_classes(cfg.classes, mask.names)
    spec = LabelSpec(tuple(values), cfg.connectivity)
    if cfg.min_area > 0 and mask.mpp is None:
        raise ConfigError(f"{mask.path} has no pixel size, so --min-area (µm²) cannot be applied; drop --min-area")
    min_pixels = _min_pixels(cfg.min_area, mask.mpp)
    source = dict(mask.source)
    if "into" in mask.record:  # a label of an image: its level 0 is on the image's level-0 grid
        source.update(level=0, resample_factor=1.0)
    slide, notes = _slide(mask, shape, source, cfg.slide)
    scale = level0_scale(shape, source, cfg.slide)
    group_probs = mask.path / PROBABILITIES / "0"
    probs = False
    if group_probs.is_dir():
        shape_probs = _probabilities_shape(mask)
        probs = shape_probs is not None and shape_probs[1:] == shape
    if cfg.chunk is not None:
        chunks, unit = (cfg.chunk, cfg.chunk), cfg.chunk
    else:
        chunks = (int(level0.chunks[0]), int(level0.chunks[1]))
        unit = int((getattr(level0, "shards", None) or level0.chunks)[0])
    table = Path(cfg.table) if cfg.table else _default_table(mask)
    staging = table.with_name(f".{table.name}.partial")
    path = str(mask.path.resolve())
    job = _Job(path, str(mask.levels[0].path), str(staging.resolve()), shape, unit, spec, probs, slide)
    classes_cfg = {**cfg.to_dict(), "classes": values, "slide": slide.path if slide else None,
                   "table": str(table.resolve()), "chunk": unit}
    record: dict[str, Any] = {
        "version": __version__, "mask": path, "mask_record_sha256": record_hash(mask.record),
        "objects_config": {k: classes_cfg[k] for k in RESULT_FIELDS}, "mpp": mask.mpp,
        "level0_scale": {"sx": scale.sx, "sy": scale.sy, "how": scale.how}, "instances": str(Path(path) / OBJECTS),
    }
    channels = _channel_names(slide) if slide else []
    if slide:
        record["channels"] = channels
    if scale.assumed:
        notes.append(f"level-0 scale {scale.how}")
    plan = _Plan(chunks, min_pixels, scale, table, table.with_suffix(".csv") if cfg.csv else None, record,
                 tuple(channels), mask.mpp, mask.names, mask.version or "0.4", tuple(notes))
    return job, plan


def _column_docs(names: list[str], channels: tuple[str, ...]) -> dict[str, str]:
    """What each column of this table holds (:data:`COLUMNS`, channel columns with their channel)."""
    docs = {}
    for name in names:
        parts = name.split("_")
        if parts[0] == "channel":
            k = int(parts[1])
            docs[name] = COLUMNS[f"channel_K_{parts[2]}"].replace("channel K", f"channel {k} ({channels[k]})")
        else:
            docs[name] = COLUMNS[name]
    return docs


def record_hash(record: Mapping[str, Any]) -> str:
    """SHA-256 of a mask's ``slideseg`` record (canonical JSON): which mask a table was made from."""
    return hashlib.sha256(json.dumps(record, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _min_pixels(min_area: float, mpp: float | None) -> int:
    """The fewest pixels whose area (pixels x mpp²) is at least ``min_area`` µm²."""
    if min_area <= 0 or mpp is None:
        return 0
    n = max(0, math.ceil(min_area / mpp**2) - 1)
    while n * mpp**2 < min_area:
        n += 1
    return n


def _slide(mask: MaskLevels, shape: tuple[int, int], source: Mapping[str, Any], given: str | None
           ) -> tuple[_SlideRef | None, list[str]]:
    """The slide to measure channels on, read on the mask's grid; checked against the mask's shape."""
    path = Path(given) if given is not None else Path(str(source.get("path", "")))
    if given is None and not (source.get("path") and (path.is_file() or path.is_dir())):
        return None, [f"no channel intensities: the slide {source.get('path') or '(none recorded)'} is not there "
                      "(pass --slide)"]
    level, factor = int(source.get("level", 0)), float(source.get("resample_factor", 1.0))
    series = source.get("series")
    with open_slide(path, level=level, series=int(series) if series is not None else None) as s:
        found = output_shape(s.shape[:2], factor) if factor != 1.0 else s.shape[:2]
        series = s.series
    if tuple(found) != shape:
        how = f"level {level}" + (f" resampled x{1 / factor:.4g}" if factor != 1.0 else "")
        raise ConfigError(f"the slide {path} at {how} is {found[0]} x {found[1]} px but the mask {mask.path} is "
                          f"{shape[0]} x {shape[1]}; expected the slide the mask was made from: pass it with --slide")
    return _SlideRef(str(path.resolve()), level, series, factor), []


def _channel_names(ref: _SlideRef) -> list[str]:
    with open_slide(ref.path, level=ref.level, series=ref.series) as s:
        return [n or f"channel {i}" for i, n in enumerate(s.channel_names)]


def _probabilities_shape(mask: MaskLevels) -> tuple[int, ...] | None:
    node = zarr.open_group(mask.path, mode="r").get(f"{PROBABILITIES}/0")
    return tuple(int(v) for v in node.shape) if isinstance(node, zarr.Array) else None


def _default_table(mask: MaskLevels) -> Path:
    return default_table(mask.path, label="into" in mask.record)


def default_table(mask: str | os.PathLike[str], *, label: bool = False) -> Path:
    """Where the object table of a mask goes unless ``table`` says: ``mask.objects.parquet`` beside
    ``mask.zarr``; with ``label`` (the mask is the label ``IMAGE/labels/NAME`` of an image)
    ``IMAGE.NAME.objects.parquet`` beside the image.

    >>> default_table("out/mask.zarr").as_posix(), default_table("s.ome.zarr/labels/nuclei", label=True).as_posix()
    ('out/mask.objects.parquet', 's.nuclei.objects.parquet')
    """
    path = Path(mask)
    if label:
        image = path.parent.parent
        return image.parent / f"{slide_stem(image)}.{path.name}.objects.parquet"
    return path.parent / f"{slide_stem(path)}.objects.parquet"


def _open_output(mask: MaskLevels, job: _Job, plan: _Plan, cfg: ObjectsConfig) -> tuple[InstanceWriter, int]:
    """A writer for ``MASK/objects`` (new, replaced, or resumed after checks) and the units already done."""
    existing = instances_record(mask.path)
    staging = Path(job.staging)
    target = mask.path / OBJECTS
    if existing is not None and cfg.resume and not existing.get("complete"):
        _check_resumable(target, existing, plan.record)
        for sub in ("pass1", "sums"):
            (staging / sub).mkdir(parents=True, exist_ok=True)
        writer = open_instances(mask.path)
        return writer, int(writer.done().sum())
    if existing is not None and not cfg.overwrite:
        if existing.get("complete"):
            done = " and complete, so there is nothing to resume" if cfg.resume else ""
            raise OutputExistsError(f"{target} exists{done}; pass --overwrite to replace it")
        raise OutputExistsError(f"{target} is an unfinished run; pass --resume to finish it or --overwrite to "
                                "start again")
    check_table_path(plan.table, cfg.overwrite)
    if plan.csv is not None:
        check_table_path(plan.csv, cfg.overwrite)
    _clear_staging(staging)
    writer = create_instances(mask.path, job.shape, plan.chunks, job.unit, plan.version, mask.mpp,
                              plan.record)
    for sub in ("pass1", "sums"):
        (staging / sub).mkdir(parents=True)
    (staging / _STAGING_MARK).write_text(json.dumps(plan.record))
    return writer, 0


def _check_resumable(target: Path, old: Mapping[str, Any], new: Mapping[str, Any]) -> None:
    why = []
    if old.get("mask_record_sha256") != new["mask_record_sha256"]:
        why.append("the mask has changed since (it was predicted again)")
    old_cfg, new_cfg = old.get("objects_config", {}), json.loads(json.dumps(new["objects_config"]))
    why += [f"{k} was {old_cfg.get(k)!r}, now {new_cfg.get(k)!r}" for k in RESULT_FIELDS
            if old_cfg.get(k) != new_cfg.get(k)]
    if why:
        raise ConfigError(f"cannot resume {target}: {'; '.join(why)}. Resume with the original settings, or pass "
                          "--overwrite to start again.")


def _clear_staging(staging: Path) -> None:
    """Remove a staging directory left by an earlier run; never one that slideseg did not write."""
    if not os.path.lexists(staging):
        return
    if staging.is_symlink() or not (staging / _STAGING_MARK).is_file():
        raise OutputFormatError(f"{staging} exists and is not slideseg's; refusing to remove it: move it away")
    shutil.rmtree(staging)


# ----------------------------------------------------------------------------------- tasks


def _run(client: Any, fn: Callable[..., int], job: _Job, items: Iterable[tuple[Any, ...]], max_in_flight: int,
         on_done: Callable[[int], None]) -> None:
    """Submit ``fn(job, *item)`` for each item, at most ``max_in_flight`` at a time; the first error
    cancels the rest and is raised here."""
    from distributed import as_completed

    it = iter(items)
    pending = as_completed()
    for item in islice(it, max_in_flight):
        pending.add(client.submit(fn, job, *item, pure=False))
    try:
        for fut in pending:
            on_done(fut.result())
            nxt = next(it, None)
            if nxt is not None:
                pending.add(client.submit(fn, job, *nxt, pure=False))
    except BaseException:
        client.cancel(list(pending.futures))
        raise


_LOCK = threading.Lock()
_STATE: dict[_Job, tuple[Any, Any, Any, Any]] = {}


def _state(job: _Job) -> tuple[Any, Any, Any, Any]:
    """(mask level 0, probabilities level 0 or None, instance writer, slide or None) in this process."""
    with _LOCK:
        if job not in _STATE:
            group = zarr.open_group(job.mask, mode="r")
            probs = group[f"{PROBABILITIES}/0"] if job.probabilities else None
            slide: Any = None
            if job.slide is not None:
                slide = open_slide(job.slide.path, level=job.slide.level, series=job.slide.series)
                slide = ResampledSlide(slide, job.slide.factor) if job.slide.factor != 1.0 else slide
            _release()  # one run at a time per process
            _STATE[job] = (group[job.level], probs, open_instances(job.mask), slide)
        return _STATE[job]


def _close_all() -> None:
    """Runs on every worker at the end of a run: close the files the run held open there."""
    with _LOCK:
        _release()


def _release() -> None:
    """Close what this process holds open for a run (its slide)."""
    for _, _, _, slide in _STATE.values():
        if slide is not None:
            getattr(slide, "slide", slide).close()
    _STATE.clear()


def _label_unit(job: _Job, iy: int, ix: int) -> int:
    """Pass 1 task: summarise unit ``(iy, ix)`` into ``pass1/iy_ix.npz``; its pixel count."""
    mask, _, _, _ = _state(job)
    box = grid_box(iy, ix, job.shape, job.unit)
    y0, y1, x0, x1 = box
    summary = summarise_block(np.asarray(mask[y0:y1, x0:x1]), box, job.shape[1], job.spec)
    _save(_pass1_file(Path(job.staging), iy, ix), summary.to_arrays())
    return (y1 - y0) * (x1 - x0)


def _write_unit(job: _Job, iy: int, ix: int, mapping: np.ndarray, spans: np.ndarray) -> int:
    """Pass 2 task: write unit ``(iy, ix)`` of the instance image and save its per-object sums."""
    mask, probs, writer, slide = _state(job)
    y0, y1, x0, x1 = grid_box(iy, ix, job.shape, job.unit)
    framed = _framed(mask, (y0, y1, x0, x1), job.shape)  # (h + 2, w + 2)
    block = framed[1:-1, 1:-1]
    ids, labels, values = relabel_block(block, job.spec, mapping)
    writer.write_chunk(iy, ix, ids)
    channels = []
    if probs is not None:
        p = np.asarray(probs[:, y0:y1, x0:x1])  # (K, h, w)
        own = np.clip(block, 0, p.shape[0] - 1).astype(np.intp)[None]
        channels.append(np.take_along_axis(p, own, 0)[0])
    if slide is not None:
        channels += list(np.moveaxis(np.asarray(slide.read(y0, y1, x0, x1)), -1, 0))
    stack = np.stack(channels, -1) if channels else None
    sums, parts = unit_sums(labels, values, BlockIds(mapping, spans), (y0, x0), edges=edge_counts(framed),
                            channels=stack)
    _save(_sums_file(Path(job.staging), iy, ix), {**sums.to_arrays(), "spans": parts})
    writer.mark_done(iy, ix)  # only once the unit and its sums are on disk
    return (y1 - y0) * (x1 - x0)


def _framed(mask: Any, box: tuple[int, int, int, int], shape: tuple[int, int]) -> np.ndarray:
    """The block at ``box`` with a one-pixel frame of its neighbours' values (-1 outside the mask;
    the corners, which no edge count needs, stay -1)."""
    y0, y1, x0, x1 = box
    h, w = shape
    out = np.full((y1 - y0 + 2, x1 - x0 + 2), -1, np.int16 if mask.dtype.itemsize == 1 else np.int64)
    out[1:-1, 1:-1] = mask[y0:y1, x0:x1]
    if y0 > 0:
        out[0, 1:-1] = mask[y0 - 1, x0:x1]
    if y1 < h:
        out[-1, 1:-1] = mask[y1, x0:x1]
    if x0 > 0:
        out[1:-1, 0] = mask[y0:y1, x0 - 1]
    if x1 < w:
        out[1:-1, -1] = mask[y0:y1, x1]
    return out


def _maps(numbering: Numbering, staging: Path, done: np.ndarray) -> Iterator[tuple[int, int, Any, Any]]:
    """Pass 2 items ``(iy, ix, mapping, spans)`` of the units not done, numbering band by band."""
    gy, gx = done.shape
    for iy in range(gy):
        band = numbering.band([_load_summary(staging, iy, ix) for ix in range(gx)])
        for ix, ids in enumerate(band):
            if not done[iy, ix]:
                yield iy, ix, ids.mapping, ids.spans


def _assemble(table: TableWriter, staging: Path, job: _Job, plan: _Plan, grid: tuple[int, int]) -> dict[str, int]:
    """Merge the units' sums into whole objects and add their measured rows to ``table``;
    objects per class name."""
    counts: dict[int, int] = {}
    merger = SumsMerger()
    for iy in range(grid[0]):
        for ix in range(grid[1]):
            with np.load(_sums_file(staging, iy, ix)) as f:
                sums = merger.add(Sums.from_arrays(f), np.asarray(f["spans"]))
            if len(sums):
                table.add(object_rows(sums.to_arrays(), mpp=plan.mpp, scale=(plan.scale.sx, plan.scale.sy),
                                      names=plan.names, channels=len(plan.channels),
                                      probabilities=job.probabilities))
                for v, n in zip(*np.unique(sums.value, return_counts=True), strict=True):
                    counts[int(v)] = counts.get(int(v), 0) + int(n)
    assert not merger.open, "objects left incomplete after the last unit"
    return {plan.names.get(v, f"class {v}"): n for v, n in sorted(counts.items())}


def _summaries(staging: Path, grid: tuple[int, int]) -> Iterator[BlockSummary]:
    for iy in range(grid[0]):
        for ix in range(grid[1]):
            yield _load_summary(staging, iy, ix)


def _load_summary(staging: Path, iy: int, ix: int) -> BlockSummary:
    with np.load(_pass1_file(staging, iy, ix)) as f:
        return BlockSummary.from_arrays(f)


def _save(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    """``np.savez`` to a temporary name, then renamed: a file is there whole or not at all."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    with tmp.open("wb") as f:
        np.savez(f, **arrays)  # type: ignore[arg-type]
    os.replace(tmp, path)


def _pass1_file(staging: Path, iy: int, ix: int) -> Path:
    return staging / "pass1" / f"{iy}_{ix}.npz"


def _sums_file(staging: Path, iy: int, ix: int) -> Path:
    return staging / "sums" / f"{iy}_{ix}.npz"


def _area(job: _Job, iy: int, ix: int) -> int:
    y0, y1, x0, x1 = grid_box(int(iy), int(ix), job.shape, job.unit)
    return (y1 - y0) * (x1 - x0)
