"""The ONNX Runtime engine: runs ONNX exports (or your own ONNX model) on the CPU, or on a GPU
through ONNX Runtime's CUDA / TensorRT execution providers when ``onnxruntime-gpu`` is installed.

Normalisation: a slideseg export normalises inside the graph (its input is raw float32 pixels),
so the engine only widens uint8/uint16 to float32 in numpy. A bring-your-own graph that expects
normalised input is fed ``(x - mean) / std`` computed in numpy, from its sidecar JSON.

For a ``.safetensors`` model the engine exports one ONNX file per tile size on first use (cached
in ``engines/``), because exports have a fixed height and width. ``infer`` is thread-safe: calls
are serialised, as ONNX Runtime already spreads one call over all cores.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from slideseg.engines.base import Engine, check_precision, normalisation, split_batches
from slideseg.engines.cache import cache_dir
from slideseg.engines.onnx import DEFAULT_MAX_BATCH, ONNX_HINT, OnnxInfo, export_onnx, read_onnx_info
from slideseg.engines.torch_engine import TorchEngine
from slideseg.errors import ConfigError, ModelFileError
from slideseg.model.files import LoadedModel, cpu_copy

GPU_HINT = "pip install onnxruntime-gpu (in place of onnxruntime)"
_NUMPY_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


def import_onnxruntime() -> Any:
    """The onnxruntime module, or a ConfigError with the install hint."""
    try:
        import onnxruntime
    except ImportError as exc:
        raise ConfigError(f"--engine onnxruntime needs ONNX Runtime: {ONNX_HINT}") from exc
    return onnxruntime


def providers_for(device: str, available: list[str], gpu_present: bool, cache: Path) -> list[Any]:
    """ONNX Runtime execution providers for ``device``, best first; CPU always last.

    >>> providers_for("cpu", ["CUDAExecutionProvider", "CPUExecutionProvider"], True, Path("e"))
    ['CPUExecutionProvider']
    """
    if device == "cpu":
        return ["CPUExecutionProvider"]
    device_id = int(device.split(":")[1]) if ":" in device else 0
    gpu: list[Any] = []
    if gpu_present and "TensorrtExecutionProvider" in available:
        gpu.append(("TensorrtExecutionProvider", {
            "device_id": device_id, "trt_engine_cache_enable": True,
            "trt_engine_cache_path": str(cache / "ort-tensorrt"), "trt_timing_cache_enable": True,
            "trt_timing_cache_path": str(cache / "ort-tensorrt")}))
    if gpu_present and "CUDAExecutionProvider" in available:
        gpu.append(("CUDAExecutionProvider", {"device_id": device_id}))
    if device.startswith("cuda") and not gpu:
        raise ConfigError(f"--device {device} with --engine onnxruntime needs ONNX Runtime's CUDA provider "
                          f"and a GPU (available providers: {', '.join(available)}); {GPU_HINT}, or use --device cpu.")
    return [*gpu, "CPUExecutionProvider"]


@dataclass
class _Session:
    """One ONNX Runtime session and how to feed it."""

    session: Any
    input_name: str
    output_name: str
    input_type: Any
    batch: int | None  # a fixed batch size, or None
    normalised_in_graph: bool


class OnnxRuntimeEngine(Engine):
    """Runs ONNX graphs with ONNX Runtime. Build with :meth:`for_model` or :meth:`for_file`."""

    name = "onnxruntime"

    def __init__(self, info: OnnxInfo, source: Callable[[int], Path], *, device: str = "auto",
                 threads: int | None = None, precision: str = "fp32", fixed_tile: int | None = None,
                 path: Path | None = None) -> None:
        super().__init__(info.config, info.weights_sha256, info.metadata)
        self.path = path
        """The one ONNX file this engine runs, or None when it exports one per tile size."""
        self._ort = import_onnxruntime()
        self.info = info
        self.device = device
        self.threads = threads
        self.precision = precision
        self.fixed_tile = fixed_tile
        self._source = source
        self._sessions: dict[int, _Session] = {}
        self._lock = threading.Lock()
        self._mean, self._std = normalisation(info.config)
        self._providers = providers_for(device, list(self._ort.get_available_providers()), _gpu_present(device),
                                        cache_dir(create=False))
        if precision == "bf16" and self._providers == ["CPUExecutionProvider"]:
            raise ConfigError("ONNX Runtime's CPU provider has no bf16 convolutions; use --precision fp32 or "
                              "fp16 with --engine onnxruntime, or --engine torch / tensorrt for bf16.")

    @classmethod
    def for_model(cls, model: LoadedModel, *, device: str = "auto", threads: int | None = None,
                  precision: str = "fp32", max_batch: int | None = None) -> OnnxRuntimeEngine:
        """An engine that exports ``model`` to ONNX for each tile size it meets (cached in ``engines/``)."""
        check_precision(precision)
        info = OnnxInfo(model.config, model.weights_sha256, None, max_batch, precision, True, "pixels", "logits",
                        model.metadata)
        batch = max_batch or DEFAULT_MAX_BATCH

        def source(tile: int) -> Path:
            return export_onnx(model, tile, max_batch=batch, precision=precision)

        return cls(info, source, device=device, threads=threads, precision=precision)

    @classmethod
    def for_file(cls, path: str | os.PathLike[str], info: OnnxInfo, *, device: str = "auto",
                 threads: int | None = None, precision: str = "fp32") -> OnnxRuntimeEngine:
        """An engine for one ONNX file (a slideseg export or your own model with a sidecar)."""
        check_precision(precision)
        file_precision = info.precision or "fp32"
        if precision != "fp32" and precision != file_precision:
            raise ConfigError(f"{path} computes in {info.precision or 'the precision it was exported in'}; the "
                              f"precision of an ONNX file is fixed at export: export it again with --precision "
                              f"{precision}.")
        return cls(info, lambda tile: Path(path), device=device, threads=threads, precision=file_precision,
                   fixed_tile=info.tile, path=Path(path))

    def infer(self, batch: np.ndarray) -> np.ndarray:
        self.check_batch(batch)
        with self._lock:
            s = self._session_for(batch.shape[2])
            x = batch.astype(np.float32)  # (N, C, T, T) raw pixels
            if not s.normalised_in_graph:
                x = (x - self._mean) / self._std
            x = x.astype(s.input_type, copy=False)
            parts = split_batches(x, s.batch) if s.batch else [x]
            outs = [s.session.run([s.output_name], {s.input_name: p})[0] for p in parts]
        logits = (outs[0] if len(outs) == 1 else np.concatenate(outs)).astype(np.float32, copy=False)
        return self.check_logits(batch, logits)

    def _session_for(self, tile: int) -> _Session:
        key = 0 if self.path is not None else tile  # one file serves every tile it accepts
        if key not in self._sessions:
            self._sessions[key] = self._open(self._source(tile))
        return self._sessions[key]

    def _open(self, path: Path) -> _Session:
        ort = self._ort
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads or 0
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # errors only
        # Idle ONNX Runtime threads spin by default, starving the threads that read and write
        # chunks (and any other engine) in this process: let them sleep.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            session = ort.InferenceSession(str(path), options, providers=self._providers)
        except Exception as exc:
            raise ModelFileError(f"ONNX Runtime cannot load {path}: {str(exc).splitlines()[0]}") from exc
        inputs, outputs = session.get_inputs(), session.get_outputs()
        if len(inputs) != 1:
            raise ModelFileError(f"{path} has {len(inputs)} inputs; slideseg runs models with one image input.")
        names = [o.name for o in outputs]
        output = self.info.output_name if self.info.output_name in names else names[0]
        kind = inputs[0].type
        if kind not in _NUMPY_TYPES:
            raise ModelFileError(f"{path} takes {kind} input; slideseg feeds float32 or float16 pixels.")
        batch_dim = inputs[0].shape[0]
        return _Session(session, inputs[0].name, output, _NUMPY_TYPES[kind],
                        batch_dim if isinstance(batch_dim, int) else None, self.info.normalised_in_graph)

    def details(self) -> dict[str, Any]:
        providers = [p if isinstance(p, str) else p[0] for p in self._providers]
        d: dict[str, Any] = {"onnxruntime": self._ort.__version__, "providers": providers,
                             "precision": self.precision,
                             "normalisation": "in the graph" if self.info.normalised_in_graph else "numpy"}
        if self.threads:
            d["threads"] = self.threads
        if self.path is not None:
            d["model"] = str(self.path)
        return d


def _gpu_present(device: str) -> bool:
    if device == "cpu":
        return False
    import torch

    return bool(torch.cuda.is_available())


def verify_onnx(path: str | os.PathLike[str], model: LoadedModel, *, batch: int = 2, seed: int = 0) -> float:
    """Max |logit difference| between the ONNX file run by ONNX Runtime (CPU) and the PyTorch CPU
    engine on a random batch of raw pixels (fp32 exports agree within ~1e-5)."""
    info = read_onnx_info(path)
    if info is None or info.tile is None:
        raise ModelFileError(f"{path} is not a slideseg export; verify_onnx compares exports with their model.")
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (batch, info.config.in_channels, info.tile, info.tile), dtype=np.uint8)
    got = OnnxRuntimeEngine.for_file(path, info, device="cpu").infer(pixels)
    want = TorchEngine(cpu_copy(model), device="cpu").infer(pixels)
    return float(np.abs(got - want).max())
