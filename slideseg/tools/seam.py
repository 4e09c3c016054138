"""The measured seam error of a model: tiled inference, exactly as ``predict`` tiles, against one
whole-image pass over the same mirror-padded region. It tells which halo a same-padded network
needs; valid-convolution U-Nets give float rounding only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from slideseg.engines.base import Engine
from slideseg.errors import ConfigError
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
