"""The options of one ``slideseg train`` run (:class:`TrainConfig`), saved in every checkpoint it writes;
what is left unset comes from a recipe (:mod:`slideseg.train.recipe`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from slideseg.config import Config
from slideseg.errors import ConfigError
from slideseg.train.augment import AugmentConfig
from slideseg.train.loss import SEPARATION_WIDTHS
from slideseg.train.recipe import RECIPES, RecipeName, schedule_factor

__all__ = ["TrainConfig"]


@dataclass(frozen=True)
class TrainConfig(Config):
    """Options of one ``train`` run; saved in every checkpoint it writes.

    The optimisation options left at None come from the ``recipe``
    (:data:`slideseg.train.recipe.RECIPES`); :meth:`resolved` fills them in.
    """

    epochs: int | None = None
    """Epochs of ``tiles_per_epoch`` tiles (instead of the default budget)."""
    steps: int | None = None
    """Optimiser steps in all (overrides ``epochs``)."""
    tiles_per_epoch: int | None = None
    """Tiles between validations (an epoch); default: the tiles that cover the training images once,
    at least 200 and at most 2048."""
    tile: int | None = None
    """Network input edge in px (valid for the model); default: the recipe's."""
    batch_size: int | None = None
    """Tiles per step; default: the recipe's (default 2, paper 1)."""
    optimizer: Literal["sgd", "adam"] | None = None
    """'sgd' (with momentum, the paper's) or 'adam'; default: the recipe's (default adam, paper sgd)."""
    lr: float | None = None
    """Peak learning rate; default: the recipe's (default 0.003, paper 0.001)."""
    momentum: float | None = None
    """SGD momentum; default: the recipe's (paper 0.99, so many past tiles shape each update)."""
    weight_decay: float = 0.0
    """L2 weight decay."""
    lr_schedule: Literal["cosine", "poly", "constant"] | None = None
    """Learning-rate decay over the run after warm-up: cosine to 0, poly (power 0.9), or none;
    default: the recipe's (cosine)."""
    warmup_steps: int | None = None
    """Steps of linear warm-up from 0 to ``lr``; default: the recipe's."""
    grad_clip: float | None = None
    """Clip the gradient's global norm to this (None: no clipping)."""
    loss: Literal["weighted", "ce"] = "weighted"
    """'weighted': the paper's weight map; 'ce': plain cross-entropy (for comparison)."""
    w0: float = 10.0
    """Weight of the border term."""
    sigma: float = 5.0
    """Width of the border term, px."""
    class_balance: bool = True
    """Weight classes inversely to their frequency in the training data (``w_c``)."""
    separation_borders: bool = True
    """Instance masks: make the pixels where two objects touch background in the target."""
    separation_width: int = 2
    """Width of those borders, px: 2 (both sides of a contact, the paper's) or 1 (the larger id's side)."""
    border_on_objects: bool = False
    """The border term of the weight map on object pixels too, not only on background."""
    balanced_sampling: bool = False
    """Draw tiles so that each class is equally likely to be present (rejection sampling)."""
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    """Augmentation of training tiles."""
    normalisation: Literal["auto", "data", "model"] = "auto"
    """Input mean/std: 'data' learns them, 'model' keeps the model's, 'auto' learns them unless
    the model is already trained."""
    val_tiles: int = 64
    """Most validation tiles per evaluation (a seeded subset beyond that)."""
    holdout: float = 0.1
    """Without validation data: the fraction of the training data held out for validation
    (:func:`slideseg.train.validation.hold_out`; 0: none)."""
    patience: int | None = None
    """Stop when this many validations in a row have not improved on the best (None: never)."""
    seed: int = 0
    """Seed of the initial weights, the tiles, the augmentation and dropout."""
    max_time: float | None = None
    """Minutes. Alone: the run's budget (it trains until the time is up, the learning-rate schedule
    spread over it). With ``steps`` or ``epochs``: a clean stop of this session (resume continues)."""
    device: str = "auto"
    """'auto' (CUDA if available), 'cpu' or 'cuda[:N]'."""
    amp: bool = True
    """Automatic mixed precision on CUDA (bf16 where supported, else fp16 with loss scaling)."""
    threads: int | None = None
    """CPU threads of torch (None: torch's default)."""
    workers: int = 2
    """Background threads that read and augment tiles."""
    recipe: RecipeName = "default"
    """Where the optimisation options left unset come from: 'default' (Adam 0.003, two tiles with
    >= 256 px of output per step: measured to train best within a fixed CPU budget) or 'paper'
    (SGD 0.001, momentum 0.99, one tile with >= 388 px of output, 572 px at depth 4)."""

    def __post_init__(self) -> None:
        for name in ("epochs", "steps", "tiles_per_epoch", "tile", "threads", "batch_size", "patience"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {v}")
        checks = [
            (self.recipe in RECIPES, f"--recipe must be one of {', '.join(RECIPES)}, got {self.recipe!r}"),
            (self.optimizer in (None, "sgd", "adam"), f"--optimizer must be sgd or adam, got {self.optimizer!r}"),
            (self.lr is None or self.lr > 0, f"--lr must be > 0, got {self.lr}"),
            (self.momentum is None or 0 <= self.momentum < 1, f"--momentum must be in [0, 1), got {self.momentum}"),
            (self.weight_decay >= 0, f"--weight-decay must be >= 0, got {self.weight_decay}"),
            (self.lr_schedule in (None, "cosine", "poly", "constant"),
             f"--lr-schedule must be cosine, poly or constant, got {self.lr_schedule!r}"),
            (self.warmup_steps is None or self.warmup_steps >= 0,
             f"--warmup-steps must be >= 0, got {self.warmup_steps}"),
            (self.grad_clip is None or self.grad_clip > 0, f"--grad-clip must be > 0, got {self.grad_clip}"),
            (self.loss in ("weighted", "ce"), f"--loss must be weighted or ce, got {self.loss!r}"),
            (self.w0 >= 0 and self.sigma > 0, f"need --w0 >= 0 and --sigma > 0, got {self.w0} and {self.sigma}"),
            (self.separation_width in SEPARATION_WIDTHS,
             f"--separation-width must be 1 or 2 px, got {self.separation_width!r}"),
            (self.normalisation in ("auto", "data", "model"),
             f"--normalisation must be auto, data or model, got {self.normalisation!r}"),
            (self.val_tiles >= 1, f"--val-tiles must be >= 1, got {self.val_tiles}"),
            (0 <= self.holdout < 0.5, f"--holdout must be in [0, 0.5), got {self.holdout}"),
            (self.max_time is None or self.max_time > 0, f"--max-time must be > 0 minutes, got {self.max_time}"),
            (self.workers >= 1, f"--workers must be >= 1, got {self.workers}"),
            (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:"),
             f"--device must be auto, cpu or cuda[:N], got {self.device!r}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        if isinstance(self.augment, Mapping):
            object.__setattr__(self, "augment", AugmentConfig.from_dict(self.augment))

    def resolved(self) -> TrainConfig:
        """This config with the options left to the recipe filled in from it (``tile`` excepted:
        it depends on the model, see :func:`train_tile`).

        >>> cfg = TrainConfig(recipe="paper", lr=0.01).resolved()
        >>> cfg.optimizer, cfg.lr, cfg.momentum, cfg.batch_size
        ('sgd', 0.01, 0.99, 1)
        """
        r = RECIPES[self.recipe]
        return dataclasses.replace(self, **{name: getattr(r, name) for name in _RECIPE_FIELDS
                                            if getattr(self, name) is None})

    @property
    def peak_lr(self) -> float:
        return self.lr if self.lr is not None else RECIPES[self.recipe].lr

    def lr_at(self, step: int, progress: float) -> float:
        """Learning rate of step ``step`` (0-based) at ``progress`` in [0, 1] of the run: linear
        warm-up over the first steps, then the schedule (of a resolved config)."""
        warmup = self.warmup_steps or 0
        if step < warmup:
            return self.peak_lr * (step + 1) / warmup
        return self.peak_lr * schedule_factor(self.lr_schedule or "constant", progress)


_RECIPE_FIELDS = ("optimizer", "lr", "momentum", "batch_size", "lr_schedule", "warmup_steps")
"""TrainConfig options that the recipe fills in when they are None."""
