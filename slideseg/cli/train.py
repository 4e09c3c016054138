"""`slideseg train` and `slideseg evaluate`."""

from __future__ import annotations

import math
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
                                "validation object F1 and loss. X.last.safetensors, X.resume.safetensors and "
                                "X.metrics.csv go beside it.")],
    images: Annotated[Path | None, Opt(help="Directory of training images (TIFF, OME-TIFF, PNG, Zarr).")] = None,
    masks: Annotated[Path | None, Opt(help="Directory of masks matched to images by name (a.tif -> a.png, "
                                      "a_mask.tif, a.truth.zarr); may be the images directory.")] = None,
    manifest: Annotated[Path | None, Opt(help="CSV with columns image,mask[,split] instead of directories.")] = None,
    val_images: Annotated[Path | None, Opt(help="Directory of validation images.")] = None,
    val_masks: Annotated[Path | None, Opt(help="Directory of validation masks.")] = None,
    val_fraction: Annotated[float | None, Opt(help="Hold out this fraction of the images (of the rows of a "
                                              "single image) for validation. (default: 0; see --holdout)")] = None,
    holdout: Annotated[float | None, Opt(help="Without validation data, hold out this fraction for it: whole "
                                         "images when there are 5 or more, else a band of each (>= 64 px). "
                                         "0: none. (default: 0.1)")] = None,
    mask_kind: Annotated[str | None, Opt(help="instances (object ids; 2 classes) | classes (class ids). "
                                         "(default: instances)")] = None,
    init: Annotated[Path | None, Opt(help="Start from this model file (new-model output or a checkpoint).")] = None,
    depth: Annotated[int | None, Opt(help="New model: poolings. (default: 4)")] = None,
    width: Annotated[int | None, Opt(help="New model: channels of the first level. (default: 64 on a GPU, "
                                     "16 on a CPU)")] = None,
    classes: Annotated[int | None, Opt(help="New model: classes incl. background. (default: from masks)")] = None,
    padding: Annotated[str | None, Opt(help="New model: valid | same. (default: valid)")] = None,
    halo: Annotated[int | None, Opt(help="New model: tiling halo for same padding, px. (default: 0)")] = None,
    dropout: Annotated[float | None, Opt(help="New model: dropout at the bottom. (default: 0.5)")] = None,
    mirror: Annotated[str | None, Opt(help="New model: reflect | symmetric. (default: reflect)")] = None,
    mpp: Annotated[float | None, Opt(help="New model: pixel size it expects, µm. (default: 0.5)")] = None,
    class_names: Annotated[str | None, Opt(help="New model: class names, comma-separated. (default: background, "
                                             "class 1, ...)")] = None,
    epochs: Annotated[int | None, Opt(help="Epochs to train (an epoch: --tiles-per-epoch tiles, then "
                                      "validation). (default: the budget rule, see --max-time)")] = None,
    steps: Annotated[int | None, Opt(help="Optimiser steps in all (instead of --epochs). "
                                     "(default: the budget rule)")] = None,
    tiles_per_epoch: Annotated[int | None, Opt(help="Tiles between validations. (default: the tiles that cover "
                                               "the training images once, 200 to 2048)")] = None,
    max_time: Annotated[float | None, Opt(help="Minutes. Alone: train until the time is up (the schedule spans "
                                       "it). With --steps/--epochs: stop cleanly then (--resume continues). "
                                       "(default: no limit; without any budget: 50 passes over the data, at "
                                       "least 2000 and at most 100000 tiles)")] = None,
    patience: Annotated[int | None, Opt(help="Stop after this many validations without improvement. "
                                        "(default: never)")] = None,
    recipe: Annotated[str | None, Opt(help="Defaults of the optimisation options: default (Adam 0.003, 2 tiles "
                                      "with >= 256 px of output per step, measured best on a CPU) | paper (SGD "
                                      "0.001, momentum 0.99, one 572-px tile per step). (default: default)")] = None,
    seed: Annotated[int | None, Opt(help="Seed of weights, tiles, augmentation, dropout. (default: 0)")] = None,
    tile: Annotated[int | None, Opt(help="Input tile edge, px (valid for the model). (default: the recipe's: "
                                    "output >= 256 px, 444 at depth 4; paper >= 388, 572)")] = None,
    batch_size: Annotated[int | None, Opt(help="Tiles per step. (default: the recipe's: 2, paper 1)")] = None,
    optimizer: Annotated[str | None, Opt(help="sgd | adam. (default: the recipe's: adam, paper sgd)")] = None,
    lr: Annotated[float | None, Opt(help="Peak learning rate. (default: the recipe's: 0.003, paper 0.001)")] = None,
    momentum: Annotated[float | None, Opt(help="SGD momentum. (default: the recipe's: paper 0.99)")] = None,
    weight_decay: Annotated[float | None, Opt(help="L2 weight decay. (default: 0)")] = None,
    lr_schedule: Annotated[str | None, Opt(help="cosine | poly | constant. (default: cosine)")] = None,
    warmup_steps: Annotated[int | None, Opt(help="Linear warm-up steps. (default: the recipe's: 20, paper 0)")
                            ] = None,
    grad_clip: Annotated[float | None, Opt(help="Clip the gradient norm to this. (default: off)")] = None,
    loss: Annotated[str | None, Opt(help="weighted (the paper's weight map) | ce (plain). (default: weighted)")] = None,
    w0: Annotated[float | None, Opt(help="Border weight w0. (default: 10)")] = None,
    sigma: Annotated[float | None, Opt(help="Border width sigma, px. (default: 5)")] = None,
    class_balance: Annotated[bool | None, Opt("--class-balance/--no-class-balance",
                                              help="Balance class frequencies (w_c). (default: on)")] = None,
    separation_borders: Annotated[bool | None, Opt("--separation-borders/--no-separation-borders",
                                                   help="Instance masks: background where objects touch. "
                                                   "(default: on)")] = None,
    separation_width: Annotated[int | None, Opt(help="Width of those borders: 2 px (both sides of a contact, the "
                                                "paper's) or 1 (one side). (default: 2)")] = None,
    border_on_objects: Annotated[bool | None, Opt("--border-on-objects/--no-border-on-objects",
                                                  help="The border term on object pixels too, not only on "
                                                  "background. (default: off)")] = None,
    balanced_sampling: Annotated[bool | None, Opt("--balanced-sampling",
                                                  help="Draw tiles class-balanced. (default: off)")] = None,
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
    resume: Annotated[bool | None, Opt("--resume", help="Continue the run whose files sit beside -o.")] = None,
    overwrite: Annotated[bool | None, Opt("--overwrite",
                                          help="Replace an existing model file and its companions.")] = None,
    progress: Annotated[bool, Opt("--progress/--no-progress", help="Show progress.")] = True,
) -> None:
    """Train a U-Net with the paper's weighted loss; writes the same model files predict reads."""
    from slideseg.cli.progress import train_progress
    from slideseg.train.augment import AugmentConfig
    from slideseg.train.data import load_training_data
    from slideseg.train.loop import TrainConfig
    from slideseg.train.loop import train as run_train

    aug = AugmentConfig(**_given(elastic=elastic, flips=flips, rotations=flips, stain_jitter=stain_jitter))
    cfg = TrainConfig(augment=aug, **_given(
        epochs=epochs, steps=steps, tiles_per_epoch=tiles_per_epoch, tile=tile, batch_size=batch_size,
        optimizer=optimizer, lr=lr, momentum=momentum, weight_decay=weight_decay, lr_schedule=lr_schedule,
        warmup_steps=warmup_steps, grad_clip=grad_clip, loss=loss, w0=w0, sigma=sigma, class_balance=class_balance,
        separation_borders=separation_borders, separation_width=separation_width,
        border_on_objects=border_on_objects, balanced_sampling=balanced_sampling, normalisation=normalisation,
        val_tiles=val_tiles, seed=seed, max_time=max_time, device=device, amp=amp, threads=threads,
        workers=workers, holdout=holdout, patience=patience, recipe=recipe))
    arch = _given(depth=depth, width=width, classes=classes, padding=padding, halo=halo, dropout=dropout,
                  mirror=mirror, mpp=mpp, class_names=tuple(class_names.split(",")) if class_names else None)
    data = load_training_data(images=images, masks=masks, manifest=manifest, val_images=val_images,
                              val_masks=val_masks, seed=cfg.seed,
                              **_given(val_fraction=val_fraction, mask_kind=mask_kind))
    try:
        with train_progress(progress, console=err) as on_event:
            result = run_train(data, output, cfg, init=init, arch=arch or None, on_event=on_event,
                               **_given(resume=resume, overwrite=overwrite))
    finally:
        data.close()
    out.print(_summary(result))


def _summary(result: Any) -> Table:
    """The table printed after a run: what it did, why it stopped, the best and the last epoch."""
    ends = {"budget": "", "time": " (the time budget is spent)", "patience": " (stopped early: no improvement)",
            "max_time": " (stopped: --max-time; continue with --resume)", "requested": " (stopped; continue with "
            "--resume)"}
    table = Table(show_header=False, box=None, title=f"[bold green]wrote {result.output}[/]")
    table.add_row("run", f"{result.steps} steps, {result.epochs} epoch(s), {result.seconds:.0f} s"
                  + ends.get(result.ended, f" ({result.ended})"))
    table.add_row("budget", result.budget)
    table.add_row("validation", result.validation or "none (the last model is the output)")
    if result.best:
        table.add_row("best epoch", f"{result.best['epoch']} (saved as {result.output.name}): " + _scores(result.best))
    if result.history:
        table.add_row("last epoch", f"{result.history[-1]['epoch']}: " + _scores(result.history[-1]))
    table.add_row("files", f"{result.last.name}, {result.metrics.name}")
    return table


def _scores(row: dict[str, Any]) -> str:
    names = (("train_loss", "train loss"), ("val_loss", "val loss"), ("val_iou", "val IoU"), ("val_f1", "object F1"),
             ("val_merge_rate", "merge rate"), ("tiles_per_s", "tiles/s"))
    return ", ".join(f"{label} {_fmt(row[key]) if key != 'tiles_per_s' else row[key]}"
                     for key, label in names if key in row)


@app.command()
@_friendly_errors
def evaluate(
    pred: Annotated[Path, typer.Argument(help="Predicted mask: a predict output (.zarr), Zarr array, TIFF or PNG.")],
    gt: Annotated[Path, typer.Argument(help="Ground truth: a truth Zarr (classes + instances), Zarr array, "
                                       "TIFF or PNG.")],
    gt_kind: Annotated[str | None, Opt(help="auto | classes | instances: how to read a single-array truth. "
                                       "(default: auto)")] = None,
    block: Annotated[int | None, Opt(help="Block edge read at once, px. (default: 2048)")] = None,
    as_json: Annotated[bool, Opt("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Per-class IoU and Dice, object precision/recall/F1 at IoU 0.5, the merge rate of touching objects,
    and panoptic quality (PQ) and the aggregated Jaccard index (AJI) of the instances."""
    from slideseg.errors import ConfigError
    from slideseg.tools.evaluate import evaluate as run_evaluate

    if gt_kind not in (None, "auto", "classes", "instances"):
        raise ConfigError(f"--gt-kind must be auto, classes or instances, got {gt_kind!r}")
    result = run_evaluate(pred, gt, **_given(gt_kind=gt_kind, block=block))
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
    i = result.instances
    out.print(f"instances: PQ {_fmt(i['pq'])} (SQ {_fmt(i['sq'])} x RQ {_fmt(i['rq'])}), AJI {_fmt(i['aji'])}")


def _fmt(v: float) -> str:
    return "-" if v is None or math.isnan(v) else f"{v:.4f}"
