"""The engine factory: which engine runs a model file, built how.

:func:`load_engine` opens a model file — a slideseg ``.safetensors`` model, or a bring-your-own
ONNX / TorchScript / ``torch.export`` file with a sidecar JSON — and builds the engine called
``name``; ``'auto'`` picks the best available one and says why (see :mod:`slideseg.engines.selection`).
Optional backends are imported only when chosen.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from slideseg.engines.base import Engine, check_precision
from slideseg.engines.onnx import DEFAULT_MAX_BATCH, onnx_info
from slideseg.engines.onnxruntime_engine import OnnxRuntimeEngine
from slideseg.engines.selection import (
    ENGINES,
    INSTALL_HINTS,
    choose,
    cpu_choice_fields,
    measure_fastest,
    probe_backends,
    require,
)
from slideseg.engines.tensorrt_engine import TensorRTEngine
from slideseg.engines.torch_engine import TorchEngine
from slideseg.errors import ConfigError, ModelFileError
from slideseg.model.external import ONNX_SUFFIXES, is_external, load_torch_model
from slideseg.model.files import LoadedModel, load_model

log = logging.getLogger("slideseg.engines")


def make_engine(name: str, model: LoadedModel, *, device: str = "auto", threads: int | None = None,
                precision: str = "fp32", compile: bool = False, max_batch: int | None = None,
                **trt_options: Any) -> Engine:
    """Build the engine called ``name`` ('auto' picks the best available one) for a slideseg model.

    ``max_batch`` is the largest batch the engine will see (``predict``'s ``batch_size``): it sizes
    ONNX exports and TensorRT optimisation profiles (default 8; larger batches are split).
    ``trt_options`` (``opt_level``, ``workspace_gib``) go to the TensorRT engine.
    """
    candidates = ("torch",) if compile else ("tensorrt", "torch", "onnxruntime")
    return build_engine(name, candidates, model=model, device=device, threads=threads, precision=precision,
                        compile=compile, max_batch=max_batch, **trt_options)


def load_engine(model_path: str | os.PathLike[str], name: str = "auto", *, device: str = "auto",
                threads: int | None = None, precision: str = "fp32", compile: bool = False,
                max_batch: int | None = None, **trt_options: Any) -> Engine:
    """Open the model file at ``model_path`` and build the engine called ``name`` for it.

    ``.safetensors`` files are slideseg models; ``.onnx``, ``.pt2`` (torch.export) and TorchScript
    files (``.pt``, ``.ts``...) are bring-your-own models described by a sidecar JSON.
    """

    if is_external(model_path):
        return load_external_engine(model_path, name, device=device, threads=threads, precision=precision,
                                    compile=compile, max_batch=max_batch, **trt_options)

    return make_engine(name, load_model(model_path), device=device, threads=threads, precision=precision,
                       compile=compile, max_batch=max_batch, **trt_options)


def build_engine(name: str, candidates: tuple[str, ...], *, model: LoadedModel | None = None,
                 torch_model: Any = None, onnx: tuple[Path, Any] | None = None, device: str = "auto",
                 threads: int | None = None, precision: str = "fp32", compile: bool = False,
                 max_batch: int | None = None, **trt_options: Any) -> Engine:
    """Check ``name`` against what is installed, resolve 'auto' among ``candidates`` (the engines that
    can run this model), then construct the engine from a slideseg ``model``, a torch module
    (``torch_model``) or an ``onnx`` (path, info) pair."""
    check_precision(precision)
    if name not in ENGINES:
        raise ConfigError(f"unknown engine {name!r}; choose one of {', '.join(ENGINES)}")
    if compile and name not in ("auto", "torch"):
        raise ConfigError(f"--compile applies to the torch engine, not {name}.")
    reason = None
    if name == "torch":
        backends = None
    else:
        backends = probe_backends(device)
        if name == "auto":
            if device == "cpu" or not backends.cuda:  # engines that can compute in this precision on a CPU
                able = tuple(c for c in candidates if not (c == "onnxruntime" and precision == "bf16")
                             and not (c == "torch" and precision == "fp16"))
                candidates = able or candidates  # none: let the engine say why it cannot
            name, reason = choose(candidates, backends, device, lambda cpu: _measure_cpu(
                cpu, model, device=device, threads=threads, precision=precision, max_batch=max_batch))
        else:
            require(name, backends, device)
    engine = _construct(name, model=model, torch_model=torch_model, onnx=onnx, device=device, threads=threads,
                        precision=precision, compile=compile, max_batch=max_batch, **trt_options)
    engine.reason = reason
    log.info("engine: %s%s", name, f" ({reason})" if reason else "")
    return engine


def _construct(name: str, *, model: LoadedModel | None, torch_model: Any, onnx: tuple[Path, Any] | None,
               device: str, threads: int | None, precision: str, compile: bool, max_batch: int | None,
               **trt_options: Any) -> Engine:
    if name == "torch":
        return TorchEngine(model if model is not None else torch_model, device=device, threads=threads,
                           precision=precision, compile=compile)
    if name == "onnxruntime":
        if onnx is not None:
            return OnnxRuntimeEngine.for_file(onnx[0], onnx[1], device=device, threads=threads, precision=precision)
        assert model is not None
        return OnnxRuntimeEngine.for_model(model, device=device, threads=threads, precision=precision,
                                           max_batch=max_batch)

    if onnx is not None:
        return TensorRTEngine.for_file(onnx[0], onnx[1], device=device, precision=precision, max_batch=max_batch,
                                       **trt_options)
    assert model is not None
    return TensorRTEngine.for_model(model, device=device, precision=precision, max_batch=max_batch, **trt_options)


def _measure_cpu(names: tuple[str, ...], model: LoadedModel | None, *, device: str, threads: int | None,
                 precision: str, max_batch: int | None) -> tuple[str, str]:
    """The fastest of the CPU engines ``names`` for ``model`` (measured once, then cached)."""

    if model is None:  # a bring-your-own file runs in one engine only
        return names[0], "the only CPU engine for this model file"
    cfg = model.config
    arch = {k: getattr(cfg, k) for k in ("depth", "width", "in_channels", "classes", "padding", "halo")}
    g = cfg.geometry
    tile = g.smallest_tile_covering(max(128, 2 * g.alignment))
    batch = np.random.default_rng(0).integers(0, 256, (1, cfg.in_channels, tile, tile), dtype=np.uint8)

    def maker(name: str) -> Callable[[], Engine]:
        return lambda: _construct(name, model=model, torch_model=None, onnx=None, device="cpu", threads=threads,
                                  precision=precision, compile=False, max_batch=max_batch)

    makers = {n: maker(n) for n in names}
    return measure_fastest(makers, batch, cpu_choice_fields(arch, precision, threads))


__all__ = ["ENGINES", "INSTALL_HINTS", "Engine", "build_engine", "load_engine", "make_engine"]


def load_external_engine(path: str | os.PathLike[str], name: str = "auto", *, device: str = "auto",
                         threads: int | None = None, precision: str = "fp32", compile: bool = False,
                         max_batch: int | None = None, **trt_options: Any) -> Engine:
    """The engine for a bring-your-own model file (what ``load_engine`` does for these suffixes)."""

    p = Path(path)
    if not p.is_file():
        raise ModelFileError(f"Model file {p} does not exist; check the path.")
    if p.suffix.lower() in ONNX_SUFFIXES:
        info = onnx_info(p)
        if name == "torch" or compile:
            raise ConfigError(f"{p.name} is an ONNX file: run it with --engine onnxruntime or tensorrt (without "
                              "--compile); --engine torch needs a .safetensors, TorchScript or torch.export model.")
        return build_engine(name, ("tensorrt", "onnxruntime"), onnx=(p, info), device=device, threads=threads,
                            precision=precision, max_batch=max_batch, **trt_options)
    if name in ("onnxruntime", "tensorrt"):
        raise ConfigError(f"{p.name} is a torch model: run it with --engine torch, or export it to ONNX first "
                          "(torch.onnx.export(..., dynamo=True)) and pass the .onnx file.")
    model = load_torch_model(p)
    return build_engine(name, ("torch",), torch_model=model, device=device, threads=threads, precision=precision,
                        compile=compile)


def export_tensorrt(model_path: str | os.PathLike[str], *, tile: int | None, max_batch: int = DEFAULT_MAX_BATCH,
                    precision: str = "fp32", opt_level: int = 3, workspace_gib: float = 4.0,
                    device: str = "cuda") -> dict[str, Any]:
    """Build (or find in the cache) the TensorRT plan for a model file and return what was built.

    ``model_path`` is a ``.safetensors`` model (exported to ONNX first) or an ONNX file.
    """

    engine = load_engine(model_path, "tensorrt", device=device, precision=precision, max_batch=max_batch,
                         opt_level=opt_level, workspace_gib=workspace_gib)
    tile = tile or engine.fixed_tile
    if tile is None:
        raise ConfigError("--tile is needed to build a TensorRT plan (plans have a fixed tile size).")
    prepare = engine.prepare  # type: ignore[attr-defined]
    return dict(prepare(tile))
