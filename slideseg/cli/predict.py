"""`slideseg predict`: parse the options, build the configs (passing on only what was set), call
:func:`slideseg.predict.predict_slides`, print what it did."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from slideseg.cli._app import _friendly_errors, _given, app, err, out
from slideseg.cli._scale import (
    PANEL,
    Account,
    Cluster,
    Cores,
    Interface,
    Jobs,
    Memory,
    Queue,
    SchedulerAddress,
    SchedulerFile,
    Walltime,
)

_INPUT = "Input"
_MODEL = "Model and engine"
_OUTPUT = "Output"
_DISPLAY = "Display"


@app.command()
@_friendly_errors
def predict(
    slides: Annotated[list[Path], typer.Argument(
        help="Slide(s): OME-TIFF, SVS, NDPI, tiled TIFF, OME-Zarr (0.4/0.5), Zarr, PNG/JPEG.",
        show_default=False)],
    level: Annotated[int | None, typer.Option(
        help="Pyramid level to read. (default: the level nearest the model's µm/px, resampled to it)",
        rich_help_panel=_INPUT)] = None,
    mpp: Annotated[float | None, typer.Option(
        help="The slide's level-0 pixel size in µm, overriding its metadata.", rich_help_panel=_INPUT)] = None,
    channels: Annotated[str | None, typer.Option(
        help="Channels to feed the model, in order, e.g. 0,2. (default: all)", rich_help_panel=_INPUT)] = None,
    series: Annotated[int | None, typer.Option(
        help="Image series of a multi-series file. (default: 0)", rich_help_panel=_INPUT)] = None,
    tissue: Annotated[bool | None, typer.Option(
        "--tissue/--no-tissue", help="Run only chunks with tissue; the rest read as background. (default: on)",
        rich_help_panel=_INPUT)] = None,
    tissue_mask: Annotated[Path | None, typer.Option(
        help="Low-resolution tissue mask (image or Zarr, non-zero = tissue) instead of detection.",
        rich_help_panel=_INPUT)] = None,
    model: Annotated[Path | None, typer.Option("--model", "-m", help=(
        "Model: a slideseg .safetensors file, a bioimage.io package (.zip, rdf.yaml), or your own .onnx / "
        ".pt2 / TorchScript file with a sidecar MODEL.json. (default: the bundled model)"),
        rich_help_panel=_MODEL)] = None,
    norm: Annotated[str | None, typer.Option(
        help="model | slide. slide: each channel to zero mean and unit variance with the slide's statistics, in "
             "place of the model's constants. (default: model; statistics steps of a package always take the "
             "slide's)", rich_help_panel=_MODEL)] = None,
    norm_level: Annotated[int | None, typer.Option(
        help="Pyramid level the slide's normalisation statistics come from (tissue only). (default: the finest "
             "level of at most 4 megapixels)", rich_help_panel=_MODEL)] = None,
    engine: Annotated[str | None, typer.Option(
        help="auto | torch | onnxruntime | tensorrt. auto: TensorRT if installed and a GPU is present, else "
             "torch on CUDA, else the fastest CPU engine (measured once, cached in engines/). (default: auto)",
        rich_help_panel=_MODEL)] = None,
    device: Annotated[str | None, typer.Option(
        help="auto | cpu | cuda[:N]. (default: auto)", rich_help_panel=_MODEL)] = None,
    precision: Annotated[str | None, typer.Option(
        help="fp32 | fp16 | bf16. (default: fp32)", rich_help_panel=_MODEL)] = None,
    tile: Annotated[int | None, typer.Option(
        help="Network input tile edge in px (depth-4 valid: 16k+12). Default: one tile per chunk.",
        rich_help_panel=_MODEL)] = None,
    batch_size: Annotated[int | None, typer.Option(
        help="Tiles per engine call. (default: 4 on GPU; CPU: up to 1.5 MP)", rich_help_panel=_MODEL)] = None,
    threads: Annotated[int | None, typer.Option(
        help="CPU threads for the engine. (default: all)", rich_help_panel=_MODEL)] = None,
    compile: Annotated[bool | None, typer.Option(
        "--compile", help="torch.compile the network.", rich_help_panel=_MODEL)] = None,
    output: Annotated[str | None, typer.Option(
        "-o", "--output", help="Output OME-Zarr label image (mask.zarr); a directory (DIR/) for several slides.",
        rich_help_panel=_OUTPUT)] = None,
    into: Annotated[Path | None, typer.Option(
        help="Write the mask as a label of this OME-Zarr image (INTO/labels/NAME) instead of -o.",
        rich_help_panel=_OUTPUT)] = None,
    name: Annotated[str | None, typer.Option(
        help="Label name with --into. (default: segmentation)", rich_help_panel=_OUTPUT)] = None,
    chunk: Annotated[int | None, typer.Option(
        help="Output chunk edge in px. (default: 1024)", rich_help_panel=_OUTPUT)] = None,
    ngff: Annotated[str | None, typer.Option(
        help="Output format: 0.4 (Zarr v2; QuPath, napari, OMERO) or 0.5 (Zarr v3, sharded). (default: 0.4)",
        rich_help_panel=_OUTPUT)] = None,
    shard: Annotated[int | None, typer.Option(
        help="NGFF 0.5 shard edge in px, a multiple of --chunk. (default: 4 chunks)", rich_help_panel=_OUTPUT)] = None,
    probabilities: Annotated[bool | None, typer.Option(
        "--probabilities/--no-probabilities", help="Also write per-class probabilities (uint8).",
        rich_help_panel=_OUTPUT)] = None,
    objects: Annotated[bool | None, typer.Option(
        "--objects", help="Then run `slideseg objects` on the mask (default options): instance ids in "
                          "mask.zarr/objects and the object table mask.objects.parquet.",
        rich_help_panel=_OUTPUT)] = None,
    overwrite: Annotated[bool | None, typer.Option(
        "--overwrite", help="Replace an existing output (never done otherwise).", rich_help_panel=_OUTPUT)] = None,
    resume: Annotated[bool | None, typer.Option(
        "--resume", help="Finish an interrupted run: only missing chunks run; the result is identical.",
        rich_help_panel=_OUTPUT)] = None,
    workers: Annotated[int | None, typer.Option(
        help="Start a local Dask cluster of N worker processes. (default: threads in this process)",
        rich_help_panel=PANEL)] = None,
    io_threads: Annotated[int | None, typer.Option(
        help="Threads per worker reading and writing chunks. (default: 2)", rich_help_panel=PANEL)] = None,
    scheduler_file: SchedulerFile = None,
    scheduler_address: SchedulerAddress = None,
    cluster: Cluster = None,
    jobs: Jobs = None,
    cores: Cores = None,
    memory: Memory = None,
    gpus_per_job: Annotated[int | None, typer.Option(
        help="GPUs per job. (default: 0)", rich_help_panel=PANEL)] = None,
    walltime: Walltime = None,
    queue: Queue = None,
    account: Account = None,
    interface: Interface = None,
    progress: Annotated[bool, typer.Option(
        "--progress/--no-progress", help="Show progress (plain lines when not on a terminal).",
        rich_help_panel=_DISPLAY)] = True,
    preview: Annotated[bool | None, typer.Option(
        "--preview", help="Also write mask.png beside the output: the slide with the mask overlaid.",
        rich_help_panel=_DISPLAY)] = None,
) -> None:
    """Segment slides into OME-Zarr label images, chunk by chunk, seamlessly.

    Tiles are phase-aligned with the network's pooling grid and borders are mirrored, so the mask
    equals one forward pass over the whole mirror-padded slide. Chunks without tissue are skipped;
    an interrupted run continues with --resume. Several slides: -o names a directory, and outputs
    that are already complete are skipped.
    """
    from slideseg.cli.progress import PredictProgress
    from slideseg.predict import PredictConfig, predict_slides
    from slideseg.schedule.cluster import ClusterConfig

    cfg = PredictConfig(**_given(
        tile=tile, batch_size=batch_size, chunk=chunk, ngff=ngff, shard=shard, level=level, mpp=mpp,
        channels=channels, series=series, device=device, engine=engine, precision=precision,
        compile=compile, probabilities=probabilities, preview=preview, objects=objects, tissue=tissue,
        tissue_mask=_text(tissue_mask), overwrite=overwrite, resume=resume, into=_text(into), name=name,
        threads=threads, norm=norm, norm_level=norm_level))
    cc = ClusterConfig(**_given(
        threads=io_threads, workers=workers, scheduler_file=_text(scheduler_file),
        scheduler_address=scheduler_address, cluster=cluster, jobs=jobs, cores=cores, memory=memory,
        gpus_per_job=gpus_per_job, walltime=walltime, queue=queue, account=account, interface=interface))
    with PredictProgress(n_slides=len(slides), console=err, enabled=progress) as observer:
        outcome = predict_slides(slides, output, model, cfg, cc, observer)
    if not isinstance(outcome, list):
        _summary(outcome)
        return
    table = Table(title=f"[bold]{len(outcome)} slides -> {output}[/]")
    for col in ("slide", "output", "outcome"):
        table.add_column(col)
    for it in outcome:
        done = (f"[red]error:[/] {it.error}" if it.error else f"skipped ({it.skipped})" if it.skipped
                else f"done in {it.result.seconds:.1f} s" if it.result else "")
        table.add_row(str(it.slide), str(it.output), done)
    out.print(table)
    if any(it.error for it in outcome):
        raise typer.Exit(2)


def _text(path: Path | None) -> str | None:
    return str(path) if path is not None else None


def _summary(result: object) -> None:
    from slideseg.predict import PredictResult

    assert isinstance(result, PredictResult)
    table = Table(show_header=False, box=None, title=f"[bold green]wrote {result.output}[/]")
    table.add_row("mask", f"{result.shape[0]} x {result.shape[1]} px"
                  + (f" at {result.mpp:.4g} µm/px" if result.mpp else " (no pixel size)"))
    p = result.plan
    table.add_row("plan", f"{p['grid'][0]} x {p['grid'][1]} chunks of {p['chunk']} px, tile {p['tile']} "
                  f"-> {p['tile_output']} px, {p['compute_redundancy']:.2f} network px per output px")
    chunks = f"{result.chunks_run} run, {result.chunks_skipped} background (no tissue)"
    if result.chunks_already_done:
        chunks += f", {result.chunks_already_done} already done"
    if result.tissue_fraction is not None:
        chunks += f"; tissue covers {result.tissue_fraction:.0%} of the slide"
    table.add_row("chunks", chunks)
    table.add_row("engine", ", ".join(f"{k}={v}" for k, v in result.engine.items()))
    table.add_row("time", f"{result.seconds:.1f} s, {result.megapixels_per_second:.2f} MP/s")
    out.print(table)
    for note in result.warnings:
        err.print(f"[yellow]note:[/] {note}", highlight=False)

