"""Procedural H&E-like synthetic whole slides with exact ground truth.

Every pixel is a pure function of its level-0 coordinates, the seed and the config: random values
come from splitmix64 hashing of integer coordinates, tissue islands from value noise on a coarse
lattice, nuclei from one jittered ellipse candidate per ``cell`` x ``cell`` grid cell. Any region
of any pyramid level therefore renders exactly like the same crop of a larger rendering, and a
slide is written tile by tile with memory that does not grow with its size.

A pixel belongs to the nearest (in normalised elliptical distance) present candidate among its
own and its 8 neighbouring cells, if that distance is < 1; so neighbouring nuclei touch along a
shared boundary instead of overlapping. ``nucleus_radius[1] < cell`` guarantees the 3x3
neighbourhood holds every candidate that can reach a pixel. ``touching`` presses a seeded fraction
of the nuclei together in pairs (both cells of a pair hold a nucleus, overlapping at their shared
cell edge), for data where many objects touch; :func:`touching_fraction` measures it.
"""

from __future__ import annotations

import functools
import math
import numbers
import operator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from slideseg.config import Config
from slideseg.errors import ConfigError
from slideseg.plan.tiles import grid_boxes, level_shape

if TYPE_CHECKING:
    pass

F32 = NDArray[np.float32]
I64 = NDArray[np.int64]
U64 = NDArray[np.uint64]

PRESENCE = 0.7  # probability that a cell inside tissue holds a nucleus
_BLOCK = 256  # edge of the blocks rendered at once (cache-friendly)
_MAX_SIDE = 2**24  # level-0 coordinates stay exact in float32
_THRESHOLD_SAMPLES = 256  # per side, to choose the tissue threshold
_MEASURE_SAMPLES = 512  # per side, to measure the achieved tissue fraction
_TISSUE_EDGE = 0.006  # width of the soft tissue edge, in noise units
_ABSENT = -1.0e6  # centre of an absent candidate: far from every pixel
_OFFSETS = tuple((oy, ox) for oy in (-1, 0, 1) for ox in (-1, 0, 1))
_M64 = 2**64 - 1
_ONE = np.float32(1)

# Stains, RGB 0-255: near-white glass, eosin-pink stroma, haematoxylin-purple nuclei.
_BACKGROUND = (240.0, 238.0, 243.0)
_EOSIN = (225.0, 150.0, 185.0)
_HAEMATOXYLIN = (85.0, 55.0, 135.0)

# Hash streams: one per independent random quantity.
_S_TISSUE, _S_NUCLEI, _S_GRAIN, _S_FIBRE, _S_BROAD, _S_CHROMATIN, _S_SHADE, _S_PAIRS = range(1, 9)
_PRESS = 0.8  # pressed pairs: centre distance / sum of the minor semi-axes (< 1: they overlap)



@dataclass(frozen=True)
class SynthConfig(Config):
    """How to generate a synthetic slide; everything about it follows from these values."""

    size: tuple[int, int]
    """(H, W) of level 0, in pixels."""
    seed: int = 0
    """Random seed, 0 <= seed < 2**64; the same seed gives the same slide."""
    mpp: float = 0.5
    """Micrometres per pixel at level 0 (written to the OME-XML and the resolution tags)."""
    tissue_fraction: float = 0.6
    """Target fraction of the slide covered by tissue, in (0, 1]."""
    nucleus_radius: tuple[float, float] = (6.0, 10.0)
    """(min, max) major semi-axis of a nucleus in level-0 pixels; max must be < ``cell``."""
    cell: int = 20
    """Spacing of the grid of nucleus candidates, in level-0 pixels (one candidate per cell)."""
    tile: int = 256
    """Edge of the TIFF tiles, a multiple of 16."""
    touching: float = 0.0
    """Fraction of the nuclei pressed together in pairs (expected value, in [0, 1)): the two
    nuclei of a pair of horizontally neighbouring cells overlap and share a long border. On top of
    the nuclei that touch by chance (at the default size and spacing about half touch another;
    :func:`touching_fraction` measures it); 0 presses none, and the slide is the same as without it."""

    def __post_init__(self) -> None:
        for name, kind in _FIELD_KINDS.items():  # normalise: lists -> tuples, numpy -> builtins
            object.__setattr__(self, name, _coerce(name, getattr(self, name), kind))
        (h, w), (r_lo, r_hi), cell, tile = self.size, self.nucleus_radius, self.cell, self.tile
        n_cells = -(-h // cell) * -(-w // cell) if cell > 0 else 0
        near = max(16, tile // 16 * 16)
        for ok, name, expected in [
            (min(h, w) >= 1 and max(h, w) <= _MAX_SIDE, "size", f"(H, W) in [1, {_MAX_SIDE}]"),
            (0 <= self.seed <= _M64, "seed", "in [0, 2**64)"),
            (0 < self.mpp < math.inf, "mpp", "a positive number of µm"),
            (0 < self.tissue_fraction <= 1, "tissue_fraction", "in (0, 1]"),
            (cell >= 2, "cell", ">= 2"),
            (0 < r_lo <= r_hi < cell, "nucleus_radius", f"(min, max) with 0 < min <= max < cell "
             f"(= {cell}), so a nucleus never reaches past its neighbouring cells"),
            (n_cells < 2**32, "cell", f"large enough for uint32 ids ({n_cells} cells)"),
            (tile >= 16 and tile % 16 == 0, "tile",
             f"a multiple of 16 (TIFF tiles); nearest are {near} and {near + 16}"),
            (0 <= self.touching < 1, "touching", "a fraction in [0, 1)"),
        ]:
            if not ok:
                raise ConfigError(f"SynthConfig.{name} must be {expected}, "
                                  f"got {getattr(self, name)!r}")




# ------------------------------------------------------------------------------------- hashing


def _mix_int(x: int) -> int:
    """splitmix64 finaliser on a Python int (for deriving stream keys)."""
    x = (x + 0x9E3779B97F4A7C15) & _M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _M64
    return x ^ (x >> 31)


def _key(seed: int, stream: int) -> int:
    return _mix_int(_mix_int(seed) ^ stream)


def _mix(x: U64) -> U64:
    """splitmix64 finaliser on a uint64 array (wraps modulo 2**64, as intended)."""
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x ^= x >> np.uint64(30)
    x *= np.uint64(0xBF58476D1CE4E5B9)
    x ^= x >> np.uint64(27)
    x *= np.uint64(0x94D049BB133111EB)
    x ^= x >> np.uint64(31)
    return x


def _hash2(key: int, a: I64, b: I64) -> U64:
    """Hash of integer pairs ``(a, b)`` (broadcast), salted with ``key``."""
    ha = _mix(a.astype(np.uint64) + np.uint64(key))
    return _mix(ha + b.astype(np.uint64))


def _unit(h: U64, shift: int) -> F32:
    """24 bits of ``h`` starting at ``shift`` as floats in [0, 1)."""
    bits = (h >> np.uint64(shift)) & np.uint64(0xFFFFFF)
    return bits.astype(np.float32) * np.float32(2.0**-24)


# --------------------------------------------------------------------------------------- noise


def _smooth(rem: I64, spacing: int) -> F32:
    t = rem.astype(np.float32) / np.float32(spacing)
    return t * t * (3 - 2 * t)


def _noise_grid(key: int, ys: I64, xs: I64, spacing: int) -> F32:
    """Value noise in [0, 1) on the grid ``ys x xs`` (level-0 coordinates) -> (h, w)."""
    iy, ry = np.divmod(ys, spacing)
    ix, rx = np.divmod(xs, spacing)
    sy, sx = _smooth(ry, spacing), _smooth(rx, spacing)
    nodes_y = np.unique(np.concatenate([iy, iy + 1]))
    nodes_x = np.unique(np.concatenate([ix, ix + 1]))
    lattice = _unit(_hash2(key, nodes_y[:, None], nodes_x[None, :]), 40)
    r0, c0 = np.searchsorted(nodes_y, iy), np.searchsorted(nodes_x, ix)  # iy + 1 is at r0 + 1
    rows = lattice[r0] * (_ONE - sy)[:, None] + lattice[r0 + 1] * sy[:, None]  # (h, n_nodes_x)
    return rows[:, c0] * (_ONE - sx) + rows[:, c0 + 1] * sx


def _noise_points(key: int, py: I64, px: I64, spacing: int) -> F32:
    """:func:`_noise_grid` at scattered points, with bit-identical arithmetic."""
    iy, ry = np.divmod(py, spacing)
    ix, rx = np.divmod(px, spacing)
    sy, sx = _smooth(ry, spacing), _smooth(rx, spacing)

    def node(dy: int, dx: int) -> F32:
        return _unit(_hash2(key, iy + dy, ix + dx), 40)

    left = node(0, 0) * (_ONE - sy) + node(1, 0) * sy
    right = node(0, 1) * (_ONE - sy) + node(1, 1) * sy
    return left * (_ONE - sx) + right * sx


def _tissue_octaves(cfg: SynthConfig) -> list[tuple[int, int, float]]:
    """(key, spacing, weight) of the tissue field; islands scale down on small slides."""
    base = min(2048, max(256, max(cfg.size) // 3))
    return [(_key(cfg.seed, _S_TISSUE * 16 + i), max(1, base // div), weight)
            for i, (div, weight) in enumerate([(1, 1.0), (2, 0.5), (4, 0.25), (16, 0.12)])]


def _tissue_field(cfg: SynthConfig, ys: I64, xs: I64, *, grid: bool) -> F32:
    """Tissue field on the grid ``ys x xs`` or at the points ``(ys, xs)``; tissue is > threshold."""
    noise = _noise_grid if grid else _noise_points
    terms = [np.float32(w) * noise(key, ys, xs, spacing) for key, spacing, w in _tissue_octaves(cfg)]
    return functools.reduce(operator.add, terms)  # ((t0 + t1) + t2) + t3 on both paths


def _sample_coords(n: int, side: int, phase: float) -> I64:  # n points spread over [0, side)
    return ((np.arange(n) + phase) * (side / n)).astype(np.int64)


@functools.lru_cache(maxsize=64)
def _tissue_threshold(cfg: SynthConfig) -> np.float32:
    """Threshold giving ``cfg.tissue_fraction``, from a fixed coarse sampling of the whole slide."""
    if cfg.tissue_fraction >= 1:
        return np.float32(-1.0)  # the field is >= 0 everywhere
    ys = _sample_coords(_THRESHOLD_SAMPLES, cfg.size[0], 0.5)
    xs = _sample_coords(_THRESHOLD_SAMPLES, cfg.size[1], 0.5)
    field = _tissue_field(cfg, ys, xs, grid=True)
    return np.float32(np.quantile(field, 1.0 - cfg.tissue_fraction))


def measure_tissue_fraction(cfg: SynthConfig) -> float:
    """Fraction of tissue on a 512 x 512 sampling offset from the one that set the threshold."""
    ys = _sample_coords(_MEASURE_SAMPLES, cfg.size[0], 0.25)
    xs = _sample_coords(_MEASURE_SAMPLES, cfg.size[1], 0.25)
    return float(np.mean(_tissue_field(cfg, ys, xs, grid=True) > _tissue_threshold(cfg)))


# -------------------------------------------------------------------------------------- nuclei


def _candidates(cfg: SynthConfig, cells_y: I64, cells_x: I64) -> F32:
    """Nucleus candidates of the cells ``cells_y x cells_x`` -> (5, ny, nx): centre y, centre x
    and quadratic form A, B, C with ``q = A dy^2 + B dy dx + C dx^2`` (q < 1 inside)."""
    cy, cx = cells_y[:, None], cells_x[None, :]
    h1 = _hash2(_key(cfg.seed, _S_NUCLEI), cy, cx)
    h2 = _mix(h1)
    h3 = _mix(h2)
    centre_y = (cy + _unit(h1, 40).astype(np.float64)) * cfg.cell  # (ny, nx)
    centre_x = (cx + _unit(h1, 16).astype(np.float64)) * cfg.cell
    r_lo, r_hi = cfg.nucleus_radius
    major = r_lo + _unit(h2, 40).astype(np.float64) * (r_hi - r_lo)
    minor = major * (0.75 + 0.25 * _unit(h2, 16).astype(np.float64))
    theta = np.pi * _unit(h3, 40).astype(np.float64)
    cos, sin = np.cos(theta), np.sin(theta)
    ia, ib = major**-2, minor**-2
    n_y, n_x = -(-cfg.size[0] // cfg.cell), -(-cfg.size[1] // cfg.cell)
    inside = (cy >= 0) & (cy < n_y) & (cx >= 0) & (cx < n_x)
    chosen = _unit(h3, 16) < PRESENCE
    if cfg.touching > 0:
        pressed, centre_y, centre_x = _press_pairs(cfg, cy, cx, minor, centre_y, centre_x)
        chosen |= pressed
    on_tissue = _tissue_field(cfg, np.floor(centre_y).astype(np.int64),
                              np.floor(centre_x).astype(np.int64), grid=False)
    present = inside & chosen & (on_tissue > _tissue_threshold(cfg))
    return np.stack([
        np.where(present, centre_y, _ABSENT),
        np.where(present, centre_x, _ABSENT),
        cos * cos * ia + sin * sin * ib,
        2 * cos * sin * (ia - ib),
        sin * sin * ia + cos * cos * ib,
    ]).astype(np.float32)


def _press_pairs(cfg: SynthConfig, cy: I64, cx: I64, minor: NDArray[Any], centre_y: NDArray[Any],
                 centre_x: NDArray[Any]) -> tuple[NDArray[np.bool_], NDArray[Any], NDArray[Any]]:
    """Which cells hold a nucleus of a pressed pair, and the moved centres (ny, nx).

    Cells ``2k`` and ``2k + 1`` of a row form a pair; a seeded fraction of pairs is pressed: both
    nuclei present, at one height, each ``_PRESS`` times its minor semi-axis from the pair's shared
    cell edge, so they overlap whatever their orientation. Centres stay in their own cells (minor
    < cell), which keeps every nucleus within reach of the 3x3 cells :func:`_nuclei` searches.
    """
    pair_x = cx // 2
    left = cx % 2 == 0
    hp = _hash2(_key(cfg.seed, _S_PAIRS), cy, pair_x)
    # P(pair pressed) so that a fraction `touching` of the nuclei is pressed: p / (p + PRESENCE (1 - p)) = t
    t = cfg.touching
    pressed = _unit(hp, 40).astype(np.float64) < PRESENCE * t / (1 - (1 - PRESENCE) * t)
    edge = (2 * pair_x + 1) * cfg.cell  # the x of the cell edge the pair shares
    x = np.where(left, edge - _PRESS * minor, edge + _PRESS * minor)
    y = (cy + 0.25 + 0.5 * _unit(hp, 16).astype(np.float64)) * cfg.cell
    return pressed, np.where(pressed, y, centre_y), np.where(pressed, x, centre_x)


def _nuclei(cfg: SynthConfig, ys: I64, xs: I64) -> tuple[NDArray[np.uint32], F32]:
    """Instance ids (h, w) and normalised squared distance q to the winning centre (1 = none)."""
    cy, cx = ys // cfg.cell, xs // cfg.cell
    cells_y = np.unique(np.concatenate([cy - 1, cy, cy + 1]))
    cells_x = np.unique(np.concatenate([cx - 1, cx, cx + 1]))
    cand = _candidates(cfg, cells_y, cells_x)  # (5, ny, nx)
    row, col = np.searchsorted(cells_y, cy), np.searchsorted(cells_x, cx)  # own cell; +-1 = nbrs
    fy, fx = ys.astype(np.float32)[:, None], xs.astype(np.float32)[None, :]  # (h, 1), (1, w)
    best_q = np.ones((ys.size, xs.size), np.float32)
    best_k = np.zeros((ys.size, xs.size), np.uint8)  # 0 = none, k + 1 = _OFFSETS[k]
    if not np.any(cand[0] != np.float32(_ABSENT)):  # glass only: no nucleus can reach here
        return np.zeros(best_k.shape, np.uint32), best_q
    for oy in (-1, 0, 1):
        c = cand[:, row + oy]  # (5, h, nx): the candidates of each pixel row's cell row + oy
        dy = fy - c[0]
        # per (row, candidate): A dy^2, B dy, centre x, C; gathered per pixel below
        table = (c[2] * dy * dy, c[3] * dy, c[1], c[4])
        for ox in (-1, 0, 1):
            a_dy2, b_dy, centre_x, c_ = (t[:, col + ox] for t in table)  # each (h, w)
            dx = fx - centre_x
            q = a_dy2 + b_dy * dx + c_ * dx * dx
            closer = q < best_q  # strict: ties go to the earlier offset (the smaller id)
            np.copyto(best_q, q, where=closer)
            np.copyto(best_k, np.uint8(_OFFSETS.index((oy, ox)) + 1), where=closer)
    # id = (cy + oy) * n_x + (cx + ox) + 1 = own id + (oy * n_x + ox), in wrapping uint32
    n_x = -(-cfg.size[1] // cfg.cell)
    own = (cy * n_x).astype(np.uint32)[:, None] + (cx + 1).astype(np.uint32)[None, :]
    delta = np.array([0] + [oy * n_x + ox for oy, ox in _OFFSETS], np.int64).astype(np.uint32)
    return np.where(best_k > 0, own + delta[best_k], np.uint32(0)), best_q


# --------------------------------------------------------------------------------------- region


def _level0_coords(cfg: SynthConfig, y0: int, y1: int, x0: int, x1: int, level: int
                   ) -> tuple[I64, I64]:
    """Validated level-0 sample coordinates of the rows and columns of a level-``level`` box."""
    try:
        y0, y1, x0, x1, level = map(operator.index, (y0, y1, x0, x1, level))
    except TypeError as exc:
        raise ConfigError(f"Region bounds and level must be integers: {exc}") from None
    if not 0 <= level <= 24:
        raise ConfigError(f"level must be in [0, 24], got {level}")
    h, w = level_shape(cfg.size, level)
    if not (0 <= y0 <= y1 <= h and 0 <= x0 <= x1 <= w):
        raise ConfigError(f"Region [{y0}:{y1}, {x0}:{x1}] is not inside level {level} of shape "
                          f"{(h, w)}; need 0 <= y0 <= y1 <= {h} and 0 <= x0 <= x1 <= {w}")
    step = 2**level
    return np.arange(y0, y1, dtype=np.int64) * step, np.arange(x0, x1, dtype=np.int64) * step


def _colour(cfg: SynthConfig, ys: I64, xs: I64, labels: NDArray[np.uint32], q: F32
            ) -> NDArray[np.uint8]:
    """RGB (h, w, 3) of glass, stroma and nuclei, textured by noise at level-0 points."""
    seed = cfg.seed
    alpha = (_tissue_field(cfg, ys, xs, grid=True) - _tissue_threshold(cfg))
    alpha = np.clip(alpha * np.float32(1 / _TISSUE_EDGE), 0, 1)  # 0 glass, 1 tissue
    grain_bits = _hash2(_key(seed, _S_GRAIN), ys[:, None], xs[None, :])
    grain = _unit(grain_bits, 40) - np.float32(0.5)  # per-pixel noise in [-0.5, 0.5)
    tint = _unit(grain_bits, 16) - np.float32(0.5)
    stroma = (np.float32(0.80) + np.float32(0.22) * _noise_grid(_key(seed, _S_FIBRE), ys, xs, 6)
              + np.float32(0.10) * _noise_grid(_key(seed, _S_BROAD), ys, xs, 160))
    chromatin = np.float32(0.78) + np.float32(0.4) * _noise_grid(
        _key(seed, _S_CHROMATIN), ys, xs, 3)
    rim = np.float32(1) - np.float32(0.35) * np.clip(
        (np.sqrt(q) - np.float32(0.6)) * np.float32(1 / 0.4), 0, 1)
    is_nucleus = labels > 0
    shade = np.ones(labels.shape, np.float32)  # per nucleus, from its id: [0.85, 1.1)
    shade_bits = _mix(labels[is_nucleus].astype(np.uint64) + np.uint64(_key(seed, _S_SHADE)))
    shade[is_nucleus] = np.float32(0.85) + np.float32(0.25) * _unit(shade_bits, 40)
    nucleus_shade = chromatin * rim * shade
    out = np.empty((*labels.shape, 3), np.uint8)
    for c in range(3):
        glass = np.float32(_BACKGROUND[c]) + np.float32(5) * grain
        tissue = np.float32(_EOSIN[c]) * stroma + np.float32(12) * grain + np.float32(8) * tint
        value = glass + alpha * (tissue - glass)
        nucleus = np.float32(_HAEMATOXYLIN[c]) * nucleus_shade + np.float32(10) * grain
        value = np.where(is_nucleus, nucleus, value)
        out[..., c] = np.clip(value + np.float32(0.5), 0, 255).astype(np.uint8)
    return out


def render_labels(cfg: SynthConfig, y0: int, y1: int, x0: int, x1: int, level: int = 0
                  ) -> NDArray[np.uint32]:
    """The instance labels of :func:`render_region`, without the cost of colour."""
    ys, xs = _level0_coords(cfg, y0, y1, x0, x1, level)
    labels = np.empty((ys.size, xs.size), np.uint32)
    for by0, by1, bx0, bx1 in grid_boxes(labels.shape, _BLOCK):  # 2x faster than at once at 1024
        labels[by0:by1, bx0:bx1] = _nuclei(cfg, ys[by0:by1], xs[bx0:bx1])[0]
    return labels


def render_region(cfg: SynthConfig, y0: int, y1: int, x0: int, x1: int, level: int = 0
                  ) -> tuple[NDArray[np.uint8], NDArray[np.uint32], NDArray[np.uint8]]:
    """Render the region ``[y0:y1, x0:x1]`` (half-open, in pixels of pyramid level ``level``).

    Level ``l`` has shape ``ceil(H / 2**l), ceil(W / 2**l)``; its pixel ``(i, j)`` samples the
    level-0 point ``(i * 2**l, j * 2**l)``, so a level is exactly a strided view of level 0 and
    any region equals the same crop of a larger one.

    Returns
    -------
    rgb : (h, w, 3) uint8
    instances : (h, w) uint32
        0 = no nucleus, else a unique id ``cy * n_cells_x + cx + 1`` of the nucleus's cell.
    classes : (h, w) uint8
        0 = background or stroma, 1 = nucleus; equals ``instances > 0``.

    Raises
    ------
    ConfigError
        If the region is not inside the level, or the level is not in [0, 24].

    Examples
    --------
    >>> cfg = SynthConfig(size=(300, 200), seed=1)
    >>> rgb, inst, cls = render_region(cfg, 10, 74, 0, 64, level=1)
    >>> rgb.shape, inst.dtype.name, bool((cls == (inst > 0)).all())
    ((64, 64, 3), 'uint32', True)
    """
    ys, xs = _level0_coords(cfg, y0, y1, x0, x1, level)
    labels, q = _nuclei(cfg, ys, xs)
    return _colour(cfg, ys, xs, labels, q), labels, (labels > 0).astype(np.uint8)


def touching_fraction(instances: NDArray[np.integer], min_contact: int = 1) -> float:
    """Fraction of the objects of an instance image that touch another one along at least
    ``min_contact`` 4-adjacent pixel pairs (NaN without objects).

    >>> touching_fraction(np.array([[1, 1, 2, 0, 3]]))
    0.6666666666666666
    """
    lab = np.asarray(instances).astype(np.int64)
    ids = np.unique(lab)
    ids = ids[ids > 0]
    if not ids.size:
        return math.nan
    pairs = []
    for a, b in ((lab[1:], lab[:-1]), (lab[:, 1:], lab[:, :-1])):
        m = (a != b) & (a > 0) & (b > 0)
        pairs.append(np.stack([np.minimum(a[m], b[m]), np.maximum(a[m], b[m])], 1))
    found, contact = np.unique(np.concatenate(pairs), axis=0, return_counts=True)
    touching = np.unique(found[contact >= min_contact])
    return float(touching.size / ids.size)



# ------------------------------------------------------------------------------- normalisation

_FIELD_KINDS: dict[str, tuple[type, bool]] = {  # field -> (int or float, is a pair)
    "size": (int, True), "seed": (int, False), "mpp": (float, False),
    "tissue_fraction": (float, False), "nucleus_radius": (float, True), "cell": (int, False),
    "tile": (int, False), "touching": (float, False)}


def _coerce(name: str, value: Any, kind: tuple[type, bool]) -> Any:
    """``value`` as a builtin int or float (or a tuple of two), else a ConfigError."""
    number, pair = kind
    if pair:
        if isinstance(value, str | bytes) or not hasattr(value, "__len__") or len(value) != 2:
            raise ConfigError(f"SynthConfig.{name} must be a pair, got {value!r}")
        return tuple(_coerce(name, v, (number, False)) for v in value)
    wanted = numbers.Integral if number is int else numbers.Real
    if isinstance(value, bool) or not isinstance(value, wanted) or value != value:  # NaN
        what = "an integer" if number is int else "a number"
        raise ConfigError(f"SynthConfig.{name} must be {what}, got {value!r}")
    return number(value)
