"""The engine factory: which engine runs a model file, built how.

:func:`load_engine` opens a model file — a slideseg ``.safetensors`` model, a bring-your-own
ONNX / TorchScript / ``torch.export`` file with a sidecar JSON, or a bioimage.io package — and builds
the engine called ``name``; ``'auto'`` picks the best available one and says why (see
:mod:`slideseg.engines.selection`). Optional backends are imported only when chosen.

A model whose pre-processing needs statistics of the slide (a package's ``scale_range``, a
sidecar's ``"norm": "slide"``, ``predict --norm slide``) runs with one slide's constants: ``predict``
computes them and passes them to :func:`load_engine` (``normalisation=``, carried by the workers'
engine key), so each worker builds the slide's engine around one shared network.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from slideseg.engines.base import Engine, Preprocessed, check_precision
from slideseg.engines.onnx import onnx_info, package_onnx
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
from slideseg.io.normalise import Op, ZeroMeanUnitVariance, needs_statistics
from slideseg.model.bioimageio import is_package, read_package
from slideseg.model.external import ONNX_SUFFIXES, is_external, load_package_torch, load_torch_model
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
                max_batch: int | None = None, normalisation: Sequence[Op] | None = None,
                **trt_options: Any) -> Engine:
    """Open the model file at ``model_path`` and build the engine called ``name`` for it.

    ``.safetensors`` files are slideseg models; ``.onnx``, ``.pt2`` (torch.export) and TorchScript
    files (``.pt``, ``.ts``...) are bring-your-own models described by a sidecar JSON; ``.zip``,
    ``rdf.yaml`` and ``bioimageio.yaml`` are bioimage.io packages. ``normalisation``: fixed
    pre-processing steps (one slide's resolved constants) used in place of the model's own; the
    network itself is then loaded once per process and shared by every slide's engine.
    """
    options = {"device": device, "threads": threads, "precision": precision, "compile": compile,
               "max_batch": max_batch, **trt_options}
    path = os.fspath(model_path)
    if normalisation is not None:
        if needs_statistics(normalisation):
            raise ConfigError("load_engine takes fixed normalisation steps: resolve the slide's statistics first.")
        return _shared_network(path, name, options).bind(tuple(normalisation))
    engine = _load(path, name, **options)
    if engine.metadata.get("norm") == "slide":  # the model asks for the slide's statistics
        return Preprocessed(_unwrapped(engine), (ZeroMeanUnitVariance(per_channel=True),))
    return engine


def _load(model_path: str | os.PathLike[str], name: str, *, device: str, threads: int | None, precision: str,
          compile: bool, max_batch: int | None, **trt_options: Any) -> Engine:
    if is_package(model_path):
        return load_package_engine(model_path, name, device=device, threads=threads, precision=precision,
                                   compile=compile, max_batch=max_batch, **trt_options)
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

    if model is None:  # a bring-your-own file or a package: its engines are not timed
        if len(names) == 1:
            return names[0], "the only CPU engine for this model file"
        return names[0], f"{names[0]}, the first of {' and '.join(names)} that run this model file (not timed)"
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


__all__ = ["ENGINES", "INSTALL_HINTS", "Engine", "build_engine", "load_engine",
           "load_package_engine", "make_engine"]


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



def load_package_engine(path: str | os.PathLike[str], name: str = "auto", *, device: str = "auto",
                        threads: int | None = None, precision: str = "fp32", compile: bool = False,
                        max_batch: int | None = None, **trt_options: Any) -> Engine:
    """The engine for a bioimage.io package: its TorchScript weights in torch, its ONNX weights in ONNX
    Runtime or TensorRT; behind :class:`Preprocessed` when its pre-processing is more than one linear step."""
    model = read_package(path)
    formats = set(model.weights)
    able = tuple(c for c in ("tensorrt", "torch", "onnxruntime")
                 if ("torchscript" if c == "torch" else "onnx") in formats)
    if compile:
        able = tuple(c for c in able if c == "torch")
    if (name != "auto" and name not in able) or not able:
        want = "torch (TorchScript weights)" if name == "torch" or compile else f"{name} (ONNX weights)"
        raise ConfigError(f"{Path(path).name} holds {', '.join(sorted(formats))} weights; --engine {name}"
                          f"{' --compile' if compile else ''} needs {want}: choose another engine.")
    torch_model = load_package_torch(model) if "torch" in able and name in ("auto", "torch") else None
    onnx = None
    if name != "torch" and any(c != "torch" for c in able):
        try:
            onnx = package_onnx(model)
        except ConfigError:  # the onnx package is not installed
            if name != "auto" or torch_model is None:
                raise
            able = ("torch",)
    engine = build_engine(name, able, torch_model=torch_model, onnx=onnx, device=device, threads=threads,
                          precision=precision, compile=compile, max_batch=max_batch, **trt_options)
    engine.min_tile = model.min_tile
    engine.fixed_tile = model.fixed_tile
    if model.preprocessing:
        return Preprocessed(engine, model.preprocessing)
    return engine


# ----------------------------------------------------------------------- slide-level constants

_NETWORKS: dict[tuple[str, str, str], Engine] = {}
_NETWORKS_LOCK = threading.Lock()


def _shared_network(path: str, name: str, options: dict[str, Any]) -> Preprocessed:
    """The engine of ``path`` without its own pre-processing, loaded once per process: the engines of
    every slide of a run share it."""
    key = (path, name, json.dumps(options, sort_keys=True, default=str))
    with _NETWORKS_LOCK:
        if key not in _NETWORKS:
            _NETWORKS[key] = _unwrapped(_load(path, name, **options))
        return Preprocessed(_NETWORKS[key], ())


def _unwrapped(engine: Engine) -> Engine:
    return engine.inner if isinstance(engine, Preprocessed) else engine
