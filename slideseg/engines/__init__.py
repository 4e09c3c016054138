"""Engines that run the U-Net. :func:`make_engine` picks one by name."""

from __future__ import annotations

import os

from slideseg.engines.base import Engine
from slideseg.errors import ConfigError
from slideseg.model import LoadedModel

ENGINES = ("auto", "torch")


def make_engine(name: str, model: LoadedModel, *, device: str = "auto", threads: int | None = None,
                precision: str = "fp32", compile: bool = False) -> Engine:
    """Build the engine called ``name`` ('auto' picks the best available one) for ``model``."""
    if name not in ENGINES:
        raise ConfigError(f"unknown engine {name!r}; choose one of {', '.join(ENGINES)}")
    if precision != "fp32" or compile:
        raise ConfigError(f"--precision {precision} and --compile are not supported by the torch engine yet; "
                          "use --precision fp32 without --compile.")
    from slideseg.engines.torch_engine import TorchEngine

    return TorchEngine(model, device=device, threads=threads)


def load_engine(model_path: str | os.PathLike[str], name: str = "auto", *, device: str = "auto",
                threads: int | None = None, precision: str = "fp32", compile: bool = False) -> Engine:
    """Open the model file at ``model_path`` and build the engine called ``name`` for it."""
    from slideseg.model import load_model

    return make_engine(name, load_model(model_path), device=device, threads=threads, precision=precision,
                       compile=compile)


__all__ = ["ENGINES", "Engine", "load_engine", "make_engine"]
