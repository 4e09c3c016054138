"""``slideseg train``: data → hold-out → statistics → model → budget → seeded tiles in background
threads → optimiser steps → validation → checkpoints (the same ``.safetensors`` model files that
``predict`` reads).

Training shares predict's geometry: a valid-convolution U-Net trains on a large input tile with the
loss on its output window, output origins on the pooling grid, and pixels beyond the image made by
the model's mirror mode (:func:`slideseg.plan.mirror_index`). The loss is the paper's weighted
pixel-wise cross-entropy (:mod:`slideseg.train.loss`). What is not asked for comes from a recipe
and the budget rule (:mod:`slideseg.train.recipe`); the files a run writes are described in
:mod:`slideseg.train.checkpoint`.

Every tile is a function of ``(seed, tile index)`` and dropout is seeded per step, so a run with a
step budget is reproducible on one machine, and a resumed run equals an uninterrupted one. A run
with a time budget (``max_time`` alone) depends on the speed of the machine.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from slideseg.engines.torch_engine import resolve_device
from slideseg.errors import ConfigError, ModelFileError
from slideseg.model.config import UNetConfig
from slideseg.model.files import load_model, read_model_config
from slideseg.model.unet import build_unet
from slideseg.train.augment import Sample, TileSampler
from slideseg.train.checkpoint import (
    RunState,
    check_outputs,
    check_resumable,
    companion_paths,
    read_resume,
    restore_optimizer,
    save_checkpoint,
    write_metrics,
    write_resume,
)
from slideseg.train.config import TrainConfig
from slideseg.train.data import (
    MASK_KINDS,
    Statistics,
    TargetSpec,
    TileGeometry,
    TrainingData,
    estimate_statistics,
    load_cache,
)
from slideseg.train.loader import BackgroundLoader
from slideseg.train.loss import balanced_class_weights, weighted_cross_entropy
from slideseg.train.recipe import RECIPES, default_width, plan_budget
from slideseg.train.validation import HeldOut, Validator, hold_out, improves, record_best

ARCH_FIELDS = ("depth", "width", "in_channels", "classes", "padding", "halo")
"""UNetConfig fields that fix the weights' shapes: a resumed run must keep them."""




@dataclass(frozen=True)
class TrainEvent:
    """Progress of a run, for a display: 'start' (``row`` says the budget), 'step', or 'epoch'
    (``row`` is the epoch's metrics row)."""

    kind: Literal["start", "step", "epoch"]
    step: int
    total: int | None
    """Steps of the run; None when it trains until a time limit (see ``elapsed`` and ``limit``)."""
    loss: float = math.nan
    row: Mapping[str, Any] = field(default_factory=dict)
    elapsed: float = 0.0
    """Seconds of the run so far (earlier sessions included)."""
    limit: float | None = None
    """The run's time budget in seconds when ``total`` is None."""


@dataclass(frozen=True)
class TrainResult:
    """What a run did."""

    output: Path
    last: Path
    metrics: Path
    steps: int
    epochs: int
    seconds: float
    stopped: str | None
    """Why the run stopped before its end, to be continued with resume ('max_time', 'requested'),
    or None."""
    history: tuple[dict[str, Any], ...]
    ended: str = "budget"
    """How it ended: 'budget' (its steps), 'time' (a time budget spent), 'patience' (no
    improvement), or the reason it stopped."""
    budget: str = ""
    """Which rule chose the budget, in words."""
    validation: str = ""
    """Where the validation data came from, in words."""
    best: dict[str, Any] | None = None
    """The metrics row of the epoch saved as ``output`` (None without validation)."""


def train(data: TrainingData, output: str | Path, cfg: TrainConfig = TrainConfig(), *,
          init: str | Path | None = None, arch: Mapping[str, Any] | None = None, resume: bool = False,
          overwrite: bool = False, on_event: Callable[[TrainEvent], None] | None = None,
          stop: Callable[[int], bool] | None = None) -> TrainResult:
    """Train a U-Net on ``data`` and write it to ``output``.

    Parameters
    ----------
    data
        From :func:`slideseg.train.data.load_training_data`. Without validation items, ``cfg.holdout``
        of the training data is held out (:func:`slideseg.train.validation.hold_out`).
    output
        The model file to write (``.safetensors``); companions go beside it (:func:`companion_paths`).
    init
        A model file to start from (``new-model`` output or an earlier checkpoint).
    arch
        UNetConfig fields for a new model (as ``new-model``'s options); ``in_channels`` and
        ``classes`` default to the data's, ``width`` to the device's (:func:`default_width`). Not
        together with ``init``.
    resume
        Continue the run whose ``.last``/``.resume`` files sit beside ``output``.
    stop
        Called after every step with the number of steps done; True stops the run cleanly.

    Raises
    ------
    ConfigError, ModelFileError, OutputExistsError, TrainingDataError
        Bad options, a model or resume file that does not fit, an existing output.
    """
    import torch

    output = Path(output)
    paths = companion_paths(output)
    check_outputs(output, paths, resume, overwrite)
    if init is not None and arch:
        raise ConfigError("give either --init FILE or architecture options (--depth, --width, ...), not both.")
    t0 = time.monotonic()
    cfg = cfg.resolved()
    split = HeldOut(data.train, data.val, f"{len(data.val)} validation image(s) given") if data.val else hold_out(
        data.train, cfg.holdout, cfg.seed)
    if cfg.patience is not None and not split.val:
        raise ConfigError("--patience needs validation data: give --val-images/--val-masks or --val-fraction, or "
                          "let --holdout set some aside (the images are too small for it, or --holdout is 0).")
    stats = estimate_statistics(split.train, data.kind, cfg.seed)
    state = read_resume(paths) if resume else None
    device = resolve_device(cfg.device)
    net, mcfg, init_meta = _prepare_model(data, stats, cfg, init, arch, state, device.type)
    threads_before = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        return _run(data, split, output, cfg, paths, stats, state, net, mcfg, init_meta, device, on_event, stop, t0)
    finally:
        torch.set_num_threads(threads_before)


def _run(data: TrainingData, split: HeldOut, output: Path, cfg: TrainConfig, paths: Mapping[str, Path],
         stats: Statistics, state: Mapping[str, Any] | None, net: Any, mcfg: UNetConfig, init_meta: Any,
         device: Any, on_event: Callable[[TrainEvent], None] | None, stop: Callable[[int], bool] | None, t0: float
         ) -> TrainResult:
    """The training loop of :func:`train`, everything prepared."""
    geometry = _tile_geometry(mcfg, cfg)
    spec = _target_spec(data, mcfg, stats, cfg)
    batch = cfg.batch_size or 1
    budget = plan_budget([it.shape for it in split.train], geometry.output, batch, steps=cfg.steps,
                         epochs=cfg.epochs, max_time=cfg.max_time, tiles_per_epoch=cfg.tiles_per_epoch)
    if state is None:  # everything checked: now an old run's files may go
        for p in (output, *paths.values()):
            p.unlink(missing_ok=True)
    net.to(device).train()
    white = float(np.iinfo(data.dtype).max) if data.dtype.kind in "iu" else 1.0
    sampler = TileSampler(split.train, geometry, spec, cfg.augment, mcfg.norm_mean, mcfg.norm_std, mcfg.mirror,
                          cfg.seed, cfg.balanced_sampling, white)
    _cache_small_items([*split.train, *split.val], spec, cfg.workers)
    optimizer = _optimizer(net, cfg)
    amp_dtype, scaler = _amp(device, cfg)
    run = RunState()
    if state is not None:
        restore_optimizer(state, optimizer, scaler)
        run = RunState.restore(state)
        check_resumable(run, budget)
    session = t0 - run.seconds  # the run's clock: time.monotonic() - session = seconds of the run
    time_budget = budget.steps is None
    deadline = None if budget.seconds is None else (session if time_budget else t0) + budget.seconds
    validator = Validator(split.val, geometry, cfg.val_tiles, cfg.seed, data.kind)
    spe = budget.steps_per_epoch

    def forward(x: Any, out: int) -> Any:
        return _forward(net, x, out, amp_dtype)

    def progress(now: float) -> float:
        if time_budget:
            assert budget.seconds is not None
            return (now - session) / budget.seconds
        assert budget.steps is not None
        warm = cfg.warmup_steps or 0
        return (run.step - warm) / max(1, budget.steps - warm)

    meta_base = {"trained": True, "seed": cfg.seed, "train_config": cfg.to_dict(), "data": data.description,
                 "validation": split.description, "budget": budget.rule, "tile": geometry.tile,
                 "class_weights": spec.class_weights, "init": init_meta,
                 "statistics": {"mean": stats.mean, "std": stats.std, "class_counts": stats.class_counts}}

    def event(kind: Literal["start", "step", "epoch"], loss: float = math.nan, row: Mapping[str, Any] = {}) -> None:
        if on_event:
            on_event(TrainEvent(kind, run.step, budget.steps, loss, row, time.monotonic() - session, budget.seconds))

    event("start", row={"budget": budget.rule, "validation": split.description})
    stopped: str | None = None
    ended = "budget"
    reserve, step_s, waited, t_epoch = 0.0, 0.0, 0.0, time.monotonic() - run.epoch_seconds
    meta: dict[str, Any] = {}
    digest = ""
    with BackgroundLoader(sampler, run.step * batch, (budget.steps or _FOREVER) * batch, cfg.workers,
                          prefetch=2 * batch + 2) as loader:
        while budget.steps is None or run.step < budget.steps:
            t_step = time.monotonic()
            lr = cfg.lr_at(run.step, progress(t_step))
            tiles = [next(loader) for _ in range(batch)]
            waited += time.monotonic() - t_step
            loss = _step(net, optimizer, scaler, amp_dtype, tiles, cfg, lr, run.step, device)
            run.epoch_losses.append(loss)
            run.step += 1
            now = time.monotonic()
            step_s = now - t_step
            event("step", loss)
            finished = run.step == budget.steps or (
                time_budget and deadline is not None and now + step_s + reserve >= deadline)
            if finished and time_budget:
                ended = "time"
            if run.step % spe == 0 or finished:
                t_val = time.monotonic()
                row = _epoch_row(run.step, spe, run.epoch_losses, t_val - t_epoch, batch, lr)
                row["data_wait"] = round(waited / max(t_val - t_epoch, 1e-9), 4)
                row.update(validator(net, sampler, spec.classes, forward, device, cfg.workers))
                run.seconds = round(time.monotonic() - session, 2)
                row["seconds"] = run.seconds
                run.history.append(row)
                improved = improves(row, run.best)
                if improved:
                    run.best, run.since_best = record_best(row, run.best), 0
                else:
                    run.since_best += 1
                if cfg.patience is not None and run.since_best >= cfg.patience and not finished:
                    finished, ended = True, "patience"
                meta = {**meta_base, "epochs": row["epoch"], "steps": run.step, "loss": row["train_loss"],
                        "val": {k: v for k, v in row.items() if k.startswith("val_")}, "seconds": row["seconds"],
                        **({"ended": ended} if finished else {})}
                run.epoch_losses, run.epoch_seconds = [], 0.0
                digest = save_checkpoint(net, mcfg, meta, output, paths, improved or not validator)
                write_metrics(paths["metrics"], run.history)
                write_resume(paths, optimizer, scaler, mcfg, run.counters(), digest)
                t_epoch, waited = time.monotonic(), 0.0
                reserve = t_epoch - t_val
                event("epoch", row["train_loss"], row)
                if finished:
                    break
            if stop is not None and stop(run.step):
                stopped = "requested"
            elif not time_budget and deadline is not None and time.monotonic() > deadline:
                stopped = "max_time"
            if stopped:
                run.seconds = round(time.monotonic() - session, 2)
                run.epoch_seconds = time.monotonic() - t_epoch
                meta = {**meta_base, "epochs": run.step / spe, "steps": run.step, "seconds": run.seconds,
                        "loss": float(np.mean(run.epoch_losses)) if run.epoch_losses else meta.get("loss"),
                        "stopped": stopped}
                as_output = not validator or not output.exists()
                digest = save_checkpoint(net, mcfg, meta, output, paths, as_output)
                write_resume(paths, optimizer, scaler, mcfg, run.counters(), digest)
                ended = stopped
                break
    best_epoch = None if run.best is None else next(
        (r for r in run.history if r["epoch"] == run.best.get("epoch")), None)
    return TrainResult(output, paths["last"], paths["metrics"], run.step, math.ceil(run.step / spe),
                       time.monotonic() - session, stopped, tuple(run.history), ended, budget.rule,
                       split.description, best_epoch)


_FOREVER = 2**62
"""Tile indices of a run that trains until a time limit: never reached."""


# ------------------------------------------------------------------------------------ model setup


def _prepare_model(data: TrainingData, stats: Statistics, cfg: TrainConfig, init: str | Path | None,
                   arch: Mapping[str, Any] | None, state: Mapping[str, Any] | None, device_type: str
                   ) -> tuple[Any, UNetConfig, Any]:
    """The network to train and its config: resumed, loaded from ``init``, or new from ``arch``."""

    classes_in_data = max(2, len(stats.class_counts))
    net: Any  # a UNet module, with the config it was built from in ``net.config``
    if state is not None:
        loaded = load_model(state["last_path"])
        wanted = _wanted_arch(init, arch)
        clash = {k: (getattr(loaded.config, k), v) for k, v in wanted.items() if getattr(loaded.config, k) != v}
        if clash:
            found = ", ".join(f"{k} {a} (asked for {b})" for k, (a, b) in clash.items())
            raise ModelFileError(f"the resume file {state['last_path']} is from a different architecture: {found}; "
                                 "drop the architecture options to continue it, or start anew without --resume.")
        if loaded.weights_sha256 != state["weights_sha256"]:
            raise ModelFileError(f"{state['last_path']} does not match its resume state (weights changed since); "
                                 "start anew without --resume.")
        net, mcfg, init_meta = loaded.net, loaded.config, loaded.metadata.get("init")
    elif init is not None:
        loaded = load_model(init)
        net, mcfg = loaded.net, loaded.config
        init_meta = {"path": str(init), "weights_sha256": loaded.weights_sha256,
                     "trained": bool(loaded.metadata.get("trained", False))}
    else:
        given = dict(arch or {})
        given.setdefault("in_channels", data.channels)
        given.setdefault("width", default_width(device_type))
        given.setdefault("classes", classes_in_data)
        given.setdefault("mpp", data.mpp)  # None (any) when the images do not say or disagree
        mcfg = UNetConfig(**given)
        net, init_meta = build_unet(mcfg, seed=cfg.seed), {"new": True}
    if mcfg.in_channels != data.channels:
        raise ModelFileError(f"the model takes {mcfg.in_channels} input channel(s) but the training images have "
                             f"{data.channels}; use a model made with --in-channels {data.channels}.")
    if data.kind == "instances" and mcfg.classes != 2:
        raise ModelFileError(f"instance masks give 2 classes (background, object) but the model has {mcfg.classes}; "
                             "use --mask-kind classes with class masks, or a 2-class model.")
    if classes_in_data > mcfg.classes:
        raise ModelFileError(f"the masks hold class ids up to {classes_in_data - 1} but the model has {mcfg.classes} "
                             f"classes; use a model with --classes {classes_in_data}.")
    learn = state is None and (cfg.normalisation == "data" or (
        cfg.normalisation == "auto" and not (init_meta or {}).get("trained", False)))
    if learn:
        mcfg = dataclasses.replace(mcfg, norm_mean=stats.mean, norm_std=stats.std)
        net.config = mcfg
    return net, mcfg, init_meta


def _wanted_arch(init: str | Path | None, arch: Mapping[str, Any] | None) -> dict[str, Any]:
    if init is not None:
        cfg, _ = read_model_config(init)
        return {k: getattr(cfg, k) for k in ARCH_FIELDS}
    return {k: v for k, v in (arch or {}).items() if k in ARCH_FIELDS}


def train_tile(mcfg: UNetConfig, cfg: TrainConfig) -> int:
    """The input tile edge a run trains on: ``cfg.tile``, else the smallest valid tile whose output
    covers the recipe's output size.

    >>> train_tile(UNetConfig(depth=4), TrainConfig()), train_tile(UNetConfig(depth=4), TrainConfig(recipe="paper"))
    (444, 572)
    """
    g = mcfg.geometry
    return g.check_tile(cfg.tile) if cfg.tile else g.smallest_tile_covering(RECIPES[cfg.recipe].output)


def _tile_geometry(mcfg: UNetConfig, cfg: TrainConfig) -> TileGeometry:
    g = mcfg.geometry
    tile = train_tile(mcfg, cfg)
    return TileGeometry(tile, g.usable_output(tile), g.alignment, cfg.augment.margin)


def _target_spec(data: TrainingData, mcfg: UNetConfig, stats: Statistics, cfg: TrainConfig) -> TargetSpec:
    counts = list(stats.class_counts) + [0] * (mcfg.classes - len(stats.class_counts))
    weights = balanced_class_weights(counts) if cfg.class_balance else tuple(1.0 for _ in counts)
    return TargetSpec(data.kind, mcfg.classes, cfg.loss == "weighted", cfg.w0, cfg.sigma, weights,
                      cfg.separation_borders, cfg.separation_width, cfg.border_on_objects)


def _cache_small_items(items: list[Any], spec: TargetSpec, workers: int) -> None:
    from concurrent.futures import ThreadPoolExecutor

    small = [it for it in items if it.in_memory]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(lambda it: load_cache(it, spec), small))


def _optimizer(net: Any, cfg: TrainConfig) -> Any:
    import torch

    if cfg.optimizer == "adam":
        return torch.optim.Adam(net.parameters(), lr=cfg.peak_lr, weight_decay=cfg.weight_decay)
    momentum = cfg.momentum if cfg.momentum is not None else RECIPES[cfg.recipe].momentum
    return torch.optim.SGD(net.parameters(), lr=cfg.peak_lr, momentum=momentum, weight_decay=cfg.weight_decay)


def _amp(device: Any, cfg: TrainConfig) -> tuple[Any, Any]:
    """(autocast dtype or None, GradScaler or None) for this device."""
    import torch

    if device.type != "cuda" or not cfg.amp:
        return None, None
    if torch.cuda.is_bf16_supported():
        return torch.bfloat16, None
    return torch.float16, torch.amp.GradScaler("cuda")


# -------------------------------------------------------------------------------------- the step


def _to_device(batch: list[Sample], device: Any) -> tuple[Any, Any, Any]:
    import torch

    x = torch.from_numpy(np.stack([s.image for s in batch])).to(device, non_blocking=True)  # (N, C, T, T)
    y = torch.from_numpy(np.stack([s.target for s in batch]).astype(np.int64)).to(device)  # (N, t, t)
    w = torch.from_numpy(np.stack([s.weight for s in batch])).to(device)  # (N, t, t)
    return x, y, w


def _forward(net: Any, x: Any, out: int, amp_dtype: Any) -> Any:
    import torch

    with torch.autocast(x.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
        logits = net(x)  # (N, K, h, w); 'same' padding keeps the halo, cropped here
    m = (logits.shape[-1] - out) // 2
    return logits[..., m : m + out, m : m + out]


def _step(net: Any, optimizer: Any, scaler: Any, amp_dtype: Any, batch: list[Sample], cfg: TrainConfig,
          lr: float, step: int, device: Any) -> float:
    """One optimiser step at learning rate ``lr`` on ``batch``; returns the loss."""
    import torch

    for group in optimizer.param_groups:
        group["lr"] = lr
    torch.manual_seed(_step_seed(cfg.seed, step))  # dropout: the same on a resumed run
    x, y, w = _to_device(batch, device)
    loss = weighted_cross_entropy(_forward(net, x, y.shape[-1], amp_dtype), y, w)
    value = float(loss.detach())
    if not math.isfinite(value):
        raise ConfigError(f"the loss became {value} at step {step + 1}; the learning rate {lr:.3g} "
                          "is probably too high: lower --lr (or add --warmup-steps / --grad-clip).")
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
    else:
        loss.backward()
    if cfg.grad_clip:
        torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.grad_clip)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    return value


def _step_seed(seed: int, step: int) -> int:
    return int(np.random.SeedSequence([seed, 3, step]).generate_state(1)[0])


def _epoch_row(step: int, steps_per_epoch: int, losses: list[float], seconds: float, batch: int, lr: float
               ) -> dict[str, Any]:
    return {"epoch": math.ceil(step / steps_per_epoch), "step": step, "lr": lr,
            "train_loss": float(np.mean(losses)) if losses else math.nan,
            "tiles_per_s": round(len(losses) * batch / max(seconds, 1e-9), 3)}


__all__ = ["MASK_KINDS", "TrainConfig", "TrainEvent", "TrainResult", "companion_paths", "train", "train_tile"]
