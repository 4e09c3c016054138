"""Export a model file ahead of a run: a self-contained ONNX file, or a TensorRT plan for this GPU.

:func:`export_model` routes by :attr:`ExportConfig.format`:

* ``'onnx'``: a ``.safetensors`` model → an ONNX file with a fixed tile and a dynamic batch
  (:func:`slideseg.engines.onnx.export_onnx`), then, unless told not to, compared with the torch
  network through ONNX Runtime on the CPU.
* ``'tensorrt'``: a ``.safetensors`` model or an ONNX file → a TensorRT plan in the engine cache
  (``engines/``, or ``$SLIDESEG_ENGINES_DIR``), where ``predict --engine tensorrt`` finds it.

The tile defaults to the one ``predict`` picks for its default chunk on a large slide, or to the
fixed tile of an ONNX file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slideseg.config import Config
from slideseg.engines.base import check_precision
from slideseg.engines.onnx import DEFAULT_MAX_BATCH, export_onnx
from slideseg.engines.onnxruntime_engine import verify_onnx
from slideseg.engines.registry import load_engine
from slideseg.errors import ConfigError
from slideseg.model.external import ONNX_SUFFIXES, is_external
from slideseg.model.files import load_model
from slideseg.plan.geometry import Geometry
from slideseg.plan.tiles import auto_tile

FORMATS = ("onnx", "tensorrt")

PREDICT_CHUNK = 1024
"""The output chunk edge ``predict`` uses by default: the default export tile covers one."""


@dataclass(frozen=True)
class ExportConfig(Config):
    """How to export a model file (``slideseg export``)."""

    format: str = "onnx"
    """'onnx' (a self-contained ONNX file) or 'tensorrt' (a plan in the engine cache, for this GPU)."""
    tile: int | None = None
    """Input tile edge in px (exports have a fixed height and width). None: the fixed tile of an
    ONNX file, else the tile ``predict`` picks for its default 1024-px chunks."""
    max_batch: int = DEFAULT_MAX_BATCH
    """Largest batch the export takes (``predict``'s batch size); batches 1..max_batch run."""
    precision: str = "fp32"
    """'fp32', 'fp16' or 'bf16': the graph computes in it (its input and logits stay fp32)."""
    output: Path | None = None
    """ONNX file to write. None: the engine cache, named by weights hash, tile, max batch and
    precision (an export already there is reused). TensorRT plans always go to the cache."""
    overwrite: bool = False
    """Replace an existing ``output``."""
    check: bool = True
    """Compare the ONNX file, run by ONNX Runtime on the CPU, with the torch network."""
    opt_level: int = 3
    """TensorRT builder optimisation level, 0..5."""
    workspace_gib: float = 4.0
    """TensorRT workspace limit, GiB."""
    device: str = "cuda"
    """CUDA device to build the TensorRT plan on."""

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ConfigError(f"--format must be one of {', '.join(FORMATS)}, got {self.format!r}")
        check_precision(self.precision)
        if self.max_batch < 1:
            raise ConfigError(f"--max-batch must be >= 1, got {self.max_batch}")
        if self.format == "tensorrt" and self.output is not None:
            raise ConfigError("TensorRT plans go to the engine cache (engines/, or $SLIDESEG_ENGINES_DIR), where "
                              "`predict --engine tensorrt` finds them; drop -o.")
        if self.output is not None:
            object.__setattr__(self, "output", Path(self.output))


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export_model` wrote (or found in the cache) and how it was checked."""

    format: str
    """'onnx' or 'tensorrt'."""
    path: Path
    """The ONNX file or the TensorRT plan."""
    tile: int
    """Input tile edge, px."""
    tile_output: int
    """Output edge of one tile, px."""
    max_batch: int
    precision: str
    cache: str | None = None
    """TensorRT: 'hit' (found in the cache), 'miss' (built) or 'rebuilt' (a stale plan replaced)."""
    max_abs_diff: float | None = None
    """ONNX: max |logit difference| between ONNX Runtime (CPU) and torch; None when not checked."""
    not_checked: str | None = None
    """ONNX: why the file was not checked, when ``check`` was asked for but could not run."""

    def to_dict(self) -> dict[str, Any]:
        return {"format": self.format, "path": str(self.path), "tile": self.tile, "tile_output": self.tile_output,
                "max_batch": self.max_batch, "precision": self.precision, "cache": self.cache,
                "max_abs_diff": self.max_abs_diff, "not_checked": self.not_checked}


def export_model(model_path: str | os.PathLike[str], cfg: ExportConfig | None = None) -> ExportResult:
    """Export the model file at ``model_path`` as ``cfg`` says (default: an fp32 ONNX file in the cache).

    Raises
    ------
    ConfigError
        A bad option, a model file the format cannot take, or a missing optional backend (with the
        install hint).
    ModelFileError
        The model file cannot be read.
    OutputExistsError
        ``cfg.output`` exists and ``cfg.overwrite`` is False.
    """
    cfg = cfg or ExportConfig()
    if cfg.format == "tensorrt":
        return _export_tensorrt(Path(model_path), cfg)
    return _export_onnx(Path(model_path), cfg)


def default_tile(geometry: Geometry) -> int:
    """The tile ``predict`` picks for its default chunks on a slide larger than one chunk.

    >>> default_tile(Geometry(4))
    1212
    """
    side = (PREDICT_CHUNK, PREDICT_CHUNK)
    return auto_tile(side, PREDICT_CHUNK, geometry.alignment, geometry.smallest_tile_covering)


def _export_onnx(model_path: Path, cfg: ExportConfig) -> ExportResult:
    if model_path.suffix.lower() in ONNX_SUFFIXES:
        raise ConfigError(f"{model_path.name} is an ONNX file already; build its TensorRT plan with --format "
                          "tensorrt, or export the .safetensors model it came from.")
    if is_external(model_path):
        raise ConfigError(f"{model_path.name} is a torch model file; export it to ONNX with "
                          "torch.onnx.export(..., dynamo=True) and write a sidecar JSON beside it.")
    model = load_model(model_path)
    g = model.config.geometry
    tile = cfg.tile or default_tile(g)
    path = export_onnx(model, tile, max_batch=cfg.max_batch, precision=cfg.precision, output=cfg.output,
                       overwrite=cfg.overwrite)
    diff, not_checked = None, None
    if cfg.check:
        if cfg.precision == "bf16":
            not_checked = "ONNX Runtime's CPU provider cannot run bf16 graphs."
        else:
            try:
                diff = verify_onnx(path, model)
            except ConfigError as exc:  # ONNX Runtime not installed
                not_checked = str(exc)
    return ExportResult(format="onnx", path=path, tile=tile, tile_output=g.output_size(tile),
                        max_batch=cfg.max_batch, precision=cfg.precision, max_abs_diff=diff,
                        not_checked=not_checked)


def _export_tensorrt(model_path: Path, cfg: ExportConfig) -> ExportResult:
    engine = load_engine(model_path, "tensorrt", device=cfg.device, precision=cfg.precision,
                         max_batch=cfg.max_batch, opt_level=cfg.opt_level, workspace_gib=cfg.workspace_gib)
    tile = cfg.tile or engine.fixed_tile
    if tile is None and not is_external(model_path):
        tile = default_tile(engine.config.geometry)
    if tile is None:
        raise ConfigError(f"--tile is needed to build a TensorRT plan for {model_path.name}: its height and "
                          "width are dynamic, and plans have a fixed tile size.")
    built = engine.prepare(tile)  # type: ignore[attr-defined]
    return ExportResult(format="tensorrt", path=Path(built["plan"]), tile=tile,
                        tile_output=engine.config.geometry.output_size(tile), max_batch=cfg.max_batch,
                        precision=cfg.precision, cache=str(built["cache"]))


__all__ = ["FORMATS", "ExportConfig", "ExportResult", "default_tile", "export_model"]
