"""`slideseg export` (ONNX, TensorRT) and `slideseg plan` (tiling and measured seam error)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from slideseg.cli._app import _friendly_errors, _given, app, err, out

FORMATS = ("onnx", "tensorrt")


@app.command()
@_friendly_errors
def export(
    model: Annotated[Path, typer.Argument(help="Model file (.safetensors; an .onnx file for --format tensorrt).")],
    format: Annotated[str, typer.Option("--format", "-f", help="onnx | tensorrt.")] = "onnx",
    tile: Annotated[int | None, typer.Option(
        help="Input tile edge in px (exports have a fixed H/W). Default: the tile `predict` picks for "
             "1024-px chunks.")] = None,
    max_batch: Annotated[int | None, typer.Option(help="Largest batch (predict's --batch-size). (default: 8)")] = None,
    precision: Annotated[str, typer.Option(help="fp32 | fp16 | bf16: the graph computes in it.")] = "fp32",
    output: Annotated[Path | None, typer.Option(
        "-o", "--output", help="ONNX file to write. Default: engines/ (or $SLIDESEG_ENGINES_DIR), named by "
                               "weights hash, tile, max batch and precision.")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing -o file.")] = False,
    check: Annotated[bool, typer.Option("--check/--no-check",
                                        help="Compare the ONNX file (ONNX Runtime) with torch.")] = True,
    opt_level: Annotated[int, typer.Option(help="TensorRT builder optimisation level, 0..5.")] = 3,
    workspace: Annotated[float, typer.Option(help="TensorRT workspace limit, GiB.")] = 4.0,
    device: Annotated[str, typer.Option(help="CUDA device for --format tensorrt.")] = "cuda",
) -> None:
    """Export a model to ONNX (dynamic batch, fixed tile) or pre-build its TensorRT plan.

    ONNX exports take raw pixels, normalise inside and return fp32 logits, whatever the precision,
    and carry the model configuration, so `predict --model FILE.onnx` needs nothing else.
    """
    from slideseg.engines.onnx import DEFAULT_MAX_BATCH, export_onnx
    from slideseg.engines.onnxruntime_engine import verify_onnx
    from slideseg.engines.registry import export_tensorrt
    from slideseg.errors import ConfigError

    if format not in FORMATS:
        raise ConfigError(f"--format must be one of {', '.join(FORMATS)}, got {format!r}")
    batch = max_batch or DEFAULT_MAX_BATCH
    if format == "tensorrt":
        if output is not None:
            raise ConfigError("TensorRT plans go to the engine cache (engines/, or $SLIDESEG_ENGINES_DIR), where "
                              "`predict --engine tensorrt` finds them; drop -o.")
        built = export_tensorrt(model, tile=tile or _default_tile(model), max_batch=batch, precision=precision,
                                opt_level=opt_level, workspace_gib=workspace, device=device)
        out.print(f"TensorRT plan {built['plan']} ({built['cache']})")
        return
    from slideseg.model.files import load_model

    loaded = load_model(model)
    tile = tile or _default_tile(model)
    path = export_onnx(loaded, tile, max_batch=batch, precision=precision, output=output, overwrite=overwrite)
    g = loaded.config.geometry
    out.print(f"wrote {path}: tile {tile} -> {g.output_size(tile)} px, batch 1..{batch}, {precision}, "
              f"input 'pixels' (raw, float32), output 'logits' (float32)")
    if check:
        if precision == "bf16":
            err.print("note: not checked: ONNX Runtime's CPU provider cannot run bf16 graphs.")
            return
        try:
            diff = verify_onnx(path, loaded)
        except ConfigError as exc:  # ONNX Runtime not installed
            err.print(f"note: not checked: {exc}")
            return
        out.print(f"checked with ONNX Runtime (CPU) against torch: max |logit difference| {diff:.2e}")


def _default_tile(model: Path) -> int:
    """The tile `predict` picks for 1024-px chunks on a large slide."""
    from slideseg.errors import ConfigError
    from slideseg.model.external import is_external
    from slideseg.model.files import read_model_config

    if is_external(model):
        raise ConfigError("--tile is needed for a model that is not a .safetensors file.")
    cfg, _ = read_model_config(model)
    return cfg.geometry.smallest_tile_covering(1024)


@app.command("plan")
@_friendly_errors
def plan(
    slide: Annotated[Path | None, typer.Argument(help="Slide to plan for (optional); its centre is the test "
                                                      "region for the seam error.")] = None,
    model: Annotated[Path, typer.Option("--model", "-m", help="Model file (.safetensors, .onnx, .pt2, .pt).")] = Path(),
    tile: Annotated[int | None, typer.Option(help="Tile edge in px. Default: what predict picks.")] = None,
    chunk: Annotated[int | None, typer.Option(help="Output chunk edge in px. (default: 1024)")] = None,
    halo: Annotated[list[int] | None, typer.Option(
        help="Halo to measure (same-padded models; repeat for several). Default: 0, 1, 2, 4, 8 pooling "
             "steps and the model's own.")] = None,
    region: Annotated[int, typer.Option(help="Edge of the test region, px.")] = 512,
    seam_chunk: Annotated[int | None, typer.Option(
        help="Chunk size used for the seam measurement (default region/2, so the region has seams).")] = None,
    measure: Annotated[bool, typer.Option("--measure/--no-measure", help="Measure the seam error.")] = True,
    engine: Annotated[str | None, typer.Option(
        help="Engine for the measurement. (default: torch for .safetensors models (no export per tile size), "
             "else auto)")] = None,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda[:N].")] = "auto",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Show how a model tiles a slide and measure its seam error (tiled vs one whole-image pass).

    Valid-convolution U-Nets tile exactly (error ~1e-7, float rounding). Same-padded networks need a
    halo: pick the smallest whose error you can accept, then put it in the model's sidecar JSON.
    """
    from slideseg.engines.registry import load_engine
    from slideseg.errors import ModelFileError
    from slideseg.model.external import is_external
    from slideseg.tools.seam import measure_seam_error, sample_region

    if model == Path():
        raise ModelFileError("--model is required: the model file to plan for.")
    eng = load_engine(model, engine or ("auto" if is_external(model) else "torch"), device=device)
    cfg = eng.config
    g = cfg.geometry
    report: dict[str, Any] = {"model": str(model), "engine": eng.describe(), "padding": cfg.padding,
                              "depth": cfg.depth, "alignment": g.alignment, "context": g.context,
                              "valid_tiles": g.describe_valid()}
    image = None
    if slide is not None:
        from slideseg.io.slide import open_slide
        from slideseg.predict import PredictConfig, plan_for

        pcfg = PredictConfig(**_given(tile=tile, chunk=chunk))
        with open_slide(slide) as s:
            report["plan"] = plan_for(s.shape[:2], g, pcfg).describe()
            h, w = s.shape[:2]
            r = min(region, h, w)
            y0, x0 = (h - r) // 2, (w - r) // 2
            image = s.read(y0, y0 + r, x0, x0 + r)
    if measure:
        if image is None:
            image = sample_region(cfg, region)
        c = seam_chunk or max(g.alignment, image.shape[0] // 2)
        halos: list[int | None] = [None]
        if cfg.padding == "same":
            halos = list(sorted(set(halo or [k * g.alignment for k in (0, 1, 2, 4, 8)] + [cfg.halo])))
        report["seam_error"] = [measure_seam_error(eng, image, halo=hh, tile=tile, chunk=c).to_dict()
                                for hh in halos]
    if as_json:
        print(json.dumps(report, indent=2, default=str))
        return
    _print_plan(report)


def _print_plan(report: dict[str, Any]) -> None:
    out.print(f"[bold]{report['model']}[/]: {report['padding']} padding, depth {report['depth']} (tiles on a "
              f"{report['alignment']} px grid), context {report['context']} px; valid tiles: {report['valid_tiles']}")
    if "plan" in report:
        p = report["plan"]
        out.print(f"plan: {p['grid'][0]} x {p['grid'][1]} chunks of {p['chunk']} px, tile {p['tile']} -> "
                  f"{p['tile_output']} px, {p['compute_redundancy']:.2f} network px per output px")
    rows = report.get("seam_error")
    if not rows:
        return
    table = Table(title=f"seam error on a {rows[0]['region'][0]} x {rows[0]['region'][1]} px region "
                        "(tiled vs whole-image class probabilities)")
    for col in ("halo px", "tile", "chunk", "max |Δp|", "mean |Δp|", "class ids changed"):
        table.add_column(col, justify="right")
    for r in rows:
        halo = str(r["halo"]) if report["padding"] == "same" else "n/a (valid)"
        table.add_row(halo, str(r["tile"]), str(r["chunk"]), f"{r['max_abs']:.2e}", f"{r['mean_abs']:.2e}",
                      f"{100 * r['changed_ids']:.3f} %")
    out.print(table)
