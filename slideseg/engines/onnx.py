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

import hashlib
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
from slideseg.model.bioimageio import BioimageioModel
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
            # dynamic height and width share one symbol; the exporter says it names it once
            warnings.filterwarnings("ignore", message=r"# The axis name: .* will not be used", category=UserWarning)
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
    return str(torch.__version__)


def onnx_info(path: Path) -> OnnxInfo:
    """The :class:`OnnxInfo` of an ONNX file: its slideseg metadata, its sidecar, or both."""

    info = read_onnx_info(path)
    side = sidecar_path(path)
    if info is not None:
        if side is None:
            return info
        cfg, extras = read_sidecar(side, base=info.config)
        return OnnxInfo(cfg, info.weights_sha256, info.tile, info.max_batch, info.precision,
                        info.normalised_in_graph, info.input_name, info.output_name,
                        {**info.metadata, "sidecar": str(side), "norm": extras["norm"]})
    if side is None:
        raise _need_sidecar(path)
    cfg, extras = read_sidecar(side)
    tile, batch, input_name, output_name = _onnx_signature(path)
    metadata = {"external": {"format": "onnx", "path": str(path), "sidecar": str(side)},
                "trained": extras["trained"], "norm": extras["norm"]}
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


# ------------------------------------------------------------------------ bioimage.io packages


def export_network_onnx(model: LoadedModel, example_tile: int, path: Path) -> int:
    """The bare network of ``model`` (normalised input, no normalisation inside) as an fp32 ONNX file
    with dynamic batch, height and width (``input`` → ``output``), as bioimage.io packages hold it;
    returns the opset. Heights and widths follow the model's valid sizes (``2**depth * k + min``)."""
    _require_onnx()
    cfg = model.config
    g = cfg.geometry
    net = cpu_copy(model).net.eval()
    example = torch.rand(2, cfg.in_channels, example_tile, example_tile)
    d = torch.export.Dim
    k = d("k", min=0, max=4096)
    edge = g.alignment * k + g.min_input if cfg.padding == "valid" else g.alignment * d("k1", min=1, max=4096)
    opset = export_precision_opset("fp32")
    with _quiet_exporter():
        try:
            program = torch.onnx.export(net, (example,), None, dynamo=True, verbose=False, input_names=["input"],
                                        output_names=["output"], opset_version=opset, external_data=False,
                                        dynamic_shapes={"x": {0: d("batch"), 2: edge, 3: edge}}, optimize=False)
        except Exception as exc:
            raise EngineBuildError(f"torch.onnx.export failed for the package's ONNX weights: "
                                   f"{str(exc).splitlines()[0]}") from exc
    assert program is not None
    atomic_write_bytes(path, program.model_proto.SerializeToString())
    return opset


def package_onnx(model: BioimageioModel) -> tuple[Path, OnnxInfo]:
    """The ONNX weights of a package, adapted to slideseg's conventions, and their :class:`OnnxInfo`.

    The graph gets a ``pixels`` input ``(N, C, H, W)`` transposed to the package's axis order, and a
    ``logits`` output ``(N, K, h, w)`` transposed back (a one-channel output gets a constant
    background logit in front), so every ONNX engine runs it as it runs slideseg exports. The
    adapted file is cached in ``engines/`` under the weights' hash.
    """
    onnx = _import_onnx()
    if set(model.input_axes) != set("bcyx") or not set(model.output_axes) >= set("byx"):
        raise ModelFileError(f"{model.path}: its ONNX weights take axes {model.input_axes!r} and return "
                             f"{model.output_axes!r}; slideseg runs ONNX weights with batch, channel, y and x axes "
                             "(use its TorchScript weights, or --engine torch).")
    sha = model.weights_sha256("onnx")
    layout = json.dumps([model.input_axes, model.output_axes, model.output.background])
    path = cache_dir() / f"bioimageio-{sha[:12]}-{hashlib.sha256(layout.encode()).hexdigest()[:8]}.onnx"
    if not path.is_file():
        try:
            proto = onnx.load_from_string(model.read(model.weights["onnx"]))
        except Exception as exc:
            raise ModelFileError(f"{model.path}: its ONNX weights are not a readable ONNX model "
                                 f"({str(exc).splitlines()[0]}).") from exc
        _adapt_graph(onnx, proto, model)
        atomic_write_bytes(path, proto.SerializeToString())
    metadata = {**model.metadata, "external": {"format": "bioimageio/onnx", "path": str(model.path)}, "trained": True}
    info = OnnxInfo(model.config, sha, model.fixed_tile, model.batch, None, False, INPUT_NAME, OUTPUT_NAME, metadata)
    return path, info


def _adapt_graph(onnx: Any, proto: Any, model: BioimageioModel) -> None:
    """Put ``pixels`` (N, C, H, W) in front of the graph's input and ``logits`` (N, K, h, w) after its output."""
    from onnx import TensorProto, helper

    graph = proto.graph
    initialisers = {i.name for i in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initialisers]
    if len(inputs) != 1 or not graph.output:
        raise ModelFileError(f"{model.path}: its ONNX graph has {len(inputs)} inputs; slideseg runs models with one "
                             "image input and one output.")
    old_in, old_out = inputs[0], graph.output[0]
    out_axes = model.output_axes if "c" in model.output_axes else model.output_axes + "c"
    dims = old_in.type.tensor_type.shape.dim
    shape = [_dim(dims[model.input_axes.index(a)]) for a in "bcyx"] if len(dims) == 4 else None
    pixels = helper.make_tensor_value_info(INPUT_NAME, old_in.type.tensor_type.elem_type, shape)
    perm = ["bcyx".index(a) for a in model.input_axes]
    front = [helper.make_node("Transpose", [INPUT_NAME], [old_in.name], perm=perm, name="slideseg_in")]
    back = []
    raw = old_out.name
    if "c" not in model.output_axes:
        graph.initializer.append(helper.make_tensor("slideseg_axis", TensorProto.INT64, [1], [len(model.output_axes)]))
        back.append(helper.make_node("Unsqueeze", [raw, "slideseg_axis"], ["slideseg_with_c"], name="slideseg_c"))
        raw = "slideseg_with_c"
    back.append(helper.make_node("Transpose", [raw], ["slideseg_raw"], perm=[out_axes.index(a) for a in "bcyx"],
                                 name="slideseg_out"))
    if model.output.background is None:
        back.append(helper.make_node("Identity", ["slideseg_raw"], [OUTPUT_NAME], name="slideseg_logits"))
    else:
        graph.initializer.extend([helper.make_tensor("slideseg_zero", TensorProto.FLOAT, [], [0.0]),
                                  helper.make_tensor("slideseg_bg", TensorProto.FLOAT, [], [model.output.background])])
        back += [helper.make_node("Mul", ["slideseg_raw", "slideseg_zero"], ["slideseg_zeros"]),
                 helper.make_node("Add", ["slideseg_zeros", "slideseg_bg"], ["slideseg_background"]),
                 helper.make_node("Concat", ["slideseg_background", "slideseg_raw"], [OUTPUT_NAME], axis=1)]
    nodes = [*front, *graph.node, *back]
    del graph.node[:]
    graph.node.extend(nodes)
    graph.input.remove(old_in)
    graph.input.insert(0, pixels)
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, [None] * 4))
    try:
        onnx.checker.check_model(proto)
    except Exception as exc:
        raise ModelFileError(f"{model.path}: its ONNX weights do not pass onnx's checker once adapted "
                             f"({str(exc).splitlines()[0]}).") from exc


def _dim(d: Any) -> int | str | None:
    if d.HasField("dim_value"):
        return int(d.dim_value)
    return str(d.dim_param) if d.HasField("dim_param") else None


def _import_onnx() -> Any:
    try:
        import onnx
    except ImportError as exc:
        raise ConfigError(f"running ONNX weights needs the onnx package: {ONNX_HINT}") from exc
    return onnx
