"""Input normalisation: the pre-processing steps a model asks for, the statistics of a whole slide
that some of them need, and applying them to tiles (numpy, no torch).

A model's pre-processing is a chain of small steps (:data:`Op`). Fixed steps carry their constants
(:class:`Standardise`, :class:`Affine`, :class:`Clip`, :class:`Binarize`, :class:`Sigmoid`,
:class:`Softmax`); statistics steps (:class:`ZeroMeanUnitVariance`, :class:`ScaleRange`,
:class:`ClipPercentile`) need the mean, standard deviation or percentiles of the image. Computed
on each tile, those would differ from tile to tile and the seams would show, so slideseg computes
them once per slide (:func:`statistics`, on one pyramid level, tissue only) and turns the chain
into fixed steps with those constants (:func:`resolve`) that every tile then shares.

>>> ops = (ScaleRange(1.0, 99.0, per_channel=False), Clip((0.0,), (1.0,)))
>>> image = np.arange(100, dtype=np.uint8).reshape(10, 10, 1)
>>> fixed = resolve(ops, statistics(_Array(image), percentiles_of(ops)))
>>> fixed[0].mean, round(fixed[0].std[0], 4)
((0.99,), 97.02)
>>> [round(float(v), 3) for v in apply(fixed, np.array([[[[0.0, 50.0, 120.0]]]], np.float32)).ravel()]
[0.0, 0.505, 1.0]
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import numpy as np

from slideseg.errors import ConfigError
from slideseg.io.slide import open_slide

# ----------------------------------------------------------------------------------- fixed steps

Values = tuple[float, ...]
"""One value for every channel, or one value broadcast to all channels."""


@dataclass(frozen=True)
class Standardise:
    """``(x - mean) / std`` per channel (slideseg's own normalisation; bioimage.io's
    ``fixed_zero_mean_unit_variance``)."""

    mean: Values
    std: Values
    kind: ClassVar[str] = "standardise"


@dataclass(frozen=True)
class Affine:
    """``x * gain + offset`` per channel (bioimage.io's ``scale_linear``)."""

    gain: Values
    offset: Values
    kind: ClassVar[str] = "affine"


@dataclass(frozen=True)
class Clip:
    """Values below ``min`` become ``min``, above ``max`` become ``max`` (None: no bound)."""

    min: Values | None = None
    max: Values | None = None
    kind: ClassVar[str] = "clip"


@dataclass(frozen=True)
class Binarize:
    """1.0 where ``x > threshold``, else 0.0."""

    threshold: Values
    kind: ClassVar[str] = "binarize"


@dataclass(frozen=True)
class Sigmoid:
    """``1 / (1 + exp(-x))``."""

    kind: ClassVar[str] = "sigmoid"


@dataclass(frozen=True)
class Softmax:
    """Softmax over the channel axis."""

    kind: ClassVar[str] = "softmax"


# ------------------------------------------------------------------------------ statistics steps


@dataclass(frozen=True)
class ZeroMeanUnitVariance:
    """``(x - mean) / (std + eps)`` with the image's mean and standard deviation, per channel or
    over all channels jointly."""

    per_channel: bool = True
    eps: float = 1e-6
    kind: ClassVar[str] = "zero_mean_unit_variance"


@dataclass(frozen=True)
class ScaleRange:
    """``(x - lo) / (hi - lo + eps)`` with ``lo``, ``hi`` the image's ``min_percentile`` and
    ``max_percentile``, per channel or over all channels jointly."""

    min_percentile: float = 0.0
    max_percentile: float = 100.0
    per_channel: bool = True
    eps: float = 1e-6
    kind: ClassVar[str] = "scale_range"


@dataclass(frozen=True)
class ClipPercentile:
    """:class:`Clip` at the image's percentiles (None: no bound on that side)."""

    min_percentile: float | None = None
    max_percentile: float | None = None
    per_channel: bool = True
    kind: ClassVar[str] = "clip_percentile"


FixedOp = Standardise | Affine | Clip | Binarize | Sigmoid | Softmax
StatisticsOp = ZeroMeanUnitVariance | ScaleRange | ClipPercentile
Op = FixedOp | StatisticsOp
"""One pre-processing step."""

_KINDS: dict[str, type[Any]] = {c.kind: c for c in (Standardise, Affine, Clip, Binarize, Sigmoid, Softmax,
                                                    ZeroMeanUnitVariance, ScaleRange, ClipPercentile)}


def needs_statistics(ops: Sequence[Op]) -> bool:
    """Whether any step of ``ops`` needs the image's statistics.

    >>> needs_statistics([Standardise((0.0,), (1.0,))]), needs_statistics([ZeroMeanUnitVariance()])
    (False, True)
    """
    return any(isinstance(op, ZeroMeanUnitVariance | ScaleRange | ClipPercentile) for op in ops)


def percentiles_of(ops: Sequence[Op]) -> tuple[float, ...]:
    """The percentiles the statistics steps of ``ops`` need, sorted.

    >>> percentiles_of([ScaleRange(1.0, 99.8), ClipPercentile(None, 99.8)])
    (1.0, 99.8)
    """
    found: set[float] = set()
    for op in ops:
        if isinstance(op, ScaleRange):
            found |= {op.min_percentile, op.max_percentile}
        elif isinstance(op, ClipPercentile):
            found |= {p for p in (op.min_percentile, op.max_percentile) if p is not None}
    return tuple(sorted(found))


def op_to_dict(op: Op) -> dict[str, Any]:
    """``op`` as JSON-able builtins, with its ``kind``.

    >>> op_to_dict(Clip(None, (1.0,)))
    {'kind': 'clip', 'min': None, 'max': [1.0]}
    """
    out: dict[str, Any] = {"kind": op.kind}
    for name, value in vars(op).items():
        out[name] = list(value) if isinstance(value, tuple) else value
    return out


def op_from_dict(data: Mapping[str, Any]) -> Op:
    """The inverse of :func:`op_to_dict`.

    >>> op_from_dict({"kind": "affine", "gain": [2.0], "offset": [0.5]})
    Affine(gain=(2.0,), offset=(0.5,))
    """
    if not isinstance(data, Mapping) or data.get("kind") not in _KINDS:
        raise ConfigError(f"a normalisation step must be a mapping with a kind out of {sorted(_KINDS)}, got {data!r}")
    cls = _KINDS[str(data["kind"])]
    args = {k: tuple(float(x) for x in v) if isinstance(v, list) else v for k, v in data.items() if k != "kind"}
    try:
        op: Op = cls(**args)
    except TypeError as exc:
        raise ConfigError(f"normalisation step {data!r} does not fit {cls.__name__}: {exc}") from exc
    return op


def describe_ops(ops: Sequence[Op]) -> str:
    """A short human reading of a chain of steps.

    >>> describe_ops([ScaleRange(1.0, 99.8, per_channel=True), Clip((0.0,), (1.0,))])
    'scale_range 1-99.8 % (per channel), clip [0, 1]'
    """
    parts = []
    for op in ops:
        if isinstance(op, Standardise):
            parts.append(f"(x - {_short(op.mean)}) / {_short(op.std)}")
        elif isinstance(op, Affine):
            parts.append(f"x * {_short(op.gain)} + {_short(op.offset)}")
        elif isinstance(op, Clip):
            parts.append(f"clip [{_short(op.min) if op.min else '-inf'}, {_short(op.max) if op.max else 'inf'}]")
        elif isinstance(op, Binarize):
            parts.append(f"binarize > {_short(op.threshold)}")
        elif isinstance(op, ZeroMeanUnitVariance):
            parts.append(f"zero_mean_unit_variance ({_joint(op.per_channel)})")
        elif isinstance(op, ScaleRange):
            parts.append(f"scale_range {op.min_percentile:g}-{op.max_percentile:g} % ({_joint(op.per_channel)})")
        elif isinstance(op, ClipPercentile):
            lo = "-inf" if op.min_percentile is None else f"{op.min_percentile:g} %"
            hi = "inf" if op.max_percentile is None else f"{op.max_percentile:g} %"
            parts.append(f"clip [{lo}, {hi}] ({_joint(op.per_channel)})")
        else:
            parts.append(op.kind)
    return ", ".join(parts) or "none"


def _short(values: Values) -> str:
    text = ", ".join(f"{v:.4g}" for v in values)
    return text if len(values) == 1 else f"[{text}]"


def _joint(per_channel: bool) -> str:
    return "per channel" if per_channel else "all channels jointly"


# ----------------------------------------------------------------------------------- statistics


class RegionReader(Protocol):
    """What :func:`statistics` needs of an image: its (Y, X, C) shape and region reads."""

    @property
    def shape(self) -> tuple[int, ...]: ...

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray: ...


@dataclass(frozen=True)
class Statistics:
    """Per-channel and joint (all channels) statistics of an image, as :func:`statistics` measured them."""

    mean: Values
    std: Values
    percentiles: Mapping[float, Values] = field(default_factory=dict)
    """Per-channel value at each percentile."""
    joint_mean: float = 0.0
    joint_std: float = 1.0
    joint_percentiles: Mapping[float, float] = field(default_factory=dict)
    pixels: int = 0
    """Pixels counted (per channel)."""
    tissue_only: bool = False
    """Whether only tissue pixels were counted."""
    exact: bool = True
    """False when the percentiles come from a sample of the pixels (float images above 16 M pixels)."""

    def to_dict(self) -> dict[str, Any]:
        return {"mean": list(self.mean), "std": list(self.std),
                "percentiles": {repr(p): list(v) for p, v in self.percentiles.items()},
                "joint_mean": self.joint_mean, "joint_std": self.joint_std,
                "joint_percentiles": {repr(p): v for p, v in self.joint_percentiles.items()},
                "pixels": self.pixels, "tissue_only": self.tissue_only, "exact": self.exact}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Statistics:
        return cls(tuple(data["mean"]), tuple(data["std"]),
                   {float(p): tuple(v) for p, v in data.get("percentiles", {}).items()},
                   float(data["joint_mean"]), float(data["joint_std"]),
                   {float(p): float(v) for p, v in data.get("joint_percentiles", {}).items()},
                   int(data.get("pixels", 0)), bool(data.get("tissue_only", False)), bool(data.get("exact", True)))


SAMPLE_CAP = 1 << 24
"""Float images: percentiles are taken from at most this many pixels per channel (evenly strided)."""


def statistics(image: RegionReader, percentiles: Sequence[float] = (), *, tissue: np.ndarray | None = None,
               rows: int = 256) -> Statistics:
    """Mean, standard deviation and ``percentiles`` of ``image`` (Y, X, C), per channel and jointly.

    The image is read in stripes of ``rows`` rows, so memory stays flat at any size. Integer images
    up to 16 bits are counted in exact histograms (percentiles as ``numpy.percentile`` computes them,
    linear interpolation); float images sum exactly and take percentiles from up to
    :data:`SAMPLE_CAP` evenly strided pixels. ``tissue`` is a boolean mask of the whole image at any
    resolution (nearest neighbour): only its pixels count, unless it holds none.
    """
    h, w = int(image.shape[0]), int(image.shape[1])
    channels = int(image.shape[2]) if len(image.shape) > 2 else 1
    mask = None if tissue is None or not np.asarray(tissue).any() else np.asarray(tissue, bool)
    first = np.asarray(image.read(0, min(h, 1), 0, min(w, 1)))
    exact = first.dtype.kind in "ub" and first.dtype.itemsize <= 2
    acc = _Histograms(channels, 1 << (8 * first.dtype.itemsize)) if exact else _Samples(channels, h * w)
    for y0 in range(0, h, rows):
        y1 = min(h, y0 + rows)
        block = np.asarray(image.read(y0, y1, 0, w)).reshape(y1 - y0, w, channels)
        keep = _mask_rows(mask, y0, y1, h, w) if mask is not None else None
        acc.add(block.reshape(-1, channels) if keep is None else block[keep])
    return acc.result(percentiles, tissue_only=mask is not None)


def _mask_rows(mask: np.ndarray, y0: int, y1: int, h: int, w: int) -> np.ndarray:
    """Rows ``y0..y1`` of ``mask`` scaled (nearest neighbour) to an image of ``h`` x ``w``."""
    my = np.minimum(mask.shape[0] - 1, (np.arange(y0, y1) * mask.shape[0]) // h)
    mx = np.minimum(mask.shape[1] - 1, (np.arange(w) * mask.shape[1]) // w)
    return mask[np.ix_(my, mx)]


class _Histograms:
    """Exact per-channel histograms of unsigned integer pixels."""

    def __init__(self, channels: int, bins: int) -> None:
        self.counts = np.zeros((channels, bins), np.int64)

    def add(self, pixels: np.ndarray) -> None:  # (n, C)
        for c in range(self.counts.shape[0]):
            self.counts[c] += np.bincount(pixels[:, c].astype(np.int64), minlength=self.counts.shape[1])

    def result(self, percentiles: Sequence[float], tissue_only: bool) -> Statistics:
        values = np.arange(self.counts.shape[1], dtype=np.float64)
        per = [_hist_moments(h, values) for h in self.counts]
        joint = self.counts.sum(axis=0)
        jm, js = _hist_moments(joint, values)
        return Statistics(
            tuple(m for m, _ in per), tuple(s for _, s in per),
            {p: tuple(_hist_percentile(h, p) for h in self.counts) for p in percentiles},
            jm, js, {p: _hist_percentile(joint, p) for p in percentiles}, int(self.counts[0].sum()), tissue_only)


def _hist_moments(counts: np.ndarray, values: np.ndarray) -> tuple[float, float]:
    n = counts.sum()
    if n == 0:
        raise ConfigError("no pixels to compute normalisation statistics from: the image is empty.")
    mean = float((counts * values).sum() / n)
    return mean, float(math.sqrt((counts * (values - mean) ** 2).sum() / n))


def _hist_percentile(counts: np.ndarray, p: float) -> float:
    """``numpy.percentile(values, p)`` (linear interpolation) of the values a histogram counts.

    >>> _hist_percentile(np.array([0, 2, 0, 1]), 50.0), float(np.percentile([1, 1, 3], 50.0))
    (1.0, 1.0)
    """
    cum = np.cumsum(counts)
    pos = p / 100.0 * (cum[-1] - 1)
    lo = math.floor(pos)
    v_lo = int(np.searchsorted(cum, lo, side="right"))
    v_hi = int(np.searchsorted(cum, min(lo + 1, cum[-1] - 1), side="right"))
    return float(v_lo + (pos - lo) * (v_hi - v_lo))


class _Samples:
    """Exact moments (merged per stripe) and an evenly strided sample of float pixels."""

    def __init__(self, channels: int, total: int) -> None:
        self.n = 0
        self.mean = np.zeros(channels)
        self.m2 = np.zeros(channels)
        self.joint_n, self.joint_mean, self.joint_m2 = 0, np.zeros(1), np.zeros(1)  # over all channels
        self.stride = max(1, math.ceil(total / SAMPLE_CAP))
        self.offset = 0
        self.samples: list[np.ndarray] = []

    def add(self, pixels: np.ndarray) -> None:  # (n, C)
        if not len(pixels):
            return
        x = pixels.astype(np.float64)
        self.n, self.mean, self.m2 = _merge(self.n, self.mean, self.m2, len(x), x.mean(0), x.var(0) * len(x))
        flat = x.ravel()
        self.joint_n, self.joint_mean, self.joint_m2 = _merge(
            self.joint_n, self.joint_mean, self.joint_m2, flat.size, np.full(1, flat.mean()),
            np.full(1, flat.var() * flat.size))
        start = (-self.offset) % self.stride
        self.samples.append(pixels[start :: self.stride].astype(np.float32))
        self.offset += len(pixels)

    def result(self, percentiles: Sequence[float], tissue_only: bool) -> Statistics:
        if self.n == 0:
            raise ConfigError("no pixels to compute normalisation statistics from: the image is empty.")
        sample = np.concatenate(self.samples)
        per = {p: tuple(float(v) for v in np.percentile(sample, p, axis=0)) for p in percentiles}
        joint = {p: float(np.percentile(sample, p)) for p in percentiles}
        std = np.sqrt(self.m2 / self.n)
        return Statistics(tuple(float(m) for m in self.mean), tuple(float(s) for s in std), per,
                          float(self.joint_mean[0]), math.sqrt(float(self.joint_m2[0]) / self.joint_n), joint,
                          self.n, tissue_only,
                          exact=self.stride == 1)


def _merge(n_a: int, mean_a: np.ndarray, m2_a: np.ndarray, n_b: int, mean_b: np.ndarray,
           m2_b: np.ndarray) -> tuple[int, np.ndarray, np.ndarray]:
    """Chan's parallel update of (count, mean, sum of squared deviations)."""
    n = n_a + n_b
    delta = mean_b - mean_a
    return n, mean_a + delta * (n_b / n), m2_a + m2_b + delta**2 * (n_a * n_b / n)


class _Array:
    """An in-memory (Y, X, C) image as a :class:`RegionReader`."""

    def __init__(self, pixels: np.ndarray) -> None:
        self.pixels = pixels if pixels.ndim == 3 else pixels[..., None]

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.pixels.shape)

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        return self.pixels[y0:y1, x0:x1]


def array_statistics(pixels: np.ndarray, percentiles: Sequence[float] = ()) -> Statistics:
    """:func:`statistics` of an in-memory (Y, X, C) or (Y, X) image.

    >>> array_statistics(np.array([[0, 2], [4, 6]], np.uint8), [50.0]).percentiles
    {50.0: (3.0,)}
    """
    return statistics(_Array(np.asarray(pixels)), percentiles)


NORM_PIXELS = 1 << 22
"""Default level of a slide's statistics: the finest pyramid level of at most this many pixels (4 MP)."""


def norm_level(shapes: Sequence[tuple[int, int]], asked: int | None = None, name: str = "the slide") -> int:
    """The pyramid level a slide's statistics are computed from: ``asked``, or the finest level of at
    most :data:`NORM_PIXELS` pixels (the coarsest if none is that small).

    >>> norm_level([(8192, 8192), (4096, 4096), (2048, 2048), (1024, 1024)])
    2
    """
    if asked is not None:
        if not 0 <= asked < len(shapes):
            raise ConfigError(f"--norm-level {asked}: {name} has levels 0..{len(shapes) - 1} "
                              f"({', '.join('x'.join(map(str, s)) for s in shapes)}).")
        return asked
    small = [i for i, (h, w) in enumerate(shapes) if h * w <= NORM_PIXELS]
    return small[0] if small else len(shapes) - 1


def slide_statistics(path: str | os.PathLike[str], rule: Sequence[Op], *, level: int | None = None,
                     series: int | None = None, tissue: np.ndarray | None = None,
                     **open_kw: Any) -> dict[str, Any]:
    """The statistics ``rule`` needs, of the slide at ``path`` (pyramid level :func:`norm_level`,
    ``tissue`` pixels only), and the fixed steps they make: a JSON-able record with ``level``,
    ``statistics`` (:meth:`Statistics.to_dict`), ``steps`` (``rule``) and ``resolved`` (the fixed steps)."""
    with open_slide(path, level=0, series=series, **open_kw) as slide0:
        shapes = [lv.shape for lv in slide0.levels]
        series = slide0.series
    chosen = norm_level(shapes, level, os.fspath(path))
    with open_slide(path, level=chosen, series=series, **open_kw) as slide:
        stats = statistics(slide, percentiles_of(rule), tissue=tissue)
    resolved = resolve(rule, stats)
    return {"level": chosen, "level_shape": list(shapes[chosen]), "rule": describe_ops(rule),
            "steps": [op_to_dict(op) for op in rule], "resolved": [op_to_dict(op) for op in resolved],
            "applied": describe_ops(resolved), "statistics": stats.to_dict()}


# ----------------------------------------------------------------------------------- resolving


def resolve(ops: Sequence[Op], stats: Statistics | None) -> tuple[FixedOp, ...]:
    """``ops`` with every statistics step replaced by a fixed step holding ``stats``' constants.

    Raises
    ------
    ConfigError
        ``ops`` need statistics and ``stats`` is None, or ``stats`` lacks a percentile.
    """
    out: list[FixedOp] = []
    for op in ops:
        if isinstance(op, ZeroMeanUnitVariance | ScaleRange | ClipPercentile):
            if stats is None:
                raise ConfigError(f"the model's pre-processing ({describe_ops(ops)}) needs statistics of the whole "
                                  "slide; `slideseg predict` computes them (see --norm-level).")
            out.append(_fixed(op, stats))
        else:
            out.append(op)
    return tuple(out)


def _fixed(op: StatisticsOp, stats: Statistics) -> FixedOp:
    def at(p: float) -> Values:
        table: Mapping[float, Any] = stats.percentiles if op.per_channel else stats.joint_percentiles
        if p not in table:
            raise ConfigError(f"the statistics hold no {p:g} % percentile (they have {sorted(table)}).")
        return tuple(table[p]) if op.per_channel else (float(table[p]),)

    if isinstance(op, ZeroMeanUnitVariance):
        mean, std = (stats.mean, stats.std) if op.per_channel else ((stats.joint_mean,), (stats.joint_std,))
        return Standardise(tuple(mean), tuple(s + op.eps for s in std))
    if isinstance(op, ScaleRange):
        lo, hi = at(op.min_percentile), at(op.max_percentile)
        return Standardise(lo, tuple(b - a + op.eps for a, b in zip(lo, hi, strict=True)))
    return Clip(None if op.min_percentile is None else at(op.min_percentile),
                None if op.max_percentile is None else at(op.max_percentile))


def as_standardise(ops: Sequence[Op]) -> Standardise | None:
    """The one :class:`Standardise` that ``ops`` amount to, when they are a single fixed linear step
    with positive scale (an engine then normalises on its device); else None.

    >>> as_standardise([Affine((0.5,), (-1.0,))])
    Standardise(mean=(2.0,), std=(2.0,))
    >>> as_standardise([]), as_standardise([Sigmoid()])
    (Standardise(mean=(0.0,), std=(1.0,)), None)
    """
    if not ops:
        return Standardise((0.0,), (1.0,))
    if len(ops) != 1:
        return None
    op = ops[0]
    if isinstance(op, Standardise) and all(s > 0 for s in op.std):
        return op
    if isinstance(op, Affine) and all(g > 0 for g in op.gain):
        gain, offset = np.broadcast_arrays(np.asarray(op.gain, np.float64), np.asarray(op.offset, np.float64))
        return Standardise(tuple(float(v) for v in -offset / gain), tuple(float(v) for v in 1.0 / gain))
    return None


# ----------------------------------------------------------------------------------- applying


def apply(ops: Sequence[Op], x: np.ndarray) -> np.ndarray:
    """Apply fixed steps to a float batch ``x`` (N, C, H, W); returns float32. A statistics step is an
    error: :func:`resolve` it first.

    >>> apply([Standardise((1.0,), (2.0,)), Binarize((0.0,))], np.array([[[[0.0, 3.0]]]], np.float32)).tolist()
    [[[[0.0, 1.0]]]]
    """
    y: np.ndarray = np.asarray(x, np.float32)
    channels = y.shape[1]
    for op in ops:
        if isinstance(op, Standardise):
            y = (y - _per_channel(op.mean, channels)) / _per_channel(op.std, channels)
        elif isinstance(op, Affine):
            y = y * _per_channel(op.gain, channels) + _per_channel(op.offset, channels)
        elif isinstance(op, Clip):
            lo = None if op.min is None else _per_channel(op.min, channels)
            hi = None if op.max is None else _per_channel(op.max, channels)
            y = np.clip(y, lo, hi)
        elif isinstance(op, Binarize):
            y = (y > _per_channel(op.threshold, channels)).astype(np.float32)
        elif isinstance(op, Sigmoid):
            y = 1.0 / (1.0 + np.exp(-y))
        elif isinstance(op, Softmax):
            z = np.exp(y - y.max(axis=1, keepdims=True))
            y = z / z.sum(axis=1, keepdims=True)
        else:
            raise ConfigError(f"{op.kind} needs statistics: resolve() it with the slide's statistics first.")
        y = np.asarray(y, np.float32)
    return y


def _per_channel(values: Values, channels: int) -> np.ndarray:
    """``values`` as float32 of shape (1, C, 1, 1) (one value is broadcast)."""
    v = np.asarray(values, np.float32)
    if v.size not in (1, channels):
        raise ConfigError(f"a normalisation step has {v.size} values for {channels} channels; expected 1 or "
                          f"{channels}.")
    return np.broadcast_to(v, (channels,)).reshape(1, channels, 1, 1)


__all__ = ["Affine", "Binarize", "Clip", "ClipPercentile", "FixedOp", "Op", "ScaleRange", "Sigmoid", "Softmax",
           "Standardise", "Statistics", "StatisticsOp", "ZeroMeanUnitVariance", "apply", "array_statistics",
           "as_standardise", "describe_ops", "needs_statistics", "norm_level", "op_from_dict", "op_to_dict",
           "percentiles_of", "resolve", "slide_statistics", "statistics"]
