"""Export a U-Net to ONNX (and pre-build TensorRT plans from it).

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

from slideseg import __version__
from slideseg.engines.base import check_precision
from slideseg.engines.cache import EngineBuildError, atomic_write_bytes, cache_dir, onnx_filename
from slideseg.errors import ConfigError, ModelFileError, OutputExistsError
from slideseg.model import LoadedModel, UNetConfig

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

    from slideseg.engines.base import normalisation

    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]
    mean, std = normalisation(model.config)
    net = _cpu_model(model).net

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


def verify_onnx(path: str | os.PathLike[str], model: LoadedModel, *, batch: int = 2, seed: int = 0) -> float:
    """Max |logit difference| between the ONNX file run by ONNX Runtime (CPU) and the PyTorch CPU
    engine on a random batch of raw pixels (fp32 exports agree within ~1e-5)."""
    import numpy as np

    from slideseg.engines.onnxruntime_engine import OnnxRuntimeEngine
    from slideseg.engines.torch_engine import TorchEngine

    info = read_onnx_info(path)
    if info is None or info.tile is None:
        raise ModelFileError(f"{path} is not a slideseg export; verify_onnx compares exports with their model.")
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (batch, info.config.in_channels, info.tile, info.tile), dtype=np.uint8)
    got = OnnxRuntimeEngine.for_file(path, info, device="cpu").infer(pixels)
    want = TorchEngine(_cpu_model(model), device="cpu").infer(pixels)
    return float(np.abs(got - want).max())


def _cpu_model(model: LoadedModel) -> LoadedModel:
    """A copy of ``model`` on the CPU (engines move and re-lay-out the network they are given)."""
    from slideseg.model import build_unet

    net = build_unet(model.config)
    net.load_state_dict({k: v.detach().cpu() for k, v in model.net.state_dict().items()})
    return LoadedModel(net.eval(), model.config, model.weights_sha256, model.metadata, model.path)


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


# --------------------------------------------------------------------------------------------
# TensorRT pre-build
# --------------------------------------------------------------------------------------------


def export_tensorrt(model_path: str | os.PathLike[str], *, tile: int | None, max_batch: int = DEFAULT_MAX_BATCH,
                    precision: str = "fp32", opt_level: int = 3, workspace_gib: float = 4.0,
                    device: str = "cuda") -> dict[str, Any]:
    """Build (or find in the cache) the TensorRT plan for a model file and return what was built.

    ``model_path`` is a ``.safetensors`` model (exported to ONNX first) or an ONNX file.
    """
    from slideseg.engines import load_engine

    engine = load_engine(model_path, "tensorrt", device=device, precision=precision, max_batch=max_batch,
                         opt_level=opt_level, workspace_gib=workspace_gib)
    tile = tile or engine.fixed_tile
    if tile is None:
        raise ConfigError("--tile is needed to build a TensorRT plan (plans have a fixed tile size).")
    prepare = engine.prepare  # type: ignore[attr-defined]
    return dict(prepare(tile))
