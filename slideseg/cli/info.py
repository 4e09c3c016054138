"""`slideseg info`."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from slideseg.cli._app import _friendly_errors, app, out


@app.command()
@_friendly_errors
def info(
    path: Annotated[Path, typer.Argument(
        help="A slide, a slideseg mask (.zarr), a model file or a bioimage.io package (.zip, rdf.yaml).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    series: Annotated[int | None, typer.Option(
        help="Image series of a multi-series slide. (default: the only image, else the only pyramidal one)")] = None,
    check: Annotated[bool, typer.Option(
        "--check", help="bioimage.io package: run its test input through --engine and compare with its test "
                        "output (exit 2 if it is outside the package's tolerance).")] = False,
    engine: Annotated[str | None, typer.Option(
        help="Engine for --check: auto | torch | onnxruntime | tensorrt. (default: auto)")] = None,
    device: Annotated[str | None, typer.Option(
        help="Device for --check: auto | cpu | cuda[:N]. (default: auto)")] = None,
) -> None:
    """Describe a slide, a mask written by `predict`, a model file or a bioimage.io package."""
    from slideseg.errors import ConfigError
    from slideseg.tools.describe import describe

    d = describe(path, series=series)
    if check:
        if d["kind"] != "bioimageio":
            raise ConfigError(f"--check runs a bioimage.io package's test tensors; {path} is a {d['kind']}.")
        from slideseg.tools.bioimageio import check_package, describe_check

        result = check_package(path, engine or "auto", device or "auto")
        d["check"] = result.to_dict()
    if as_json:
        print(json.dumps(d, indent=2, default=str))
    else:
        _print_table(path, d)
    if check:
        line = describe_check(result)
        if not result.passed:
            raise ConfigError(f"{path}: the package's test output is not reproduced: {line}")
        out.print(line)


def _print_table(path: Path, d: dict[str, Any]) -> None:
    table = Table(show_header=False, box=None, title=f"[bold]{path}[/] ({d['kind']})")
    for key, value in _summary(d).items():
        table.add_row(key, value)
    out.print(table)
    if d["kind"] != "model":
        out.print("[dim](--json shows everything)[/]")


def _objects_row(found: object) -> str | None:
    """What `slideseg objects` wrote into a mask, in a few words (None: nothing, or unreadable)."""
    if not isinstance(found, dict):
        return None
    if isinstance(found.get("error"), str):
        return found["error"]
    n, table = found.get("objects"), found.get("table")
    if found.get("complete") is not True or not isinstance(n, int):
        return "interrupted (finish with `slideseg objects MASK --resume`)"
    return f"{n} (instance image objects/, table {table})" if isinstance(table, str) else str(n)


def _summary(d: dict[str, Any]) -> dict[str, str]:
    """One screen of the most useful facts; `--json` has the rest.

    What a mask records of how it was made is read as it is found: a field of the wrong type (a
    number where an object belongs) is left out of the table, never a crash (`--json` shows it).
    """
    rows: dict[str, str] = {}
    if d["kind"] == "bioimageio":
        return _package_summary(d)
    if d["kind"] == "model":
        rows = {k: json.dumps(v) for k, v in _obj(d.get("config")).items()}
        rows["valid tiles"] = str(d.get("valid_tiles"))
        rows["trained"] = str(_obj(d.get("metadata")).get("trained", "unknown"))
        return rows
    shapes = ", ".join(_shape(_obj(lv).get("shape")) for lv in _list(d.get("levels")))
    mpp = d.get("mpp")
    if d["kind"] == "slide":
        rows["format"] = f"{d.get('format')}, {d.get('compression')} compression, tiles {d.get('tile')}"
        if _number(d.get("objective_power")):
            rows["objective"] = f"{d['objective_power']:g}x"
        if len(d.get("all_series") or []) > 1:
            rows["series"] = f"{d.get('series')} of {len(d['all_series'])} (choose with --series)"
        rows["pixels"] = f"{d.get('channels')} channel(s) of {d.get('dtype')}"
        rows["mpp"] = f"{mpp:.4g} µm/px" if _number(mpp) else "unknown"
        rows["levels"] = shapes
        return rows
    made = _obj(d.get("slideseg"))
    n, m = d.get("chunks_done"), d.get("chunks_total")
    if d.get("complete"):
        rows["status"] = "complete"
    elif isinstance(n, int) and isinstance(m, int) and n < m:
        rows["status"] = f"{n} of {m} chunks done (finish with `slideseg predict ... --resume`)"
    else:
        rows["status"] = "all chunks done, pyramid not written (finish with --resume)"
    rows["levels"] = shapes
    rows["mpp"] = f"{mpp:.4g} µm/px" if _number(mpp) else "unknown"
    rows["classes"] = ", ".join(f"{c.get('value')} {c.get('name')}" for c in map(_obj, _list(d.get("classes"))))
    rows["probabilities"] = "yes" if d.get("probabilities") else "no"
    objects = _objects_row(d.get("objects"))
    if objects:
        rows["objects"] = objects
    mc = _obj(made.get("model_config"))
    if mc:
        trained = _obj(made.get("model_metadata")).get("trained", True)
        rows["model"] = (f"U-Net depth {mc.get('depth')}, width {mc.get('width')}, {mc.get('padding')} padding"
                         f"{'' if trained else ' (untrained)'}, weights sha256 {str(made.get('weights_sha256'))[:12]}")
    if engine := _obj(made.get("engine")):
        rows["engine"] = ", ".join(f"{k}={v}" for k, v in engine.items())
    if source := _obj(made.get("source")):
        rows["source"] = f"{source.get('path')} (level {source.get('level')})"
    if made.get("version"):
        rows["made by"] = f"slideseg {made['version']}"
    return rows


def _obj(value: Any) -> dict[str, Any]:
    """``value`` if it is an object (a dict), else an empty one."""
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any]:
    """``value`` if it is a list, else an empty one."""
    return value if isinstance(value, list) else []


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _shape(shape: Any) -> str:
    """``"100x200"``, or ``"missing"`` for a level that is not there."""
    return "x".join(str(n) for n in shape) if isinstance(shape, list | tuple) else "missing"


def _package_summary(d: dict[str, Any]) -> dict[str, str]:
    """What slideseg understood of a bioimage.io package."""
    halo = (f", halo {d['halo']} px (declared {d['declared_halo']})" if d["padding"] == "same"
            else f", {d['context']} px of context per side")
    rows = {
        "name": f"{d['name']} (bioimage.io format {d['format_version']})",
        "axes": f"input {d['input_axes']}, output {d['output_axes']}",
        "tiles": f"{d['size_rule']}: {d['padding']} padding{halo}; tiles on a {d['alignment']} px grid",
        "channels": f"{d['in_channels']} in; classes {', '.join(d['classes'])}",
        "weights": ", ".join(d["weights"]) + (f" (not read: {', '.join(d['other_weights'])})"
                                              if d["other_weights"] else ""),
        "pre-processing": d["preprocessing"] + (" (statistics of the whole slide)" if d["slide_statistics"] else ""),
        "output": f"{d['output']['channels']} channel(s), post-processing {d['output']['postprocessing']}",
        "mpp": f"{d['mpp']:.4g} µm/px" if d.get("mpp") else "any",
        "test tensors": "yes (slideseg info --check)" if d["test_tensors"] else "none",
    }
    for i, note in enumerate(d["notes"]):
        rows[f"note {i + 1}" if len(d["notes"]) > 1 else "note"] = note
    return rows
