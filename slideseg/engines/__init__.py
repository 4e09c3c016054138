"""Engines that run the U-Net. :func:`make_engine` picks one by name."""

from __future__ import annotations

from slideseg.engines.base import Engine
from slideseg.errors import ConfigError
from slideseg.model import LoadedModel

ENGINES = ("auto", "torch")


def make_engine(name: str, model: LoadedModel, *, device: str = "auto", threads: int | None = None) -> Engine:
    """Build the engine called ``name`` ('auto' picks the best available one) for ``model``."""
    if name not in ENGINES:
        raise ConfigError(f"unknown engine {name!r}; choose one of {', '.join(ENGINES)}")
    from slideseg.engines.torch_engine import TorchEngine

    return TorchEngine(model, device=device, threads=threads)


__all__ = ["ENGINES", "Engine", "make_engine"]
