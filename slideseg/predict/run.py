"""``slideseg predict``: slide → plan → tissue → Dask chunk tasks → OME-Zarr label image.

A run can stop at any moment (walltime, pre-emption, ``kill -9``): each chunk is marked done only
once it is on disk, and ``resume=True`` runs only the chunks that are not, giving a result that is
bitwise identical to an uninterrupted run. The pyramid and the final metadata are written once
level 0 is complete.

Normalisation that needs statistics (a bioimage.io package's ``scale_range`` or
``zero_mean_unit_variance``, a sidecar's ``"norm": "slide"``, ``norm='slide'``) is computed once per
slide, from one pyramid level and on tissue only, recorded in the output (``normalisation``) and
applied with the same constants to every tile, so no seam shows; a resumed run reuses the record.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from slideseg import __version__
from slideseg.errors import ConfigError, ModelFileError, OutputExistsError
from slideseg.io.ngff import LabelClass
from slideseg.io.normalise import (
    Op,
    ZeroMeanUnitVariance,
    needs_statistics,
    op_from_dict,
    op_to_dict,
    slide_statistics,
)
from slideseg.io.resample import choose_level, output_shape
from slideseg.io.slide import open_slide
from slideseg.io.tissue import TissueMask, detect_tissue, load_tissue_mask
from slideseg.model.bioimageio import is_package, read_package
from slideseg.model.files import read_model_config
from slideseg.plan.geometry import Geometry
from slideseg.plan.tiles import Plan, plan_slide
from slideseg.predict.checks import (
    check_objects_outputs,
    check_paths,
    check_resumable,
    check_writable,
    preview_path,
    slide_fingerprint,
    write_errors,
)
from slideseg.predict.config import CPU_BATCH_PIXELS, PredictConfig
from slideseg.schedule.cluster import ClusterConfig, dask_client
from slideseg.schedule.tasks import EngineKey, JobSpec, engine_for, feed, preload_plugin
from slideseg.tools.objects import ObjectsConfig
from slideseg.tools.objects import objects as find_objects
from slideseg.tools.preview import write_preview
from slideseg.write.instances import instances_record
from slideseg.write.labels import check_alignment, label_path, parent_levels
from slideseg.write.lock import lock_path, output_lock
from slideseg.write.mask import create_mask, describe_mask, open_mask, open_mask_writer


@dataclass(frozen=True)
class PredictResult:
    """What a run did, for the summary screen."""

    output: Path
    shape: tuple[int, int]
    mpp: float | None
    plan: dict[str, Any]
    engine: dict[str, Any]
    seconds: float
    chunks_run: int = 0
    chunks_skipped: int = 0
    chunks_already_done: int = 0
    tissue_fraction: float | None = None
    warnings: tuple[str, ...] = field(default=())
    already_complete: bool = False
    """The output was complete already, made by the same model and settings from the same slide."""

    @property
    def megapixels_per_second(self) -> float:
        return self.shape[0] * self.shape[1] / 1e6 / max(self.seconds, 1e-9)


class Observer(Protocol):
    """Receives progress; :mod:`slideseg.cli.progress` draws it."""

    def slide_started(self, name: str, n_chunks: int, n_pixels: int) -> None: ...

    def chunk_done(self, pixels: int, skipped: bool) -> None: ...


class Quiet:
    def slide_started(self, name: str, n_chunks: int, n_pixels: int) -> None:
        pass

    def chunk_done(self, pixels: int, skipped: bool) -> None:
        pass


def predict(slide_path: str | os.PathLike[str], output: str | os.PathLike[str] | None,
            model_path: str | os.PathLike[str], cfg: PredictConfig = PredictConfig(),
            cluster: ClusterConfig = ClusterConfig(), observer: Observer | None = None) -> PredictResult:
    """Segment one slide into an OME-Zarr label image at ``output`` (or, with ``cfg.into``, at
    ``INTO/labels/NAME``)."""

    cfg = absolute_paths(cfg)
    if cfg.into is not None:
        target = label_path(cfg.into, cfg.name)
        if output is not None and Path(output).resolve() != target.resolve():
            raise ConfigError(f"-o {output} and --into {cfg.into} disagree; with --into the mask goes to {target}.")
        output = target
        cfg = _with_image_version(cfg)
    if output is None:
        raise ConfigError("no output given: pass -o mask.zarr, or --into image.ome.zarr --name NAME")
    key = engine_key(model_path, cfg)
    with dask_client(cluster, gpu=wants_gpu(cfg)) as client:
        return predict_one(client, Path(slide_path), Path(output), key, cfg, observer or Quiet())


def absolute_paths(cfg: PredictConfig) -> PredictConfig:
    """Record ``--into`` and ``--tissue-mask`` as absolute paths, so a resume from another folder matches."""
    def absolute(path: str | None) -> str | None:
        return str(Path(path).resolve()) if path is not None else None

    return replace(cfg, into=absolute(cfg.into), tissue_mask=absolute(cfg.tissue_mask))


def _with_image_version(cfg: PredictConfig) -> PredictConfig:
    """With ``--into``, the label takes the image's NGFF version (and Zarr format)."""

    version = parent_levels(cfg.into or "").version
    if cfg.shard is not None and version != "0.5":
        raise ConfigError(f"--shard needs an NGFF 0.5 image, but --into {cfg.into} is NGFF {version}; drop --shard.")
    return replace(cfg, ngff=version)


def default_batch_size(tile: int, gpu: bool) -> int:
    """Tiles per engine call when the user did not say: 4 on a GPU; on a CPU as many as fit in
    :data:`CPU_BATCH_PIXELS` (at least one)."""
    return 4 if gpu else max(1, int(CPU_BATCH_PIXELS // tile**2))


def plan_for(shape: tuple[int, int], geometry: Geometry, cfg: PredictConfig) -> Plan:
    """The tiling plan for a slide of ``shape`` under ``cfg`` (tile size checked or chosen).

    Tasks cover one write unit each: a chunk (NGFF 0.4) or a shard (0.5); the default tile
    covers one chunk either way.
    """
    unit = cfg.chunk if cfg.ngff == "0.4" else (cfg.shard or 4 * cfg.chunk)
    return plan_slide(shape, geometry, chunk=cfg.chunk, tile=cfg.tile, unit=unit)


def predict_one(client: Any, slide_path: Path, output: Path, key: EngineKey, cfg: PredictConfig,
                observer: Observer, inputs: Sequence[Path] = ()) -> PredictResult:
    """One slide on a running Dask ``client``: everything is checked before the output is touched
    (paths, channels, tile, a resume against the record), then the chunks that are not done run.
    ``inputs``: the other files of the run, which no output may land on."""
    t0 = time.perf_counter()
    check_paths(slide_path, output, cfg, inputs=(Path(key.model_path), *inputs))
    check_objects_outputs(output, cfg)
    resources: dict[str, float] | None = {"GPU": 1.0} if wants_gpu(cfg) else None
    client.register_plugin(preload_plugin(key))
    info = client.submit(_engine_info, key, pure=False, resources=resources).result()
    mc = info["config"]
    source = _source(slide_path, cfg, mc.mpp)
    if source.channels != mc.in_channels:
        raise ModelFileError(
            f"the model expects {mc.in_channels} input channel(s) but {slide_path} has {source.channels}; "
            f"use a model made with --in-channels {source.channels}, or pick channels with --channels."
        )
    if info["fixed_tile"] and cfg.tile not in (None, info["fixed_tile"]):
        raise ConfigError(f"this model takes {info['fixed_tile']} px tiles only, got --tile {cfg.tile}; pass "
                          f"--tile {info['fixed_tile']} or leave --tile out (or export the model for {cfg.tile} px).")
    if cfg.tile is None and info["fixed_tile"]:  # a model file made for one tile size
        cfg = replace(cfg, tile=info["fixed_tile"])
    plan = plan_for(source.shape, mc.geometry, cfg)
    if cfg.tile is None and info["min_tile"] and plan.tile < info["min_tile"]:  # a package's smallest tile
        cfg = replace(cfg, tile=_smallest_valid(mc.geometry, info["min_tile"]))
        plan = plan_for(source.shape, mc.geometry, cfg)
    batch = cfg.batch_size or default_batch_size(plan.tile, gpu=resources is not None)
    attrs = {
        "version": __version__, "predict_config": cfg.to_dict(), "model_config": mc.to_dict(),
        "model_metadata": dict(info["metadata"]), "weights_sha256": info["weights_sha256"],
        "engine": info["describe"], "plan": plan.describe(), "batch_size": batch,
        "source": {"path": str(slide_path.resolve()), **source.describe(),
                   "fingerprint": _fingerprint(slide_path, source, cfg)},
    }
    check_writable(output)
    with write_errors(output):
        if cfg.into is not None:  # the image's labels/ group may not exist yet: the lock sits in the image
            lock = Path(cfg.into) / f".{cfg.name}.label.lock"
        else:
            output.parent.mkdir(parents=True, exist_ok=True)
            lock = lock_path(output)
        with output_lock(output, lock):
            return _write(client, slide_path, output, key, cfg, observer, info, source, plan, attrs, batch,
                          resources, t0)


def _write(client: Any, slide_path: Path, output: Path, key: EngineKey, cfg: PredictConfig, observer: Observer,
           info: Mapping[str, Any], source: _Source, plan: Plan, attrs: dict[str, Any], batch: int,
           resources: dict[str, float] | None, t0: float) -> PredictResult:
    """Open the output (new, replaced or resumed) and run the chunks it lacks; holds the output's lock."""
    mc = info["config"]
    rule = _norm_rule(info, cfg)
    writer, tissue, complete = _open_output(output, plan, mc, source, attrs, cfg, slide_path, rule)
    if complete:  # resumed, and the record matches: nothing is left to do
        notes = [_write_preview(output, slide_path, cfg)] if cfg.preview else []
        notes += [_write_objects(client, output, cfg)] if cfg.objects else []
        return PredictResult(output, source.shape, source.mpp, plan.describe(), info["describe"],
                             time.perf_counter() - t0, chunks_already_done=plan.grid[0] * plan.grid[1],
                             warnings=tuple(notes), already_complete=True)
    if attrs.get("normalisation"):  # this slide's constants, shared by every tile
        resolved = tuple(op_from_dict(d) for d in attrs["normalisation"]["resolved"])
        key = replace(key, normalisation=resolved)
    done = writer.done()
    gy, gx = plan.grid
    todo = [(iy, ix) for iy in range(gy) for ix in range(gx) if not done[iy, ix]]
    run = [c for c in todo if tissue is None or tissue.covers(plan.chunk(*c).box)]
    skip = sorted(set(todo) - set(run))
    observer.slide_started(slide_path.name, len(todo), sum(plan.chunk(*c).box.area for c in todo))
    for iy, ix in skip:
        writer.write_background(iy, ix)
        observer.chunk_done(plan.chunk(iy, ix).box.area, True)
    spec = JobSpec(str(slide_path), source.level, source.series, str(output), plan, key, mc.mirror, cfg.probabilities,
                   batch, source.factor, cfg.channels, merge_batches=resources is not None)
    in_flight = 2 * sum(client.nthreads().values()) or 4
    feed(client, spec, run, max_in_flight=in_flight, resources=resources,
         on_done=lambda px: observer.chunk_done(px, False))
    writer.finalize()
    notes = _notes(info["metadata"], mc.mpp, source)
    if attrs.get("normalisation"):
        n = attrs["normalisation"]
        notes.append(f"normalised with the slide's statistics (level {n['level']}, "
                     f"{'tissue only' if n['statistics']['tissue_only'] else 'all pixels'}): {n['applied']}.")
    if cfg.preview:
        notes.append(_write_preview(output, slide_path, cfg))
    if cfg.objects:
        notes.append(_write_objects(client, output, cfg))
    return PredictResult(output, source.shape, source.mpp, plan.describe(), info["describe"],
                         time.perf_counter() - t0, chunks_run=len(run), chunks_skipped=len(skip),
                         chunks_already_done=int(done.sum()),
                         tissue_fraction=tissue.fraction if tissue is not None else None,
                         warnings=tuple(notes))


@dataclass(frozen=True)
class _Source:
    """The slide as the network sees it: which level, how it is resampled, the output grid."""

    level: int
    factor: float
    """Level pixels per output pixel (1.0: read as it is)."""
    level_shape: tuple[int, int]
    level_mpp: float | None
    shape: tuple[int, int]
    """The output grid (the mask's level 0)."""
    mpp: float | None
    """Pixel size of the output grid."""
    channels: int
    series: int
    level0_shape: tuple[int, int]
    """The slide's level 0, so the mask maps to it without the slide (GeoJSON, object tables)."""

    def describe(self) -> dict[str, Any]:
        return {"series": self.series, "level": self.level, "level_shape": list(self.level_shape),
                "level0_shape": list(self.level0_shape),
                "level_mpp": self.level_mpp, "resample_factor": self.factor, "shape": list(self.shape), "mpp": self.mpp,
                "channels": self.channels}


def _source(slide_path: Path, cfg: PredictConfig, model_mpp: float | None) -> _Source:
    """Pick the level (closest to the model's mpp, not coarser) and the resampling factor."""

    with open_slide(slide_path, level=0, series=cfg.series, **_channels(cfg)) as slide0:
        series = slide0.series  # the one actually opened (the main image when none was asked for)
        if cfg.mpp is not None:
            mpps: list[float | None] = [cfg.mpp * lv.downsample for lv in slide0.levels]
        else:  # each level's own pixel size where the file states it (OME-Zarr), else scaled
            mpps = [lv.mpp or (slide0.mpp * lv.downsample if slide0.mpp else None) for lv in slide0.levels]
        shapes = [lv.shape for lv in slide0.levels]
        channels = slide0.shape[2]
        level0 = (int(slide0.shape[0]), int(slide0.shape[1]))
    choice = choose_level(mpps, model_mpp, level=cfg.level, name=str(slide_path))
    shape = output_shape(shapes[choice.level], choice.factor)
    return _Source(choice.level, choice.factor, shapes[choice.level], mpps[choice.level], shape, choice.mpp,
                   channels, series, level0)


def _fingerprint(slide_path: Path, source: _Source, cfg: PredictConfig) -> dict[str, Any]:
    with open_slide(slide_path, level=source.level, series=source.series, **_channels(cfg)) as slide:
        return slide_fingerprint(slide_path, slide)


def _channels(cfg: PredictConfig) -> dict[str, Any]:
    return {"channels": cfg.channels} if cfg.channels is not None else {}


def _open_output(output: Path, plan: Plan, mc: Any, source: _Source, attrs: dict[str, Any],
                 cfg: PredictConfig, slide_path: Path, rule: tuple[Op, ...]) -> tuple[Any, Any, bool]:
    """A writer for ``output`` (new, replaced, or resumed after checks), the tissue mask to use, and
    whether the resumed output is complete already.

    With a normalisation ``rule`` that needs statistics, ``attrs["normalisation"]`` is set: computed
    for a new output (after the tissue mask, which it counts on), read back on resume.
    """

    if output.exists() and cfg.resume:
        existing = describe_mask(output)
        check_resumable(output, attrs, existing)
        recorded = (existing.get("slideseg") or {}).get("normalisation")
        if bool(rule) != bool(recorded):  # the options and the model agree, so only an older record can differ
            raise ConfigError(f"cannot resume {output}: it was made {'with' if recorded else 'without'} normalisation "
                              "by slide statistics. Resume with the original settings, or pass --overwrite to start "
                              "again.")
        attrs["normalisation"] = recorded
        writer = open_mask_writer(output)
        group = open_mask(output)
        if "tissue" in group:
            return writer, TissueMask.from_zarr(group["tissue"]), _finished(existing)
        tissue = _tissue(cfg, plan, source, slide_path)  # killed before it was saved: no chunk is done yet
        if tissue is not None:
            writer.write_tissue(tissue.mask, tissue.attrs())
        return writer, tissue, _finished(existing)
    if output.exists() and not cfg.overwrite:
        raise OutputExistsError(f"{output} exists; pass --resume to finish it or --overwrite to replace it.")
    tissue = _tissue(cfg, plan, source, slide_path)
    if rule:
        attrs["normalisation"] = slide_normalisation(slide_path, cfg, rule, tissue)
    classes = [LabelClass(k, n, c) for k, (n, c) in enumerate(zip(mc.class_names, mc.class_colors, strict=True))]
    into = None
    if cfg.into is not None:
        into = parent_levels(cfg.into)
        check_alignment(into, plan.shape, source.mpp)
    version = into.version if into is not None else cfg.ngff
    writer = create_mask(output, plan.shape, cfg.chunk, classes, source.mpp, attrs,
                         probabilities=cfg.probabilities, overwrite=cfg.overwrite, ngff=version,
                         shard=plan.chunk_size if version == "0.5" else None, into=into)
    if tissue is not None:
        writer.write_tissue(tissue.mask, tissue.attrs())
    return writer, tissue, False


def _finished(described: Mapping[str, Any]) -> bool:
    """A mask marked complete whose every chunk is recorded as done."""
    return bool(described["complete"]) and described["chunks_done"] == described["chunks_total"]


def _tissue(cfg: PredictConfig, plan: Plan, source: _Source, slide_path: Path) -> Any:
    if cfg.tissue_mask:
        return load_tissue_mask(cfg.tissue_mask, plan.shape)
    if cfg.tissue:
        return detect_tissue(slide_path, plan.shape, source.series, **_channels(cfg))
    return None


def _norm_rule(info: Mapping[str, Any], cfg: PredictConfig) -> tuple[Op, ...]:
    """The normalisation steps that need this slide's statistics (empty: none do)."""
    if cfg.norm == "slide":
        return (ZeroMeanUnitVariance(per_channel=True),)
    steps = tuple(op_from_dict(d) for d in info["preprocessing"])
    return steps if needs_statistics(steps) else ()


def slide_normalisation(slide_path: Path, cfg: PredictConfig, rule: Sequence[Op],
                        tissue: TissueMask | None) -> dict[str, Any]:
    """The record of this slide's normalisation: statistics for ``rule`` (tissue only when there is a
    mask) and the fixed steps they make, which every tile is normalised with."""
    return slide_statistics(slide_path, rule, level=cfg.norm_level, series=cfg.series,
                            tissue=None if tissue is None else tissue.mask, **_channels(cfg))


def _smallest_valid(geometry: Geometry, at_least: int) -> int:
    """The smallest tile of ``geometry`` that is at least ``at_least`` px."""
    n = at_least
    while not geometry.is_valid(n):
        n += 1
    return geometry.check_tile(n)


def _write_preview(output: Path, slide_path: Path, cfg: PredictConfig) -> str:
    png = preview_path(output, cfg)
    if png.exists() and not cfg.overwrite:
        return f"preview not written: {png} exists (pass --overwrite to replace it)."
    write_preview(output, png, slide_path=slide_path, overwrite=True)
    return f"preview: {png}"


def _write_objects(client: Any, output: Path, cfg: PredictConfig) -> str:
    """``slideseg objects`` on the finished mask (default options) on the run's own Dask cluster;
    objects already made from this mask are kept, an interrupted objects run is finished."""
    record = instances_record(output)
    if record is not None and record.get("complete") and not cfg.overwrite:
        return f"objects: {record.get('objects', 0)} already in {output / 'objects'}, table {record.get('table')}"
    resume = record is not None and not record.get("complete") and not cfg.overwrite
    result = find_objects(output, ObjectsConfig(overwrite=cfg.overwrite, resume=resume),
                          ClusterConfig(scheduler_address=client.scheduler.address))
    return f"objects: {result.objects} in {result.instances}, table {result.table}"


def _engine_info(key: EngineKey) -> dict[str, Any]:
    """Runs on a worker: load (or reuse) the engine and say what it is."""
    engine = engine_for(key).engine
    return {"config": engine.config, "weights_sha256": engine.weights_sha256,
            "metadata": dict(engine.metadata), "describe": engine.describe(),
            "fixed_tile": getattr(engine, "fixed_tile", None), "min_tile": getattr(engine, "min_tile", None),
            "preprocessing": [op_to_dict(op) for op in getattr(engine, "preprocessing", ())]}


def engine_key(model_path: str | os.PathLike[str], cfg: PredictConfig) -> EngineKey:
    path = Path(model_path)
    if path.suffix == ".safetensors":
        read_model_config(path)  # fail fast, here, on a missing or foreign model file
    elif is_package(path):
        read_package(path)  # the same for a bioimage.io package (it is validated here, offline)
    return EngineKey(str(path.resolve()), cfg.engine, cfg.device, cfg.threads, cfg.precision, cfg.compile,
                     cfg.batch_size)


def wants_gpu(cfg: PredictConfig) -> bool:
    if cfg.device.startswith("cuda"):
        return True
    if cfg.device == "cpu":
        return False
    import torch

    return bool(torch.cuda.is_available())


def _notes(metadata: Mapping[str, Any], model_mpp: float | None, source: _Source) -> list[str]:
    notes = []
    if not metadata.get("trained", True):
        notes.append("this model is untrained (random He-initialised weights): the mask shows the "
                     "pipeline working, not a meaningful segmentation.")
    if source.factor != 1.0:
        notes.append(f"read level {source.level} at {source.level_mpp:.4g} µm/px and resampled it to the model's "
                     f"{model_mpp:.4g} µm/px (x{1 / source.factor:.3f}).")
    elif model_mpp and source.mpp and abs(source.mpp / model_mpp - 1) > 0.01:
        notes.append(f"level {source.level} is at {source.mpp:.4g} µm/px but the model expects {model_mpp:.4g}; "
                     "the mask is at the level's pixel size.")
    if model_mpp and source.mpp is None:
        notes.append(f"the slide has no pixel size; level {source.level} was read as it is "
                     f"(the model expects {model_mpp:.4g} µm/px).")
    return notes
