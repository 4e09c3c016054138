"""Model files: ``.safetensors`` with the configuration in the metadata (loading never unpickles).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from slideseg.errors import ModelFileError
from slideseg.model.config import FORMAT_VERSION, META_CONFIG, META_EXTRA, META_FORMAT, UNetConfig, read_model_config
from slideseg.model.unet import build_unet


@dataclass(frozen=True)
class LoadedModel:
    """A network with its configuration, weights hash and free-form metadata (e.g. training).

    ``net`` is a slideseg :class:`~slideseg.model.unet.UNet` for ``.safetensors`` files, or the
    module of a bring-your-own TorchScript / ``torch.export`` file (:mod:`slideseg.model.external`).
    """

    net: nn.Module
    config: UNetConfig
    weights_sha256: str
    metadata: Mapping[str, Any] = field(default_factory=dict)
    path: Path | None = None


def weights_sha256(state: Mapping[str, torch.Tensor]) -> str:
    """Hash of the weights alone (names, dtypes, shapes, bytes), independent of file metadata."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def save_model(path: str | Path, net: nn.Module, cfg: UNetConfig,
               metadata: Mapping[str, Any] | None = None) -> str:
    """Write ``net`` to a ``.safetensors`` file with ``cfg`` in its metadata; return the hash."""
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    meta = {
        META_FORMAT: FORMAT_VERSION,
        META_CONFIG: json.dumps(cfg.to_dict()),
        META_EXTRA: json.dumps(dict(metadata or {})),
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(state, str(tmp), metadata=meta)
    tmp.replace(path)
    return weights_sha256(state)




def load_model(path: str | os.PathLike[str]) -> LoadedModel:
    """Load a model file into a U-Net in eval mode (CPU). Raises ModelFileError on any mismatch."""
    from safetensors.torch import load_file

    cfg, extra = read_model_config(path)
    state = load_file(str(path))
    net = build_unet(cfg)
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[1:2] or [str(exc)]
        raise ModelFileError(
            f"{path}: weights do not fit the config in its metadata ({first[0].strip()}); "
            "the file is damaged or was edited: recreate it with `slideseg new-model` or `train`."
        ) from exc
    net.eval()
    return LoadedModel(net, cfg, weights_sha256(state), extra, Path(path))




def cpu_copy(model: LoadedModel) -> LoadedModel:
    """A copy of a slideseg ``model`` on the CPU (engines move and re-lay-out the network they are given)."""

    net = build_unet(model.config)
    net.load_state_dict({k: v.detach().cpu() for k, v in model.net.state_dict().items()})
    return LoadedModel(net.eval(), model.config, model.weights_sha256, model.metadata, model.path)


def file_sha256(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
