"""bioimage.io packages of slideseg models (:func:`export_package`), and the check of any package
against its own test tensors (:func:`check_package`).

A package written here holds the bare network twice — TorchScript and ONNX, both taking the
normalised input with dynamic batch, height and width — and declares what slideseg knows about it:

* the size rule ``min + n*step`` of the network's valid tiles (``step`` = 2**depth);
* the crop: a valid-convolution output is the input minus its context on each side (a size
  reference with a negative offset), a same-padded one has the input's size and declares its halo;
* the pre-processing (``fixed_zero_mean_unit_variance`` per channel, from the model config) and the
  pixel size (µm) and padding mode;
* class names (the output's channel names) and the full slideseg config under ``config.slideseg``;
* test tensors: a tile cut from a synthetic slide (or the centre of a given slide) and the logits the
  torch engine computes for it; a cover image: that tile beside its overlay preview.

The package is validated by ``bioimageio.spec`` offline, read back with
:func:`slideseg.model.bioimageio.read_package` and checked against its test tensors.
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from slideseg import __version__
from slideseg.config import Config
from slideseg.engines.onnx import export_network_onnx
from slideseg.engines.registry import load_engine
from slideseg.engines.torch_engine import TorchEngine
from slideseg.errors import ConfigError, ModelFileError, OutputExistsError
from slideseg.io.normalise import apply
from slideseg.io.slide import open_slide
from slideseg.model.bioimageio import INSTALL_HINT, read_package
from slideseg.model.config import UNetConfig
from slideseg.model.external import save_torchscript
from slideseg.model.files import LoadedModel, cpu_copy, load_model
from slideseg.schedule.chunks import softmax
from slideseg.tools.preview import overlay
from slideseg.tools.seam import bound_to, sample_region

UNET_CITATION = ("Ronneberger, Fischer and Brox (2015): U-Net: Convolutional Networks for Biomedical Image "
                 "Segmentation|10.1007/978-3-319-24574-4_28")
"""The default citation of a slideseg package: the paper of its architecture (text|DOI)."""
TEST_OUTPUT_PX = 64
"""The test tile is the smallest whose output covers this many pixels (or the pooling grid)."""


@dataclass(frozen=True)
class PackageConfig(Config):
    """How to write a bioimage.io package of a slideseg model (``slideseg export --format bioimageio``)."""

    name: str | None = None
    """Name of the model in the package. None: the model file's name."""
    description: str | None = None
    """One-line description. None: what the model is (architecture, classes, pixel size)."""
    authors: tuple[str, ...] = ()
    """Names of the authors."""
    license: str = "CC-BY-4.0"
    """SPDX identifier of the licence."""
    cite: tuple[str, ...] = (UNET_CITATION,)
    """Citations, each 'TEXT|DOI' or 'TEXT|https://URL'."""
    doc: Path | None = None
    """Markdown documentation (README.md). None: one is written from the model's config."""
    slide: Path | None = None
    """Cut the test tile from the centre of this slide (level 0). None: a synthetic H&E-like tile."""
    tile: int | None = None
    """Edge of the test tile in px (a valid tile). None: the smallest whose output covers 64 px."""
    overwrite: bool = False
    """Replace an existing package."""

    def __post_init__(self) -> None:
        for entry in self.cite:
            if "|" not in entry or not entry.split("|", 1)[1].strip():
                raise ConfigError(f"--cite {entry!r}: expected 'TEXT|DOI' or 'TEXT|https://URL'.")
        if any("/" in a for a in self.authors):
            raise ConfigError(f"--authors {list(self.authors)}: an author's name may not contain '/'.")
        for name in ("doc", "slide"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, Path(getattr(self, name)))


@dataclass(frozen=True)
class CheckResult:
    """A package's test input run through an engine, compared with its expected output."""

    path: Path
    engine: dict[str, Any]
    shape: tuple[int, ...]
    max_abs_diff: float
    """Largest absolute difference from the expected output (after the package's post-processing)."""
    mismatched_per_million: float
    """Elements outside ``absolute + relative * |expected|``, per million."""
    tolerance: tuple[float, float, float]
    """(relative, absolute, mismatched elements per million allowed)."""
    statistics: dict[str, Any] | None = None
    """Statistics of the test input used by the pre-processing (a slide's role in ``predict``)."""

    @property
    def passed(self) -> bool:
        return self.mismatched_per_million <= self.tolerance[2]

    def to_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "engine": self.engine, "shape": list(self.shape),
                "max_abs_diff": self.max_abs_diff, "mismatched_per_million": self.mismatched_per_million,
                "tolerance": list(self.tolerance), "passed": self.passed, "statistics": self.statistics}


@dataclass(frozen=True)
class PackageResult:
    """What :func:`export_package` wrote and how its test tensors check."""

    path: Path
    tile: int
    tile_output: int
    weights: tuple[str, ...]
    checks: tuple[CheckResult, ...] = field(default=())


def check_package(path: str | os.PathLike[str], engine: str = "auto", device: str = "auto") -> CheckResult:
    """Run the package's test input through the engine called ``engine`` and compare with its test output.

    Statistics steps of the pre-processing take the statistics of the test input, as the test input
    stands for a whole slide.

    Raises
    ------
    ModelFileError
        The package has no test tensors, or they do not fit its description.
    """
    model = read_package(path)
    eng = load_engine(path, engine, device=device)
    x, want = model.test_tensors()  # (N, C, H, W), (N, channels, h, w)
    eng, stats = bound_to(eng, x)
    got = apply(model.output.postprocessing, model.output.raw(eng.infer(x)))
    if got.shape != want.shape:
        raise ModelFileError(f"{path}: the model returns {got.shape} for its test input but the test output is "
                             f"{want.shape}; the test tensors do not fit the model.")
    rel, absolute, _ = model.tolerance
    diff = np.abs(got.astype(np.float64) - want.astype(np.float64))
    mismatched = float((diff > absolute + rel * np.abs(want)).sum() / diff.size * 1e6)
    return CheckResult(Path(path), eng.describe(), tuple(want.shape), float(diff.max()), mismatched, model.tolerance,
                       stats)


# ------------------------------------------------------------------------------------ writing


def export_package(model_path: str | os.PathLike[str], output: str | os.PathLike[str],
                   cfg: PackageConfig = PackageConfig()) -> PackageResult:
    """Write the slideseg model at ``model_path`` as a bioimage.io package (``.zip``) at ``output``.

    Raises
    ------
    ConfigError
        A bad option, or bioimageio.spec / the ONNX exporter not installed (with the install hint).
    OutputExistsError
        ``output`` exists and ``cfg.overwrite`` is False.
    ModelFileError
        The model file cannot be read.
    """
    out = Path(output)
    if out.suffix.lower() != ".zip":
        raise ConfigError(f"-o {out}: a bioimage.io package is a .zip file; pass -o NAME.zip.")
    if out.exists() and not cfg.overwrite:
        raise OutputExistsError(f"{out} exists; pass --overwrite to replace it.")
    spec = _import_spec()
    model = load_model(model_path)
    mc = model.config
    g = mc.geometry
    tile = g.check_tile(cfg.tile) if cfg.tile else g.smallest_tile_covering(max(TEST_OUTPUT_PX, g.alignment))
    region = _test_region(cfg.slide, mc, tile)  # (T, T, C)
    x = np.ascontiguousarray(region.transpose(2, 0, 1)[None]).astype(np.float32)  # (1, C, T, T) raw
    logits = TorchEngine(cpu_copy(model), device="cpu").infer(x)  # (1, K, t, t)
    with tempfile.TemporaryDirectory(prefix="slideseg-package-") as tmp:
        root = Path(tmp)
        files = _write_files(root, model, x, logits, region, cfg)
        content = _description(model, Path(model_path), files, cfg, spec)
        context = spec.ValidationContext(root=root, perform_io_checks=False, log_warnings=False)
        descr = spec.build_description(content, context=context)
        if isinstance(descr, spec.InvalidDescr):
            raise ModelFileError(f"the package description of {model_path} does not validate: "
                                 f"{descr.validation_summary.format()[:2000]}")
        spec.save_bioimageio_yaml_only(descr, file=root / "rdf.yaml")
        _zip(root, ("rdf.yaml", *files["sha256"]), out)
    checks = tuple(check_package(out, name, device="cpu") for name in _engines_to_check())
    return PackageResult(out, tile, g.output_size(tile), ("torchscript", "onnx"), checks)


def _zip(root: Path, names: tuple[str, ...], out: Path) -> None:
    """The package: ``names`` in ``root`` zipped at the top of ``out`` (written aside, then moved in)."""
    partial = out.with_name(f".{out.name}.partial")
    with zipfile.ZipFile(partial, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=6) as z:
        for name in names:
            z.write(root / name, name)
    os.replace(partial, out)


def _import_spec() -> Any:
    try:
        import bioimageio.spec as spec
    except ImportError as exc:
        raise ConfigError(f"writing bioimage.io packages needs bioimageio.spec: {INSTALL_HINT}") from exc
    return spec


def _engines_to_check() -> tuple[str, ...]:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return ("torch",)
    return ("torch", "onnxruntime")


def _test_region(slide: Path | None, mc: UNetConfig, tile: int) -> np.ndarray:
    """A (T, T, C) tile: the centre of ``slide`` (level 0), else a synthetic one."""
    if slide is None:
        return sample_region(mc, tile)
    with open_slide(slide) as s:
        h, w, c = s.shape
        if c != mc.in_channels:
            raise ConfigError(f"--slide {slide} has {c} channels but the model takes {mc.in_channels}.")
        if min(h, w) < tile:
            raise ConfigError(f"--slide {slide} is {h} x {w} px, smaller than the {tile} px test tile; pass a larger "
                              "slide or a smaller --tile.")
        y0, x0 = (h - tile) // 2, (w - tile) // 2
        return np.asarray(s.read(y0, y0 + tile, x0, x0 + tile))


def _write_files(root: Path, model: LoadedModel, x: np.ndarray, logits: np.ndarray, region: np.ndarray,
                 cfg: PackageConfig) -> dict[str, Any]:
    """Weights, test tensors, cover and documentation in ``root``; returns their names and facts."""
    mc = model.config
    mean = np.broadcast_to(np.asarray(mc.norm_mean, np.float32), (mc.in_channels,)).reshape(1, -1, 1, 1)
    std = np.broadcast_to(np.asarray(mc.norm_std, np.float32), (mc.in_channels,)).reshape(1, -1, 1, 1)
    np.save(root / "test_input.npy", x)
    np.save(root / "test_output.npy", logits.astype(np.float32))
    net = cpu_copy(model).net.eval()
    save_torchscript(net, torch.from_numpy((x - mean) / std), root / "weights.torchscript.pt")
    opset = export_network_onnx(model, x.shape[-1], root / "weights.onnx")
    _write_cover(root / "cover.png", region, logits, mc)
    doc = root / "README.md"
    if cfg.doc is not None:
        try:
            doc.write_text(cfg.doc.read_text(encoding="utf-8"), encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"--doc {cfg.doc} cannot be read ({exc}); expected a Markdown file.") from exc
    else:
        doc.write_text(_readme(model, x.shape[-1], logits.shape[-1]), encoding="utf-8")
    names = ("test_input.npy", "test_output.npy", "weights.torchscript.pt", "weights.onnx", "cover.png", "README.md")
    return {"sha256": {n: hashlib.sha256((root / n).read_bytes()).hexdigest() for n in names}, "opset": opset}


def _description(model: LoadedModel, model_path: Path, files: dict[str, Any], cfg: PackageConfig,
                 spec: Any) -> dict[str, Any]:
    """The bioimage.io model description (format 0.5) of the package's files."""
    mc = model.config
    g = mc.geometry
    sha = files["sha256"]
    unit = {"unit": "micrometer", "scale": mc.mpp} if mc.mpp else {}
    if mc.padding == "valid":
        sizes = {"min": g.min_input, "step": g.alignment}
        out_space: dict[str, Any] = {"size": {"tensor_id": "raw", "axis_id": "y", "offset": -2 * g.context}}
    else:
        sizes = {"min": g.smallest_tile_covering(g.alignment), "step": g.alignment}
        out_space = {"size": {"tensor_id": "raw", "axis_id": "y", "offset": 0}}
        if mc.halo:
            out_space["halo"] = mc.halo
    channel_names = ["red", "green", "blue"] if mc.in_channels == 3 else [f"channel{i}" for i in range(mc.in_channels)]
    c = mc.in_channels
    pre = {"id": "fixed_zero_mean_unit_variance", "kwargs": {
        "axis": "channel", "mean": [float(v) for v in np.broadcast_to(np.asarray(mc.norm_mean), (c,))],
        "std": [float(v) for v in np.broadcast_to(np.asarray(mc.norm_std), (c,))]}}
    x_axis = {**out_space, "size": {**out_space["size"], "axis_id": "x"}}
    return {
        "format_version": spec.ModelDescr.implemented_format_version, "type": "model",
        "name": cfg.name or model_path.stem,
        "description": cfg.description or _default_description(mc),
        "authors": [{"name": a} for a in cfg.authors],
        "cite": [_citation(entry) for entry in cfg.cite],
        "license": cfg.license, "documentation": {"source": "README.md", "sha256": sha["README.md"]},
        "covers": [{"source": "cover.png", "sha256": sha["cover.png"]}],
        "tags": ["slideseg", "unet", "2d", "semantic-segmentation", "whole-slide-imaging"],
        "inputs": [{
            "id": "raw", "description": "raw pixel values of the slide, as read",
            "axes": [{"type": "batch"}, {"type": "channel", "channel_names": channel_names},
                     {"type": "space", "id": "y", "size": sizes, **unit},
                     {"type": "space", "id": "x", "size": sizes, **unit}],
            "data": {"type": "float32"}, "pad": {"mode": mc.mirror},
            "test_tensor": {"source": "test_input.npy", "sha256": sha["test_input.npy"]},
            "preprocessing": [{"id": "ensure_dtype", "kwargs": {"dtype": "float32"}}, pre]}],
        "outputs": [{
            "id": "logits", "description": "class logits (argmax: class id; softmax: class probabilities)",
            "axes": [{"type": "batch"}, {"type": "channel", "channel_names": list(mc.class_names)},
                     {"type": "space", "id": "y", **out_space, **unit}, {"type": "space", "id": "x", **x_axis, **unit}],
            "data": {"type": "float32"},
            "test_tensor": {"source": "test_output.npy", "sha256": sha["test_output.npy"]}}],
        "weights": {
            "torchscript": {"source": "weights.torchscript.pt", "sha256": sha["weights.torchscript.pt"],
                            "pytorch_version": torch.__version__.split("+")[0]},
            "onnx": {"source": "weights.onnx", "sha256": sha["weights.onnx"], "opset_version": files["opset"],
                     "parent": "torchscript"}},
        "config": {"slideseg": {"model_config": mc.to_dict(), "weights_sha256": model.weights_sha256,
                                "model_metadata": dict(model.metadata), "version": __version__}},
    }


def _citation(entry: str) -> dict[str, str]:
    text, ref = (part.strip() for part in entry.split("|", 1))
    return {"text": text, "url" if ref.startswith(("http://", "https://")) else "doi": ref}


def _default_description(mc: UNetConfig) -> str:
    mpp = f" at {mc.mpp:g} µm/px" if mc.mpp else ""
    return (f"A {mc.padding}-convolution U-Net (depth {mc.depth}, width {mc.width}) segmenting "
            f"{', '.join(mc.class_names[1:])}{mpp}, made with slideseg.")


def _readme(model: LoadedModel, tile: int, out: int) -> str:
    mc = model.config
    g = mc.geometry
    return f"""# {_default_description(mc)}

Input: raw pixel values, {mc.in_channels} channel(s), normalised inside the package by
`fixed_zero_mean_unit_variance` (mean {list(mc.norm_mean)}, std {list(mc.norm_std)}).
Valid tiles: {g.describe_valid()}; the output is {'the input minus ' + str(g.context) + ' px on each side'
if mc.padding == 'valid' else 'the size of the input, less a halo of ' + str(mc.halo) + ' px to crop'}.
Classes: {', '.join(mc.class_names)}. Pixel size: {mc.mpp if mc.mpp else 'any'} µm.

Whole slides: `slideseg predict slide.ome.tif -o mask.zarr --model THIS.zip` tiles it exactly as the
`.safetensors` model it was made from (weights sha256 `{model.weights_sha256[:16]}`).

## Validation

The test input is a {tile} x {tile} px tile; the test output holds the logits ({out} x {out} px) the
slideseg torch engine computed for it. `slideseg info --check THIS.zip` runs it again. Trained:
{model.metadata.get('trained', 'unknown')}.
"""


def _write_cover(path: Path, region: np.ndarray, logits: np.ndarray, mc: UNetConfig) -> None:
    """The test tile beside its overlay preview (2:1, as bioimage.io covers are best shown)."""
    from PIL import Image

    t = logits.shape[-1]
    m = (region.shape[0] - t) // 2
    rgb = _display(region[m : m + t, m : m + t])
    labels = softmax(logits[0]).argmax(axis=0)
    colours = {k: tuple(c) for k, c in enumerate(mc.class_colors)}
    both = np.concatenate([rgb, overlay(rgb, labels, colours, 0.5)], axis=1)  # type: ignore[arg-type]
    scale = max(1, 256 // t)
    buf = io.BytesIO()
    Image.fromarray(both).resize((both.shape[1] * scale, both.shape[0] * scale), Image.Resampling.NEAREST).save(
        buf, format="PNG")
    path.write_bytes(buf.getvalue())


def _display(pixels: np.ndarray) -> np.ndarray:
    """(h, w, C) pixels as RGB uint8: channels 0-2 of uint8 RGB, else channel 0 stretched to grey."""
    if pixels.shape[2] >= 3 and pixels.dtype == np.uint8:
        return np.ascontiguousarray(pixels[..., :3])
    grey = pixels[..., 0].astype(np.float32)
    lo, hi = float(grey.min()), float(grey.max())
    grey = np.clip((grey - lo) * (255 / max(hi - lo, 1e-12)), 0, 255).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=2)


def describe_check(result: CheckResult) -> str:
    """One line: the largest difference and whether it is within the package's tolerance."""
    rel, absolute, ppm = result.tolerance
    verdict = "passed" if result.passed else "FAILED"
    return (f"{verdict}: max |difference| {result.max_abs_diff:.3g} from the expected output "
            f"({result.mismatched_per_million:.0f} per million outside {absolute:g} + {rel:g} * |expected|, "
            f"{ppm:g} allowed), engine {result.engine.get('engine')}")


__all__ = ["CheckResult", "PackageConfig", "PackageResult", "check_package", "describe_check", "export_package"]
