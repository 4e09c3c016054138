"""bioimage.io model packages (``.zip``, or an unpacked ``rdf.yaml`` / ``bioimageio.yaml``) read as
slideseg models (torch-free; ``bioimageio.spec`` is imported when a package is read).

:func:`read_package` validates the description with ``bioimageio.spec`` (format 0.5, and what the
library converts from 0.4), offline — it never reaches the network: IO checks are off, so no
URL is followed and nothing is downloaded, and the files slideseg reads (weights, test tensors)
are checked against their SHA-256 here. It then maps the description onto what ``predict`` has:

* **axes**: one input ``(batch, channel, y, x)`` and one output, in any order; batch and channel
  may be absent (TorchScript weights). z, time and index axes are refused.
* **size rule** ``min + n*step`` (or a fixed size) → the valid tiles and their alignment
  (``step`` = 2**depth, a power of two).
* **crop**: an output size that refers to the input with ``offset < 0`` is a valid-convolution
  network (it must have the geometry of slideseg's valid U-Net); ``offset 0`` is same-padded, and
  its declared ``halo`` (rounded up to the alignment) is the context tiles read and crop.
* **weights**: TorchScript or ONNX; a package with only other formats (e.g. a PyTorch state dict,
  which needs its architecture's code) is refused with the formats found.
* **pre-processing** → :mod:`slideseg.io.normalise` steps; statistics steps get the statistics of
  the whole slide (never of a tile). **post-processing** (sigmoid, softmax, binarize) says how to
  read the output as class scores (:class:`OutputRule`).
* channel names (the output's are the class names), the pixel size (µm) and the input's padding
  mode, where the package states them.

A JSON file beside the package (``MODEL.zip.json``) may override ``halo``, ``mirror``, ``mpp``,
``class_names``, ``class_colors`` and ``norm`` (``"slide"``: normalise each channel to zero mean and
unit variance with the slide's statistics, instead of the package's pre-processing).
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import warnings
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from slideseg.errors import ConfigError, ModelFileError
from slideseg.io.normalise import (
    Affine,
    Binarize,
    Clip,
    ClipPercentile,
    Op,
    ScaleRange,
    Sigmoid,
    Softmax,
    Standardise,
    ZeroMeanUnitVariance,
    as_standardise,
    describe_ops,
    needs_statistics,
    op_to_dict,
)
from slideseg.model.config import UNetConfig
from slideseg.plan.geometry import Geometry

INSTALL_HINT = "pip install 'slideseg[bioimageio]'"
YAML_NAMES = ("rdf.yaml", "bioimageio.yaml")
READ_FORMATS = ("torchscript", "onnx")
"""Weights formats slideseg runs: TorchScript (torch engine) and ONNX (ONNX Runtime, TensorRT)."""
OVERRIDE_KEYS = ("halo", "mirror", "mpp", "class_names", "class_colors", "norm")
_UNIT_UM = {"micrometer": 1.0, "nanometer": 1e-3, "millimeter": 1e3, "angstrom": 1e-4, "centimeter": 1e4,
            "meter": 1e6}
_MAX_DEPTH = 7


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
                    data = z.read(_zip_name(z, item.name))
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


def read_package(path: str | os.PathLike[str]) -> BioimageioModel:
    """Read, validate (offline) and map the bioimage.io package at ``path``.

    Raises
    ------
    ModelFileError
        The package is missing, not valid, or describes a model slideseg cannot run (3-D, several
        inputs, weights it cannot read...), with what to do.
    ConfigError
        ``bioimageio.spec`` is not installed (with the install hint).
    """
    p = Path(path)
    if not p.exists():
        raise ModelFileError(f"Model package {p} does not exist; check the path.")
    descr, notes = _load(p)
    return _apply_overrides(_Mapper(descr, p, notes).model())


def load_description(path: Path) -> Any:
    """The validated ``bioimageio.spec`` model description of the package at ``path``, in the
    latest format, without IO checks (offline)."""
    return _load(path)[0]


def _load(path: Path) -> tuple[Any, list[str]]:
    """(description, what the library warned about while reading it, e.g. converting from 0.4)."""
    spec = _import_spec()
    from bioimageio.spec.model.v0_5 import ModelDescr

    try:  # the zip is opened and closed here: the library would leave its file handles to the collector
        with warnings.catch_warnings(record=True) as caught, \
                spec.ValidationContext(perform_io_checks=False, log_warnings=False), _as_zip(path) as z:
            warnings.simplefilter("always")
            descr = spec.load_description(z, format_version="latest", perform_io_checks=False, progressbar=False)
    except (OSError, zipfile.BadZipFile) as exc:
        raise ModelFileError(f"{path} is not a readable bioimage.io package: {_first_line(exc)}") from exc
    except Exception as exc:  # YAML errors, no rdf.yaml in the zip...
        raise ModelFileError(f"{path} is not a readable bioimage.io package: {_first_line(exc)}") from exc
    if isinstance(descr, spec.InvalidDescr):
        raise ModelFileError(f"{path} is not a valid bioimage.io model description: {_first_error(descr)}")
    if not isinstance(descr, ModelDescr):
        kind = getattr(descr, "type", type(descr).__name__)
        raise ModelFileError(f"{path} describes a bioimage.io {kind}, not a model.")
    notes = sorted({f"bioimageio.spec: {_first_line(ValueError(str(w.message)))}" for w in caught
                    if not issubclass(w.category, ResourceWarning)})
    return descr, notes


@contextmanager
def _as_zip(path: Path) -> Iterator[zipfile.ZipFile]:
    """The package as an open zip: the file itself, or an unpacked package's description alone (its
    other files are read from its folder by :meth:`BioimageioModel.read`)."""
    if path.suffix.lower() == ".zip":
        with zipfile.ZipFile(path) as z:
            yield z
        return
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr(path.name, path.read_bytes())
    with zipfile.ZipFile(buf) as z:
        yield z


def _import_spec() -> Any:
    try:
        import bioimageio.spec as spec
    except ImportError as exc:
        raise ConfigError(f"reading bioimage.io packages needs bioimageio.spec: {INSTALL_HINT}") from exc
    return spec


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _first_error(descr: Any) -> str:
    errors = [e for d in descr.validation_summary.details for e in d.errors]
    if not errors:
        return "(no details)"
    e = errors[0]
    where = ".".join(str(part) for part in e.loc)
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{where}: {_first_line(ValueError(e.msg))}{more}"


def _zip_name(z: zipfile.ZipFile, name: str) -> str:
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


# ------------------------------------------------------------------------------------ mapping


class _Mapper:
    """Maps one validated description onto a :class:`BioimageioModel`; each step checks one part."""

    def __init__(self, descr: Any, path: Path, notes: list[str]) -> None:
        self.d = descr
        self.path = path
        self.notes = list(notes)

    def fail(self, what: str) -> ModelFileError:
        return ModelFileError(f"{self.path}: {what}")

    def model(self) -> BioimageioModel:
        if len(self.d.inputs) != 1 or len(self.d.outputs) != 1:
            raise self.fail(f"the model has {len(self.d.inputs)} inputs and {len(self.d.outputs)} outputs; slideseg "
                            "runs models with one image input and one output.")
        inp, out = self.d.inputs[0], self.d.outputs[0]
        in_axes, in_channels, batch = self.axes(inp, "input")
        out_axes, out_channels, _ = self.axes(out, "output")
        geometry, min_tile, fixed, rule, declared = self.geometry(inp, out)
        class_names, rule_out = self.classes(out, out_channels)
        ops = self.preprocessing(inp)
        base = self.slideseg_config()
        fields_ = {**base, "depth": geometry.depth, "padding": geometry.padding, "halo": geometry.halo,
                   "in_channels": in_channels, "classes": len(class_names), "class_names": class_names,
                   "mpp": self.mpp(inp), "mirror": self.mirror(inp, base), "dropout": 0.0}
        if len(base.get("class_colors", ())) != len(class_names):
            fields_.pop("class_colors", None)
        std = None if needs_statistics(ops) else as_standardise(ops)
        if std is not None:  # one fixed linear step: the engine normalises on its device
            fields_["norm_mean"], fields_["norm_std"], ops = std.mean, std.std, []
        else:
            fields_["norm_mean"], fields_["norm_std"] = (0.0,), (1.0,)
        try:
            cfg = UNetConfig.from_dict(fields_)
        except ConfigError as exc:
            raise self.fail(f"its description does not make a valid model configuration ({exc}).") from exc
        test_in, test_out = self.test_file(inp), self.test_file(out)
        weights, others = self.weights()
        return BioimageioModel(
            path=self.path, name=str(self.d.name), description=str(self.d.description),
            format_version=str(self.d.format_version), config=cfg, preprocessing=tuple(ops), input_axes=in_axes,
            output_axes=out_axes, output=rule_out, weights=weights, other_weights=others, min_tile=min_tile,
            fixed_tile=fixed, batch=batch, declared_halo=declared, size_rule=rule, test_input=test_in,
            test_output=test_out, tolerance=self.tolerance(), notes=tuple(self.notes),
            metadata={"bioimageio": {"name": str(self.d.name), "format_version": str(self.d.format_version),
                                     "path": str(self.path)}})

    def axes(self, tensor: Any, what: str) -> tuple[str, int, int | None]:
        """The letters of a tensor's axes, its channel count and its fixed batch size (1) or None."""
        letters, channels, batch = "", 1, None
        for a in tensor.axes:
            kind, ident = str(a.type), str(a.id)
            if kind == "batch":
                letters += "b"
                batch = 1 if a.size == 1 else None
            elif kind == "channel":
                letters += "c"
                channels = len(a.channel_names)
            elif kind == "space" and ident in ("y", "x"):
                letters += ident
            elif kind == "space" and ident == "z":
                raise self.fail(f"its {what} has a z axis: it is a 3-D model; slideseg segments 2-D slides with 2-D "
                                "models (axes batch, channel, y, x).")
            elif kind == "time":
                raise self.fail(f"its {what} has a time axis ({ident!r}); slideseg runs 2-D models with axes batch, "
                                "channel, y, x.")
            else:
                raise self.fail(f"its {what} has a {kind} axis {ident!r}; slideseg knows batch, channel and the space "
                                "axes y and x.")
        if "y" not in letters or "x" not in letters:
            raise self.fail(f"its {what} axes are {letters!r}; a 2-D model needs space axes y and x.")
        return letters, channels, 1 if "b" not in letters else batch

    def geometry(self, inp: Any, out: Any) -> tuple[Geometry, int, int | None, str, int]:
        """(geometry, smallest tile, fixed tile or None, the size rule in words, declared halo)."""
        sizes = {str(a.id): a for a in inp.axes if str(a.type) == "space"}
        rules = {k: self.input_rule(a, sizes) for k, a in sizes.items()}
        if rules["y"] != rules["x"]:
            raise self.fail(f"its input's y and x follow different size rules ({rules['y']} and {rules['x']}); "
                            "slideseg runs square tiles.")
        minimum, step = rules["y"]
        offset, halo = self.output_crop(out, inp, sizes)
        fixed = minimum if step == 0 else None
        rule = f"{minimum}" if fixed else f"{minimum} + n*{step}"
        if fixed is not None:
            return self.fixed_geometry(fixed, offset, halo), fixed, fixed, f"fixed {rule} px", halo
        if step & (step - 1) or step > 2**_MAX_DEPTH:
            raise self.fail(f"its input sizes are {rule} px; slideseg aligns tiles to a power-of-two grid (the "
                            f"network's poolings), so step must be a power of two up to {2**_MAX_DEPTH}.")
        depth = max(1, int(math.log2(step)))
        a = 2**depth
        if offset < 0:
            g = Geometry(depth, "valid")
            if offset != -2 * g.context or minimum < g.min_input or (minimum - g.min_input) % a:
                raise self.fail(
                    f"its output is the input {offset:+d} px with inputs of {rule} px: not the geometry of a "
                    f"valid-convolution U-Net of depth {depth} (inputs {g.describe_valid()}, output = input - "
                    f"{2 * g.context}); slideseg tiles valid U-Nets and same-padded networks (offset 0) with a halo.")
            if halo:
                raise self.fail("its output declares both a crop (size offset) and a halo; slideseg takes one of them.")
            return g, minimum, None, f"{rule} px", 0
        if step == a and minimum % a:  # (step 1: any size, so every multiple of the 2-px grid is one)
            raise self.fail(f"its input sizes are {rule} px; a same-padded network is tiled with multiples of "
                            f"{a}, so min must be one.")
        return self.same(depth, halo), minimum, None, f"{rule} px", halo

    def input_rule(self, axis: Any, sizes: Mapping[str, Any]) -> tuple[int, int]:
        """(min, step) of a spatial input axis; step 0 for a fixed size."""
        size = axis.size
        if isinstance(size, int):
            return size, 0
        if hasattr(size, "step"):
            return int(size.min), int(size.step)
        ref = sizes.get(str(size.axis_id))  # a SizeReference to the other spatial axis
        if ref is None or int(size.offset) or float(ref.scale) != float(axis.scale) or ref is axis:
            raise self.fail(f"its input axis {axis.id} refers to {size.tensor_id}.{size.axis_id} with offset "
                            f"{size.offset}; slideseg runs square tiles whose y and x follow one size rule.")
        return self.input_rule(ref, {})

    def output_crop(self, out: Any, inp: Any, sizes: Mapping[str, Any]) -> tuple[int, int]:
        """(size offset, halo) of the output's spatial axes, which must agree."""
        found = set()
        for a in out.axes:
            if str(a.type) != "space":
                continue
            size, halo = a.size, int(getattr(a, "halo", 0) or 0)
            if isinstance(size, int):
                ref_size = sizes[str(a.id)].size if str(a.id) in sizes else None
                if not isinstance(ref_size, int):
                    raise self.fail(f"its output axis {a.id} has a fixed size {size} but the input's size varies; "
                                    "the output size must refer to the input (tensor_id, axis_id, offset).")
                found.add((size - ref_size, 0))
                continue
            ref = sizes.get(str(size.axis_id))
            if str(size.tensor_id) != str(inp.id) or ref is None:
                raise self.fail(f"its output axis {a.id} refers to {size.tensor_id}.{size.axis_id}; expected a space "
                                f"axis of the input {inp.id!s}.")
            if float(ref.scale) != float(a.scale):
                raise self.fail(f"its output axis {a.id} has scale {a.scale} against the input's {ref.scale}; slideseg "
                                "runs networks whose output has the input's pixel size.")
            found.add((int(size.offset), halo))
        if len(found) != 1:
            raise self.fail(f"its output's y and x are cropped differently {sorted(found)}; slideseg runs square "
                            "tiles.")
        offset, halo = found.pop()
        if offset > 0:
            raise self.fail(f"its output is larger than its input ({offset:+d} px); slideseg runs networks whose "
                            "output is the input or a centred crop of it.")
        return offset, halo

    def fixed_geometry(self, size: int, offset: int, halo: int) -> Geometry:
        """The geometry of a network that takes one input size only."""
        if offset < 0:
            for depth in range(1, _MAX_DEPTH + 1):
                g = Geometry(depth, "valid")
                if g.is_valid(size) and g.output_size(size) == size + offset:
                    return g
            raise self.fail(f"it takes {size} px inputs only and returns {size + offset} px: not the geometry of a "
                            "valid-convolution U-Net; slideseg tiles valid U-Nets and same-padded networks.")
        depth = min(_MAX_DEPTH, (size & -size).bit_length() - 1)
        if depth < 1:
            raise self.fail(f"it takes {size} px inputs only, an odd size; slideseg tiles same-padded networks on a "
                            "grid of at least 2 px.")
        self.notes.append(f"the package fixes the input at {size} px; tiles are aligned to {2**depth} px.")
        return self.same(depth, halo)

    def same(self, depth: int, halo: int) -> Geometry:
        a = 2**depth
        used = -(-halo // a) * a
        if used != halo:
            self.notes.append(f"the declared halo {halo} px is rounded up to {used} px, the next multiple of the "
                              f"{a}-px tile grid.")
        if used == 0:
            self.notes.append("same-padded without a halo: tiles see zero padding at their edges; measure the seam "
                              "error with `slideseg plan` and set a halo in MODEL.zip.json.")
        return Geometry(depth, "same", used)

    def classes(self, out: Any, channels: int) -> tuple[tuple[str, ...], OutputRule]:
        names = next((tuple(str(n) for n in a.channel_names) for a in out.axes if str(a.type) == "channel"),
                     ("foreground",))
        post = [p for p in out.postprocessing if str(p.id) != "ensure_dtype"]
        kinds = [str(p.id) for p in post]
        ops: list[Op] = []
        for p in post:
            if str(p.id) not in ("sigmoid", "softmax", "binarize"):
                raise self.fail(f"its output post-processing {kinds} includes {p.id!s}; slideseg reads class scores "
                                "(logits, or probabilities after sigmoid or softmax, optionally binarized).")
            ops.append(self.step(p, "output"))
        threshold = next((op.threshold for op in ops if isinstance(op, Binarize)), None)
        if channels >= 2:
            if threshold is not None:
                raise self.fail(f"it binarizes {channels} output channels separately (multi-label); slideseg "
                                "writes one class per pixel.")
            return names, OutputRule(channels, None, tuple(ops))
        t = 0.5 if threshold is None else float(threshold[0])
        sigmoid = any(isinstance(op, Sigmoid) for op in ops)
        if sigmoid and not 0 < t < 1:
            raise self.fail(f"it binarizes a sigmoid at {t}; expected a threshold between 0 and 1.")
        if not sigmoid and threshold is None and not self.is_probability(out):
            t = 0.0  # a single raw score: a logit
        background = math.log(t / (1 - t)) if sigmoid else t
        return ("background", names[0]), OutputRule(1, background, tuple(ops))

    @staticmethod
    def is_probability(tensor: Any) -> bool:
        data = tensor.data[0] if isinstance(tensor.data, Sequence) else tensor.data
        return tuple(getattr(data, "range", (None, None))) == (0, 1)

    def preprocessing(self, inp: Any) -> list[Op]:
        return [self.step(p, "input") for p in inp.preprocessing if str(p.id) != "ensure_dtype"]

    def step(self, p: Any, what: str) -> Op:
        """One bioimage.io processing step as a :mod:`slideseg.io.normalise` step."""
        kind = str(p.id)
        kw: Any = getattr(p, "kwargs", None)
        if kind == "sigmoid":
            return Sigmoid()
        if kind == "softmax":
            self.along_channel(kw, what, kind)
            return Softmax()
        if kind == "scale_linear":
            gain, offset = self.values(kw.gain), self.values(kw.offset)
            if hasattr(kw, "axis"):
                self.along_channel(kw, what, kind)
            return Affine(gain, offset)
        if kind == "fixed_zero_mean_unit_variance":
            if hasattr(kw, "axis"):
                self.along_channel(kw, what, kind)
            return Standardise(self.values(kw.mean), self.values(kw.std))
        if kind == "binarize":
            if hasattr(kw, "axis"):
                self.along_channel(kw, what, kind)
            return Binarize(self.values(kw.threshold))
        if kind == "zero_mean_unit_variance":
            return ZeroMeanUnitVariance(self.per_channel(kw.axes, kind), float(kw.eps))
        if kind == "scale_range":
            if kw.reference_tensor is not None and str(kw.reference_tensor) != str(self.d.inputs[0].id):
                raise self.fail(f"its {kind} refers to tensor {kw.reference_tensor}; slideseg has one input.")
            return ScaleRange(float(kw.min_percentile), float(kw.max_percentile), self.per_channel(kw.axes, kind),
                              float(kw.eps))
        if kind == "clip":
            if kw.min_percentile is None and kw.max_percentile is None:
                return Clip(None if kw.min is None else (float(kw.min),), None if kw.max is None else (float(kw.max),))
            if kw.min is not None or kw.max is not None:
                raise self.fail("its clip mixes a fixed bound and a percentile; slideseg reads one kind per clip.")
            return ClipPercentile(kw.min_percentile, kw.max_percentile, self.per_channel(kw.axes, kind))
        raise self.fail(f"its {what} processing uses {kind!r}; slideseg reads scale_linear, "
                        "fixed_zero_mean_unit_variance, zero_mean_unit_variance, scale_range, clip, binarize, "
                        "sigmoid, softmax and ensure_dtype.")

    @staticmethod
    def values(v: Any) -> tuple[float, ...]:
        return tuple(float(x) for x in v) if isinstance(v, Sequence) else (float(v),)

    def along_channel(self, kw: Any, what: str, kind: str) -> None:
        if kw is not None and str(getattr(kw, "axis", "channel")) != "channel":
            raise self.fail(f"its {what} {kind} runs along axis {kw.axis}; slideseg supports the channel axis.")

    def per_channel(self, axes: Any, kind: str) -> bool:
        """Statistics over ``axes``: all of them jointly (None), or per channel when 'channel' is not reduced."""
        if axes is None:
            return False
        reduced = {str(a) for a in axes}
        if not {"y", "x"} <= reduced:
            raise self.fail(f"its {kind} reduces axes {sorted(reduced)}; slideseg computes statistics over the whole "
                            "slide (y and x), per channel or jointly.")
        return "channel" not in reduced

    def mpp(self, inp: Any) -> float | None:
        scales = {(str(a.unit), float(a.scale)) for a in inp.axes if str(a.type) == "space"}
        if len(scales) != 1:
            self.notes.append(f"y and x have different pixel sizes {sorted(scales)}: no pixel size is used.")
            return None
        unit, scale = scales.pop()
        if unit not in _UNIT_UM:
            return None
        return scale * _UNIT_UM[unit]

    def mirror(self, inp: Any, base: Mapping[str, Any]) -> str:
        mode = str(getattr(inp.pad, "mode", "")) if inp.pad is not None else ""
        if mode in ("reflect", "symmetric"):
            return mode
        if mode:
            self.notes.append(f"the package pads with {mode!r}; slideseg mirrors beyond the slide ('reflect').")
        return str(base.get("mirror", "reflect"))

    def slideseg_config(self) -> dict[str, Any]:
        """The model config a slideseg export keeps in ``config.slideseg`` (architecture, colours), or {}."""
        extra = getattr(self.d.config, "slideseg", None)
        cfg = extra.get("model_config") if isinstance(extra, Mapping) else None
        if not isinstance(cfg, Mapping):
            return {}
        keep = ("width", "class_colors", "mirror")
        return {k: cfg[k] for k in keep if k in cfg}

    def test_file(self, tensor: Any) -> PackageFile | None:
        t = tensor.test_tensor
        return None if t is None else self.package_file(t, f"test tensor of {tensor.id}")

    def package_file(self, file_descr: Any, what: str) -> PackageFile:
        source = file_descr.source
        if "://" in str(source):
            raise self.fail(f"its {what} is at {source}; slideseg downloads nothing: get the package with its files "
                            "inside (a .zip).")
        return PackageFile(str(source), None if file_descr.sha256 is None else str(file_descr.sha256))

    def weights(self) -> tuple[dict[str, PackageFile], tuple[str, ...]]:
        w = self.d.weights
        present = [f for f in ("torchscript", "onnx", "pytorch_state_dict", "tensorflow_saved_model_bundle",
                               "keras_hdf5", "keras_v3", "tensorflow_js") if getattr(w, f, None) is not None]
        readable = {f: self.package_file(getattr(w, f), f"{f} weights") for f in READ_FORMATS if f in present}
        if not readable:
            raise self.fail(f"its weights are {', '.join(present) or 'missing'}; slideseg reads TorchScript and "
                            "ONNX weights: convert the model (e.g. bioimageio.core's weight converters) and package "
                            "it again.")
        return readable, tuple(f for f in present if f not in readable)

    def tolerance(self) -> tuple[float, float, float]:
        bio = getattr(self.d.config, "bioimageio", None)
        for t in getattr(bio, "reproducibility_tolerance", ()) or ():
            return float(t.relative_tolerance), float(t.absolute_tolerance), float(t.mismatched_elements_per_million)
        return 1e-3, 1e-3, 100.0


# ----------------------------------------------------------------------------------- overrides


def override_path(path: Path) -> Path | None:
    """``MODEL.zip.json`` (or ``rdf.yaml.json``) beside a package, if it exists."""
    candidate = path.with_name(path.name + ".json")
    return candidate if candidate.is_file() else None


def _apply_overrides(model: BioimageioModel) -> BioimageioModel:
    side = override_path(model.path)
    if side is None:
        return model
    try:
        data = json.loads(side.read_text())
    except (OSError, ValueError) as exc:
        raise ModelFileError(f"{side} is not a readable JSON file ({exc}).") from exc
    if not isinstance(data, dict) or set(data) - set(OVERRIDE_KEYS):
        raise ModelFileError(f"{side} may set {', '.join(OVERRIDE_KEYS)}; got {data!r}.")
    fields_ = {k: v for k, v in data.items() if k != "norm"}
    try:
        cfg = UNetConfig.from_dict({**model.config.to_dict(), **fields_})
    except ConfigError as exc:
        raise ModelFileError(f"{side}: {exc}") from exc
    notes = (*model.notes, f"{side.name} overrides {', '.join(sorted(data))}.")
    model = replace(model, config=cfg, notes=notes, metadata={**model.metadata, "overrides": str(side)})
    if data.get("norm") not in (None, "model", "slide"):
        raise ModelFileError(f"{side}: norm must be 'slide' or 'model', got {data['norm']!r}.")
    if data.get("norm") == "slide":
        cfg = replace(model.config, norm_mean=(0.0,), norm_std=(1.0,))
        model = replace(model, config=cfg, preprocessing=(ZeroMeanUnitVariance(per_channel=True),))
    return model


__all__ = ["INSTALL_HINT", "READ_FORMATS", "BioimageioModel", "OutputRule", "PackageFile", "is_package",
           "load_description", "read_package", "to_nchw"]
