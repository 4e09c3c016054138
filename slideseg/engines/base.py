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

from slideseg.errors import ConfigError, ModelFileError
from slideseg.model.config import UNetConfig
from slideseg.plan.geometry import Geometry

PRECISIONS = ("fp32", "fp16", "bf16")
_DEVICE_FRIENDLY = (np.uint8, np.int8, np.int16, np.int32, np.float16, np.float32)


class Engine(ABC):
    """A U-Net ready to run. Subclasses implement :meth:`infer`; calls are thread-safe."""

    name: ClassVar[str]

    def __init__(self, config: UNetConfig, weights_sha256: str, metadata: Mapping[str, Any] | None = None) -> None:
        self.config = config
        self.weights_sha256 = weights_sha256
        self.metadata: Mapping[str, Any] = dict(metadata or {})
        self.reason: str | None = None
        """Why this engine runs (set by ``--engine auto``); shown by :meth:`describe`."""
        self.fixed_tile: int | None = None
        """The only tile edge this engine accepts (an ONNX file exported for one size), or None."""

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

    def details(self) -> dict[str, Any]:
        """Engine-specific facts for :meth:`describe` (device, versions, precision...)."""
        return {}

    def describe(self) -> dict[str, Any]:
        """What ran and why, for logs and output metadata."""
        d = {"engine": self.name, **self.details()}
        if self.reason:
            d["reason"] = self.reason
        return d

    def check_batch(self, batch: np.ndarray) -> None:
        """Raise ConfigError unless ``batch`` is (N, C, T, T) with this model's channels and a valid T."""
        if batch.ndim != 4 or batch.shape[1] != self.config.in_channels or batch.shape[2] != batch.shape[3]:
            raise ConfigError(
                f"expected a batch of shape (N, {self.config.in_channels}, T, T), got {batch.shape}"
            )
        if batch.dtype.kind not in "uif":
            raise ConfigError(f"expected a batch of integer or float pixels, got {batch.dtype}")
        self.geometry.output_size(batch.shape[2])
        if self.fixed_tile is not None and batch.shape[2] != self.fixed_tile:
            raise ConfigError(f"this {self.name} engine's model takes {self.fixed_tile} px tiles only, got "
                              f"{batch.shape[2]}; pass --tile {self.fixed_tile} (or export the model for "
                              f"{batch.shape[2]} px).")

    def check_logits(self, batch: np.ndarray, logits: np.ndarray) -> np.ndarray:
        """Return ``logits`` if their shape is what the geometry promises, else raise ModelFileError
        (a bring-your-own model whose sidecar describes another geometry)."""
        n, _, t, _ = batch.shape
        want = (n, self.config.classes, self.geometry.output_size(t), self.geometry.output_size(t))
        if logits.shape != want:
            raise ModelFileError(
                f"the model returned logits of shape {logits.shape} for a {tuple(batch.shape)} batch, but its "
                f"configuration ({self.config.padding} padding, depth {self.config.depth}, "
                f"{self.config.classes} classes) promises {want}; fix the sidecar JSON."
            )
        return logits


def normalisation(config: UNetConfig) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (mean, std) as float32 arrays of shape (1, C, 1, 1)."""
    c = config.in_channels
    mean = np.broadcast_to(np.asarray(config.norm_mean, np.float32), (c,)).reshape(1, c, 1, 1)
    std = np.broadcast_to(np.asarray(config.norm_std, np.float32), (c,)).reshape(1, c, 1, 1)
    return mean.copy(), std.copy()


def to_device_dtype(batch: np.ndarray) -> np.ndarray:
    """``batch`` in a dtype torch copies to a device as is: uint8 stays uint8 (a quarter of the bytes of
    float32); uint16 becomes int32 (torch's uint16 support is limited); uint32/int64/float64 become float32.

    >>> to_device_dtype(np.zeros(2, np.uint16)).dtype, to_device_dtype(np.zeros(2, np.uint8)).dtype
    (dtype('int32'), dtype('uint8'))
    """
    if batch.dtype.type in _DEVICE_FRIENDLY:
        return batch
    return batch.astype(np.int32 if batch.dtype == np.uint16 else np.float32)


def check_precision(precision: str) -> str:
    """Return ``precision`` if it is one of fp32, fp16, bf16, else raise ConfigError."""
    if precision not in PRECISIONS:
        raise ConfigError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return precision


def split_batches(batch: np.ndarray, limit: int) -> list[np.ndarray]:
    """``batch`` cut into consecutive parts of at most ``limit`` tiles.

    >>> [len(p) for p in split_batches(np.zeros((5, 1, 4, 4)), 2)]
    [2, 2, 1]
    """
    return [batch[i : i + limit] for i in range(0, len(batch), max(1, limit))]
