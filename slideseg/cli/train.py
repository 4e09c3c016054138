"""`slideseg train` and `slideseg evaluate`."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from slideseg.cli._app import _friendly_errors, _given, app, err, out

Opt = typer.Option


@app.command()
@_friendly_errors
def train(
    output: Annotated[Path, Opt("-o", "--output", help="Model file to write (.safetensors); the best by "
                                "validation loss. X.last.safetensors, X.resume.safetensors and X.metrics.csv "
                                "go beside it.")],
    images: Annotated[Path | None, Opt(help="Directory of training images (TIFF, OME-TIFF, PNG, Zarr).")] = None,
    masks: Annotated[Path | None, Opt(help="Directory of masks matched to images by name (a.tif -> a.png, "
                                      "a_mask.tif, a.truth.zarr); may be the images directory.")] = None,
    manifest: Annotated[Path | None, Opt(help="CSV with columns image,mask[,split] instead of directories.")] = None,
    val_images: Annotated[Path | None, Opt(help="Directory of validation images.")] = None,
    val_masks: Annotated[Path | None, Opt(help="Directory of validation masks.")] = None,
    val_fraction: Annotated[float, Opt(help="Hold out this fraction of the images (of the rows of a "
                                       "single image) for validation.")] = 0.0,
    mask_kind: Annotated[str, Opt(help="instances (object ids; 2 classes) | classes (class ids).")] = "instances",
    init: Annotated[Path | None, Opt(help="Start from this model file (new-model output or a checkpoint).")] = None,
    depth: Annotated[int | None, Opt(help="New model: poolings. (default: 4)")] = None,
    width: Annotated[int | None, Opt(help="New model: channels of the first level. (default: 64)")] = None,
    classes: Annotated[int | None, Opt(help="New model: classes incl. background. (default: from masks)")] = None,
    padding: Annotated[str | None, Opt(help="New model: valid | same. (default: valid)")] = None,
    halo: Annotated[int | None, Opt(help="New model: tiling halo for same padding, px.")] = None,
    dropout: Annotated[float | None, Opt(help="New model: dropout at the bottom. (default: 0.5)")] = None,
    mirror: Annotated[str | None, Opt(help="New model: reflect | symmetric. (default: reflect)")] = None,
    mpp: Annotated[float | None, Opt(help="New model: pixel size it expects, µm. (default: 0.5)")] = None,
    class_names: Annotated[str | None, Opt(help="New model: class names, comma-separated.")] = None,
    epochs: Annotated[int | None, Opt(help="Passes over the data. (default: 10)")] = None,
    steps: Annotated[int | None, Opt(help="Optimiser steps in all (instead of --epochs).")] = None,
    tiles_per_epoch: Annotated[int | None, Opt(help="Tiles per epoch. (default: cover each image once)")] = None,
    max_time: Annotated[float | None, Opt(help="Stop cleanly after this many minutes (resume later).")] = None,
    seed: Annotated[int | None, Opt(help="Seed of weights, tiles, augmentation, dropout. (default: 0)")] = None,
    tile: Annotated[int | None, Opt(help="Input tile edge, px (valid for the model). (default: output >= 256)")] = None,
    batch_size: Annotated[int | None, Opt(help="Tiles per step. (default: 1)")] = None,
    optimizer: Annotated[str | None, Opt(help="sgd | adam. (default: sgd)")] = None,
    lr: Annotated[float | None, Opt(help="Peak learning rate. (default: 0.001)")] = None,
    momentum: Annotated[float | None, Opt(help="SGD momentum. (default: 0.99)")] = None,
    weight_decay: Annotated[float | None, Opt(help="L2 weight decay. (default: 0)")] = None,
    lr_schedule: Annotated[str | None, Opt(help="cosine | poly | constant. (default: cosine)")] = None,
    warmup_steps: Annotated[int | None, Opt(help="Linear warm-up steps. (default: 0)")] = None,
    grad_clip: Annotated[float | None, Opt(help="Clip the gradient norm to this.")] = None,
    loss: Annotated[str | None, Opt(help="weighted (the paper's weight map) | ce (plain). (default: weighted)")] = None,
    w0: Annotated[float | None, Opt(help="Border weight w0. (default: 10)")] = None,
    sigma: Annotated[float | None, Opt(help="Border width sigma, px. (default: 5)")] = None,
    class_balance: Annotated[bool | None, Opt("--class-balance/--no-class-balance",
                                              help="Balance class frequencies (w_c). (default: on)")] = None,
    separation_borders: Annotated[bool | None, Opt("--separation-borders/--no-separation-borders",
                                                   help="Instance masks: background where objects touch. "
                                                   "(default: on)")] = None,
    balanced_sampling: Annotated[bool | None, Opt("--balanced-sampling", help="Draw tiles class-balanced.")] = None,
    elastic: Annotated[bool | None, Opt("--elastic/--no-elastic", help="Elastic deformation. (default: on)")] = None,
    flips: Annotated[bool | None, Opt("--flips/--no-flips", help="Flips and 90° rotations. (default: on)")] = None,
    stain_jitter: Annotated[float | None, Opt(help="H&E stain jitter strength, e.g. 0.05. (default: 0)")] = None,
    normalisation: Annotated[str | None, Opt(help="auto | data | model: where the input mean/std come "
                                             "from. (default: auto)")] = None,
    val_tiles: Annotated[int | None, Opt(help="Most validation tiles per epoch. (default: 64)")] = None,
    device: Annotated[str | None, Opt(help="auto | cpu | cuda[:N]. (default: auto)")] = None,
    amp: Annotated[bool | None, Opt("--amp/--no-amp", help="Mixed precision on CUDA. (default: on)")] = None,
    threads: Annotated[int | None, Opt(help="CPU threads for torch. (default: all)")] = None,
    workers: Annotated[int | None, Opt(help="Background threads loading tiles. (default: 2)")] = None,
    resume: Annotated[bool, Opt("--resume", help="Continue the run whose files sit beside -o.")] = False,
    overwrite: Annotated[bool, Opt("--overwrite", help="Replace an existing model file and its companions.")] = False,
    progress: Annotated[bool, Opt("--progress/--no-progress", help="Show progress.")] = True,
) -> None:
    """Train a U-Net with the paper's weighted loss; writes the same model files predict reads."""
    from slideseg.train.augment import AugmentConfig
    from slideseg.train.data import load_training_data
    from slideseg.train.loop import TrainConfig
    from slideseg.train.loop import train as run_train

    aug = AugmentConfig(**_given(elastic=elastic, flips=flips, rotations=flips, stain_jitter=stain_jitter))
    cfg = TrainConfig(augment=aug, **_given(
        epochs=epochs, steps=steps, tiles_per_epoch=tiles_per_epoch, tile=tile, batch_size=batch_size,
        optimizer=optimizer, lr=lr, momentum=momentum, weight_decay=weight_decay, lr_schedule=lr_schedule,
        warmup_steps=warmup_steps, grad_clip=grad_clip, loss=loss, w0=w0, sigma=sigma, class_balance=class_balance,
        separation_borders=separation_borders, balanced_sampling=balanced_sampling, normalisation=normalisation,
        val_tiles=val_tiles, seed=seed, max_time=max_time, device=device, amp=amp, threads=threads,
        workers=workers))
    arch = _given(depth=depth, width=width, classes=classes, padding=padding, halo=halo, dropout=dropout,
                  mirror=mirror, mpp=mpp, class_names=tuple(class_names.split(",")) if class_names else None)
    data = load_training_data(images=images, masks=masks, manifest=manifest, val_images=val_images,
                              val_masks=val_masks, val_fraction=val_fraction, mask_kind=mask_kind,  # type: ignore[arg-type]
                              seed=cfg.seed)
    try:
        with _progress(progress) as on_event:
            result = run_train(data, output, cfg, init=init, arch=arch or None, resume=resume, overwrite=overwrite,
                               on_event=on_event)
    finally:
        data.close()
    last = result.history[-1] if result.history else {}
    table = Table(show_header=False, box=None, title=f"[bold green]wrote {result.output}[/]")
    table.add_row("run", f"{result.steps} steps, {result.epochs} epoch(s), {result.seconds:.0f} s"
                  + (f" (stopped: {result.stopped}; continue with --resume)" if result.stopped else ""))
    if last:
        table.add_row("last epoch", ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                              for k, v in last.items()))
    table.add_row("files", f"{result.last.name}, {result.metrics.name}")
    out.print(table)


@contextmanager
def _progress(enabled: bool) -> Iterator[Callable[[Any], None] | None]:
    """A rich bar with the running loss on a terminal; one line per epoch elsewhere."""
    if not enabled:
        yield None
        return
    if err.is_terminal:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        with Progress(TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(), TextColumn("steps"),
                      TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[val]}"), TimeElapsedColumn(),
                      TextColumn("ETA"), TimeRemainingColumn(), console=err) as bar:
            task = bar.add_task("train", total=None, loss="-", val="")

            def on_event(e: Any) -> None:
                if e.kind == "start":
                    bar.update(task, total=e.total, completed=e.step)
                elif e.kind == "step":
                    bar.update(task, completed=e.step, loss=f"{e.loss:.4f}")
                else:
                    iou = e.row.get("val_iou")
                    bar.update(task, val="" if iou is None else f"val IoU {iou:.3f}")

            yield on_event
        return

    def on_epoch(e: Any) -> None:
        if e.kind == "epoch":
            row = e.row
            val = f", val IoU {row['val_iou']:.4f}" if "val_iou" in row else ""
            err.print(f"train: epoch {row['epoch']}, step {e.step}/{e.total}, loss {row['train_loss']:.4f}{val}, "
                      f"{row['tiles_per_s']:.2f} tiles/s", highlight=False)

    yield on_epoch


@app.command()
@_friendly_errors
def evaluate(
    pred: Annotated[Path, typer.Argument(help="Predicted mask: a predict output (.zarr), Zarr array, TIFF or PNG.")],
    gt: Annotated[Path, typer.Argument(help="Ground truth: a truth Zarr (classes + instances), Zarr array, "
                                       "TIFF or PNG.")],
    gt_kind: Annotated[str, Opt(help="auto | classes | instances: how to read a single-array truth.")] = "auto",
    block: Annotated[int, Opt(help="Block edge read at once, px.")] = 2048,
    as_json: Annotated[bool, Opt("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Per-class IoU and Dice, object precision/recall/F1 at IoU 0.5, and the merge rate of touching objects."""
    from slideseg.errors import ConfigError
    from slideseg.tools.evaluate import evaluate as run_evaluate

    if gt_kind not in ("auto", "classes", "instances"):
        raise ConfigError(f"--gt-kind must be auto, classes or instances, got {gt_kind!r}")
    result = run_evaluate(pred, gt, gt_kind=gt_kind, block=block)  # type: ignore[arg-type]
    if as_json:
        print(result.to_json())
        return
    table = Table(title=f"[bold]{pred}[/] vs {gt}")
    for col in ("class", "IoU", "Dice"):
        table.add_column(col)
    for name, iou, dice in zip(result.class_names, result.iou, result.dice, strict=True):
        table.add_row(name, _fmt(iou), _fmt(dice))
    out.print(table)
    o, m = result.objects, result.merges
    out.print(f"foreground IoU {_fmt(result.foreground_iou)}")
    out.print(f"objects: {o['gt']} true, {o['pred']} predicted, {o['matched']} matched at IoU > 0.5: precision "
              f"{_fmt(o['precision'])}, recall {_fmt(o['recall'])}, F1 {_fmt(o['f1'])}")
    out.print(f"touching true objects merged: {m['merged_pairs']} of {m['touching_pairs']} pairs "
              f"(merge rate {_fmt(m['merge_rate'])})")


def _fmt(v: float) -> str:
    return "-" if v is None or math.isnan(v) else f"{v:.4f}"
