"""What a training run does when the user does not say: the recipes (optimiser, learning rate,
schedule, tile and batch), the budget rule (how many tiles, how often to validate) and the width
of a new model on this device.

Pure functions of integers and shapes, so the rules can be tested without training.

>>> plan_budget([(256, 512)], output=260, batch_size=2).rule
'default: 2000 tiles = the larger of 2000 and 50 passes over the 2 output tiles that cover the data (at most 100000)'
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

RecipeName = Literal["default", "paper"]


@dataclass(frozen=True)
class Recipe:
    """The optimisation settings a recipe gives to the options the user leaves unset."""

    optimizer: Literal["sgd", "adam"]
    lr: float
    momentum: float
    """SGD momentum (unused by Adam)."""
    batch_size: int
    output: int
    """The default tile is the smallest valid one whose output covers this many px."""
    lr_schedule: Literal["cosine", "poly", "constant"]
    warmup_steps: int


RECIPES: dict[str, Recipe] = {
    # Chosen by measurement: benchmarks/bench_train_sweep.py, docs/training.md ("Defaults").
    "default": Recipe(optimizer="adam", lr=0.003, momentum=0.9, batch_size=2, output=256, lr_schedule="cosine",
                      warmup_steps=20),
    # Ronneberger et al. (2015): SGD with momentum 0.99, one large tile per step (572 px at depth 4).
    "paper": Recipe(optimizer="sgd", lr=0.001, momentum=0.99, batch_size=1, output=388, lr_schedule="cosine",
                    warmup_steps=0),
}
"""The recipes by name (``--recipe``)."""

MIN_TILES = 2000
"""The default budget trains on at least this many tiles, however small the data."""
PASSES = 50
"""... and on this many passes over the data where that is more ..."""
MAX_TILES = 100_000
"""... but on no more than this many tiles (large data: one pass may be far more than needed)."""
MIN_EPOCH_TILES = 200
"""An epoch (the validation and reporting cadence) is at least this many tiles ..."""
MAX_EPOCH_TILES = 2048
"""... and at most this many, whatever the size of the data."""

WIDTH_GPU = 64
"""Width of a new model on a GPU: the paper's."""
WIDTH_CPU = 16
"""Width of a new model on a CPU: measured best within a fixed CPU budget (docs/training.md)."""


@dataclass(frozen=True)
class Budget:
    """How long a run trains and how often it validates."""

    steps: int | None
    """Optimiser steps in all; None: until the time limit."""
    seconds: float | None
    """The run's time limit (None: none); the end of the run when ``steps`` is None, else a stop
    of this session (continue with resume)."""
    steps_per_epoch: int
    """Steps between validations (and rows of the metrics file)."""
    rule: str
    """Which rule chose the budget, in words."""


def coverage_tiles(shapes: Sequence[tuple[int, int]], output: int) -> int:
    """Output tiles of ``output`` px that cover every image of ``shapes`` once.

    >>> coverage_tiles([(256, 512), (100, 100)], 132)
    9
    """
    return sum(math.ceil(h / output) * math.ceil(w / output) for h, w in shapes)


def default_tiles(coverage: int) -> int:
    """Tiles the default budget trains on for data that ``coverage`` tiles cover once.

    >>> default_tiles(8), default_tiles(200), default_tiles(10**6)
    (2000, 10000, 100000)
    """
    return min(MAX_TILES, max(MIN_TILES, PASSES * coverage))


def epoch_tiles(coverage: int, given: int | None = None) -> int:
    """Tiles per epoch: ``given``, else the tiles that cover the data once, within
    [:data:`MIN_EPOCH_TILES`, :data:`MAX_EPOCH_TILES`].

    >>> epoch_tiles(2), epoch_tiles(700), epoch_tiles(10**6), epoch_tiles(2, given=40)
    (200, 700, 2048, 40)
    """
    return given if given is not None else min(MAX_EPOCH_TILES, max(MIN_EPOCH_TILES, coverage))


def plan_budget(shapes: Sequence[tuple[int, int]], output: int, batch_size: int, *, steps: int | None = None,
                epochs: int | None = None, max_time: float | None = None,
                tiles_per_epoch: int | None = None) -> Budget:
    """The budget of a run on images of ``shapes`` with loss windows of ``output`` px.

    ``steps`` wins over ``epochs``; either makes ``max_time`` (minutes) a stop of this session.
    With neither, ``max_time`` is the run's budget (it trains until the time is up), and without
    that too the budget is :func:`default_tiles` tiles.
    """
    coverage = coverage_tiles(shapes, output)
    per_epoch = max(1, math.ceil(epoch_tiles(coverage, tiles_per_epoch) / batch_size))
    seconds = None if max_time is None else max_time * 60.0
    stop = "" if max_time is None else f" (stops after {max_time:g} min; --resume continues)"
    if steps is not None:
        return Budget(steps, seconds, per_epoch, f"--steps {steps}{stop}")
    if epochs is not None:
        return Budget(epochs * per_epoch, seconds, per_epoch,
                      f"--epochs {epochs} of {per_epoch} steps ({per_epoch * batch_size} tiles){stop}")
    if max_time is not None:
        return Budget(None, seconds, per_epoch, f"--max-time {max_time:g} min: trains until the time is up")
    tiles = default_tiles(coverage)
    return Budget(max(1, math.ceil(tiles / batch_size)), None, per_epoch,
                  f"default: {tiles} tiles = the larger of {MIN_TILES} and {PASSES} passes over the {coverage} "
                  f"output tiles that cover the data (at most {MAX_TILES})")


def default_width(device_type: str) -> int:
    """Width of a new model when none is asked for: :data:`WIDTH_GPU` on CUDA, else
    :data:`WIDTH_CPU`.

    >>> default_width("cuda"), default_width("cpu")
    (64, 16)
    """
    return WIDTH_GPU if device_type == "cuda" else WIDTH_CPU


def schedule_factor(schedule: str, t: float) -> float:
    """The learning rate as a fraction of its peak at progress ``t`` in [0, 1] after warm-up.

    >>> schedule_factor("cosine", 0.5), schedule_factor("constant", 0.9), round(schedule_factor("poly", 1.0), 6)
    (0.5, 1.0, 0.0)
    """
    t = min(1.0, max(0.0, t))
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * t))
    if schedule == "poly":
        return (1.0 - t) ** 0.9
    return 1.0


__all__ = ["RECIPES", "Budget", "Recipe", "RecipeName", "coverage_tiles", "default_tiles", "default_width",
           "epoch_tiles", "plan_budget", "schedule_factor"]
