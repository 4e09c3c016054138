"""A new, untrained model file (``slideseg new-model``): the start for ``train``, and a model for checks."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from slideseg.errors import OutputExistsError
from slideseg.model.config import UNetConfig
from slideseg.model.files import save_model
from slideseg.model.unet import build_unet


@dataclass(frozen=True)
class NewModel:
    """The model file :func:`write_new_model` wrote."""

    path: Path
    config: UNetConfig
    weights_sha256: str


def write_new_model(output: str | os.PathLike[str], config: UNetConfig | None = None, *, seed: int = 0,
                    overwrite: bool = False) -> NewModel:
    """Write a He-initialised U-Net of ``config`` (default: :class:`UNetConfig`'s defaults) to
    ``output`` (``.safetensors``), marked untrained, with ``seed`` in its metadata.

    Raises
    ------
    OutputExistsError
        ``output`` exists and ``overwrite`` is False.
    """
    path = Path(output)
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{path} exists; pass --overwrite to replace it.")
    cfg = config or UNetConfig()
    digest = save_model(path, build_unet(cfg, seed=seed), cfg, {"trained": False, "seed": seed})
    return NewModel(path=path, config=cfg, weights_sha256=digest)


__all__ = ["NewModel", "write_new_model"]
