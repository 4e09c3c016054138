"""The engine interface: a network behind ``infer(batch) -> logits`` plus its tile geometry.

Every engine (PyTorch, ONNX Runtime, TensorRT) takes a batch of raw tiles exactly as read from
the slide and returns float32 class logits; normalisation happens inside, where the engine can do
it on its device. One contract test (``tests/test_engines_contract.py``) runs against every engine.

A model whose pre-processing is more than one linear step (a bioimage.io package's chain, or
statistics of the slide) runs behind :class:`Preprocessed`, which applies the steps in numpy
(:mod:`slideseg.io.normalise`) and hands the result to the engine. Steps that need statistics
are bound to one slide's constants with :meth:`Preprocessed.bind`: every tile shares them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Literal, get_args

import numpy as np

from slideseg.errors import ConfigError, ModelFileError
from slideseg.io.normalise import Op, apply, describe_ops, needs_statistics, resolve
from slideseg.model.config import PRECISIONS, Precision, UNetConfig, check_precision
from slideseg.plan.geometry import Geometry

EngineName = Literal["auto", "torch", "onnxruntime", "tensorrt"]
"""An engine to run a model with; 'auto' picks the best available (:mod:`slideseg.engines.selection`)."""
ENGINE_NAMES: tuple[EngineName, ...] = get_args(EngineName)
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
        self.min_tile: int | None = None
        """The smallest tile edge the model accepts beyond its geometry (a package's size rule), or None."""
        self.preprocessing: tuple[Op, ...] = ()
        """Steps applied in numpy before the engine's own normalisation (see :class:`Preprocessed`)."""

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
        """Raise ConfigError unless ``batch`` is (N, C, H, W) with this model's channels and valid H and W
        (square tiles from ``predict``; a package's test tensors may be rectangular)."""
        if batch.ndim != 4 or batch.shape[1] != self.config.in_channels:
            raise ConfigError(
                f"expected a batch of shape (N, {self.config.in_channels}, T, T), got {batch.shape}"
            )
        if batch.dtype.kind not in "uif":
            raise ConfigError(f"expected a batch of integer or float pixels, got {batch.dtype}")
        for edge in sorted({batch.shape[2], batch.shape[3]}):
            self.geometry.output_size(edge)
            if self.fixed_tile is not None and edge != self.fixed_tile:
                raise ConfigError(f"this {self.name} engine's model takes {self.fixed_tile} px tiles only, got "
                                  f"{edge}; pass --tile {self.fixed_tile} (or export the model for {edge} px).")
            if self.min_tile is not None and edge < self.min_tile:
                raise ConfigError(f"this model takes tiles of at least {self.min_tile} px, got {edge}; pass --tile "
                                  f"{self.min_tile} or larger.")

    def check_logits(self, batch: np.ndarray, logits: np.ndarray) -> np.ndarray:
        """Return ``logits`` if their shape is what the geometry promises, else raise ModelFileError
        (a bring-your-own model whose sidecar describes another geometry)."""
        n, _, h, w = batch.shape
        want = (n, self.config.classes, self.geometry.output_size(h), self.geometry.output_size(w))
        if logits.shape != want:
            raise ModelFileError(
                f"the model returned logits of shape {logits.shape} for a {tuple(batch.shape)} batch, but its "
                f"configuration ({self.config.padding} padding, depth {self.config.depth}, "
                f"{self.config.classes} classes) promises {want}; fix the sidecar JSON."
            )
        return logits


class Preprocessed(Engine):
    """An engine behind pre-processing steps applied in numpy.

    ``ops`` turn raw pixels into what the network takes; the engine's own normalisation (its
    config's ``norm_mean``/``norm_std``, identity for packages) is undone on the way in, so the
    network sees exactly ``ops(x)``. Steps that need statistics refuse to run until :meth:`bind`
    gives them one slide's constants.
    """

    name = "preprocessed"

    def __init__(self, inner: Engine, ops: tuple[Op, ...]) -> None:
        super().__init__(inner.config, inner.weights_sha256, inner.metadata)
        self.inner = inner
        self.preprocessing = tuple(ops)
        self.fixed_tile, self.min_tile = inner.fixed_tile, inner.min_tile
        self._mean, self._std = normalisation(inner.config)  # the inner engine's own, undone in infer

    @property
    def needs_statistics(self) -> bool:
        return needs_statistics(self.preprocessing)

    def bind(self, ops: Sequence[Op]) -> Preprocessed:
        """This engine with fixed steps ``ops`` (a slide's resolved pre-processing) in place of its own;
        the network is shared."""
        return Preprocessed(self.inner, tuple(resolve(ops, None)))

    def infer(self, batch: np.ndarray) -> np.ndarray:
        self.check_batch(batch)
        x = apply(resolve(self.preprocessing, None), batch.astype(np.float32))  # (N, C, H, W)
        return self.inner.infer(x * self._std + self._mean)

    def describe(self) -> dict[str, Any]:
        return {**self.inner.describe(), "preprocessing": describe_ops(self.preprocessing)}


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


def split_batches(batch: np.ndarray, limit: int) -> list[np.ndarray]:
    """``batch`` cut into consecutive parts of at most ``limit`` tiles.

    >>> [len(p) for p in split_batches(np.zeros((5, 1, 4, 4)), 2)]
    [2, 2, 1]
    """
    return [batch[i : i + limit] for i in range(0, len(batch), max(1, limit))]


__all__ = ["ENGINE_NAMES", "PRECISIONS", "Engine", "EngineName", "Precision", "Preprocessed", "check_precision",
           "normalisation", "split_batches", "to_device_dtype"]
