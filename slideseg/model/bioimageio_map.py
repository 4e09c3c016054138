"""Mapping a validated bioimage.io model description onto a :class:`BioimageioModel`: axes, size rule,
crop or halo, weights, pre- and post-processing, classes, pixel size (see
:mod:`slideseg.model.bioimageio` for the rules)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

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
    needs_statistics,
)
from slideseg.model.bioimageio_model import READ_FORMATS, BioimageioModel, OutputRule, PackageFile
from slideseg.model.config import UNetConfig
from slideseg.plan.geometry import Geometry

__all__ = ["map_description"]

_UNIT_UM = {"micrometer": 1.0, "nanometer": 1e-3, "millimeter": 1e3, "angstrom": 1e-4, "centimeter": 1e4,
            "meter": 1e6}
_MAX_DEPTH = 7


def map_description(descr: Any, path: Path, notes: list[str]) -> BioimageioModel:
    """The package at ``path``, described by the validated ``descr``, as slideseg runs it.

    Raises
    ------
    ModelFileError
        The description asks for what slideseg cannot run, with what to do.
    """
    return _Mapper(descr, path, notes).model()


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
