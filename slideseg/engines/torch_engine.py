"""The PyTorch engine: CPU or CUDA, inference mode, channels-last memory layout."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import torch

from slideseg.engines.base import Engine, normalisation
from slideseg.errors import ConfigError
from slideseg.model import LoadedModel


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


class TorchEngine(Engine):
    """Runs a :class:`~slideseg.model.UNet` with torch.

    Raw uint8/uint16 tiles go to the device as they are and are normalised there, so the host
    copies a quarter of the bytes a float32 batch would need.
    """

    name = "torch"

    def __init__(self, model: LoadedModel, device: str = "auto", threads: int | None = None,
                 channels_last: bool = True) -> None:
        super().__init__(model.config, model.weights_sha256, model.metadata)
        self.device = resolve_device(device)
        if threads is not None and self.device.type == "cpu":
            torch.set_num_threads(threads)
        self.channels_last = channels_last
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.net = model.net.to(self.device).eval()
        if channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        mean, std = normalisation(model.config)
        self._mean = torch.from_numpy(mean).to(self.device)
        self._std = torch.from_numpy(std).to(self.device)
        self._lock = threading.Lock()

    def infer(self, batch: np.ndarray) -> np.ndarray:
        self.check_batch(batch)
        if batch.dtype == np.uint16:  # torch has limited uint16 support: widen on the host
            batch = batch.astype(np.int32)
        with self._lock, torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(batch)).to(self.device, non_blocking=True)
            x = ((x.float() - self._mean) / self._std).contiguous(memory_format=self.memory_format)
            logits = self.net(x)  # (N, K, t, t)
            return logits.float().cpu().numpy()

    def describe(self) -> dict[str, Any]:
        return {
            "engine": self.name, "device": str(self.device), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "channels_last": self.channels_last,
        }
