"""``--engine auto``: which engine runs, and why.

1. TensorRT, if it imports and a CUDA GPU is present;
2. else PyTorch on CUDA, if a GPU is present;
3. else the fastest engine on this CPU (PyTorch or ONNX Runtime), measured once on a small batch
   and cached in ``engines/auto-choices.json`` under a key of the architecture, precision, threads,
   CPU and library versions (not the weights: speed does not depend on them).

An engine asked for by name that is not installed is a :class:`ConfigError` with the install hint.
The reason for the choice goes into :attr:`Engine.reason`, so ``describe()`` — shown by ``predict``
and saved in every output — says which engine ran and why.
"""

from __future__ import annotations

import importlib
import logging
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from slideseg.engines.base import ENGINE_NAMES, Engine
from slideseg.engines.cache import choice_key, read_choice, write_choice
from slideseg.errors import ConfigError

log = logging.getLogger("slideseg.engines")

ENGINES = ENGINE_NAMES
INSTALL_HINTS = {
    "torch": "pip install torch",
    "onnxruntime": "pip install 'slideseg[onnx]'",
    "tensorrt": "pip install 'slideseg[gpu]' (TensorRT 10 or 11 for your CUDA version)",
}
CPU_SWITCH_MARGIN = 1.1
"""ONNX Runtime replaces PyTorch (the reference engine) on a CPU only if it is this much faster."""


@dataclass(frozen=True)
class Backends:
    """What is installed and present on this machine."""

    cuda: bool
    tensorrt: bool
    onnxruntime: bool


def probe_backends(device: str) -> Backends:
    """Import-check the optional backends (TensorRT only where a GPU may be used)."""
    cuda = False
    if device != "cpu":
        import torch

        cuda = bool(torch.cuda.is_available())
    return Backends(cuda=cuda, tensorrt=cuda and _imports("tensorrt"), onnxruntime=_imports("onnxruntime"))


def _imports(module: str) -> bool:
    try:
        importlib.import_module(module)
    except Exception:  # ImportError, or missing shared libraries behind a wheel
        return False
    return True


def require(name: str, backends: Backends, device: str) -> None:
    """Raise ConfigError (with the install hint) if engine ``name`` cannot run on ``device``."""
    if name not in ENGINES:
        raise ConfigError(f"unknown engine {name!r}; choose one of {', '.join(ENGINES)}")
    if name == "onnxruntime" and not backends.onnxruntime:
        raise ConfigError(f"--engine onnxruntime needs ONNX Runtime, which is not installed: "
                          f"{INSTALL_HINTS['onnxruntime']}")
    if name == "tensorrt":
        if device == "cpu":
            raise ConfigError("--engine tensorrt runs on an NVIDIA GPU only; drop --device cpu or choose "
                              "--engine torch / onnxruntime.")
        if not backends.cuda:
            raise ConfigError("--engine tensorrt needs a CUDA GPU, and torch sees none; use --engine torch or "
                              "onnxruntime on the CPU.")
        if not backends.tensorrt:
            raise ConfigError(f"--engine tensorrt needs TensorRT, which is not installed (or does not load): "
                              f"{INSTALL_HINTS['tensorrt']}")


CPU_ENGINE_ENV = "SLIDESEG_CPU_ENGINE"
"""Set to 'torch' or 'onnxruntime' to skip measuring which CPU engine is faster (a preference:
a model that only the other engine can run still runs)."""


def choose(candidates: tuple[str, ...], backends: Backends, device: str,
           measure_cpu: Callable[[tuple[str, ...]], tuple[str, str]]) -> tuple[str, str]:
    """The engine ``auto`` runs among ``candidates`` (those that can run the model) and why.

    ``measure_cpu`` picks among CPU engines (measured, or a cached measurement) and says why.
    """
    if device != "cpu" and backends.cuda:
        if "tensorrt" in candidates and backends.tensorrt:
            return "tensorrt", "TensorRT is installed and a CUDA GPU is present"
        if "torch" in candidates:
            why = "TensorRT is not installed" if "tensorrt" in candidates else "the model runs in torch only"
            return "torch", f"a CUDA GPU is present and {why}"
        if "onnxruntime" in candidates and backends.onnxruntime:
            return "onnxruntime", "a CUDA GPU is present but TensorRT is not installed; ONNX Runtime runs the ONNX file"
    if device.startswith("cuda") and not backends.cuda:
        raise ConfigError("--device cuda was asked for but torch sees no CUDA device; use --device cpu.")
    cpu = tuple(c for c in candidates if c == "torch" or (c == "onnxruntime" and backends.onnxruntime))
    if not cpu:
        missing = [c for c in candidates if c != "tensorrt"]
        hint = INSTALL_HINTS.get(missing[0], "") if missing else INSTALL_HINTS["tensorrt"]
        raise ConfigError(f"no engine that can run this model is available on this machine ({hint}).")
    forced = os.environ.get(CPU_ENGINE_ENV)
    if forced and forced not in ("torch", "onnxruntime"):
        raise ConfigError(f"${CPU_ENGINE_ENV}={forced!r} is not a CPU engine; set it to torch or onnxruntime")
    if forced in cpu:  # a preference: a model that only one engine can run still runs
        return str(forced), f"no GPU; ${CPU_ENGINE_ENV} chooses {forced}"
    if len(cpu) == 1:
        why = {"torch": "no GPU; ONNX Runtime is not installed" if "onnxruntime" in candidates else "no GPU",
               "onnxruntime": "no GPU; the model is an ONNX file"}[cpu[0]]
        return cpu[0], why
    return measure_cpu(cpu)


# --------------------------------------------------------------------------------------------
# Measuring CPU engines
# --------------------------------------------------------------------------------------------


def cpu_choice_fields(arch: dict[str, Any], precision: str, threads: int | None) -> dict[str, Any]:
    """What a CPU engine choice depends on: the network's shape, arithmetic, threads, CPU, versions."""
    import torch

    try:
        import onnxruntime

        ort_version = onnxruntime.__version__
    except ImportError:
        ort_version = None
    return {"arch": arch, "precision": precision, "threads": threads, "cpu": cpu_name(),
            "cores": os.cpu_count(), "torch": torch.__version__, "onnxruntime": ort_version}


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return f"{platform.machine()} {platform.processor()}".strip()


def measure_fastest(engines: dict[str, Callable[[], Engine]], batch: np.ndarray, fields: dict[str, Any],
                    repeats: int = 5, timer: Callable[[], float] = time.perf_counter,
                    warmup: int = 2) -> tuple[str, str]:
    """Time each engine on ``batch``, cache and return the fastest and why.

    Every engine is built and called ``warmup`` times first (first-call allocations, kernel
    selection, lazy exports), then the engines take turns, one call each per round for ``repeats``
    rounds, so a busy moment of the machine falls on all of them alike; each engine's time is the
    median of its calls. PyTorch, the reference engine, is kept unless another is
    :data:`CPU_SWITCH_MARGIN` times faster. A cached choice for the same ``fields`` is returned
    without measuring again.
    """
    key = choice_key(fields)
    cached = read_choice(key)
    if cached is not None and cached["engine"] in engines:
        when = cached.get("date", "earlier")
        return cached["engine"], f"fastest on this CPU ({_summary(cached['seconds'])}; measured {when}, cached)"
    built = {name: make() for name, make in engines.items()}
    for engine in built.values():
        for _ in range(warmup):
            engine.infer(batch)
    times: dict[str, list[float]] = {name: [] for name in built}
    for _ in range(max(1, repeats)):
        for name, engine in built.items():
            t0 = timer()
            engine.infer(batch)
            times[name].append(timer() - t0)
    seconds = {name: float(np.median(ts)) for name, ts in times.items()}
    best = min(seconds, key=lambda n: seconds[n])
    if "torch" in seconds and best != "torch" and seconds["torch"] < CPU_SWITCH_MARGIN * seconds[best]:
        best = "torch"
    record = {"engine": best, "seconds": seconds, "batch": list(batch.shape), "date": time.strftime("%Y-%m-%d"),
              "fields": fields}
    path = write_choice(key, record)
    log.info("auto engine on this CPU: %s (%s), cached in %s", best, _summary(seconds), path)
    return best, f"fastest on this CPU ({_summary(seconds)}; measured now)"


def _summary(seconds: dict[str, float]) -> str:
    return ", ".join(f"{name} {1e3 * s:.1f} ms" for name, s in sorted(seconds.items(), key=lambda kv: kv[1]))
