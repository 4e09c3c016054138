"""ONNX files: export a U-Net to ONNX, and read what an ONNX file is (its slideseg metadata or sidecar).

The exported graph is self-contained: it takes *raw* float32 pixels ``(N, C, T, T)`` named
``pixels``, normalises them in fp32, casts to the export precision (fp32, fp16 or bf16), runs the
network in that precision and casts the logits back to fp32 (``logits``, ``(N, K, t, t)``). The
batch is dynamic (1..max_batch), height and width are fixed, so TensorRT can specialise and every
crop offset is a constant. The configuration travels inside the file (``metadata_props``), so an
export is a complete model for ``--model FILE.onnx``.

torch's dynamo exporter (``torch.onnx.export(..., dynamo=True)``, needs ``onnxscript``) writes
opset 20; bf16 graphs use opset 22, the first whose Conv/MaxPool/ConvTranspose accept bf16.

>>> export_precision_opset("bf16"), export_precision_opset("fp16")
(22, 20)
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from slideseg import __version__
from slideseg.engines.base import check_precision, normalisation
from slideseg.engines.cache import EngineBuildError, atomic_write_bytes, cache_dir, onnx_filename
from slideseg.errors import ConfigError, ModelFileError, OutputExistsError
from slideseg.model.config import UNetConfig
from slideseg.model.external import _need_sidecar, read_sidecar, sidecar_path
from slideseg.model.files import LoadedModel, cpu_copy, file_sha256

INPUT_NAME = "pixels"


OUTPUT_NAME = "logits"


META_KEY = "slideseg.export"


DEFAULT_MAX_BATCH = 8


ONNX_HINT = "pip install 'slideseg[onnx]'"


def export_precision_opset(precision: str) -> int:
    """The ONNX opset an export of ``precision`` uses."""
    return 22 if precision == "bf16" else 20


@dataclass(frozen=True)
class OnnxInfo:
    """What an ONNX file is, read from its metadata (slideseg exports) or its sidecar (others)."""

    config: UNetConfig
    weights_sha256: str
    tile: int | None
    """Fixed input edge, or None when height and width are dynamic."""
    max_batch: int | None
    precision: str | None
    """fp32/fp16/bf16 for slideseg exports; None (unknown) for other files."""
    normalised_in_graph: bool
    input_name: str
    output_name: str
    metadata: Mapping[str, Any]


def export_onnx(model: LoadedModel, tile: int, *, max_batch: int = DEFAULT_MAX_BATCH, precision: str = "fp32",
                output: str | os.PathLike[str] | None = None, overwrite: bool = False) -> Path:
    """Export ``model`` for ``tile`` px inputs and return the ONNX file's path.

    With ``output=None`` the file goes to the artefact cache (``engines/``) under a name built from
    the weights hash, tile, max batch and precision; an export already there is reused. An explicit
    ``output`` that exists is an error unless ``overwrite``.
    """
    _require_onnx()
    check_precision(precision)
    model.config.geometry.check_tile(tile)
    if max_batch < 1:
        raise ConfigError(f"--max-batch must be >= 1, got {max_batch}")
    if output is None:
        path = cache_dir() / onnx_filename(model.weights_sha256, tile=tile, max_batch=max_batch, precision=precision)
        if path.is_file() and _is_export_of(path, model.weights_sha256, tile, max_batch, precision):
            return path
    else:
        path = Path(output)
        if path.exists() and not overwrite:
            raise OutputExistsError(f"{path} exists; pass --overwrite to replace it.")
    proto = _export_proto(model, tile, max_batch, precision)
    meta = {
        "model_config": model.config.to_dict(), "model_metadata": dict(model.metadata),
        "weights_sha256": model.weights_sha256, "tile": tile, "max_batch": max_batch,
        "precision": precision, "normalised_in_graph": True, "input": INPUT_NAME, "output": OUTPUT_NAME,
        "opset": export_precision_opset(precision), "slideseg": __version__, "torch": _torch_version(),
    }
    entry = proto.metadata_props.add()
    entry.key, entry.value = META_KEY, json.dumps(meta, default=str)
    atomic_write_bytes(path, proto.SerializeToString())
    return path


def exportable_module(model: LoadedModel, precision: str) -> Any:
    """The module that is exported: raw pixels → normalise (fp32) → cast → network → fp32 logits.

    It runs on a CPU copy of the network, so the model itself is never cast or moved.
    """
    import torch


    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]
    mean, std = normalisation(model.config)
    net = cpu_copy(model).net

    class Normalised(torch.nn.Module):
        mean: torch.Tensor
        std: torch.Tensor

        def __init__(self) -> None:
            super().__init__()
            self.net = net.eval().to(dtype)
            self.register_buffer("mean", torch.from_numpy(mean))  # (1, C, 1, 1) fp32
            self.register_buffer("std", torch.from_numpy(std))

        def forward(self, pixels: torch.Tensor) -> torch.Tensor:  # (N, C, T, T) raw -> (N, K, t, t) fp32
            x = (pixels - self.mean) / self.std
            return self.net(x.to(dtype)).float()

    return Normalised().eval()


def _export_proto(model: LoadedModel, tile: int, max_batch: int, precision: str) -> Any:
    import torch

    module = exportable_module(model, precision)
    example = torch.rand(min(2, max_batch), model.config.in_channels, tile, tile) * 255
    batch = torch.export.Dim("batch", min=1, max=max(2, max_batch))
    with _quiet_exporter():
        try:
            program = torch.onnx.export(
                module, (example,), None, dynamo=True, verbose=False, input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME], dynamic_shapes={"pixels": {0: batch}},
                opset_version=export_precision_opset(precision), external_data=False, optimize=True)
        except Exception as exc:
            raise EngineBuildError(f"torch.onnx.export failed for a {precision} export at tile {tile}: "
                                   f"{str(exc).splitlines()[0]}") from exc
    assert program is not None
    return program.model_proto


@contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Silence the exporter's known noise, narrowly.

    * FutureWarning ``isinstance(treespec, LeafSpec) is deprecated``: raised inside torch 2.13's
      own export code (its pytree internals), not by anything slideseg passes; harmless.
    * Log lines: torchvision ops skipped (not installed), onnx_ir's optimiser passes at INFO.
    """
    loggers = {name: logging.getLogger(name) for name in (
        "torch.onnx._internal.exporter._registration", "onnx_ir", "onnxscript")}
    levels = {name: logger.level for name, logger in loggers.items()}
    for logger in loggers.values():
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)",
                                    category=FutureWarning)
            yield
    finally:
        for name, logger in loggers.items():
            logger.setLevel(levels[name])


def read_onnx_info(path: str | os.PathLike[str]) -> OnnxInfo | None:
    """The slideseg metadata of an ONNX file, or None when it was not exported by slideseg."""
    meta = _read_meta(path)
    if meta is None:
        return None
    try:
        return OnnxInfo(
            config=UNetConfig.from_dict(meta["model_config"]), weights_sha256=str(meta["weights_sha256"]),
            tile=int(meta["tile"]), max_batch=int(meta["max_batch"]), precision=str(meta["precision"]),
            normalised_in_graph=bool(meta.get("normalised_in_graph", True)),
            input_name=str(meta.get("input", INPUT_NAME)), output_name=str(meta.get("output", OUTPUT_NAME)),
            metadata=dict(meta.get("model_metadata") or {}),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelFileError(f"{path}: its slideseg export metadata is malformed ({exc}); export it again "
                             "with `slideseg export`.") from exc


def _read_meta(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    onnx = _require_onnx()
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise ModelFileError(f"{path} is not a readable ONNX file ({str(exc).splitlines()[0]}).") from exc
    for entry in proto.metadata_props:
        if entry.key == META_KEY:
            try:
                meta = json.loads(entry.value)
            except ValueError as exc:
                raise ModelFileError(f"{path}: its slideseg metadata is not JSON ({exc}).") from exc
            return meta if isinstance(meta, dict) else None
    return None


def _is_export_of(path: Path, sha: str, tile: int, max_batch: int, precision: str) -> bool:
    try:
        meta = _read_meta(path)
    except ModelFileError:
        return False
    if meta is None:
        return False
    return (meta.get("weights_sha256"), meta.get("tile"), meta.get("max_batch"), meta.get("precision")) == (
        sha, tile, max_batch, precision)


def _require_onnx() -> Any:
    try:
        import onnx
        import onnxscript  # noqa: F401  (the dynamo exporter needs it)
    except ImportError as exc:
        raise ConfigError(f"ONNX export needs the onnx and onnxscript packages: {ONNX_HINT}") from exc
    return onnx


def _torch_version() -> str:
    import torch

    return str(torch.__version__)


def onnx_info(path: Path) -> Any:
    """The :class:`OnnxInfo` of an ONNX file: its slideseg metadata, its sidecar, or both."""

    info = read_onnx_info(path)
    side = sidecar_path(path)
    if info is not None:
        if side is None:
            return info
        cfg, extras = read_sidecar(side, base=info.config)
        return OnnxInfo(cfg, info.weights_sha256, info.tile, info.max_batch, info.precision,
                        info.normalised_in_graph, info.input_name, info.output_name,
                        {**info.metadata, "sidecar": str(side)})
    if side is None:
        raise _need_sidecar(path)
    cfg, extras = read_sidecar(side)
    tile, batch, input_name, output_name = _onnx_signature(path)
    metadata = {"external": {"format": "onnx", "path": str(path), "sidecar": str(side)},
                "trained": extras["trained"]}
    return OnnxInfo(cfg, file_sha256(path), tile, batch, None, extras["normalised_in_model"],
                    extras["input"] or input_name, extras["output"] or output_name, metadata)


def _onnx_signature(path: Path) -> tuple[int | None, int | None, str, str]:
    """(fixed tile or None, fixed batch or None, input name, first output name) of an ONNX graph."""
    import onnx

    try:
        graph = onnx.load(str(path), load_external_data=False).graph
    except Exception as exc:
        raise ModelFileError(f"{path} is not a readable ONNX file ({str(exc).splitlines()[0]}).") from exc
    initialisers = {i.name for i in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initialisers]
    if len(inputs) != 1 or not graph.output:
        raise ModelFileError(f"{path} has {len(inputs)} image inputs; slideseg runs models with one input "
                             "(N, C, H, W) and one logits output (N, K, h, w).")
    dims = [d.dim_value if d.HasField("dim_value") else None for d in inputs[0].type.tensor_type.shape.dim]
    if len(dims) != 4:
        raise ModelFileError(f"{path}: its input has {len(dims)} dimensions; expected (N, C, H, W).")
    h, w = dims[2], dims[3]
    if (h is None) != (w is None) or (h is not None and h != w):
        raise ModelFileError(f"{path}: its input is {h} x {w}; slideseg needs square tiles (both fixed and equal, "
                             "or both dynamic).")
    return h, dims[0], inputs[0].name, graph.output[0].name
