"""The engine interface: a network behind ``infer(batch) -> logits`` plus its tile geometry.

Every engine (PyTorch, ONNX Runtime, TensorRT) takes a batch of raw tiles exactly as read from
the slide and returns float32 class logits; normalisation happens inside, where the engine can do
it on its device. One contract test (``tests/test_engines.py``) runs against every engine.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np

from slideseg.errors import ConfigError
from slideseg.geometry import Geometry
from slideseg.model import UNetConfig


class Engine(ABC):
    """A U-Net ready to run. Subclasses implement :meth:`infer`; calls are thread-safe."""

    name: ClassVar[str]

    def __init__(self, config: UNetConfig, weights_sha256: str, metadata: Mapping[str, Any] | None = None) -> None:
        self.config = config
        self.weights_sha256 = weights_sha256
        self.metadata: Mapping[str, Any] = dict(metadata or {})

    @property
    def geometry(self) -> Geometry:
        return self.config.geometry

    @abstractmethod
    def infer(self, batch: np.ndarray) -> np.ndarray:
        """Class logits for a batch of raw tiles.

        Parameters
        ----------
        batch : (N, C, T, T) uint8, uint16 or float32, the slide's pixel values (not normalised).

        Returns
        -------
        (N, K, t, t) float32 logits, ``t = geometry.output_size(T)``.
        """

    def describe(self) -> dict[str, Any]:
        """What ran, for logs and output metadata."""
        return {"engine": self.name}

    def check_batch(self, batch: np.ndarray) -> None:
        """Raise ConfigError unless ``batch`` is (N, C, T, T) with this model's channels and a valid T."""
        if batch.ndim != 4 or batch.shape[1] != self.config.in_channels or batch.shape[2] != batch.shape[3]:
            raise ConfigError(
                f"expected a batch of shape (N, {self.config.in_channels}, T, T), got {batch.shape}"
            )
        self.geometry.output_size(batch.shape[2])


def normalisation(config: UNetConfig) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (mean, std) as float32 arrays of shape (1, C, 1, 1)."""
    c = config.in_channels
    mean = np.broadcast_to(np.asarray(config.norm_mean, np.float32), (c,)).reshape(1, c, 1, 1)
    std = np.broadcast_to(np.asarray(config.norm_std, np.float32), (c,)).reshape(1, c, 1, 1)
    return mean.copy(), std.copy()
