"""`slideseg export` (ONNX, TensorRT, bioimage.io) and `slideseg plan` (tiling and measured seam error)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from slideseg.cli._app import _friendly_errors, _given, app, err, out

_BIO = "bioimage.io packages (--format bioimageio)"


@app.command()
@_friendly_errors
def export(
    model: Annotated[Path, typer.Argument(help="Model file (.safetensors; an .onnx file for --format tensorrt).")],
    format: Annotated[str | None, typer.Option(
        "--format", "-f", help="onnx | tensorrt | bioimageio. (default: onnx)")] = None,
    tile: Annotated[int | None, typer.Option(
        help="Input tile edge in px (exports have a fixed H/W; bioimageio: the test tile). (default: an ONNX file's "
             "own tile, else the tile `predict` picks for 1024-px chunks; bioimageio: the smallest whose output "
             "covers 64 px)")] = None,
    max_batch: Annotated[int | None, typer.Option(help="Largest batch (predict's --batch-size). (default: 8)")] = None,
    precision: Annotated[str | None, typer.Option(
        help="fp32 | fp16 | bf16: the graph computes in it. (default: fp32)")] = None,
    output: Annotated[Path | None, typer.Option(
        "-o", "--output", help="ONNX file (or bioimage.io .zip) to write. (default: engines/ (or "
                               "$SLIDESEG_ENGINES_DIR), named by weights hash, tile, max batch and precision)")] = None,
    overwrite: Annotated[bool | None, typer.Option("--overwrite", help="Replace an existing -o file.")] = None,
    check: Annotated[bool | None, typer.Option(
        "--check/--no-check", help="Compare the ONNX file (ONNX Runtime) with torch. (default: check)")] = None,
    opt_level: Annotated[int | None, typer.Option(
        help="TensorRT builder optimisation level, 0..5. (default: 3)")] = None,
    workspace: Annotated[float | None, typer.Option(help="TensorRT workspace limit, GiB. (default: 4.0)")] = None,
    device: Annotated[str | None, typer.Option(help="CUDA device for --format tensorrt. (default: cuda)")] = None,
    name: Annotated[str | None, typer.Option(
        help="bioimageio: the model's name. (default: the model file's name)", rich_help_panel=_BIO)] = None,
    description: Annotated[str | None, typer.Option(
        help="bioimageio: one-line description. (default: architecture, classes, pixel size)",
        rich_help_panel=_BIO)] = None,
    authors: Annotated[list[str] | None, typer.Option(
        "--authors", help="bioimageio: an author's name (repeat for several).", rich_help_panel=_BIO)] = None,
    license: Annotated[str | None, typer.Option(
        help="bioimageio: SPDX licence identifier. (default: CC-BY-4.0)", rich_help_panel=_BIO)] = None,
    cite: Annotated[list[str] | None, typer.Option(
        help="bioimageio: 'TEXT|DOI' or 'TEXT|https://URL' (repeat for several). (default: the U-Net paper)",
        rich_help_panel=_BIO)] = None,
    doc: Annotated[Path | None, typer.Option(
        help="bioimageio: Markdown documentation (README.md). (default: written from the model's config)",
        rich_help_panel=_BIO)] = None,
    slide: Annotated[Path | None, typer.Option(
        help="bioimageio: cut the test tile from the centre of this slide. (default: a synthetic tile)",
        rich_help_panel=_BIO)] = None,
) -> None:
    """Export a model to ONNX (dynamic batch, fixed tile), pre-build its TensorRT plan, or write a
    bioimage.io package.

    ONNX exports take raw pixels, normalise inside and return fp32 logits, whatever the precision,
    and carry the model configuration, so `predict --model FILE.onnx` needs nothing else. A
    bioimage.io package (`--format bioimageio -o NAME.zip`) holds TorchScript and ONNX weights, the
    tile geometry, the normalisation, class names, pixel size, test tensors and a cover; `predict`
    runs it exactly as the .safetensors file it came from.
    """
    if format == "bioimageio":
        _export_package(model, output, _given(name=name, description=description, authors=tuple(authors or ()) or None,
                                              license=license, cite=tuple(cite or ()) or None, doc=doc, slide=slide,
                                              tile=tile, overwrite=overwrite))
        return
    from slideseg.engines.export import ExportConfig, export_model

    cfg = ExportConfig(**_given(format=format, tile=tile, max_batch=max_batch, precision=precision, output=output,
                                overwrite=overwrite, check=check, opt_level=opt_level, workspace_gib=workspace,
                                device=device))
    result = export_model(model, cfg)
    if result.format == "tensorrt":
        out.print(f"TensorRT plan {result.path} ({result.cache})")
        return
    out.print(f"wrote {result.path}: tile {result.tile} -> {result.tile_output} px, batch 1..{result.max_batch}, "
              f"{result.precision}, input 'pixels' (raw, float32), output 'logits' (float32)")
    if result.max_abs_diff is not None:
        out.print(f"checked with ONNX Runtime (CPU) against torch: max |logit difference| {result.max_abs_diff:.2e}")
    elif result.not_checked:
        err.print(f"note: not checked: {result.not_checked}")


def _export_package(model: Path, output: Path | None, options: dict[str, Any]) -> None:
    from slideseg.errors import ConfigError
    from slideseg.tools.bioimageio import PackageConfig, describe_check, export_package

    if output is None:
        raise ConfigError("--format bioimageio needs -o NAME.zip, the package to write.")
    result = export_package(model, output, PackageConfig(**options))
    out.print(f"wrote {result.path}: bioimage.io package with {' and '.join(result.weights)} weights, test tile "
              f"{result.tile} -> {result.tile_output} px")
    for check in result.checks:
        out.print(f"checked its test tensors: {describe_check(check)}")


@app.command("plan")
@_friendly_errors
def plan(
    model: Annotated[Path, typer.Option(
        "--model", "-m", help="Model file (.safetensors, .onnx, .pt2, .pt) or bioimage.io package (.zip).")],
    slide: Annotated[Path | None, typer.Argument(help="Slide to plan for (optional); its centre is the test "
                                                      "region for the seam error.")] = None,
    tile: Annotated[int | None, typer.Option(help="Tile edge in px. (default: what predict picks)")] = None,
    chunk: Annotated[int | None, typer.Option(help="Output chunk edge in px. (default: 1024)")] = None,
    halo: Annotated[list[int] | None, typer.Option(
        help="Halo to measure (same-padded models; repeat for several). (default: 0, 1, 2, 4, 8 pooling "
             "steps and the model's own)")] = None,
    region: Annotated[int | None, typer.Option(help="Edge of the test region, px. (default: 512)")] = None,
    seam_chunk: Annotated[int | None, typer.Option(
        help="Chunk size used for the seam measurement. (default: region/2, so the region has seams)")] = None,
    measure: Annotated[bool | None, typer.Option(
        "--measure/--no-measure", help="Measure the seam error. (default: measure)")] = None,
    engine: Annotated[str | None, typer.Option(
        help="Engine for the measurement. (default: torch for .safetensors models (no export per tile size), "
             "else auto)")] = None,
    device: Annotated[str | None, typer.Option(help="auto | cpu | cuda[:N]. (default: auto)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Show how a model tiles a slide and measure its seam error (tiled vs one whole-image pass).

    Valid-convolution U-Nets tile exactly (error ~1e-7, float rounding). Same-padded networks need a
    halo: pick the smallest whose error you can accept, then put it in the model's sidecar JSON.
    """
    from slideseg.tools.seam import plan_report

    report = plan_report(model, slide, **_given(tile=tile, chunk=chunk, halos=halo or None, region=region,
                                                seam_chunk=seam_chunk, measure=measure, engine=engine,
                                                device=device))
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
