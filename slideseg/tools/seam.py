"""The measured seam error of a model: tiled inference, exactly as ``predict`` tiles, against one
whole-image pass over the same mirror-padded region. It tells which halo a same-padded network
needs; valid-convolution U-Nets give float rounding only.

:func:`plan_report` is ``slideseg plan``: how a model tiles (a slide), and its seam error per halo.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from slideseg.engines.base import Engine, Preprocessed
from slideseg.engines.registry import load_engine
from slideseg.errors import ConfigError
from slideseg.io.normalise import array_statistics, percentiles_of, resolve
from slideseg.io.slide import open_slide
from slideseg.model.config import UNetConfig
from slideseg.plan.geometry import Geometry
from slideseg.plan.tiles import plan_slide
from slideseg.schedule.chunks import infer_chunk, softmax
from slideseg.tools.synth import SynthConfig, render_region


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


def plan_report(model_path: str | os.PathLike[str], slide: str | os.PathLike[str] | None = None, *,
                tile: int | None = None, chunk: int = 1024, halos: Sequence[int] | None = None, region: int = 512,
                seam_chunk: int | None = None, measure: bool = True, engine: str | None = None,
                device: str = "auto") -> dict[str, Any]:
    """How the model at ``model_path`` tiles, and its measured seam error, as plain JSON-able data.

    Parameters
    ----------
    model_path
        A model file (``.safetensors``, ``.onnx`` / ``.pt2`` / TorchScript with a sidecar, or a
        bioimage.io package, whose declared halo is its own). Normalisation by slide statistics
        takes the statistics of the test region.
    slide
        A slide to plan for: adds the ``plan`` (grid, tile, redundancy), and its centre (``region``
        px square, level 0) becomes the test region. Without one, a synthetic region is used.
    tile, chunk
        Tile and output chunk edge of the slide's plan, px (``tile=None``: what ``predict`` picks).
    halos
        Same-padded models: the halos to measure, px (multiples of 2**depth). None: 0, 1, 2, 4 and
        8 pooling steps, and the model's own. Valid models are measured once, without a halo.
    region
        Edge of the test region, px.
    seam_chunk
        Chunk edge of the measurement, px. None: half the region, so the region has seams.
    measure
        Measure the seam error (``seam_error`` rows, see :class:`SeamError`).
    engine
        Engine of the measurement. None: torch for ``.safetensors`` models (no export per tile
        size), else 'auto'.
    device
        'auto', 'cpu' or 'cuda[:N]'.

    Returns
    -------
    dict
        ``model``, ``engine``, ``padding``, ``depth``, ``alignment``, ``context``, ``valid_tiles``;
        ``plan`` with a slide; ``seam_error`` (one row per halo) when measured.
    """
    if chunk < 16:
        raise ConfigError(f"--chunk must be >= 16 px, got {chunk}")
    if region < 1:
        raise ConfigError(f"--region must be >= 1 px, got {region}")
    eng = load_engine(model_path, engine or ("torch" if Path(model_path).suffix == ".safetensors" else "auto"),
                      device=device)
    cfg = eng.config
    g = cfg.geometry
    report: dict[str, Any] = {"model": str(model_path), "engine": eng.describe(), "padding": cfg.padding,
                              "depth": cfg.depth, "alignment": g.alignment, "context": g.context,
                              "valid_tiles": g.describe_valid()}
    image = None
    if slide is not None:
        report["plan"], image = _slide_plan_and_centre(Path(slide), g, tile=tile, chunk=chunk, region=region)
    if measure:
        if image is None:
            image = sample_region(cfg, region)
        c = seam_chunk or max(g.alignment, image.shape[0] // 2)
        bound, stats = bound_to(eng, image.transpose(2, 0, 1)[None])
        if stats is not None:  # the test region's statistics stand for the slide's
            report["statistics"] = stats
        report["seam_error"] = [measure_seam_error(bound, image, halo=h, tile=tile, chunk=c).to_dict()
                                for h in halos_to_measure(cfg, halos)]
    return report


def bound_to(engine: Engine, batch: np.ndarray) -> tuple[Engine, dict[str, Any] | None]:
    """``engine`` with its statistics steps bound to the statistics of ``batch`` (N, C, H, W), the image
    it is about to run on (a test region stands for a slide), and those statistics; an engine that
    needs none is returned as it is, with None."""
    if not isinstance(engine, Preprocessed) or not engine.needs_statistics:
        return engine, None
    pixels = np.concatenate(list(batch), axis=2).transpose(1, 2, 0)  # (H, N*W, C): every sample
    stats = array_statistics(pixels, percentiles_of(engine.preprocessing))
    return engine.bind(resolve(engine.preprocessing, stats)), stats.to_dict()


def halos_to_measure(config: UNetConfig, halos: Sequence[int] | None = None) -> list[int | None]:
    """The halos :func:`plan_report` measures: ``[None]`` (no halo) for valid models; for same-padded
    ones ``halos``, or by default 0, 1, 2, 4 and 8 pooling steps and the model's own, sorted.

    >>> halos_to_measure(UNetConfig(depth=2, padding="same", halo=12))
    [0, 4, 8, 12, 16, 32]
    >>> halos_to_measure(UNetConfig(depth=2))
    [None]
    """
    if config.padding != "same":
        return [None]
    a = config.geometry.alignment
    return [h for h in sorted(set(halos or [*(k * a for k in (0, 1, 2, 4, 8)), config.halo]))]


def _slide_plan_and_centre(slide: Path, geometry: Geometry, *, tile: int | None, chunk: int,
                           region: int) -> tuple[dict[str, Any], np.ndarray]:
    """The slide's plan (as ``predict`` plans it) and its central ``region`` px square (level 0)."""
    with open_slide(slide) as s:
        h, w = s.shape[:2]
        plan = plan_slide((h, w), geometry, chunk=chunk, tile=tile).describe()
        r = min(region, h, w)
        y0, x0 = (h - r) // 2, (w - r) // 2
        return plan, s.read(y0, y0 + r, x0, x0 + r)


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

    g = seam_geometry(engine.config, halo)
    shape = (int(image.shape[0]), int(image.shape[1]))
    plan = plan_slide(shape, g, chunk=chunk, tile=tile or engine.fixed_tile)
    if tile is None and engine.min_tile and plan.tile < engine.min_tile:  # a package's smallest tile
        bigger = next(n for n in range(engine.min_tile, 8 * engine.min_tile) if g.is_valid(n))
        plan = plan_slide(shape, g, chunk=chunk, tile=bigger)
    tile = plan.tile
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
