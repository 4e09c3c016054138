"""A bioimage.io model package as slideseg runs it: what :func:`slideseg.model.bioimageio.read_package`
returns (torch-free), and how the package's files and test tensors are read back."""

from __future__ import annotations

import hashlib
import io
import os
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from slideseg.errors import ModelFileError
from slideseg.io.normalise import Op, Standardise, describe_ops, needs_statistics, op_to_dict
from slideseg.model.config import UNetConfig

__all__ = ["READ_FORMATS", "YAML_NAMES", "BioimageioModel", "OutputRule", "PackageFile", "is_package", "to_nchw",
           "zip_name"]

YAML_NAMES = ("rdf.yaml", "bioimageio.yaml")
READ_FORMATS = ("torchscript", "onnx")
"""Weights formats slideseg runs: TorchScript (torch engine) and ONNX (ONNX Runtime, TensorRT)."""


def is_package(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` names a bioimage.io package: a ``.zip``, or an ``rdf.yaml`` / ``bioimageio.yaml``.

    >>> is_package("unet.zip"), is_package("x/rdf.yaml"), is_package("m.bioimageio.yaml"), is_package("m.onnx")
    (True, True, True, False)
    """
    p = Path(path)
    return p.suffix.lower() == ".zip" or p.name in YAML_NAMES or p.name.endswith(".bioimageio.yaml")


@dataclass(frozen=True)
class OutputRule:
    """How the network's raw output becomes class logits ``(N, K, h, w)``.

    Two or more output channels are the classes (their softmax is the class probabilities: exact
    for logits and softmax outputs; sigmoid outputs keep their class order). One channel is the
    foreground against a constant background logit, so class 1 is where the package's own
    threshold says foreground: ``background = logit(t)`` after a sigmoid, ``t`` otherwise.
    """

    channels: int
    """Channels of the raw output."""
    background: float | None = None
    """One-channel outputs: the logit of the background class; None for two or more channels."""
    postprocessing: tuple[Op, ...] = ()
    """The package's own post-processing of the raw output (what its test output holds)."""

    def logits(self, raw: np.ndarray) -> np.ndarray:
        """Class logits (N, K, h, w) from the raw output (N, channels, h, w).

        >>> OutputRule(1, 0.0).logits(np.full((1, 1, 1, 2), 3.0, np.float32)).tolist()
        [[[[0.0, 0.0]], [[3.0, 3.0]]]]
        """
        if self.background is None:
            return raw
        return np.concatenate([np.full_like(raw, self.background), raw], axis=1)

    def raw(self, logits: np.ndarray) -> np.ndarray:
        """The raw output (N, channels, h, w) back from :meth:`logits`."""
        return logits if self.background is None else logits[:, 1:]


@dataclass(frozen=True)
class PackageFile:
    """A file inside the package, and its declared SHA-256 (None: not declared)."""

    name: str
    sha256: str | None = None


@dataclass(frozen=True)
class BioimageioModel:
    """A bioimage.io model package as slideseg runs it."""

    path: Path
    """The ``.zip``, or the ``rdf.yaml`` / ``bioimageio.yaml`` of an unpacked package."""
    name: str
    description: str
    format_version: str
    """The format the description is held in (0.5.x; 0.4 packages are converted)."""
    config: UNetConfig
    """Geometry, channels, classes, pixel size, padding mode; ``norm_mean``/``norm_std`` hold the
    pre-processing when it is one fixed linear step (then :attr:`preprocessing` is empty)."""
    preprocessing: tuple[Op, ...]
    """The pre-processing steps applied before the network (empty: :attr:`config`'s norm does it)."""
    input_axes: str
    """Letters of the input's axes in the package's order: b, c, y, x (e.g. 'bcyx')."""
    output_axes: str
    output: OutputRule
    weights: Mapping[str, PackageFile]
    """The readable weights by format ('torchscript', 'onnx')."""
    other_weights: tuple[str, ...] = ()
    """Weights formats present that slideseg does not run."""
    min_tile: int = 1
    fixed_tile: int | None = None
    batch: int | None = None
    """1 when the package fixes the batch size to one (or has no batch axis), else None (any)."""
    declared_halo: int = 0
    """The halo the package declares (``halo`` of its output's spatial axes)."""
    size_rule: str = ""
    test_input: PackageFile | None = None
    test_output: PackageFile | None = None
    tolerance: tuple[float, float, float] = (1e-3, 1e-3, 100.0)
    """(relative, absolute, mismatched elements per million) its test output must meet."""
    notes: tuple[str, ...] = ()
    metadata: Mapping[str, Any] = field(default_factory=dict)

    @property
    def root(self) -> Path:
        """Where relative file names resolve: the folder of an unpacked package."""
        return self.path if self.path.suffix.lower() == ".zip" else self.path.parent

    def read(self, item: PackageFile) -> bytes:
        """The bytes of a file of the package, checked against its declared SHA-256."""
        try:
            if self.path.suffix.lower() == ".zip":
                with zipfile.ZipFile(self.path) as z:
                    data = z.read(zip_name(z, item.name))
            else:
                data = (self.root / item.name).read_bytes()
        except (OSError, KeyError, zipfile.BadZipFile) as exc:
            raise ModelFileError(f"{self.path}: cannot read {item.name} from the package ({exc}); the package is "
                                 "incomplete: package it again with all its files.") from exc
        if item.sha256 is not None and hashlib.sha256(data).hexdigest() != item.sha256:
            raise ModelFileError(f"{self.path}: {item.name} does not match its SHA-256 in the description; the "
                                 "file was changed or damaged: get the package again.")
        return data

    def weights_sha256(self, fmt: str) -> str:
        """SHA-256 of the weights file of format ``fmt`` (declared, else computed)."""
        item = self.weights[fmt]
        return item.sha256 or hashlib.sha256(self.read(item)).hexdigest()

    def test_tensors(self) -> tuple[np.ndarray, np.ndarray]:
        """The package's test input as raw tiles (N, C, H, W) and its expected output as (N, channels, h, w)."""
        if self.test_input is None or self.test_output is None:
            raise ModelFileError(f"{self.path} has no test tensors (inputs[0].test_tensor and outputs[0].test_tensor).")
        x = to_nchw(self._npy(self.test_input), self.input_axes, "test input", self.path)
        y = to_nchw(self._npy(self.test_output), self.output_axes, "test output", self.path)
        return x, y

    def _npy(self, item: PackageFile) -> np.ndarray:
        try:
            return np.load(io.BytesIO(self.read(item)), allow_pickle=False)
        except ValueError as exc:
            raise ModelFileError(f"{self.path}: {item.name} is not a .npy array ({exc}).") from exc

    def describe(self) -> dict[str, Any]:
        """What was understood, as JSON-able data (``slideseg info``)."""
        cfg = self.config
        return {
            "name": self.name, "description": self.description, "format_version": self.format_version,
            "path": str(self.path), "input_axes": self.input_axes, "output_axes": self.output_axes,
            "size_rule": self.size_rule, "padding": cfg.padding, "depth": cfg.depth,
            "alignment": cfg.geometry.alignment,
            "declared_halo": self.declared_halo, "halo": cfg.halo if cfg.padding == "same" else None,
            "context": cfg.geometry.context, "min_tile": self.min_tile, "fixed_tile": self.fixed_tile,
            "valid_tiles": cfg.geometry.describe_valid(), "batch": self.batch, "in_channels": cfg.in_channels,
            "classes": list(cfg.class_names), "mpp": cfg.mpp, "mirror": cfg.mirror,
            "weights": sorted(self.weights), "other_weights": list(self.other_weights),
            "preprocessing": describe_ops(self.preprocessing) if self.preprocessing else
            describe_ops([Standardise(cfg.norm_mean, cfg.norm_std)]),
            "preprocessing_steps": [op_to_dict(op) for op in self.preprocessing],
            "slide_statistics": needs_statistics(self.preprocessing),
            "output": {"channels": self.output.channels, "background_logit": self.output.background,
                       "postprocessing": describe_ops(self.output.postprocessing)},
            "test_tensors": self.test_input is not None and self.test_output is not None,
            "tolerance": {"relative": self.tolerance[0], "absolute": self.tolerance[1],
                          "mismatched_per_million": self.tolerance[2]},
            "notes": list(self.notes), "config": cfg.to_dict(),
        }


def to_nchw(array: np.ndarray, axes: str, what: str, path: Path) -> np.ndarray:
    """``array`` in the package's axis order ``axes`` as (N, C, H, W).

    >>> to_nchw(np.zeros((5, 4, 3)), "yxc", "x", Path("m")).shape
    (1, 3, 5, 4)
    """
    if array.ndim != len(axes):
        raise ModelFileError(f"{path}: its {what} has {array.ndim} dimensions ({array.shape}) but its axes are "
                             f"{axes!r}; the test tensors do not fit the description.")
    full = array
    for letter in "bc":
        if letter not in axes:
            full, axes = full[None], letter + axes
    return np.ascontiguousarray(np.transpose(full, [axes.index(a) for a in "bcyx"]))


def zip_name(z: zipfile.ZipFile, name: str) -> str:
    """``name`` as stored in ``z``: at the top, or beside the description in a sub-folder."""
    names = z.namelist()
    if name in names:
        return name
    for yaml_name in names:
        if yaml_name.endswith(YAML_NAMES) and "/" in yaml_name:
            candidate = yaml_name.rsplit("/", 1)[0] + "/" + name
            if candidate in names:
                return candidate
    raise KeyError(name)
