"""The configuration of a U-Net: architecture and input conventions (torch-free).

Saved in every model file, ONNX export and output; :attr:`UNetConfig.geometry` ties it to the
pure tile geometry of :mod:`slideseg.plan.geometry`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

from slideseg.config import Config
from slideseg.errors import ConfigError, ModelFileError
from slideseg.plan.geometry import Geometry, Padding
from slideseg.plan.tiles import MirrorMode

Precision = Literal["fp32", "fp16", "bf16"]
"""Arithmetic of a network: float32, or half precision (float16, bfloat16) on GPUs."""
PRECISIONS: tuple[Precision, ...] = get_args(Precision)


def check_precision(precision: str) -> Precision:
    """Return ``precision`` if it is one of :data:`PRECISIONS`, else raise ConfigError.

    >>> check_precision("bf16")
    'bf16'
    """
    for p in PRECISIONS:
        if precision == p:
            return p
    raise ConfigError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")


_PALETTE: tuple[tuple[int, int, int, int], ...] = (
    (0, 0, 0, 0),
    (230, 25, 75, 255),
    (60, 180, 75, 255),
    (0, 130, 200, 255),
    (245, 130, 48, 255),
    (145, 30, 180, 255),
    (70, 240, 240, 255),
    (240, 50, 230, 255),
)


@dataclass(frozen=True)
class UNetConfig(Config):
    """Architecture and input conventions of a U-Net; saved in every model file and output."""

    depth: int = 4
    """Number of 2x2 poolings (levels below the top)."""
    width: int = 64
    """Channels of the first level; doubled at each level down."""
    in_channels: int = 3
    """Channels of the input image (3 for RGB, 1 for greyscale, N for fluorescence)."""
    classes: int = 2
    """Output classes, background (0) included."""
    padding: Padding = "valid"
    """'valid' convolutions (exact tiling, the paper's choice) or 'same' (approximate tiling)."""
    halo: int = 0
    """For 'same' padding: context per side added and cropped when tiling (multiple of 2**depth)."""
    dropout: float = 0.5
    """Dropout probability at the bottom of the U (training only)."""
    mirror: MirrorMode = "reflect"
    """How pixels beyond the slide are made: numpy 'reflect' (edge not repeated) or 'symmetric'."""
    mpp: float | None = 0.5
    """Pixel size in micrometres the model expects (None: any)."""
    norm_mean: tuple[float, ...] = (127.5,)
    """Per-channel mean in raw input units (one value is broadcast); x' = (x - mean) / std."""
    norm_std: tuple[float, ...] = (127.5,)
    """Per-channel standard deviation in raw input units (one value is broadcast)."""
    class_names: tuple[str, ...] = ()
    """Names of the classes (default: background, class 1, ...)."""
    class_colors: tuple[tuple[int, int, int, int], ...] = ()
    """RGBA colour of each class (default: a fixed palette, background transparent)."""

    def __post_init__(self) -> None:
        _check(1 <= self.depth <= 7, f"depth must be in 1..7, got {self.depth}")
        _check(self.width >= 1, f"width must be >= 1, got {self.width}")
        _check(self.in_channels >= 1, f"in_channels must be >= 1, got {self.in_channels}")
        _check(2 <= self.classes <= 255, f"classes must be in 2..255, got {self.classes}")
        _check(self.padding in ("valid", "same"), f"padding must be valid|same, got {self.padding!r}")
        _check(self.mirror in ("reflect", "symmetric"),
               f"mirror must be reflect|symmetric, got {self.mirror!r}")
        _check(0.0 <= self.dropout < 1.0, f"dropout must be in [0, 1), got {self.dropout}")
        _check(self.mpp is None or self.mpp > 0, f"mpp must be > 0, got {self.mpp}")
        if self.padding == "valid":
            _check(self.halo == 0, f"halo applies to 'same' padding only, got halo={self.halo}")
        else:
            a = 2**self.depth
            _check(self.halo >= 0 and self.halo % a == 0,
                   f"halo must be a multiple of {a} for depth {self.depth}, got {self.halo}")
        for name in ("norm_mean", "norm_std"):
            v = getattr(self, name)
            object.__setattr__(self, name, tuple(float(x) for x in v))
            _check(len(getattr(self, name)) in (1, self.in_channels),
                   f"{name} needs 1 or {self.in_channels} values, got {len(v)}")
        _check(all(s > 0 for s in self.norm_std), f"norm_std must be > 0, got {self.norm_std}")
        names = tuple(self.class_names) or ("background", *(f"class {k}" for k in range(1, self.classes)))
        _check(len(names) == self.classes, f"class_names needs {self.classes} names, got {len(names)}")
        colors = tuple(tuple(int(c) for c in rgba) for rgba in self.class_colors) or tuple(
            _PALETTE[k % len(_PALETTE)] for k in range(self.classes)
        )
        _check(len(colors) == self.classes and all(len(c) == 4 for c in colors),
               f"class_colors needs {self.classes} RGBA tuples, got {self.class_colors}")
        object.__setattr__(self, "class_names", names)
        object.__setattr__(self, "class_colors", colors)

    @property
    def geometry(self) -> Geometry:
        return Geometry(self.depth, self.padding, self.halo)


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


# --- reading the config of a model file (no weights, no torch) ----------------------------


FORMAT_VERSION = "1"


META_CONFIG = "slideseg.model_config"


META_FORMAT = "slideseg.format_version"


META_EXTRA = "slideseg.metadata"


def read_model_config(path: str | os.PathLike[str]) -> tuple[UNetConfig, dict[str, Any]]:
    """The configuration and metadata of a model file, without loading its weights."""
    from safetensors import safe_open

    path = _existing_model_path(path)
    try:
        with safe_open(str(path), framework="numpy") as f:
            meta = f.metadata() or {}
    except Exception as exc:
        raise ModelFileError(
            f"{path} is not a readable .safetensors model file ({exc}); "
            "create one with `slideseg new-model -o FILE`."
        ) from exc
    if META_CONFIG not in meta:
        raise ModelFileError(
            f"{path} has no slideseg model config in its metadata (found keys {sorted(meta)}); "
            "it was not written by slideseg: create one with `slideseg new-model`."
        )
    try:
        cfg = UNetConfig.from_dict(json.loads(meta[META_CONFIG]))
        extra = json.loads(meta.get(META_EXTRA, "{}"))
    except (json.JSONDecodeError, TypeError) as exc:
        raise ModelFileError(f"{path}: the model config in the metadata is malformed ({exc}).") from exc
    return cfg, extra


def _existing_model_path(path: str | os.PathLike[str]) -> Path:
    p = Path(path)
    if not p.is_file():
        raise ModelFileError(
            f"Model file {p} does not exist; create one with `slideseg new-model -o {p}` "
            "or pass --model with an existing .safetensors file."
        )
    return p
