"""Bring your own model: ONNX, TorchScript or ``torch.export`` files with a sidecar JSON, and the
measured seam error that tells you which halo a same-padded network needs.

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
* Any other :class:`~slideseg.model.UNetConfig` field (``mirror``, ``class_colors``...).

ONNX files exported by ``slideseg export`` carry all of this inside and need no sidecar (one, if
present, overrides fields such as ``halo``). The shapes a model returns are checked against the
sidecar on every batch. Only load model files you trust: TorchScript and ``torch.export`` archives
contain code.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from slideseg.engines.base import Engine
from slideseg.errors import ConfigError, ModelFileError
from slideseg.geometry import Geometry
from slideseg.model import UNetConfig

ONNX_SUFFIXES = (".onnx",)
EXPORT_SUFFIXES = (".pt2",)
TORCHSCRIPT_SUFFIXES = (".pt", ".pth", ".ts", ".torchscript", ".jit")
SUFFIXES = ONNX_SUFFIXES + EXPORT_SUFFIXES + TORCHSCRIPT_SUFFIXES
_EXTRA_KEYS = {"alignment", "normalised_in_model", "input", "output", "trained", "description"}


def is_external(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` names a bring-your-own model file (by its suffix)."""
    return Path(path).suffix.lower() in SUFFIXES


# --------------------------------------------------------------------------------------------
# Sidecars
# --------------------------------------------------------------------------------------------


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
    extras = {"normalised_in_model": bool(data.get("normalised_in_model", False)),
              "input": data.get("input"), "output": data.get("output"), "trained": data.get("trained", True)}
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


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExternalTorchModel:
    """A TorchScript or torch.export network with its sidecar configuration."""

    net: Any
    config: UNetConfig
    weights_sha256: str
    metadata: Mapping[str, Any] = field(default_factory=dict)


def load_external_engine(path: str | os.PathLike[str], name: str = "auto", *, device: str = "auto",
                         threads: int | None = None, precision: str = "fp32", compile: bool = False,
                         max_batch: int | None = None, **trt_options: Any) -> Engine:
    """The engine for a bring-your-own model file (what ``load_engine`` does for these suffixes)."""
    from slideseg.engines import build_engine

    p = Path(path)
    if not p.is_file():
        raise ModelFileError(f"Model file {p} does not exist; check the path.")
    if p.suffix.lower() in ONNX_SUFFIXES:
        info = onnx_info(p)
        if name == "torch" or compile:
            raise ConfigError(f"{p.name} is an ONNX file: run it with --engine onnxruntime or tensorrt (without "
                              "--compile); --engine torch needs a .safetensors, TorchScript or torch.export model.")
        return build_engine(name, ("tensorrt", "onnxruntime"), onnx=(p, info), device=device, threads=threads,
                            precision=precision, max_batch=max_batch, **trt_options)
    if name in ("onnxruntime", "tensorrt"):
        raise ConfigError(f"{p.name} is a torch model: run it with --engine torch, or export it to ONNX first "
                          "(torch.onnx.export(..., dynamo=True)) and pass the .onnx file.")
    model = load_torch_model(p)
    return build_engine(name, ("torch",), torch_model=model, device=device, threads=threads, precision=precision,
                        compile=compile)


def onnx_info(path: Path) -> Any:
    """The :class:`~slideseg.export.OnnxInfo` of an ONNX file: its slideseg metadata, its sidecar, or both."""
    from slideseg.engines.cache import file_sha256
    from slideseg.export import OnnxInfo, read_onnx_info

    info = read_onnx_info(path)
    side = sidecar_path(path)
    if info is not None:
        if side is None:
            return info
        cfg, extras = read_sidecar(side, base=info.config)
        return OnnxInfo(cfg, info.weights_sha256, info.tile, info.max_batch, info.precision,
                        info.normalised_in_graph, info.input_name, info.output_name,
                        {**info.metadata, "sidecar": str(side)})
    if side is None:
        raise _need_sidecar(path)
    cfg, extras = read_sidecar(side)
    tile, batch, input_name, output_name = _onnx_signature(path)
    metadata = {"external": {"format": "onnx", "path": str(path), "sidecar": str(side)},
                "trained": extras["trained"]}
    return OnnxInfo(cfg, file_sha256(path), tile, batch, None, extras["normalised_in_model"],
                    extras["input"] or input_name, extras["output"] or output_name, metadata)


def _onnx_signature(path: Path) -> tuple[int | None, int | None, str, str]:
    """(fixed tile or None, fixed batch or None, input name, first output name) of an ONNX graph."""
    import onnx

    try:
        graph = onnx.load(str(path), load_external_data=False).graph
    except Exception as exc:
        raise ModelFileError(f"{path} is not a readable ONNX file ({str(exc).splitlines()[0]}).") from exc
    initialisers = {i.name for i in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initialisers]
    if len(inputs) != 1 or not graph.output:
        raise ModelFileError(f"{path} has {len(inputs)} image inputs; slideseg runs models with one input "
                             "(N, C, H, W) and one logits output (N, K, h, w).")
    dims = [d.dim_value if d.HasField("dim_value") else None for d in inputs[0].type.tensor_type.shape.dim]
    if len(dims) != 4:
        raise ModelFileError(f"{path}: its input has {len(dims)} dimensions; expected (N, C, H, W).")
    h, w = dims[2], dims[3]
    if (h is None) != (w is None) or (h is not None and h != w):
        raise ModelFileError(f"{path}: its input is {h} x {w}; slideseg needs square tiles (both fixed and equal, "
                             "or both dynamic).")
    return h, dims[0], inputs[0].name, graph.output[0].name


def load_torch_model(path: Path) -> ExternalTorchModel:
    """Load a TorchScript (``.pt``, ``.ts``...) or ``torch.export`` (``.pt2``) model and its sidecar."""
    from slideseg.engines.cache import file_sha256

    side = sidecar_path(path)
    if side is None:
        raise _need_sidecar(path)
    cfg, extras = read_sidecar(side)
    kind = "torch.export" if path.suffix.lower() in EXPORT_SUFFIXES else "torchscript"
    try:
        if kind == "torch.export":
            net: Any = _Exported(torch.export.load(str(path)).module())
        else:  # TorchScript is deprecated by PyTorch (2.13 warns on load); still read, as users have such files
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", r"`torch\.jit\.load` is deprecated", DeprecationWarning)
                net = torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:
        what = "torch.export archive (torch.export.save)" if kind == "torch.export" else \
            "TorchScript archive (torch.jit.save); other .pt files (pickles, state dicts) are not loaded"
        raise ModelFileError(f"{path} is not a {what}: {str(exc).splitlines()[0]}") from exc
    if extras["normalised_in_model"]:
        raise ModelFileError(f"{side}: normalised_in_model applies to ONNX files; a torch model is fed "
                             "(x - norm_mean) / norm_std: set norm_mean [0] and norm_std [1] for raw pixels.")
    metadata = {"external": {"format": kind, "path": str(path), "sidecar": str(side)}, "trained": extras["trained"]}
    return ExternalTorchModel(net, cfg, file_sha256(path), metadata)


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


# --------------------------------------------------------------------------------------------
# Seam error
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SeamError:
    """How far tiled inference is from one whole-image pass over the same region."""

    halo: int
    tile: int
    chunk: int
    region: tuple[int, int]
    max_abs: float
    """Largest absolute difference of any class probability at any pixel."""
    mean_abs: float
    """Mean absolute difference of class probabilities."""
    changed_ids: float
    """Fraction of pixels whose class id differs."""

    def to_dict(self) -> dict[str, Any]:
        return {"halo": self.halo, "tile": self.tile, "chunk": self.chunk, "region": list(self.region),
                "max_abs": self.max_abs, "mean_abs": self.mean_abs, "changed_ids": self.changed_ids}


def seam_geometry(config: UNetConfig, halo: int | None) -> Geometry:
    """The geometry to tile with: the model's, with ``halo`` in place of its own (same padding)."""
    if config.padding == "valid" or halo is None:
        return config.geometry
    if halo < 0 or halo % config.geometry.alignment:
        raise ConfigError(f"--halo must be a multiple of {config.geometry.alignment} (2**depth) and >= 0, got {halo}")
    return Geometry(config.depth, "same", halo)


def measure_seam_error(engine: Engine, image: np.ndarray, *, halo: int | None = None, tile: int | None = None,
                       chunk: int = 1024, batch_size: int = 4) -> SeamError:
    """Tile ``image`` (Y, X, C) exactly as ``predict`` would (same planner, same mirroring), run one
    whole-image pass over the same mirror-padded region, and compare the class probabilities.

    ``halo`` replaces the model's halo (same-padded models); valid models ignore it (their seam error
    is 0 up to float rounding). ``tile=None`` picks the tile ``predict`` would pick.
    """
    from slideseg.plan import auto_tile, make_plan
    from slideseg.schedule import infer_chunk, softmax

    g = seam_geometry(engine.config, halo)
    shape = (int(image.shape[0]), int(image.shape[1]))
    tile = tile or engine.fixed_tile or auto_tile(shape, chunk, g.alignment, g.smallest_tile_covering)
    g.check_tile(tile)
    plan = make_plan(shape, tile=tile, context=g.context, alignment=g.alignment, chunk=chunk,
                     tile_output=g.usable_output(tile))
    reader = _ArrayReader(image)
    tiled = np.empty((engine.config.classes, *shape), np.float32)
    for c in plan:
        tiled[:, c.box.y0 : c.box.y1, c.box.x0 : c.box.x1] = infer_chunk(reader, engine, c, engine.config.mirror,
                                                                          batch_size)
    whole = whole_image_logits(engine, image, g)
    p_tiled, p_whole = softmax(tiled), softmax(whole)
    diff = np.abs(p_tiled - p_whole)
    return SeamError(halo=g.context if g.padding == "same" else 0, tile=tile, chunk=chunk, region=shape,
                     max_abs=float(diff.max()), mean_abs=float(diff.mean()),
                     changed_ids=float((p_tiled.argmax(0) != p_whole.argmax(0)).mean()))


def whole_image_logits(engine: Engine, image: np.ndarray, geometry: Geometry) -> np.ndarray:
    """Logits (K, H, W) of one forward pass over the whole region, mirror-padded as ``predict`` pads.

    The region is padded by the context on the top/left and up to the next valid (square) input size
    on the bottom/right, so the pass sees the pooling grid in the same phase as the tiles do.
    """
    if engine.fixed_tile is not None:
        raise ConfigError(f"this model takes {engine.fixed_tile} px inputs only, so it cannot run on the whole "
                          "region at once; export it with dynamic height and width to measure its seam error.")
    h, w = image.shape[:2]
    n = geometry.smallest_tile_covering(max(h, w))
    c = geometry.context
    padded = np.pad(image, ((c, n - h - c), (c, n - w - c), (0, 0)), mode=engine.config.mirror)
    logits = engine.infer(np.ascontiguousarray(padded.transpose(2, 0, 1)[None]))[0]  # (K, t, t)
    margin = (n - logits.shape[-1]) // 2  # valid nets: the context; same nets: 0
    off = c - margin
    return logits[:, off : off + h, off : off + w]


def sample_region(config: UNetConfig, size: int, seed: int = 0) -> np.ndarray:
    """A synthetic region to measure on: H&E-like for 3-channel models, smooth noise otherwise."""
    if config.in_channels == 3:
        from slideseg.synth import SynthConfig, render_region

        return render_region(SynthConfig(size=(size, size), seed=seed), 0, size, 0, size)[0]
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (size // 8 + 1, size // 8 + 1, config.in_channels)).astype(np.float32)
    fine = rng.integers(0, 256, (size, size, config.in_channels)).astype(np.float32)
    img = 0.5 * fine + 0.5 * np.repeat(np.repeat(coarse, 8, 0), 8, 1)[:size, :size]
    return img.astype(np.uint8)


class _ArrayReader:
    """An in-memory image behind the scheduler's region-reader interface."""

    def __init__(self, pixels: np.ndarray) -> None:
        self.pixels = pixels

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.pixels.shape

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        return self.pixels[y0:y1, x0:x1]
