"""``slideseg train``: data → statistics → model → seeded tiles in background threads → SGD →
checkpoints (the same ``.safetensors`` model files that ``predict`` reads).

Training shares predict's geometry: a valid-convolution U-Net trains on a large input tile with the
loss on its output window, output origins on the pooling grid, and pixels beyond the image made by
the model's mirror mode (:func:`slideseg.plan.mirror_index`). The loss is the paper's weighted
pixel-wise cross-entropy (:mod:`slideseg.train.loss`).

Files beside ``-o model.safetensors``:

- ``model.safetensors``: the best model by validation loss (the last without validation);
- ``model.last.safetensors``: the last model; ``model.resume.safetensors``: optimiser and counters
  for ``--resume``; ``model.metrics.csv``: one row per epoch.

Every tile is a function of ``(seed, tile index)`` and dropout is seeded per step, so a run is
reproducible on one machine, and a resumed run equals an uninterrupted one.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import numpy as np

from slideseg import __version__
from slideseg.engines.torch_engine import resolve_device
from slideseg.errors import ConfigError, ModelFileError, OutputExistsError
from slideseg.model.config import UNetConfig
from slideseg.model.files import load_model, read_model_config, save_model
from slideseg.model.unet import build_unet
from slideseg.train.augment import AugmentConfig, Sample, TileSampler
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
from slideseg.train.validation import validate, validation_tiles

ARCH_FIELDS = ("depth", "width", "in_channels", "classes", "padding", "halo")
"""UNetConfig fields that fix the weights' shapes: a resumed run must keep them."""
DEFAULT_EPOCHS = 10
DEFAULT_OUTPUT = 256
"""Without ``tile``, train on the smallest valid tile whose output covers this many px."""


@dataclass(frozen=True)
class TrainConfig:
    """Options of one ``train`` run; saved in every checkpoint it writes."""

    epochs: int | None = None
    """Passes over the training data; default 10 unless ``steps`` is given."""
    steps: int | None = None
    """Optimiser steps in all (overrides ``epochs``)."""
    tiles_per_epoch: int | None = None
    """Tiles per epoch; default: as many as cover each training image once."""
    tile: int | None = None
    """Network input edge in px (valid for the model); default: output >= 256 px."""
    batch_size: int = 1
    """Tiles per step (the paper: 1 large tile)."""
    optimizer: Literal["sgd", "adam"] = "sgd"
    """'sgd' (with momentum, the paper's) or 'adam'."""
    lr: float | None = None
    """Peak learning rate; default 0.001 (SGD with momentum 0.99 and Adam alike)."""
    momentum: float = 0.99
    """SGD momentum (the paper: 0.99, so many past tiles shape each update)."""
    weight_decay: float = 0.0
    """L2 weight decay."""
    lr_schedule: Literal["cosine", "poly", "constant"] = "cosine"
    """Learning-rate decay over the run after warm-up: cosine to 0, poly (power 0.9), or none."""
    warmup_steps: int = 0
    """Steps of linear warm-up from 0 to ``lr``."""
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
    balanced_sampling: bool = False
    """Draw tiles so that each class is equally likely to be present (rejection sampling)."""
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    """Augmentation of training tiles."""
    normalisation: Literal["auto", "data", "model"] = "auto"
    """Input mean/std: 'data' learns them, 'model' keeps the model's, 'auto' learns them unless
    the model is already trained."""
    val_tiles: int = 64
    """Most validation tiles per evaluation (a seeded subset beyond that)."""
    seed: int = 0
    """Seed of the initial weights, the tiles, the augmentation and dropout."""
    max_time: float | None = None
    """Stop cleanly after this many minutes (checkpoints saved; continue with resume)."""
    device: str = "auto"
    """'auto' (CUDA if available), 'cpu' or 'cuda[:N]'."""
    amp: bool = True
    """Automatic mixed precision on CUDA (bf16 where supported, else fp16 with loss scaling)."""
    threads: int | None = None
    """CPU threads of torch (None: torch's default)."""
    workers: int = 2
    """Background threads that read and augment tiles."""

    def __post_init__(self) -> None:
        for name in ("epochs", "steps", "tiles_per_epoch", "tile", "threads"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {v}")
        checks = [
            (self.batch_size >= 1, f"--batch-size must be >= 1, got {self.batch_size}"),
            (self.optimizer in ("sgd", "adam"), f"--optimizer must be sgd or adam, got {self.optimizer!r}"),
            (self.lr is None or self.lr > 0, f"--lr must be > 0, got {self.lr}"),
            (0 <= self.momentum < 1, f"--momentum must be in [0, 1), got {self.momentum}"),
            (self.weight_decay >= 0, f"--weight-decay must be >= 0, got {self.weight_decay}"),
            (self.lr_schedule in ("cosine", "poly", "constant"),
             f"--lr-schedule must be cosine, poly or constant, got {self.lr_schedule!r}"),
            (self.warmup_steps >= 0, f"--warmup-steps must be >= 0, got {self.warmup_steps}"),
            (self.grad_clip is None or self.grad_clip > 0, f"--grad-clip must be > 0, got {self.grad_clip}"),
            (self.loss in ("weighted", "ce"), f"--loss must be weighted or ce, got {self.loss!r}"),
            (self.w0 >= 0 and self.sigma > 0, f"need --w0 >= 0 and --sigma > 0, got {self.w0} and {self.sigma}"),
            (self.normalisation in ("auto", "data", "model"),
             f"--normalisation must be auto, data or model, got {self.normalisation!r}"),
            (self.val_tiles >= 1, f"--val-tiles must be >= 1, got {self.val_tiles}"),
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

    @property
    def peak_lr(self) -> float:
        return self.lr if self.lr is not None else 0.001

    def lr_at(self, step: int, total: int) -> float:
        """Learning rate of step ``step`` (0-based) of ``total``: warm-up, then the schedule."""
        if step < self.warmup_steps:
            return self.peak_lr * (step + 1) / self.warmup_steps
        span = max(1, total - self.warmup_steps)
        t = min(1.0, (step - self.warmup_steps) / span)
        if self.lr_schedule == "cosine":
            return self.peak_lr * 0.5 * (1.0 + math.cos(math.pi * t))
        if self.lr_schedule == "poly":
            return self.peak_lr * (1.0 - t) ** 0.9
        return self.peak_lr

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        if unknown := sorted(set(d) - known):
            raise ConfigError(f"Unknown TrainConfig fields {unknown}; known are {sorted(known)}.")
        return cls(**d)


@dataclass(frozen=True)
class TrainEvent:
    """Progress of a run, for a display: 'start' (``total`` steps), 'step', or 'epoch' (``row``)."""

    kind: Literal["start", "step", "epoch"]
    step: int
    total: int
    loss: float = math.nan
    row: Mapping[str, Any] = field(default_factory=dict)


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
    """Why the run stopped before its end ('max_time', 'requested'), or None."""
    history: tuple[dict[str, Any], ...]


def companion_paths(output: Path) -> dict[str, Path]:
    """The files a run writes beside ``output``: last model, resume state, metrics CSV."""
    stem = output.name.removesuffix(".safetensors")
    return {"last": output.with_name(f"{stem}.last.safetensors"),
            "resume": output.with_name(f"{stem}.resume.safetensors"),
            "metrics": output.with_name(f"{stem}.metrics.csv")}


def train(data: TrainingData, output: str | Path, cfg: TrainConfig = TrainConfig(), *,
          init: str | Path | None = None, arch: Mapping[str, Any] | None = None, resume: bool = False,
          overwrite: bool = False, on_event: Callable[[TrainEvent], None] | None = None,
          stop: Callable[[int], bool] | None = None) -> TrainResult:
    """Train a U-Net on ``data`` and write it to ``output``.

    Parameters
    ----------
    data
        From :func:`slideseg.train.data.load_training_data`.
    output
        The model file to write (``.safetensors``); companions go beside it (:func:`companion_paths`).
    init
        A model file to start from (``new-model`` output or an earlier checkpoint).
    arch
        UNetConfig fields for a new model (as ``new-model``'s options); ``in_channels`` and
        ``classes`` default to the data's. Not together with ``init``.
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
    _check_outputs(output, paths, resume, overwrite)
    if init is not None and arch:
        raise ConfigError("give either --init FILE or architecture options (--depth, --width, ...), not both.")
    t0 = time.monotonic()
    stats = estimate_statistics(data.train, data.kind, cfg.seed)
    state = _read_resume(paths) if resume else None
    net, mcfg, init_meta = _prepare_model(data, stats, cfg, init, arch, state)
    device = resolve_device(cfg.device)
    threads_before = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        return _run(data, output, cfg, paths, stats, state, net, mcfg, init_meta, device, on_event, stop, t0)
    finally:
        torch.set_num_threads(threads_before)


def _run(data: TrainingData, output: Path, cfg: TrainConfig, paths: Mapping[str, Path], stats: Statistics,
         state: Mapping[str, Any] | None, net: Any, mcfg: UNetConfig, init_meta: Any, device: Any,
         on_event: Callable[[TrainEvent], None] | None, stop: Callable[[int], bool] | None, t0: float
         ) -> TrainResult:
    """The training loop of :func:`train`, everything prepared."""
    geometry = _tile_geometry(mcfg, cfg)
    spec = _target_spec(data, mcfg, stats, cfg)
    if state is None:  # everything checked: now an old run's files may go
        for p in (output, *paths.values()):
            p.unlink(missing_ok=True)
    net.to(device).train()
    white = float(np.iinfo(data.dtype).max) if data.dtype.kind in "iu" else 1.0
    sampler = TileSampler(data.train, geometry, spec, cfg.augment, mcfg.norm_mean, mcfg.norm_std, mcfg.mirror,
                          cfg.seed, cfg.balanced_sampling, white)
    _cache_small_items([*data.train, *data.val], spec, cfg.workers)

    tiles_per_epoch = cfg.tiles_per_epoch or sum(
        math.ceil(it.shape[0] / geometry.output) * math.ceil(it.shape[1] / geometry.output) for it in data.train)
    steps_per_epoch = max(1, math.ceil(tiles_per_epoch / cfg.batch_size))
    total = cfg.steps or (cfg.epochs or DEFAULT_EPOCHS) * steps_per_epoch
    optimizer = _optimizer(net, cfg)
    amp_dtype, scaler = _amp(device, cfg)
    start, best, elapsed0 = 0, -math.inf, 0.0
    history: list[dict[str, Any]] = []
    if state is not None:
        start, history, best, elapsed0 = _restore(state, optimizer, scaler, total)
    deadline = None if cfg.max_time is None else t0 + cfg.max_time * 60.0
    val_jobs = validation_tiles(data.val, geometry, cfg.val_tiles, cfg.seed)

    def forward(x: Any, out: int) -> Any:
        return _forward(net, x, out, amp_dtype)

    meta_base = {"trained": True, "seed": cfg.seed, "train_config": cfg.to_dict(), "data": data.description,
                 "tile": geometry.tile, "class_weights": spec.class_weights, "init": init_meta,
                 "statistics": {"mean": stats.mean, "std": stats.std, "class_counts": stats.class_counts}}
    if on_event:
        on_event(TrainEvent("start", start, total))

    step, stopped, epoch_losses, t_epoch, digest = start, None, [], time.monotonic(), ""
    with BackgroundLoader(sampler, start * cfg.batch_size, total * cfg.batch_size, cfg.workers,
                          prefetch=2 * cfg.batch_size + 2) as loader:
        while step < total:
            batch = [next(loader) for _ in range(cfg.batch_size)]
            loss = _step(net, optimizer, scaler, amp_dtype, batch, cfg, step, total, device)
            epoch_losses.append(loss)
            step += 1
            if on_event:
                on_event(TrainEvent("step", step, total, loss))
            end_of_epoch = step % steps_per_epoch == 0 or step == total
            if end_of_epoch:
                row = _epoch_row(step, steps_per_epoch, epoch_losses, time.monotonic() - t_epoch, cfg, total)
                row.update(validate(net, sampler, val_jobs, spec.classes, forward, device, cfg.workers))
                row["seconds"] = round(elapsed0 + time.monotonic() - t0, 2)
                history.append(row)
                score = -row.get("val_loss", math.inf)  # the weighted target, separation borders included
                improved = bool(val_jobs) and score > best
                best = max(best, score)
                meta = {**meta_base, "epochs": row["epoch"], "steps": step, "loss": row["train_loss"],
                        "val": {k: v for k, v in row.items() if k.startswith("val_")}, "seconds": row["seconds"]}
                digest = _save(net, mcfg, meta, output, paths, improved or not val_jobs)
                _write_metrics(paths["metrics"], history)
                _write_resume(paths, optimizer, scaler, mcfg, step, history, best, row["seconds"], digest)
                epoch_losses, t_epoch = [], time.monotonic()
                if on_event:
                    on_event(TrainEvent("epoch", step, total, row["train_loss"], row))
            if step < total and stop is not None and stop(step):
                stopped = "requested"
            elif step < total and deadline is not None and time.monotonic() > deadline:
                stopped = "max_time"
            if stopped or step == total:
                if end_of_epoch:  # saved just now; record why it ended
                    meta, as_output = {**meta, "stopped": stopped}, not val_jobs
                else:
                    meta = {**meta_base, "epochs": step / steps_per_epoch, "steps": step, "loss": float(
                        np.mean(epoch_losses)), "seconds": round(elapsed0 + time.monotonic() - t0, 2)}
                    meta, as_output = {**meta, "stopped": stopped}, not val_jobs or not output.exists()
                digest = _save(net, mcfg, meta, output, paths, as_output)
                _write_resume(paths, optimizer, scaler, mcfg, step, history, best, meta["seconds"], digest)
                break
    return TrainResult(output, paths["last"], paths["metrics"], step, math.ceil(step / steps_per_epoch),
                       elapsed0 + time.monotonic() - t0, stopped, tuple(history))


# ------------------------------------------------------------------------------------ model setup


def _prepare_model(data: TrainingData, stats: Statistics, cfg: TrainConfig, init: str | Path | None,
                   arch: Mapping[str, Any] | None, state: Mapping[str, Any] | None) -> tuple[Any, UNetConfig, Any]:
    """The network to train and its config: resumed, loaded from ``init``, or new from ``arch``."""

    classes_in_data = max(2, len(stats.class_counts))
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


def _tile_geometry(mcfg: UNetConfig, cfg: TrainConfig) -> TileGeometry:
    g = mcfg.geometry
    tile = cfg.tile or g.smallest_tile_covering(DEFAULT_OUTPUT)
    g.check_tile(tile)
    return TileGeometry(tile, g.usable_output(tile), g.alignment, cfg.augment.margin)


def _target_spec(data: TrainingData, mcfg: UNetConfig, stats: Statistics, cfg: TrainConfig) -> TargetSpec:
    counts = list(stats.class_counts) + [0] * (mcfg.classes - len(stats.class_counts))
    weights = balanced_class_weights(counts) if cfg.class_balance else tuple(1.0 for _ in counts)
    return TargetSpec(data.kind, mcfg.classes, cfg.loss == "weighted", cfg.w0, cfg.sigma, weights,
                      cfg.separation_borders)


def _cache_small_items(items: list[Any], spec: TargetSpec, workers: int) -> None:
    from concurrent.futures import ThreadPoolExecutor

    small = [it for it in items if it.in_memory]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(lambda it: load_cache(it, spec), small))


def _optimizer(net: Any, cfg: TrainConfig) -> Any:
    import torch

    if cfg.optimizer == "adam":
        return torch.optim.Adam(net.parameters(), lr=cfg.peak_lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(net.parameters(), lr=cfg.peak_lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


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
          step: int, total: int, device: Any) -> float:
    import torch


    for group in optimizer.param_groups:
        group["lr"] = cfg.lr_at(step, total)
    torch.manual_seed(_step_seed(cfg.seed, step))  # dropout: the same on a resumed run
    x, y, w = _to_device(batch, device)
    loss = weighted_cross_entropy(_forward(net, x, y.shape[-1], amp_dtype), y, w)
    value = float(loss.detach())
    if not math.isfinite(value):
        raise ConfigError(f"the loss became {value} at step {step + 1}; the learning rate {cfg.lr_at(step, total):.3g} "
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


def _epoch_row(step: int, steps_per_epoch: int, losses: list[float], seconds: float, cfg: TrainConfig,
               total: int) -> dict[str, Any]:
    return {"epoch": math.ceil(step / steps_per_epoch), "step": step, "lr": cfg.lr_at(step - 1, total),
            "train_loss": float(np.mean(losses)),
            "tiles_per_s": round(len(losses) * cfg.batch_size / max(seconds, 1e-9), 3)}


# ------------------------------------------------------------------------------- checkpoints


def _check_outputs(output: Path, paths: Mapping[str, Path], resume: bool, overwrite: bool) -> None:
    if output.suffix != ".safetensors":
        raise ConfigError(f"the model file must end in .safetensors, got {output}")
    if resume:
        missing = [p for p in (paths["last"], paths["resume"]) if not p.is_file()]
        if missing:
            raise ModelFileError(f"--resume needs {' and '.join(map(str, missing))} from an earlier run with "
                                 f"-o {output}; none found: start without --resume.")
        return
    existing = [p for p in (output, *paths.values()) if p.exists()]
    if existing and not overwrite:
        raise OutputExistsError(f"{', '.join(map(str, existing))} exist(s); pass --overwrite to replace, or "
                                "--resume to continue that run.")


def _save(net: Any, mcfg: UNetConfig, meta: Mapping[str, Any], output: Path, paths: Mapping[str, Path],
          as_output: bool) -> str:
    """Write the last model (and ``output`` if ``as_output``); return the weights' hash."""

    meta = {**meta, "slideseg_version": __version__}
    digest = save_model(paths["last"], net, mcfg, meta)
    if as_output:
        save_model(output, net, mcfg, meta)
    return digest


def _write_metrics(path: Path, history: list[dict[str, Any]]) -> None:
    columns = list(dict.fromkeys(k for row in history for k in row))
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, columns)
        writer.writeheader()
        writer.writerows(history)
    tmp.replace(path)


def _write_resume(paths: Mapping[str, Path], optimizer: Any, scaler: Any, mcfg: UNetConfig, step: int,
                  history: list[dict[str, Any]], best: float, seconds: float, weights_sha256: str) -> None:
    """Optimiser tensors and run counters, next to the last model (safetensors: never unpickled)."""
    from safetensors.torch import save_file

    opt = optimizer.state_dict()
    tensors = {f"state.{i}.{name}": t.detach().cpu().contiguous()
               for i, s in opt["state"].items() for name, t in s.items()}
    meta = {"step": step, "history": history, "best": best if math.isfinite(best) else None, "seconds": seconds,
            "param_groups": opt["param_groups"], "model_config": mcfg.to_dict(),
            "weights_sha256": weights_sha256,
            "scaler": scaler.state_dict() if scaler is not None else None}
    tmp = paths["resume"].with_name(paths["resume"].name + ".tmp")
    save_file(tensors, str(tmp), metadata={"slideseg.resume": json.dumps(meta)})
    tmp.replace(paths["resume"])


def _read_resume(paths: Mapping[str, Path]) -> dict[str, Any]:
    from safetensors import safe_open

    try:
        with safe_open(str(paths["resume"]), framework="pt") as f:
            meta = json.loads((f.metadata() or {})["slideseg.resume"])
            meta["tensors"] = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
    except Exception as exc:
        raise ModelFileError(f"{paths['resume']} is not a slideseg resume file ({exc}); "
                             "start without --resume.") from exc
    meta["last_path"] = paths["last"]
    return meta


def _restore(state: Mapping[str, Any], optimizer: Any, scaler: Any, total: int) -> tuple[int, list[Any], float, float]:
    opt_state: dict[int, dict[str, Any]] = {}
    for key, t in state["tensors"].items():
        _, i, name = key.split(".", 2)
        opt_state.setdefault(int(i), {})[name] = t
    try:
        optimizer.load_state_dict({"state": opt_state, "param_groups": state["param_groups"]})
    except (ValueError, KeyError) as exc:
        raise ModelFileError(f"the resume state does not fit this optimiser ({exc}); resume with the same "
                             "--optimizer, or start anew.") from exc
    if scaler is not None and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    if state["step"] > total:
        raise ConfigError(f"the run to resume has done {state['step']} steps, more than the {total} asked for; "
                          "ask for more --steps or --epochs.")
    best = state["best"] if state.get("best") is not None else -math.inf
    return int(state["step"]), list(state["history"]), float(best), float(state["seconds"])


__all__ = ["MASK_KINDS", "TrainConfig", "TrainEvent", "TrainResult", "companion_paths", "train"]
