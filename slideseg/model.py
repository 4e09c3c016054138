"""The U-Net of Ronneberger et al. (2015), its configuration and its file format.

One definition serves ``predict`` and ``train``. The tile geometry lives in
:mod:`slideseg.geometry` (pure, no torch); :attr:`UNetConfig.geometry` ties the two together.
Model files are ``.safetensors`` with the configuration in the metadata: loading never unpickles.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from slideseg.errors import ConfigError, ModelFileError
from slideseg.geometry import Geometry, Padding

MirrorMode = Literal["reflect", "symmetric"]

FORMAT_VERSION = "1"
_META_CONFIG = "slideseg.model_config"
_META_FORMAT = "slideseg.format_version"
_META_EXTRA = "slideseg.metadata"

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


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class UNetConfig:
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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> UNetConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ConfigError(f"Unknown UNetConfig fields {sorted(unknown)}; known are {sorted(known)}.")
        kw = dict(d)
        for key in ("norm_mean", "norm_std", "class_names"):
            if key in kw:
                kw[key] = tuple(kw[key])
        if "class_colors" in kw:
            kw["class_colors"] = tuple(tuple(c) for c in kw["class_colors"])
        return cls(**kw)


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


# --------------------------------------------------------------------------------------------
# Network
# --------------------------------------------------------------------------------------------


def build_unet(cfg: UNetConfig, seed: int | None = None) -> UNet:
    """A He-initialised U-Net for ``cfg`` (weights drawn from ``seed`` when given)."""
    if seed is None:
        return UNet(cfg)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return UNet(cfg)


def _double_conv(c_in: int, c_out: int, pad: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=pad), nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=pad), nn.ReLU(inplace=True),
    )


class UNet(nn.Module):
    """Encoder of ``depth`` poolings, decoder of as many 2x2 up-convolutions, skip connections
    centre-cropped to the decoder's size, and a 1x1 convolution to class logits."""

    def __init__(self, cfg: UNetConfig) -> None:
        super().__init__()
        self.config = cfg
        pad = 1 if cfg.padding == "same" else 0
        chans = [cfg.width * 2**level for level in range(cfg.depth + 1)]
        self.down = nn.ModuleList()
        c_prev = cfg.in_channels
        for c in chans[:-1]:
            self.down.append(_double_conv(c_prev, c, pad))
            c_prev = c
        self.bottom = _double_conv(chans[-2], chans[-1], pad)
        self.drop = nn.Dropout2d(cfg.dropout)
        self.up = nn.ModuleList(nn.ConvTranspose2d(2 * c, c, 2, stride=2) for c in reversed(chans[:-1]))
        self.up_conv = nn.ModuleList(_double_conv(2 * c, c, pad) for c in reversed(chans[:-1]))
        self.head = nn.Conv2d(cfg.width, cfg.classes, 1)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """He-normal init, std = sqrt(2 / N), N = inputs feeding one output unit; zero biases."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                n = m.in_channels * m.kernel_size[0] * m.kernel_size[1]
            elif isinstance(m, nn.ConvTranspose2d):
                n = m.in_channels  # stride == kernel: each output pixel sees one input pixel
            else:
                continue
            nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / n))
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, C, H, W) -> (N, K, h, w)
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
            x = nn.functional.max_pool2d(x, 2)
        x = self.drop(self.bottom(x))
        for up, conv, skip in zip(self.up, self.up_conv, reversed(skips), strict=True):
            x = up(x)
            dy = (skip.shape[-2] - x.shape[-2]) // 2
            dx = (skip.shape[-1] - x.shape[-1]) // 2
            skip = skip[..., dy : dy + x.shape[-2], dx : dx + x.shape[-1]]
            x = conv(torch.cat([skip, x], dim=1))
        return self.head(x)


# --------------------------------------------------------------------------------------------
# Model files (.safetensors, config in the metadata; never unpickled)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LoadedModel:
    """A network with its configuration, weights hash and free-form metadata (e.g. training)."""

    net: UNet
    config: UNetConfig
    weights_sha256: str
    metadata: Mapping[str, Any] = field(default_factory=dict)
    path: Path | None = None


def weights_sha256(state: Mapping[str, torch.Tensor]) -> str:
    """Hash of the weights alone (names, dtypes, shapes, bytes), independent of file metadata."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def save_model(path: str | Path, net: nn.Module, cfg: UNetConfig,
               metadata: Mapping[str, Any] | None = None) -> str:
    """Write ``net`` to a ``.safetensors`` file with ``cfg`` in its metadata; return the hash."""
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    meta = {
        _META_FORMAT: FORMAT_VERSION,
        _META_CONFIG: json.dumps(cfg.to_dict()),
        _META_EXTRA: json.dumps(dict(metadata or {})),
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(state, str(tmp), metadata=meta)
    tmp.replace(path)
    return weights_sha256(state)


def read_model_config(path: str | os.PathLike[str]) -> tuple[UNetConfig, dict[str, Any]]:
    """The configuration and metadata of a model file, without loading its weights."""
    from safetensors import safe_open

    path = _existing_model_path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as exc:
        raise ModelFileError(
            f"{path} is not a readable .safetensors model file ({exc}); "
            "create one with `slideseg new-model -o FILE`."
        ) from exc
    if _META_CONFIG not in meta:
        raise ModelFileError(
            f"{path} has no slideseg model config in its metadata (found keys {sorted(meta)}); "
            "it was not written by slideseg: create one with `slideseg new-model`."
        )
    try:
        cfg = UNetConfig.from_dict(json.loads(meta[_META_CONFIG]))
        extra = json.loads(meta.get(_META_EXTRA, "{}"))
    except (json.JSONDecodeError, TypeError) as exc:
        raise ModelFileError(f"{path}: the model config in the metadata is malformed ({exc}).") from exc
    return cfg, extra


def load_model(path: str | os.PathLike[str]) -> LoadedModel:
    """Load a model file into a U-Net in eval mode (CPU). Raises ModelFileError on any mismatch."""
    from safetensors.torch import load_file

    cfg, extra = read_model_config(path)
    state = load_file(str(path))
    net = build_unet(cfg)
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[1:2] or [str(exc)]
        raise ModelFileError(
            f"{path}: weights do not fit the config in its metadata ({first[0].strip()}); "
            "the file is damaged or was edited: recreate it with `slideseg new-model` or `train`."
        ) from exc
    net.eval()
    return LoadedModel(net, cfg, weights_sha256(state), extra, Path(path))


def _existing_model_path(path: str | os.PathLike[str]) -> Path:
    p = Path(path)
    if not p.is_file():
        raise ModelFileError(
            f"Model file {p} does not exist; create one with `slideseg new-model -o {p}` "
            "or pass --model with an existing .safetensors file."
        )
    return p
