"""``slideseg predict``: slide → plan → tissue → Dask chunk tasks → OME-Zarr label image.

A run can stop at any moment (walltime, pre-emption, ``kill -9``): each chunk is marked done only
once it is on disk, and ``resume=True`` runs only the chunks that are not, giving a result that is
bitwise identical to an uninterrupted run. The pyramid and the final metadata are written once
level 0 is complete.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Protocol

from slideseg import __version__
from slideseg.errors import ConfigError, ModelFileError, OutputExistsError, SlideSegError
from slideseg.io.axes import parse_channels
from slideseg.io.formats import slide_stem
from slideseg.io.ngff import LabelClass, check_version
from slideseg.io.resample import choose_level, output_shape
from slideseg.io.slide import open_slide
from slideseg.io.tissue import TissueMask, detect_tissue, load_tissue_mask
from slideseg.model.files import read_model_config
from slideseg.plan.geometry import Geometry
from slideseg.plan.tiles import Plan, plan_slide
from slideseg.schedule.cluster import ClusterConfig, dask_client
from slideseg.schedule.tasks import EngineKey, JobSpec, engine_for, feed, preload_plugin
from slideseg.tools.preview import write_preview
from slideseg.write.labels import check_alignment, label_path, parent_levels
from slideseg.write.mask import create_mask, describe_mask, open_mask, open_mask_writer

DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("fp32", "fp16", "bf16")
CPU_BATCH_PIXELS = 1.5e6
"""Default cap on input pixels per engine call on a CPU: a 1212-px tile of a base-16 U-Net
needs about 0.6 GB of activations, so this keeps inference under ~1 GB."""
# PredictConfig fields that change the output: a resumed run must match them.
_OUTPUT_FIELDS = ("tile", "chunk", "ngff", "shard", "into", "name", "level", "mpp", "channels", "series",
                  "probabilities", "precision", "compile", "tissue", "tissue_mask")


@dataclass(frozen=True)
class PredictConfig:
    """Options of one ``predict`` run; saved into every output."""

    tile: int | None = None
    """Network input tile edge in px; None picks the smallest tile whose output covers a chunk."""
    batch_size: int | None = None
    """Tiles per engine call, filled from several chunks when chunks have fewer tiles. None: 4 on
    a GPU; on a CPU as many as fit in 1.5 megapixels (at least 1), which bounds memory."""
    chunk: int = 1024
    """Output chunk edge in px (the Zarr chunk grid; one task per chunk, or per shard for 0.5)."""
    ngff: str = "0.4"
    """Output format: '0.4' (Zarr v2; QuPath, napari, OMERO) or '0.5' (Zarr v3, sharded)."""
    shard: int | None = None
    """For NGFF 0.5: shard edge in px, a multiple of ``chunk`` (default 4 chunks); one task per shard."""
    level: int | None = None
    """Pyramid level of the slide to read; None picks the level closest to the model's pixel size
    (not coarser) and resamples it to exactly that size."""
    mpp: float | None = None
    """The slide's level-0 pixel size in µm, overriding (or standing in for) its metadata."""
    channels: tuple[int, ...] | None = None
    """Channels of the slide to feed the model, in order (None: all); "0,2" is accepted too."""
    series: int | None = None
    """Image series of a multi-series file (None: the main image; ambiguous files ask for one)."""
    device: str = "auto"
    """'auto' (CUDA if available), 'cpu' or 'cuda[:N]'."""
    engine: str = "auto"
    """Engine name ('auto' picks the best available)."""
    precision: str = "fp32"
    """Arithmetic of the network: 'fp32', 'fp16' or 'bf16' (half precision on GPUs)."""
    compile: bool = False
    """Compile the network with torch.compile (PyTorch engine)."""
    probabilities: bool = False
    """Also write per-class probabilities (uint8, 0..255)."""
    tissue: bool = True
    """Run only chunks that hold tissue (detected on a thumbnail); the rest read as background."""
    tissue_mask: str | None = None
    """A low-resolution tissue mask to use instead of detection (non-zero = tissue)."""
    preview: bool = False
    """Also write a PNG thumbnail with the mask overlaid, beside the output (``mask.png``)."""
    into: str | None = None
    """Write the mask as a label of this existing OME-Zarr image (``INTO/labels/NAME``)."""
    name: str = "segmentation"
    """Name of the label with ``into``."""
    overwrite: bool = False
    """Replace an existing output."""
    resume: bool = False
    """Continue an interrupted run: run only the chunks the output does not have yet."""
    threads: int | None = None
    """Threads of the engine's CPU kernels (None: the library's default)."""

    def __post_init__(self) -> None:
        if self.batch_size is not None and self.batch_size < 1:
            raise ConfigError(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.chunk < 16:
            raise ConfigError(f"--chunk must be >= 16 px, got {self.chunk}")
        if (self.level is not None and self.level < 0) or (self.series is not None and self.series < 0):
            raise ConfigError(f"--level and --series must be >= 0, got {self.level} and {self.series}")
        if self.mpp is not None and not self.mpp > 0:
            raise ConfigError(f"--mpp must be > 0 µm, got {self.mpp}")
        object.__setattr__(self, "channels", parse_channels(self.channels))
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"--threads must be >= 1, got {self.threads}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"--precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if not (self.device in DEVICES or self.device.startswith("cuda:")):
            raise ConfigError(f"--device must be one of {', '.join(DEVICES)} or cuda:N, got {self.device!r}")

        check_version(self.ngff)
        if self.shard is not None and (self.ngff != "0.5" or self.shard % self.chunk):
            raise ConfigError(f"--shard needs --ngff 0.5 and a multiple of --chunk ({self.chunk}); got {self.shard}")
        if self.overwrite and self.resume:
            raise ConfigError("--overwrite and --resume contradict each other; pick one.")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PredictConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


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

    @property
    def megapixels_per_second(self) -> float:
        return self.shape[0] * self.shape[1] / 1e6 / max(self.seconds, 1e-9)


class Observer(Protocol):
    """Receives progress; :mod:`slideseg.cli.progress` draws it."""

    def slide_started(self, name: str, n_chunks: int, n_pixels: int) -> None: ...

    def chunk_done(self, pixels: int, skipped: bool) -> None: ...


class _Quiet:
    def slide_started(self, name: str, n_chunks: int, n_pixels: int) -> None:
        pass

    def chunk_done(self, pixels: int, skipped: bool) -> None:
        pass


def predict(slide_path: str | os.PathLike[str], output: str | os.PathLike[str] | None,
            model_path: str | os.PathLike[str], cfg: PredictConfig = PredictConfig(),
            cluster: ClusterConfig = ClusterConfig(), observer: Observer | None = None) -> PredictResult:
    """Segment one slide into an OME-Zarr label image at ``output`` (or, with ``cfg.into``, at
    ``INTO/labels/NAME``)."""

    cfg = _absolute_paths(cfg)
    if cfg.into is not None:
        target = label_path(cfg.into, cfg.name)
        if output is not None and Path(output).resolve() != target.resolve():
            raise ConfigError(f"-o {output} and --into {cfg.into} disagree; with --into the mask goes to {target}.")
        output = target
        cfg = _with_image_version(cfg)
    if output is None:
        raise ConfigError("no output given: pass -o mask.zarr, or --into image.ome.zarr --name NAME")
    key = _engine_key(model_path, cfg)
    with dask_client(cluster, gpu=_wants_gpu(cfg)) as client:
        return _predict_one(client, Path(slide_path), Path(output), key, cfg, observer or _Quiet())


@dataclass(frozen=True)
class BatchItem:
    """The outcome for one slide of :func:`predict_many`."""

    slide: Path
    output: Path
    result: PredictResult | None = None
    skipped: str | None = None
    error: str | None = None


def predict_many(slides: Sequence[str | os.PathLike[str]], outdir: str | os.PathLike[str],
                 model_path: str | os.PathLike[str], cfg: PredictConfig = PredictConfig(),
                 cluster: ClusterConfig = ClusterConfig(), observer: Observer | None = None) -> list[BatchItem]:
    """Segment several slides into ``outdir/<name>.zarr`` on one cluster; outputs that are already
    complete are skipped, and one slide's error does not stop the others."""
    if cfg.into is not None:
        raise ConfigError("--into writes the label of one image; run one slide at a time with --into.")
    out = Path(outdir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out} is a file; with several slides -o must be a directory.")
    out.mkdir(parents=True, exist_ok=True)
    targets = [(Path(s), out / (slide_stem(Path(s)) + ".zarr")) for s in slides]
    dupes = {t for _, t in targets if sum(t == u for _, u in targets) > 1}
    if dupes:
        raise ConfigError(f"several slides would write {sorted(map(str, dupes))[0]}; give them distinct names.")
    key = _engine_key(model_path, cfg)
    cfg = _absolute_paths(cfg)
    items = []
    with dask_client(cluster, gpu=_wants_gpu(cfg)) as client:
        for slide, target in targets:
            if not cfg.overwrite and _is_complete(target):
                items.append(BatchItem(slide, target, skipped="already complete"))
                continue
            one = cfg if not target.exists() or cfg.overwrite else PredictConfig(**{**cfg.to_dict(), "resume": True})
            try:
                result = _predict_one(client, slide, target, key, one, observer or _Quiet())
            except SlideSegError as exc:
                items.append(BatchItem(slide, target, error=str(exc)))
            else:
                items.append(BatchItem(slide, target, result=result))
    return items


def _absolute_paths(cfg: PredictConfig) -> PredictConfig:
    """Record ``--into`` and ``--tissue-mask`` as absolute paths, so a resume from another folder matches."""
    fix = {k: str(Path(v).resolve()) for k in ("into", "tissue_mask") if (v := getattr(cfg, k)) is not None}
    return PredictConfig(**{**cfg.to_dict(), **fix}) if fix else cfg


def _with_image_version(cfg: PredictConfig) -> PredictConfig:
    """With ``--into``, the label takes the image's NGFF version (and Zarr format)."""

    version = parent_levels(cfg.into or "").version
    if cfg.shard is not None and version != "0.5":
        raise ConfigError(f"--shard needs an NGFF 0.5 image, but --into {cfg.into} is NGFF {version}; drop --shard.")
    return PredictConfig(**{**cfg.to_dict(), "ngff": version})


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


# ----------------------------------------------------------------------------------- one slide


def _predict_one(client: Any, slide_path: Path, output: Path, key: EngineKey, cfg: PredictConfig,
                 observer: Observer) -> PredictResult:
    t0 = time.perf_counter()
    _check_paths(slide_path, output, into=cfg.into is not None)
    resources: dict[str, float] | None = {"GPU": 1.0} if _wants_gpu(cfg) else None
    client.register_plugin(preload_plugin(key))
    info = client.submit(_engine_info, key, pure=False, resources=resources).result()
    mc = info["config"]
    source = _source(slide_path, cfg, mc.mpp)
    if source.channels != mc.in_channels:
        raise ModelFileError(
            f"the model expects {mc.in_channels} input channel(s) but {slide_path} has {source.channels}; "
            f"use a model made with --in-channels {source.channels}, or pick channels with --channels."
        )
    if cfg.tile is None and info["fixed_tile"]:  # a model file made for one tile size
        cfg = PredictConfig(**{**cfg.to_dict(), "tile": info["fixed_tile"]})
    plan = plan_for(source.shape, mc.geometry, cfg)
    batch = cfg.batch_size or default_batch_size(plan.tile, gpu=resources is not None)
    attrs = {
        "version": __version__, "predict_config": cfg.to_dict(), "model_config": mc.to_dict(),
        "model_metadata": dict(info["metadata"]), "weights_sha256": info["weights_sha256"],
        "engine": info["describe"], "plan": plan.describe(), "batch_size": batch,
        "source": {"path": str(slide_path.resolve()), **source.describe()},
    }
    writer, tissue = _open_output(output, plan, mc, source, attrs, cfg, slide_path)
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
    if cfg.preview:
        notes.append(_write_preview(output, slide_path, cfg))
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

    def describe(self) -> dict[str, Any]:
        return {"series": self.series, "level": self.level, "level_shape": list(self.level_shape),
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
    choice = choose_level(mpps, model_mpp, level=cfg.level, name=str(slide_path))
    shape = output_shape(shapes[choice.level], choice.factor)
    return _Source(choice.level, choice.factor, shapes[choice.level], mpps[choice.level], shape, choice.mpp,
                   channels, series)


def _channels(cfg: PredictConfig) -> dict[str, Any]:
    return {"channels": cfg.channels} if cfg.channels is not None else {}


def _open_output(output: Path, plan: Plan, mc: Any, source: _Source, attrs: dict[str, Any],
                 cfg: PredictConfig, slide_path: Path) -> tuple[Any, Any]:
    """A writer for ``output`` (new, replaced, or resumed after checks) and the tissue mask to use."""

    if output.exists() and cfg.resume:
        _check_resumable(output, attrs, describe_mask(output))
        writer = open_mask_writer(output)
        group = open_mask(output)
        if "tissue" in group:
            return writer, TissueMask.from_zarr(group["tissue"])
        tissue = _tissue(cfg, plan, source, slide_path)  # killed before it was saved: no chunk is done yet
        if tissue is not None:
            writer.write_tissue(tissue.mask, tissue.attrs())
        return writer, tissue
    if output.exists() and not cfg.overwrite:
        raise OutputExistsError(f"{output} exists; pass --resume to finish it or --overwrite to replace it.")
    tissue = _tissue(cfg, plan, source, slide_path)
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
    return writer, tissue


def _tissue(cfg: PredictConfig, plan: Plan, source: _Source, slide_path: Path) -> Any:
    if cfg.tissue_mask:
        return load_tissue_mask(cfg.tissue_mask, plan.shape)
    if cfg.tissue:
        return detect_tissue(slide_path, plan.shape, source.series, **_channels(cfg))
    return None


def _check_resumable(output: Path, attrs: Mapping[str, Any], existing: Mapping[str, Any]) -> None:
    """Refuse to mix two different computations in one output."""
    old = existing["slideseg"]
    attrs = json.loads(json.dumps(attrs))  # compare as stored: tuples become lists
    why = []
    if old.get("weights_sha256") != attrs["weights_sha256"]:
        why.append("the model weights differ")
    if old.get("model_config") != attrs["model_config"]:
        why.append("the model config differs")
    old_cfg, new_cfg = old.get("predict_config", {}), attrs["predict_config"]
    why += [f"{k} was {old_cfg.get(k)!r}, now {new_cfg.get(k)!r}" for k in _OUTPUT_FIELDS
            if old_cfg.get(k) != new_cfg.get(k)]
    for k in ("engine", "device"):
        if old.get("engine", {}).get(k) != attrs["engine"].get(k):
            why.append(f"the {k} was {old.get('engine', {}).get(k)}, now {attrs['engine'].get(k)}")
    if old.get("batch_size") != attrs["batch_size"]:  # CPU results depend on which tiles share a batch
        why.append(f"tiles were run {old.get('batch_size')} per batch, now {attrs['batch_size']} (--batch-size)")
    old_src, new_src = old.get("source", {}), attrs["source"]
    if old_src.get("path") != new_src["path"]:
        why.append(f"it was made from {old_src.get('path')}")
    else:
        why += [f"the slide's {k.replace('_', ' ')} was {old_src.get(k)}, now {new_src.get(k)}"
                for k in ("level", "level_shape", "resample_factor", "channels") if old_src.get(k) != new_src.get(k)]
    if why:
        raise ConfigError(f"cannot resume {output}: {'; '.join(why)}. Resume with the original settings, "
                          "or pass --overwrite to start again.")


def preview_path(output: Path, cfg: PredictConfig) -> Path:
    """Where ``--preview`` writes: ``mask.png`` beside ``mask.zarr`` (``IMAGE.NAME.png`` with --into)."""
    if cfg.into is not None:
        image = Path(cfg.into)
        return image.parent / f"{slide_stem(image)}.{cfg.name}.png"
    return output.parent / f"{slide_stem(output)}.png"


def _write_preview(output: Path, slide_path: Path, cfg: PredictConfig) -> str:
    png = preview_path(output, cfg)
    if png.exists() and not cfg.overwrite:
        return f"preview not written: {png} exists (pass --overwrite to replace it)."
    write_preview(output, png, slide_path=slide_path, overwrite=True)
    return f"preview: {png}"


def _engine_info(key: EngineKey) -> dict[str, Any]:
    """Runs on a worker: load (or reuse) the engine and say what it is."""
    engine = engine_for(key).engine
    return {"config": engine.config, "weights_sha256": engine.weights_sha256,
            "metadata": dict(engine.metadata), "describe": engine.describe(),
            "fixed_tile": getattr(engine, "fixed_tile", None)}


def _engine_key(model_path: str | os.PathLike[str], cfg: PredictConfig) -> EngineKey:
    path = Path(model_path)
    if path.suffix == ".safetensors":
        read_model_config(path)  # fail fast, here, on a missing or foreign model file
    return EngineKey(str(path.resolve()), cfg.engine, cfg.device, cfg.threads, cfg.precision, cfg.compile,
                     cfg.batch_size)


def _wants_gpu(cfg: PredictConfig) -> bool:
    if cfg.device.startswith("cuda"):
        return True
    if cfg.device == "cpu":
        return False
    import torch

    return bool(torch.cuda.is_available())


def _is_complete(output: Path) -> bool:
    try:
        return output.exists() and bool(describe_mask(output)["complete"])
    except SlideSegError:
        return False


def _check_paths(slide: Path, output: Path, into: bool = False) -> None:
    src, dst = slide.resolve(), output.resolve()
    if src == dst or dst in src.parents or (src in dst.parents and not into):
        raise ConfigError(f"the output {output} overlaps the input {slide}; choose another -o path.")


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
