"""The PyTorch engine: CPU or CUDA, inference mode, channels-last memory layout.

On CUDA the engine is built to keep the GPU busy while other threads read and write chunks:

* raw uint8 tiles are staged in pinned (page-locked) host memory, one buffer per calling thread,
  and copied to the GPU with non-blocking copies on a *copy stream*, outside the engine's lock;
* normalisation (and the cast to fp16/bf16 under ``torch.autocast``) happens on the GPU, so the
  host sends 1 byte per pixel instead of 4;
* the network runs on a *compute stream* under the lock: while one thread computes, another
  thread's tiles are already on their way, so copies and compute overlap;
* on CUDA out-of-memory the engine halves its batch limit, warns once, and carries on.

``precision='fp32'`` on CUDA means IEEE fp32 convolutions (TF32 off), so CUDA and CPU agree to
~1e-5; use ``bf16`` or ``fp16`` for speed. On the CPU, fp32 runs exactly as before, ``bf16`` runs
under CPU autocast, and ``fp16`` is refused (emulated: ~8x slower than fp32 on the CPUs we tried).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import numpy as np
import torch

from slideseg.engines.base import Engine, check_precision, normalisation, to_device_dtype
from slideseg.errors import ConfigError
from slideseg.model.config import UNetConfig

log = logging.getLogger("slideseg.engines")

_AUTOCAST = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}


class TorchModel(Protocol):
    """What the engine needs of a model: a module, its configuration, a hash and metadata.
    :class:`~slideseg.model.files.LoadedModel` is one; so is a bring-your-own TorchScript model."""

    @property
    def net(self) -> torch.nn.Module: ...

    @property
    def config(self) -> UNetConfig: ...

    @property
    def weights_sha256(self) -> str: ...

    @property
    def metadata(self) -> Mapping[str, Any]: ...


def resolve_device(device: str) -> torch.device:
    """'auto' → CUDA when available, else CPU; 'cuda' without a GPU is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for but torch sees no CUDA device; use --device cpu.")
    try:
        return torch.device(device)
    except RuntimeError as exc:
        raise ConfigError(f"unknown device {device!r}: expected auto, cpu or cuda[:N]") from exc


def run_halving_on_oom(batch: np.ndarray, run: Callable[[np.ndarray], np.ndarray], limit: int,
                       is_oom: Callable[[BaseException], bool],
                       on_halve: Callable[[int, BaseException], None]) -> tuple[np.ndarray, int]:
    """Run ``run`` over ``batch`` in parts of at most ``limit`` tiles; when a part fails with an
    out-of-memory error, halve the limit and run that part again (down to one tile).

    Returns the concatenated results and the limit that worked, for the next call.
    """
    outs: list[np.ndarray] = []
    i = 0
    while i < len(batch):
        part = batch[i : i + limit]
        try:
            outs.append(run(part))
        except BaseException as exc:
            if not is_oom(exc) or len(part) == 1:
                raise
            limit = max(1, len(part) // 2)
            on_halve(limit, exc)
            continue
        i += len(part)
    return (outs[0] if len(outs) == 1 else np.concatenate(outs)), limit


class TorchEngine(Engine):
    """Runs a :class:`~slideseg.model.unet.UNet` (or any module with the same contract) with torch.

    Raw uint8/uint16 tiles go to the device as they are and are normalised there, so the host
    copies a quarter of the bytes a float32 batch would need.
    """

    name = "torch"

    def __init__(self, model: TorchModel, device: str = "auto", threads: int | None = None,
                 channels_last: bool = True, precision: str = "fp32", compile: bool = False) -> None:
        super().__init__(model.config, model.weights_sha256, model.metadata)
        self.device = resolve_device(device)
        self.precision = check_precision(precision)
        if self.device.type == "cpu" and precision == "fp16":
            raise ConfigError("--precision fp16 is emulated on the CPU (about 8x slower than fp32 here); "
                              "use --precision bf16 or fp32 on the CPU, fp16 on a CUDA GPU.")
        if threads is not None and self.device.type == "cpu":
            torch.set_num_threads(threads)
        self.channels_last = channels_last
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        net = model.net.to(self.device).eval()
        if channels_last:
            net = net.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        self.compiled = compile
        self.net: Callable[[torch.Tensor], torch.Tensor] = torch.compile(net, dynamic=False) if compile else net
        self._autocast = _AUTOCAST[self.precision]
        mean, std = normalisation(model.config)
        self._mean = torch.from_numpy(mean).to(self.device)
        self._std = torch.from_numpy(std).to(self.device)
        self._lock = threading.Lock()
        self._pad_to = 0  # compiled graphs are specialised to one batch size: pad short batches
        self.batch_limit: int | None = None  # lowered after a CUDA out-of-memory error
        if self.device.type == "cuda":
            self._init_cuda()

    # ---------------------------------------------------------------------------------- CPU

    def infer(self, batch: np.ndarray) -> np.ndarray:
        self.check_batch(batch)
        batch = to_device_dtype(batch)  # uint8 stays uint8: normalised on the device
        if self.device.type == "cuda":
            return self._infer_cuda(batch)
        with self._lock, torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(batch)).to(self.device, non_blocking=True)
            x = ((x.float() - self._mean) / self._std).contiguous(memory_format=self.memory_format)
            return self._forward(x).cpu().numpy()  # (N, K, t, t)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (N, K, t, t) float32 of a normalised batch, under autocast when asked."""
        n = x.shape[0]
        if self.compiled:
            self._pad_to = max(self._pad_to, n)
            if n < self._pad_to:
                x = torch.cat([x, x.new_zeros((self._pad_to - n, *x.shape[1:]))]).contiguous(
                    memory_format=self.memory_format)
        if self._autocast is None:
            logits = self.net(x)
        else:
            with torch.autocast(self.device.type, dtype=self._autocast):
                logits = self.net(x)
        return logits[:n].float()

    # --------------------------------------------------------------------------------- CUDA

    def _init_cuda(self) -> None:
        torch.backends.cudnn.benchmark = True  # fixed tile shapes: pick the fastest kernels once
        if self.precision == "fp32":  # fp32 means fp32: no TF32 convolutions (see the module doc)
            conv = getattr(torch.backends.cudnn, "conv", None)
            if conv is not None and hasattr(conv, "fp32_precision"):
                conv.fp32_precision = "ieee"
            else:
                torch.backends.cudnn.allow_tf32 = False
        self._copy_stream = torch.cuda.Stream(self.device)
        self._compute_stream = torch.cuda.Stream(self.device)
        self._local = threading.local()

    def _pinned(self, slot: str, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        """This thread's pinned host buffer ``slot`` for ``shape``/``dtype`` (reused across calls)."""
        buffers: dict[tuple[str, tuple[int, ...], torch.dtype], torch.Tensor] = self._local.__dict__.setdefault(
            "buffers", {})
        key = (slot, shape, dtype)
        if key not in buffers:
            buffers[key] = torch.empty(shape, dtype=dtype, pin_memory=True)
        return buffers[key]

    def _infer_cuda(self, batch: np.ndarray) -> np.ndarray:
        limit = self.batch_limit or len(batch)
        logits, limit = run_halving_on_oom(batch, self._run_cuda, limit, _is_cuda_oom, self._on_oom)
        return logits

    def _on_oom(self, limit: int, exc: BaseException) -> None:
        self.batch_limit = limit
        torch.cuda.empty_cache()
        log.warning("CUDA ran out of memory (%s); continuing with at most %d tiles per batch",
                    str(exc).splitlines()[0][:120], limit)

    def _run_cuda(self, part: np.ndarray) -> np.ndarray:
        """One part: host → pinned → GPU on the copy stream (no lock), then compute under the lock."""
        src = torch.from_numpy(np.ascontiguousarray(part))
        staged = self._pinned("in", tuple(src.shape), src.dtype)
        staged.copy_(src)
        with torch.cuda.stream(self._copy_stream):
            x_raw = staged.to(self.device, non_blocking=True)  # (N, C, T, T) uint8/int32/float32
            uploaded = torch.cuda.Event()
            uploaded.record(self._copy_stream)
        with self._lock:
            stream = self._compute_stream
            stream.wait_event(uploaded)
            with torch.cuda.stream(stream), torch.inference_mode():
                x_raw.record_stream(stream)
                x = ((x_raw.float() - self._mean) / self._std).contiguous(memory_format=self.memory_format)
                logits = self._forward(x)  # (N, K, t, t) float32
                out = self._pinned("out", tuple(logits.shape), torch.float32)
                out.copy_(logits, non_blocking=True)
                done = torch.cuda.Event()
                done.record(stream)
        done.synchronize()  # outside the lock: the next thread's compute is already queued
        return out.numpy().copy()

    def details(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "device": str(self.device), "torch": torch.__version__, "precision": self.precision,
            "compile": self.compiled, "channels_last": self.channels_last,
        }
        if self.device.type == "cpu":
            d["threads"] = torch.get_num_threads()
        else:
            d["gpu"] = torch.cuda.get_device_name(self.device)
            if self.batch_limit is not None:
                d["batch_limit_after_oom"] = self.batch_limit
        return d


def _is_cuda_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.OutOfMemoryError) or "CUDA out of memory" in str(exc)
