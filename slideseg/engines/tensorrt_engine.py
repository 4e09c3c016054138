"""The TensorRT engine (TensorRT 10 and 11 Python API), built from an ONNX export.

Build: the ONNX file is parsed into a *strongly typed* network (the precision comes from the graph:
export in fp16/bf16 to run in fp16/bf16), with one optimisation profile over batch 1..B at a fixed
tile size, a workspace limit, an optimisation level and a timing cache. Where the network cannot be
strongly typed for the precision asked for (an fp32 ONNX file of your own with ``--precision
fp16``), TensorRT 10's builder precision flags are the fallback; TensorRT 11 has none and says so.

Cache: plans live in ``engines/`` under a key of (ONNX hash, TensorRT version, GPU name and compute
capability, shapes, precision, optimisation level, workspace) — see :class:`PlanKey`. A plan that
does not deserialise (another TensorRT version, another GPU, a damaged file) is rebuilt.

Run: name-based tensor addresses and ``execute_async_v3`` on a CUDA stream, on torch tensors. Raw
uint8 tiles go to the GPU through a pinned buffer and are cast there; the graph normalises.

NOT EXECUTED: TensorRT is not installable on the machines slideseg is developed on (and not on the
GPU machine used for checks), so the code that calls TensorRT (:func:`build_plan`,
:class:`_PlanRunner`, the deserialiser) has never run. Everything around it — keys, cache
hit/miss/rebuild, typing decisions, selection and fallback — is unit-tested. See docs/engines.md.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from slideseg import __version__
from slideseg.engines.base import Engine, check_precision, normalisation, to_device_dtype
from slideseg.engines.cache import (
    CacheStatus,
    EngineBuildError,
    PlanKey,
    atomic_write_bytes,
    cache_dir,
    load_or_build,
)
from slideseg.engines.onnx import DEFAULT_MAX_BATCH, OnnxInfo, export_onnx
from slideseg.engines.torch_engine import resolve_device
from slideseg.errors import ConfigError
from slideseg.model.files import LoadedModel, file_sha256

TRT_HINT = ("pip install 'slideseg[gpu]' (TensorRT 10 or 11 built for your CUDA version; "
            "NVIDIA's pip wheels fetch their libraries from pypi.nvidia.com)")
_FLAGS = {"fp16": "FP16", "bf16": "BF16"}


def import_tensorrt() -> Any:
    """The tensorrt module, or a ConfigError with the install hint."""
    try:
        import tensorrt
    except Exception as exc:  # ImportError, or an OSError from missing CUDA libraries
        raise ConfigError(f"--engine tensorrt needs TensorRT: {TRT_HINT} ({type(exc).__name__}: {exc})") from exc
    return tensorrt


def typing_mode(graph_precision: str | None, requested: str, *, strongly_typed_available: bool,
                builder_flags: set[str]) -> tuple[bool, str | None]:
    """How to build: (strongly typed?, builder precision flag to set or None).

    >>> typing_mode("fp16", "fp16", strongly_typed_available=True, builder_flags={"FP16"})
    (True, None)
    >>> typing_mode("fp32", "fp16", strongly_typed_available=True, builder_flags={"FP16"})
    (False, 'FP16')
    """
    graph = graph_precision or "fp32"
    if requested in ("fp32", graph):
        if strongly_typed_available:
            return True, None
        return False, _FLAGS.get(graph)  # before strong typing: let half kernels be chosen
    flag = _FLAGS[requested]
    if flag in builder_flags:
        return False, flag
    raise ConfigError(
        f"this TensorRT builds strongly typed networks only, so the precision must be in the ONNX graph, which "
        f"is {graph}: export the model in {requested} (`slideseg export --precision {requested}`; for an ONNX "
        f"file of your own, e.g. NVIDIA ModelOpt AutoCast) or run it with --precision {graph}."
    )


def make_plan_key(onnx_path: Path, *, tensorrt_version: str, gpu: tuple[str, tuple[int, int]], input_name: str,
                  in_channels: int, tile: int, max_batch: int, precision: str, opt_level: int,
                  workspace_bytes: int, onnx_sha256: str | None = None) -> PlanKey:
    """The cache key of the plan for ``onnx_path`` on this GPU and TensorRT version.

    The optimisation profile is batch 1..``max_batch`` (optimised for ``max_batch``), fixed H/W.
    """
    shape = (in_channels, tile, tile)
    return PlanKey(
        onnx_sha256=onnx_sha256 or file_sha256(onnx_path), tensorrt_version=tensorrt_version, gpu_name=gpu[0],
        compute_capability=(int(gpu[1][0]), int(gpu[1][1])), input_name=input_name,
        shape_min=(1, *shape), shape_opt=(max_batch, *shape), shape_max=(max_batch, *shape),
        precision=precision, opt_level=opt_level, workspace_bytes=workspace_bytes,
    )


def gpu_identity(device_index: int) -> tuple[str, tuple[int, int]]:
    """(name, compute capability) of a CUDA device, as torch reports them."""
    import torch

    major, minor = torch.cuda.get_device_capability(device_index)
    return torch.cuda.get_device_name(device_index), (int(major), int(minor))


def build_plan(trt: Any, onnx_path: Path, key: PlanKey, timing_cache: Path, *, strongly_typed: bool,
               flag: str | None) -> bytes:
    """Parse ``onnx_path`` and build a serialised plan for ``key`` (TensorRT 10/11 API). Not executed here."""
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if strongly_typed else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineBuildError(f"TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, key.workspace_bytes)
    config.builder_optimization_level = key.opt_level
    if flag is not None:
        config.set_flag(getattr(trt.BuilderFlag, flag))
    profile = builder.create_optimization_profile()
    profile.set_shape(key.input_name, key.shape_min, key.shape_opt, key.shape_max)
    config.add_optimization_profile(profile)
    cache = config.create_timing_cache(timing_cache.read_bytes() if timing_cache.is_file() else b"")
    config.set_timing_cache(cache, False)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise EngineBuildError(f"TensorRT could not build a plan for {onnx_path} ({key.precision}, tile "
                               f"{key.shape_max[-1]}, batch 1..{key.shape_max[0]}); run with --debug for its log.")
    atomic_write_bytes(timing_cache, bytes(config.get_timing_cache().serialize()))
    return bytes(plan)


class TensorRTEngine(Engine):
    """Runs TensorRT plans built from ONNX exports. Build with :meth:`for_model` or :meth:`for_file`.

    Plans are built lazily, at the first batch of each tile size (the tile is known only then), or
    ahead of time by :meth:`prepare` (``slideseg export --format tensorrt``).
    """

    name = "tensorrt"

    def __init__(self, info: OnnxInfo, source: Callable[[int], Path], *, device: str = "auto",
                 precision: str = "fp32", max_batch: int | None = None, opt_level: int = 3,
                 workspace_gib: float = 4.0, fixed_tile: int | None = None) -> None:
        super().__init__(info.config, info.weights_sha256, info.metadata)
        self._trt = import_tensorrt()
        import torch


        self.device = resolve_device("cuda" if device == "auto" else device)
        if self.device.type != "cuda":
            raise ConfigError("--engine tensorrt runs on an NVIDIA GPU only; use --device cuda (or auto).")
        if not 0 <= opt_level <= 5:
            raise ConfigError(f"--opt-level must be in 0..5, got {opt_level}")
        self.info = info
        self.precision = check_precision(precision)
        self.max_batch = max_batch or info.max_batch or DEFAULT_MAX_BATCH
        self.opt_level = opt_level
        self.workspace_bytes = int(workspace_gib * 2**30)
        self.fixed_tile = fixed_tile
        self._source = source
        self._runners: dict[int, _PlanRunner] = {}
        self._built: dict[int, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self._index = self.device.index if self.device.index is not None else torch.cuda.current_device()
        flags = {name for name in ("FP16", "BF16") if hasattr(self._trt.BuilderFlag, name)}
        self._strong, self._flag = typing_mode(
            info.precision, self.precision,
            strongly_typed_available=hasattr(self._trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"),
            builder_flags=flags)

    @classmethod
    def for_model(cls, model: LoadedModel, *, device: str = "auto", precision: str = "fp32",
                  max_batch: int | None = None, **options: Any) -> TensorRTEngine:
        """Export ``model`` to ONNX in ``precision`` per tile size, then build a strongly typed plan."""
        check_precision(precision)
        batch = max_batch or DEFAULT_MAX_BATCH
        info = OnnxInfo(model.config, model.weights_sha256, None, batch, precision, True, "pixels", "logits",
                        model.metadata)
        return cls(info, lambda tile: export_onnx(model, tile, max_batch=batch, precision=precision),
                   device=device, precision=precision, max_batch=batch, **options)

    @classmethod
    def for_file(cls, path: Path, info: OnnxInfo, *, device: str = "auto", precision: str = "fp32",
                 max_batch: int | None = None, **options: Any) -> TensorRTEngine:
        """Build plans from one ONNX file (a slideseg export, or your own model with a sidecar)."""
        return cls(info, lambda tile: path, device=device, precision=precision, max_batch=max_batch,
                   fixed_tile=info.tile, **options)

    def prepare(self, tile: int) -> dict[str, Any]:
        """Build or load the plan for ``tile`` px tiles; return what was done (path, cache status, key)."""
        self.geometry.output_size(tile)
        with self._lock:
            self._runner(tile)
            return self._built[tile]

    def infer(self, batch: np.ndarray) -> np.ndarray:
        self.check_batch(batch)
        with self._lock:
            logits = self._runner(batch.shape[2]).run(batch)
        return self.check_logits(batch, logits)

    def _runner(self, tile: int) -> _PlanRunner:
        if tile not in self._runners:
            onnx_path = self._source(tile)
            key = make_plan_key(onnx_path, tensorrt_version=str(self._trt.__version__),
                                gpu=gpu_identity(self._index), input_name=self.info.input_name,
                                in_channels=self.config.in_channels, tile=tile, max_batch=self.max_batch,
                                precision=self.precision, opt_level=self.opt_level,
                                workspace_bytes=self.workspace_bytes)
            folder = cache_dir()
            path = folder / key.plan_filename()
            timing = folder / key.timing_cache_filename()
            runtime = self._trt.Runtime(self._trt.Logger(self._trt.Logger.WARNING))
            plan, status = load_or_build(
                path, lambda: build_plan(self._trt, onnx_path, key, timing, strongly_typed=self._strong,
                                         flag=self._flag),
                runtime.deserialize_cuda_engine,
                describe={**key.to_dict(), "onnx": str(onnx_path), "slideseg": __version__,
                          "strongly_typed": self._strong, "builder_flag": self._flag})
            self._built[tile] = {"plan": str(path), "cache": status, "key": key.to_dict()}
            mean_std = None if self.info.normalised_in_graph else normalisation(self.config)
            self._runners[tile] = _PlanRunner(self._trt, plan, runtime, self.device, mean_std)
        return self._runners[tile]

    def cache_status(self) -> dict[int, CacheStatus]:
        """Per tile size: whether its plan came from the cache (hit), was built (miss) or rebuilt."""
        return {tile: built["cache"] for tile, built in self._built.items()}

    def details(self) -> dict[str, Any]:
        d: dict[str, Any] = {"tensorrt": str(self._trt.__version__), "device": str(self.device),
                             "precision": self.precision, "max_batch": self.max_batch, "opt_level": self.opt_level,
                             "strongly_typed": self._strong}
        if self._built:
            d["plans"] = {str(t): {"plan": Path(b["plan"]).name, "cache": b["cache"]} for t, b in self._built.items()}
        return d


class _PlanRunner:
    """One deserialised plan and its execution context (TensorRT calls; not executed here)."""

    def __init__(self, trt: Any, plan: Any, runtime: Any, device: Any,
                 mean_std: tuple[np.ndarray, np.ndarray] | None) -> None:
        import torch

        self.torch = torch
        self.plan, self.runtime, self.device = plan, runtime, device  # the runtime must outlive the plan
        self.context = plan.create_execution_context()
        names = [plan.get_tensor_name(i) for i in range(plan.num_io_tensors)]
        inputs = [n for n in names if plan.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if plan.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(inputs) != 1 or len(outputs) != 1:
            raise EngineBuildError(f"expected one input and one output tensor, got {inputs} and {outputs}")
        self.input, self.output = inputs[0], outputs[0]
        types = {trt.DataType.FLOAT: torch.float32, trt.DataType.HALF: torch.float16}
        if hasattr(trt.DataType, "BF16"):
            types[trt.DataType.BF16] = torch.bfloat16
        self.input_dtype = types[plan.get_tensor_dtype(self.input)]
        self.output_dtype = types[plan.get_tensor_dtype(self.output)]
        self.max_batch = int(plan.get_tensor_profile_shape(self.input, 0)[2][0])
        self.stream = torch.cuda.Stream(device)
        self.mean_std = None if mean_std is None else tuple(torch.from_numpy(a).to(device) for a in mean_std)
        self._pinned: dict[tuple[tuple[int, ...], Any], Any] = {}

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Logits (N, K, t, t) float32 of raw tiles (N, C, T, T); called under the engine's lock."""
        torch = self.torch
        batch = to_device_dtype(batch)
        src = torch.from_numpy(np.ascontiguousarray(batch))
        key = (tuple(src.shape), src.dtype)
        if key not in self._pinned:
            self._pinned[key] = torch.empty(src.shape, dtype=src.dtype, pin_memory=True)
        staged = self._pinned[key]
        staged.copy_(src)
        with torch.cuda.stream(self.stream), torch.inference_mode():
            x = staged.to(self.device, non_blocking=True).float()  # uint8 over PCIe, cast on the GPU
            if self.mean_std is not None:
                x = (x - self.mean_std[0]) / self.mean_std[1]
            x = x.to(self.input_dtype).contiguous()
            outs = []
            for part in x.split(self.max_batch):  # (n <= max_batch, C, T, T)
                self.context.set_input_shape(self.input, tuple(part.shape))
                out = torch.empty(tuple(self.context.get_tensor_shape(self.output)), dtype=self.output_dtype,
                                  device=self.device)
                self.context.set_tensor_address(self.input, part.data_ptr())
                self.context.set_tensor_address(self.output, out.data_ptr())
                if not self.context.execute_async_v3(self.stream.cuda_stream):
                    raise EngineBuildError("TensorRT execute_async_v3 failed; run with --debug for its log.")
                outs.append(out)
            logits = (outs[0] if len(outs) == 1 else torch.cat(outs)).float().cpu()
        self.stream.synchronize()
        return logits.numpy()
