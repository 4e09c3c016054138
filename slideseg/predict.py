"""``slideseg predict``: slide → plan → engine → Dask chunk tasks → OME-Zarr label image."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from slideseg import __version__
from slideseg.errors import ConfigError, ModelFileError
from slideseg.plan import Plan, auto_tile, make_plan

DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("fp32", "fp16", "bf16")


@dataclass(frozen=True)
class PredictConfig:
    """Options of one ``predict`` run; saved into every output."""

    tile: int | None = None
    """Network input tile edge in px; None picks the smallest tile whose output covers a chunk."""
    batch_size: int = 4
    """Tiles per engine call."""
    chunk: int = 1024
    """Output chunk edge in px (the Zarr chunk grid; one task per chunk)."""
    level: int = 0
    """Pyramid level of the slide to read."""
    series: int = 0
    """Image series of a multi-series file."""
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
    overwrite: bool = False
    """Replace an existing output."""
    threads: int | None = None
    """Threads of the engine's CPU kernels (None: the library's default, all cores)."""
    workers: int = 2
    """Threads that read, infer and write chunks concurrently (inference itself is serialised)."""

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ConfigError(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.chunk < 16:
            raise ConfigError(f"--chunk must be >= 16 px, got {self.chunk}")
        if self.level < 0 or self.series < 0:
            raise ConfigError(f"--level and --series must be >= 0, got {self.level} and {self.series}")
        if self.workers < 1:
            raise ConfigError(f"--workers must be >= 1, got {self.workers}")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"--threads must be >= 1, got {self.threads}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"--precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if not (self.device in DEVICES or self.device.startswith("cuda:")):
            raise ConfigError(f"--device must be one of {', '.join(DEVICES)} or cuda:N, got {self.device!r}")

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
    warnings: tuple[str, ...] = field(default=())

    @property
    def megapixels_per_second(self) -> float:
        return self.shape[0] * self.shape[1] / 1e6 / max(self.seconds, 1e-9)


ProgressStart = Callable[[int, int], Callable[[int], None]]
"""Called once with (number of chunks, output pixels); returns the per-chunk callback."""


def predict(slide_path: str | os.PathLike[str], output: str | os.PathLike[str],
            model_path: str | os.PathLike[str], cfg: PredictConfig = PredictConfig(),
            progress: ProgressStart | None = None) -> PredictResult:
    """Segment one slide into an OME-Zarr label image at ``output``."""
    from slideseg.engines import load_engine
    from slideseg.io import open_slide
    from slideseg.schedule import ChunkJob, run_chunks
    from slideseg.write import create_mask

    _check_paths(Path(slide_path), Path(output))
    t0 = time.perf_counter()
    with open_slide(slide_path, level=cfg.level, series=cfg.series) as slide:
        engine = load_engine(model_path, cfg.engine, device=cfg.device, threads=cfg.threads,
                             precision=cfg.precision, compile=cfg.compile)
        mc = engine.config
        if slide.shape[2] != mc.in_channels:
            raise ModelFileError(
                f"the model expects {mc.in_channels} input channel(s) but {slide_path} has "
                f"{slide.shape[2]}; use a model made with --in-channels {slide.shape[2]}."
            )
        plan = plan_for(slide.shape[:2], mc.geometry, cfg)
        notes = _notes(engine.metadata, mc.mpp, slide.mpp)
        attrs = {
            "version": __version__,
            "predict_config": cfg.to_dict(),
            "model_config": mc.to_dict(),
            "model_metadata": dict(engine.metadata),
            "weights_sha256": engine.weights_sha256,
            "engine": engine.describe(),
            "plan": plan.describe(),
            "source": {"path": str(Path(slide_path).resolve()), "level": cfg.level,
                       "series": cfg.series, "shape": list(slide.shape), "mpp": slide.mpp},
        }
        writer = create_mask(output, plan.shape, cfg.chunk, _label_classes(mc), slide.mpp, attrs,
                             probabilities=cfg.probabilities, overwrite=cfg.overwrite)
        job = ChunkJob(plan, slide, engine, writer, mc.mirror, cfg.batch_size, cfg.probabilities)
        on_chunk = progress(plan.n_chunks, plan.shape[0] * plan.shape[1]) if progress else None
        gy, gx = plan.grid
        run_chunks(job, ((iy, ix) for iy in range(gy) for ix in range(gx)),
                   workers=cfg.workers, progress=on_chunk)
        writer.finalize(num_workers=cfg.workers)
    return PredictResult(Path(output), plan.shape, slide.mpp, plan.describe(), engine.describe(),
                         time.perf_counter() - t0, tuple(notes))


def plan_for(shape: tuple[int, int], geometry: Any, cfg: PredictConfig) -> Plan:
    """The tiling plan for a slide of ``shape`` under ``cfg`` (tile size checked or chosen)."""
    tile = cfg.tile or auto_tile(shape, cfg.chunk, geometry.alignment, geometry.smallest_tile_covering)
    geometry.check_tile(tile)
    return make_plan(shape, tile=tile, context=geometry.context, alignment=geometry.alignment,
                     chunk=cfg.chunk, tile_output=geometry.usable_output(tile))


def _label_classes(mc: Any) -> list[Any]:
    from slideseg.write import LabelClass

    return [LabelClass(k, name, rgba) for k, (name, rgba) in enumerate(zip(mc.class_names, mc.class_colors,
                                                                             strict=True))]


def _check_paths(slide: Path, output: Path) -> None:
    src, dst = slide.resolve(), output.resolve()
    if src == dst or dst in src.parents or src in dst.parents:
        raise ConfigError(f"the output {output} overlaps the input {slide}; choose another -o path.")


def _notes(metadata: Mapping[str, Any], model_mpp: float | None, slide_mpp: float | None) -> list[str]:
    notes = []
    if not metadata.get("trained", True):
        notes.append("this model is untrained (random He-initialised weights): the mask shows the "
                     "pipeline working, not a meaningful segmentation.")
    if model_mpp and slide_mpp and abs(slide_mpp / model_mpp - 1) > 0.1:
        notes.append(f"the slide is at {slide_mpp:.3g} µm/px but the model expects {model_mpp:.3g}; "
                     "choose a --level nearer the model's pixel size.")
    if model_mpp and slide_mpp is None:
        notes.append(f"the slide has no pixel size; the model expects {model_mpp:.3g} µm/px.")
    return notes
