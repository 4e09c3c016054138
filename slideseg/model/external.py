"""Bring your own model: ONNX, TorchScript or ``torch.export`` files with a sidecar JSON.

The sidecar sits beside the model as ``MODEL.json`` or ``MODEL.onnx.json`` (``MODEL.pt2.json``...)
and gives what slideseg cannot read from a network: its tile geometry and its input conventions::

    {"padding": "same", "depth": 4, "halo": 32, "in_channels": 3, "classes": 3, "mpp": 0.5,
     "norm_mean": [127.5], "norm_std": [127.5], "class_names": ["background", "tumour", "stroma"]}

* ``padding``: ``valid`` (the network follows the valid U-Net geometry: inputs ``2^d k + ...``) or
  ``same`` (output size = input size; inputs must be multiples of ``2^depth``).
* ``depth`` (or ``alignment`` = 2^depth): the number of 2x poolings; tile origins are multiples
  of 2^depth so every tile sees the pooling grid in the same phase.
* ``halo`` (same padding): context per side that each tile reads and crops; a multiple of 2^depth.
  Pick it with ``slideseg plan --model MODEL --halo H``, which measures the seam error.
* ``norm_mean``/``norm_std``: the engine feeds ``(x - mean) / std``; set ``"normalised_in_model":
  true`` if the network takes raw pixel values.
* ``norm``: ``"slide"`` normalises each channel to zero mean and unit variance with statistics of the
  whole slide (computed once per slide by ``predict``), in place of ``norm_mean``/``norm_std``.
* Any other :class:`~slideseg.model.config.UNetConfig` field (``mirror``, ``class_colors``...).

bioimage.io packages (:mod:`slideseg.model.bioimageio`) with TorchScript weights are loaded here too
(:func:`load_package_torch`): the network is wrapped so that it takes ``(N, C, H, W)`` tiles and
returns class logits whatever the package's axis order.

ONNX files exported by ``slideseg export`` carry all of this inside and need no sidecar (one, if
present, overrides fields such as ``halo``). The shapes a model returns are checked against the
sidecar on every batch. Only load model files you trust: TorchScript and ``torch.export`` archives
contain code.
"""

from __future__ import annotations

import io
import json
import math
import os
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch

from slideseg.errors import ConfigError, ModelFileError
from slideseg.model.bioimageio import BioimageioModel
from slideseg.model.config import UNetConfig
from slideseg.model.files import LoadedModel, file_sha256

ONNX_SUFFIXES = (".onnx",)


EXPORT_SUFFIXES = (".pt2",)


TORCHSCRIPT_SUFFIXES = (".pt", ".pth", ".ts", ".torchscript", ".jit")


SUFFIXES = ONNX_SUFFIXES + EXPORT_SUFFIXES + TORCHSCRIPT_SUFFIXES


_EXTRA_KEYS = {"alignment", "normalised_in_model", "input", "output", "trained", "description", "norm"}


def is_external(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` names a bring-your-own model file (by its suffix)."""
    return Path(path).suffix.lower() in SUFFIXES


def sidecar_path(model_path: str | os.PathLike[str]) -> Path | None:
    """``MODEL.onnx.json`` or ``MODEL.json`` beside the model, whichever exists (in that order)."""
    p = Path(model_path)
    for candidate in (p.with_name(p.name + ".json"), p.with_suffix(".json")):
        if candidate.is_file():
            return candidate
    return None


def parse_sidecar(data: Mapping[str, Any], base: UNetConfig | None = None,
                  source: str = "sidecar") -> tuple[UNetConfig, dict[str, Any]]:
    """(model config, extras) from a sidecar's JSON object; ``base`` supplies fields it leaves out.

    >>> cfg, extra = parse_sidecar({"padding": "same", "alignment": 8, "halo": 16, "classes": 3})
    >>> cfg.depth, cfg.geometry.context, extra["normalised_in_model"]
    (3, 16, False)
    """
    known = {f.name for f in fields(UNetConfig)}
    unknown = set(data) - known - _EXTRA_KEYS
    if unknown:
        raise ModelFileError(f"{source}: unknown keys {sorted(unknown)}; known are "
                             f"{sorted(known | _EXTRA_KEYS)}.")
    d = {k: v for k, v in data.items() if k in known}
    if "alignment" in data:
        a = data["alignment"]
        if not isinstance(a, int) or a < 2 or a & (a - 1):
            raise ModelFileError(f"{source}: alignment must be a power of two >= 2 (2**depth), got {a!r}.")
        if "depth" in d and 2 ** int(d["depth"]) != a:
            raise ModelFileError(f"{source}: alignment {a} contradicts depth {d['depth']} (2**depth).")
        d["depth"] = int(math.log2(a))
    if base is None:
        missing = [k for k in ("padding", "depth", "classes") if k not in d]
        if missing:
            raise ModelFileError(f"{source} must give {', '.join(missing)} (and depth may be given as alignment); "
                                 "see docs/engines.md, 'Bring your own model'.")
        d.setdefault("dropout", 0.0)
    try:
        cfg = UNetConfig.from_dict({**(base.to_dict() if base else {}), **d})
    except ConfigError as exc:
        raise ModelFileError(f"{source}: {exc}") from exc
    norm = data.get("norm", "model")
    if norm not in ("model", "slide"):
        raise ModelFileError(f"{source}: norm must be 'model' (norm_mean/norm_std) or 'slide' (statistics of the "
                             f"whole slide), got {norm!r}.")
    extras = {"normalised_in_model": bool(data.get("normalised_in_model", False)),
              "input": data.get("input"), "output": data.get("output"), "trained": data.get("trained", True),
              "norm": norm}
    return cfg, extras


def read_sidecar(path: Path, base: UNetConfig | None = None) -> tuple[UNetConfig, dict[str, Any]]:
    """Read and parse a sidecar JSON file."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelFileError(f"{path} is not a readable JSON file ({exc}).") from exc
    if not isinstance(data, dict):
        raise ModelFileError(f"{path} must hold a JSON object, got {type(data).__name__}.")
    return parse_sidecar(data, base, source=str(path))


def _need_sidecar(model_path: Path) -> ModelFileError:
    return ModelFileError(
        f"{model_path} needs a sidecar JSON ({model_path.name}.json or {model_path.stem}.json beside it) that gives "
        'its geometry, e.g. {"padding": "same", "depth": 4, "halo": 32, "classes": 2, "in_channels": 3, '
        '"norm_mean": [127.5], "norm_std": [127.5]}; see docs/engines.md.'
    )


def load_torch_model(path: Path) -> LoadedModel:
    """Load a TorchScript (``.pt``, ``.ts``...) or ``torch.export`` (``.pt2``) model and its sidecar."""

    side = sidecar_path(path)
    if side is None:
        raise _need_sidecar(path)
    cfg, extras = read_sidecar(side)
    kind = "torch.export" if path.suffix.lower() in EXPORT_SUFFIXES else "torchscript"
    try:
        if kind == "torch.export":
            net: Any = _Exported(torch.export.load(str(path)).module())
        else:  # TorchScript is deprecated by PyTorch (2.13 warns on load); still read, as users have such files
            with _quiet_torchscript():
                net = torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:
        what = "torch.export archive (torch.export.save)" if kind == "torch.export" else \
            "TorchScript archive (torch.jit.save); other .pt files (pickles, state dicts) are not loaded"
        raise ModelFileError(f"{path} is not a {what}: {str(exc).splitlines()[0]}") from exc
    if extras["normalised_in_model"]:
        raise ModelFileError(f"{side}: normalised_in_model applies to ONNX files; a torch model is fed "
                             "(x - norm_mean) / norm_std: set norm_mean [0] and norm_std [1] for raw pixels.")
    metadata = {"external": {"format": kind, "path": str(path), "sidecar": str(side)}, "trained": extras["trained"],
                "norm": extras["norm"]}
    return LoadedModel(net, cfg, file_sha256(path), metadata, path)


class _Exported(torch.nn.Module):
    """A ``torch.export`` module, which refuses ``eval()``/``train()``: it is already frozen in the
    mode it was exported in, so those become no-ops here."""

    def __init__(self, module: Any) -> None:
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x)

    def train(self, mode: bool = True) -> _Exported:
        return self


@contextmanager
def _quiet_torchscript() -> Iterator[None]:
    """TorchScript is deprecated by PyTorch (2.13 warns on every use); slideseg still reads and writes
    it, as bioimage.io packages and users' files hold it."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", r"`torch\.jit\.\w+` is deprecated", DeprecationWarning)
        yield


def load_package_torch(model: BioimageioModel) -> LoadedModel:
    """The TorchScript weights of a bioimage.io package as a network of ``(N, C, H, W)`` tiles → logits."""
    data = model.read(model.weights["torchscript"])
    try:
        with _quiet_torchscript():
            module = torch.jit.load(io.BytesIO(data), map_location="cpu")
    except Exception as exc:
        raise ModelFileError(f"{model.path}: its TorchScript weights do not load "
                             f"({str(exc).splitlines()[0]}).") from exc
    net = PackageNet(module, model.input_axes, model.output_axes, model.output.background, model.batch == 1)
    metadata = {**model.metadata, "external": {"format": "bioimageio/torchscript", "path": str(model.path)},
                "trained": True}
    return LoadedModel(net.eval(), model.config, model.weights_sha256("torchscript"), metadata, model.path)


class PackageNet(torch.nn.Module):
    """A package's network behind slideseg's conventions: ``(N, C, H, W)`` in, in the package's axis
    order to the network, its output back to ``(N, K, h, w)`` class logits (a one-channel output gets
    a constant background logit in front)."""

    def __init__(self, module: Any, input_axes: str, output_axes: str, background: float | None,
                 one_at_a_time: bool) -> None:
        super().__init__()
        self.module = module
        self.input_axes, self.output_axes = input_axes, output_axes
        self.background = background
        self.one_at_a_time = one_at_a_time

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, C, H, W) -> (N, K, h, w)
        if self.one_at_a_time and x.shape[0] > 1:
            return torch.cat([self.forward(x[i : i + 1]) for i in range(x.shape[0])])
        raw = to_bcyx(self.module(from_bcyx(x, self.input_axes)), self.output_axes)
        if self.background is None:
            return raw
        return torch.cat([torch.full_like(raw, self.background), raw], dim=1)


def from_bcyx(x: torch.Tensor, axes: str) -> torch.Tensor:
    """``x`` (N, C, H, W) in the axis order ``axes`` (letters of b, c, y, x; b and c may be absent, size 1).

    >>> from_bcyx(torch.zeros(1, 3, 5, 4), "yxc").shape
    torch.Size([5, 4, 3])
    """
    letters = "bcyx"
    for dropped in "bc":
        if dropped not in axes:
            x = x.select(letters.index(dropped), 0)
            letters = letters.replace(dropped, "")
    return x.permute([letters.index(a) for a in axes])


def to_bcyx(y: torch.Tensor, axes: str) -> torch.Tensor:
    """A tensor in the axis order ``axes`` as (N, C, H, W) (absent b and c become size 1).

    >>> to_bcyx(torch.zeros(5, 4, 3), "yxc").shape
    torch.Size([1, 3, 5, 4])
    """
    for missing in "bc":
        if missing not in axes:
            y, axes = y.unsqueeze(0), missing + axes
    return y.permute([axes.index(a) for a in "bcyx"])


def save_torchscript(net: torch.nn.Module, example: torch.Tensor, path: Path) -> None:
    """Trace ``net`` (eval mode, CPU) on ``example`` and save it as TorchScript at ``path``.

    Tracing records sizes as traced values, so slideseg's U-Net keeps working at every valid tile
    size (its crops follow the input's shape).
    """
    with _quiet_torchscript(), torch.no_grad():
        traced = torch.jit.trace(net.eval(), example, check_trace=False)
        traced.save(str(path))
