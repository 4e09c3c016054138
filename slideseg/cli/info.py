"""`slideseg info`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from slideseg.cli._app import _friendly_errors, app, out


@app.command()
@_friendly_errors
def info(
    path: Annotated[Path, typer.Argument(help="A slide, a slideseg mask (.zarr) or a model file.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    series: Annotated[int | None, typer.Option(help="Image series of a multi-series slide.")] = None,
) -> None:
    """Describe a slide, a mask written by `predict`, or a model file."""
    from slideseg.errors import SlideReadError

    if not path.exists():
        raise SlideReadError(f"{path} does not exist; check the path.")
    if path.suffix == ".safetensors":
        from slideseg.model.files import read_model_config

        cfg, meta = read_model_config(path)
        d: dict[str, Any] = {"kind": "model", "config": cfg.to_dict(), "metadata": meta,
                             "valid_tiles": cfg.geometry.describe_valid()}
    else:
        d = _describe_mask_or_slide(path, series)
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
        if d.get("objective_power"):
            rows["objective"] = f"{d['objective_power']:g}x"
        if len(d.get("all_series") or []) > 1:
            rows["series"] = f"{d.get('series')} of {len(d['all_series'])} (choose with --series)"
        rows["pixels"] = f"{d.get('channels')} channel(s) of {d.get('dtype')}"
        rows["mpp"] = f"{d['mpp']:.4g} µm/px" if d.get("mpp") else "unknown"
        rows["levels"] = shapes
        return rows
    made = d.get("slideseg") or {}
    complete = d.get("complete")
    n, m = d.get("chunks_done"), d.get("chunks_total")
    if complete:
        rows["status"] = "complete"
    elif n is not None and n < (m or 0):
        rows["status"] = f"{n} of {m} chunks done (finish with `slideseg predict ... --resume`)"
    else:
        rows["status"] = "all chunks done, pyramid not written (finish with --resume)"
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


def _describe_mask_or_slide(path: Path, series: int | None) -> dict[str, Any]:
    """A slideseg mask if the path is one (write.open_mask decides), else a slide."""
    from slideseg.errors import OutputFormatError
    from slideseg.io.slide import open_slide
    from slideseg.write.mask import describe_mask

    if path.is_dir():
        try:
            return {"kind": "mask", **describe_mask(path)}
        except OutputFormatError:
            pass  # a Zarr or OME-Zarr image, not a mask
    with open_slide(path, series=series) as s:
        return {"kind": "slide", **s.describe()}
