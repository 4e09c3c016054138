"""The ``slideseg`` command line: parse, build a config, call one library function, report.

Known errors (:class:`~slideseg.errors.SlideSegError`) become one line on stderr and exit code 2;
``--debug`` shows the traceback instead. Library defaults live in the config dataclasses: options
the user did not set are not passed on.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from slideseg.errors import SlideSegError

app = typer.Typer(
    help="Exact, seamless U-Net segmentation of whole-slide images, streamed to OME-Zarr.\n\n"
    "Typical run: `slideseg new-model -o unet.safetensors --width 16`, "
    "`slideseg synth demo.ome.tif --size 6000 8000`, "
    "`slideseg predict demo.ome.tif -o demo-mask.zarr --model unet.safetensors`, "
    "`slideseg info demo-mask.zarr`.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)
_state = {"debug": False}

F = TypeVar("F", bound=Callable[..., Any])


def _friendly_errors(fn: F) -> F:
    """Map known errors to one line and exit code 2 (tracebacks only with --debug)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except SlideSegError as exc:
            if _state["debug"]:
                raise
            err.print(f"[bold red]slideseg:[/] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            err.print("slideseg: interrupted")
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def _given(**options: Any) -> dict[str, Any]:
    """The options the user actually set (None means 'not given': the config's default applies)."""
    return {k: v for k, v in options.items() if v is not None}


@app.callback()
def _main(debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks on errors.")] = False,
          ) -> None:
    _state["debug"] = debug


# ------------------------------------------------------------------------------------------ predict


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
                                 device=device, engine=engine, probabilities=probabilities,
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


# ---------------------------------------------------------------------------------------- new-model


@app.command("new-model")
@_friendly_errors
def new_model(
    output: Annotated[Path, typer.Option("-o", "--output", help="Model file to write (.safetensors).")],
    depth: Annotated[int | None, typer.Option(help="Poolings. [default: 4]")] = None,
    width: Annotated[int | None, typer.Option(help="Channels of the first level. [default: 64]")] = None,
    in_channels: Annotated[int | None, typer.Option(help="Input channels. [default: 3]")] = None,
    classes: Annotated[int | None, typer.Option(help="Classes incl. background. [default: 2]")] = None,
    padding: Annotated[str | None, typer.Option(help="valid (exact tiling) | same. [default: valid]")] = None,
    halo: Annotated[int | None, typer.Option(help="Tiling halo for same padding, px. [default: 0]")] = None,
    dropout: Annotated[float | None, typer.Option(help="Dropout at the bottom. [default: 0.5]")] = None,
    mirror: Annotated[str | None, typer.Option(help="reflect | symmetric border mode. [default: reflect]")] = None,
    mpp: Annotated[float | None, typer.Option(help="Pixel size the model expects, µm. [default: 0.5]")] = None,
    norm_mean: Annotated[str | None, typer.Option(help="Input mean, comma-separated. [default: 127.5]")] = None,
    norm_std: Annotated[str | None, typer.Option(help="Input std, comma-separated. [default: 127.5]")] = None,
    class_names: Annotated[str | None, typer.Option(help="Class names, comma-separated.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the He-normal initialisation.")] = 0,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing file.")] = False,
) -> None:
    """Write a He-initialised (untrained) U-Net: the start for `train`, and a model for checks."""
    from slideseg.errors import OutputExistsError
    from slideseg.model import UNetConfig, build_unet, save_model

    if output.exists() and not overwrite:
        raise OutputExistsError(f"{output} exists; pass --overwrite to replace it.")
    cfg = UNetConfig(**_given(
        depth=depth, width=width, in_channels=in_channels, classes=classes, padding=padding, halo=halo,
        dropout=dropout, mirror=mirror, mpp=mpp, norm_mean=_floats(norm_mean, "--norm-mean"),
        norm_std=_floats(norm_std, "--norm-std"),
        class_names=tuple(class_names.split(",")) if class_names else None))
    digest = save_model(output, build_unet(cfg, seed=seed), cfg, {"trained": False, "seed": seed})
    g = cfg.geometry
    out.print(f"wrote {output}: depth {cfg.depth}, width {cfg.width}, {cfg.in_channels} -> {cfg.classes} "
              f"classes, {cfg.padding} padding; valid tiles: {g.describe_valid()}; sha256 {digest[:12]}")


def _floats(text: str | None, option: str) -> tuple[float, ...] | None:
    from slideseg.errors import ConfigError

    if text is None:
        return None
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise ConfigError(f"{option} expects comma-separated numbers such as 127.5,127.5,127.5; "
                          f"got {text!r}") from None


# -------------------------------------------------------------------------------------------- synth


@app.command()
@_friendly_errors
def synth(
    output: Annotated[Path, typer.Argument(help="Slide to write (.ome.tif); truth goes to .truth.zarr.")],
    size: Annotated[tuple[int, int], typer.Option(help="Height and width in px.")] = (4096, 4096),
    seed: Annotated[int | None, typer.Option(help="Random seed. [default: 0]")] = None,
    mpp: Annotated[float | None, typer.Option(help="Pixel size, µm. [default: 0.5]")] = None,
    tissue_fraction: Annotated[float | None, typer.Option(help="Fraction covered by tissue.")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace existing files.")] = False,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show progress.")] = True,
) -> None:
    """Write a synthetic H&E-like pyramidal OME-TIFF with ground-truth labels beside it."""
    from slideseg.progress import chunk_progress
    from slideseg.synth import SynthConfig, write_synthetic_slide

    cfg = SynthConfig(size=size, **_given(seed=seed, mpp=mpp, tissue_fraction=tissue_fraction))
    with chunk_progress(f"synth {output.name}", enabled=progress, console=err, unit="tiles") as start:
        counter: dict[str, Callable[[int], None]] = {}

        def on_tile(done: int, total: int) -> None:
            counter.setdefault("tick", start(total, 0))(0)

        result = write_synthetic_slide(output, cfg, overwrite=overwrite, progress=on_tile)
    out.print(f"wrote {result.image_path} ({result.shape[0]} x {result.shape[1]} px, {result.levels} levels, "
              f"tissue {result.tissue_fraction:.0%}, nuclei {result.nucleus_fraction:.0%}) "
              f"and {result.truth_path}")


# --------------------------------------------------------------------------------------------- info


@app.command()
@_friendly_errors
def info(
    path: Annotated[Path, typer.Argument(help="A slide, a slideseg mask (.zarr) or a model file.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Describe a slide, a mask written by `predict`, or a model file."""
    from slideseg.errors import SlideReadError

    if not path.exists():
        raise SlideReadError(f"{path} does not exist; check the path.")
    if path.suffix == ".safetensors":
        from slideseg.model import read_model_config

        cfg, meta = read_model_config(path)
        d: dict[str, Any] = {"kind": "model", "config": cfg.to_dict(), "metadata": meta,
                             "valid_tiles": cfg.geometry.describe_valid()}
    elif _is_slideseg_mask(path):
        from slideseg.write import describe_mask

        d = {"kind": "mask", **describe_mask(path)}
    else:
        from slideseg.io import open_slide

        with open_slide(path) as s:
            d = {"kind": "slide", **s.describe()}
    if as_json:
        print(json.dumps(d, indent=2, default=str))
        return
    table = Table(show_header=False, box=None, title=f"[bold]{path}[/] ({d['kind']})")
    for key, value in _summary(d).items():
        table.add_row(key, value)
    out.print(table)
    if d["kind"] != "model":
        out.print("[dim](--json shows everything)[/]")


def _summary(d: dict[str, Any]) -> dict[str, str]:
    """One screen of the most useful facts; `--json` has the rest."""
    rows: dict[str, str] = {}
    if d["kind"] == "model":
        cfg = d["config"]
        rows = {k: json.dumps(v) for k, v in cfg.items()}
        rows["valid tiles"] = d["valid_tiles"]
        rows["trained"] = str(d["metadata"].get("trained", "unknown"))
        return rows
    levels = d.get("levels") or []
    shapes = ", ".join("x".join(str(n) for n in lv["shape"]) for lv in levels)
    if d["kind"] == "slide":
        rows["format"] = f"{d.get('format')}, {d.get('compression')} compression, tiles {d.get('tile')}"
        rows["pixels"] = f"{d.get('channels')} channel(s) of {d.get('dtype')}"
        rows["mpp"] = f"{d['mpp']:.4g} µm/px" if d.get("mpp") else "unknown"
        rows["levels"] = shapes
        return rows
    made = d.get("slideseg") or {}
    complete = d.get("complete")
    rows["status"] = "complete" if complete else "INCOMPLETE (level 0 or pyramid unfinished)"
    rows["levels"] = shapes
    rows["mpp"] = f"{d['mpp']:.4g} µm/px" if d.get("mpp") else "unknown"
    rows["classes"] = ", ".join(f"{c['value']} {c['name']}" for c in d.get("classes", []))
    rows["probabilities"] = "yes" if d.get("probabilities") else "no"
    mc = made.get("model_config", {})
    if mc:
        trained = (made.get("model_metadata") or {}).get("trained", True)
        rows["model"] = (f"U-Net depth {mc.get('depth')}, width {mc.get('width')}, {mc.get('padding')} padding"
                         f"{'' if trained else ' (untrained)'}, weights sha256 {str(made.get('weights_sha256'))[:12]}")
    if made.get("engine"):
        rows["engine"] = ", ".join(f"{k}={v}" for k, v in made["engine"].items())
    if made.get("source"):
        rows["source"] = f"{made['source'].get('path')} (level {made['source'].get('level')})"
    if made.get("version"):
        rows["made by"] = f"slideseg {made['version']}"
    return rows


def _is_slideseg_mask(path: Path) -> bool:
    for name in (".zattrs", "zarr.json"):
        meta = path / name
        if meta.is_file():
            try:
                attrs = json.loads(meta.read_text())
            except (OSError, ValueError):
                return False
            attrs = attrs.get("attributes", attrs)
            return "slideseg" in attrs
    return False


def main() -> None:
    """Console entry point."""
    app(prog_name="slideseg")


if __name__ == "__main__":
    sys.exit(main())
