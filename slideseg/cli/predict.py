"""`slideseg predict`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from slideseg.cli._app import _friendly_errors, _given, app, err, out


@app.command()
@_friendly_errors
def predict(
    slide: Annotated[Path, typer.Argument(help="Slide to segment: OME-TIFF, tiled TIFF, OME-Zarr or Zarr.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Output OME-Zarr label image (mask.zarr).")],
    model: Annotated[Path | None, typer.Option("--model", "-m", help="Model file (.safetensors).")] = None,
    tile: Annotated[int | None, typer.Option(
        help="Network input tile edge in px (depth-4 valid: 16k+12). Default: one tile per chunk.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Tiles per engine call. [default: 4]")] = None,
    chunk: Annotated[int | None, typer.Option(help="Output chunk edge in px. [default: 1024]")] = None,
    level: Annotated[int | None, typer.Option(help="Pyramid level to read. [default: 0]")] = None,
    series: Annotated[int | None, typer.Option(help="Image series of a multi-series file. [default: 0]")] = None,
    device: Annotated[str | None, typer.Option(help="auto | cpu | cuda[:N]. [default: auto]")] = None,
    engine: Annotated[str | None, typer.Option(help="auto | torch. [default: auto]")] = None,
    precision: Annotated[str | None, typer.Option(help="fp32 | fp16 | bf16. [default: fp32]")] = None,
    compile: Annotated[bool | None, typer.Option("--compile", help="torch.compile the network.")] = None,
    probabilities: Annotated[bool | None, typer.Option(
        "--probabilities/--no-probabilities", help="Also write per-class probabilities (uint8).")] = None,
    overwrite: Annotated[bool | None, typer.Option(
        "--overwrite", help="Replace an existing output (never done otherwise).")] = None,
    threads: Annotated[int | None, typer.Option(help="CPU threads for the engine. [default: all]")] = None,
    workers: Annotated[int | None, typer.Option(help="Concurrent chunk tasks. [default: 2]")] = None,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show progress.")] = True,
) -> None:
    """Segment a slide into an OME-Zarr label image, tile by tile, seamlessly.

    Tiles are phase-aligned with the network's pooling grid and borders are mirrored, so the mask
    equals one forward pass over the whole mirror-padded slide.
    """
    from slideseg.predict import PredictConfig
    from slideseg.predict import predict as run_predict
    from slideseg.progress import chunk_progress

    cfg = PredictConfig(**_given(tile=tile, batch_size=batch_size, chunk=chunk, level=level, series=series,
                                 device=device, engine=engine, precision=precision, compile=compile,
                                 probabilities=probabilities,
                                 overwrite=overwrite, threads=threads, workers=workers))
    model_path = model if model is not None else _default_model()
    with chunk_progress(f"predict {slide.name}", enabled=progress, console=err) as start:
        result = run_predict(slide, output, model_path, cfg, progress=start)
    table = Table(show_header=False, box=None, title=f"[bold green]wrote {result.output}[/]")
    table.add_row("mask", f"{result.shape[0]} x {result.shape[1]} px"
                  + (f" at {result.mpp:.4g} µm/px" if result.mpp else " (no pixel size)"))
    p = result.plan
    table.add_row("plan", f"{p['grid'][0]} x {p['grid'][1]} chunks of {p['chunk']} px, tile {p['tile']} "
                  f"-> {p['tile_output']} px, {p['compute_redundancy']:.2f} network px per output px")
    table.add_row("engine", ", ".join(f"{k}={v}" for k, v in result.engine.items()))
    table.add_row("time", f"{result.seconds:.1f} s, {result.megapixels_per_second:.2f} MP/s")
    out.print(table)
    for note in result.warnings:
        err.print(f"[yellow]note:[/] {note}", highlight=False)


def _default_model() -> Path:
    from slideseg.errors import ModelFileError

    bundled = Path(__file__).parent / "data" / "default.safetensors"
    if bundled.is_file():
        return bundled
    raise ModelFileError("no --model given and no default model is bundled; create one with "
                         "`slideseg new-model -o unet.safetensors` and pass --model unet.safetensors.")
