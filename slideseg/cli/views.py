"""`slideseg export-geojson` and `slideseg preview`: views of a mask for people and other tools."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from slideseg.cli._app import _friendly_errors, _given, app, err, out


@app.command("export-geojson")
@_friendly_errors
def export_geojson(
    mask: Annotated[Path, typer.Argument(help="A mask written by `slideseg predict` (mask.zarr).")],
    output: Annotated[Path, typer.Option("-o", "--output", help="GeoJSON file to write (mask.geojson).")],
    level: Annotated[int | None, typer.Option(
        help="Mask pyramid level to trace: 0 is exact; level l is x2**l coarser (smaller files, thin "
             "regions vanish). (default: 0)")] = None,
    min_area: Annotated[float | None, typer.Option(
        help="Drop regions smaller than this, in square pixels of slide level 0. (default: 0)")] = None,
    classes: Annotated[str | None, typer.Option(
        help="Classes to export, by value or name, e.g. 1,2. (default: all but the background)")] = None,
    object_type: Annotated[str | None, typer.Option(
        help="QuPath object type: annotation | detection (lighter for many objects). (default: annotation; "
             "detection with --objects)")] = None,
    by_class: Annotated[bool | None, typer.Option(
        "--by-class", help="One MultiPolygon per class instead of one Polygon per region.")] = None,
    slide: Annotated[Path | None, typer.Option(
        help="The slide the mask was made from, if it moved (only read when the mask is not at slide "
             "level 0, to scale coordinates).")] = None,
    overwrite: Annotated[bool | None, typer.Option("--overwrite", help="Replace an existing output.")] = None,
    objects: Annotated[bool | None, typer.Option(
        "--objects", help="One detection per object of `slideseg objects` (run it first), with a stable UUID and "
                          "its table row as measurements, instead of one feature per region.")] = None,
) -> None:
    """Write the mask's regions as GeoJSON polygons (holes kept) in slide level-0 pixels, for QuPath.

    Polygons follow pixel edges, so they rasterise back to the mask exactly. Tracing streams the
    mask in stripes: memory does not grow with the mask.
    """
    from slideseg.tools.geojson import export_geojson as run

    result = run(mask, output, **_given(level=level, min_area=min_area, classes=classes, object_type=object_type,
                                         by_class=by_class, slide_path=slide, overwrite=overwrite,
                                         objects=objects))
    per_class = ", ".join(f"{n} {name}" for name, n in result.polygons.items())
    dropped = f", {result.dropped} under --min-area dropped" if result.dropped else ""
    out.print(f"wrote {result.output}: {result.features} features ({per_class}{dropped}) from level "
              f"{result.level} in {result.seconds:.1f} s", highlight=False)
    if result.scale.assumed:
        err.print(f"slideseg: level-0 scale {result.scale.how}", highlight=False)


@app.command()
@_friendly_errors
def preview(
    mask: Annotated[Path, typer.Argument(help="A mask written by `slideseg predict` (mask.zarr).")],
    output: Annotated[Path, typer.Option("-o", "--output", help="PNG to write (overlay.png).")],
    slide: Annotated[Path | None, typer.Option(
        help="Slide to draw under the mask. (default: the one recorded in the mask, if it is there)")] = None,
    size: Annotated[int | None, typer.Option(help="Longer side of the thumbnail, px. (default: 1024)")] = None,
    alpha: Annotated[float | None, typer.Option(help="Opacity of the mask colours, 0-1. (default: 0.5)")] = None,
    overwrite: Annotated[bool | None, typer.Option("--overwrite", help="Replace an existing output.")] = None,
) -> None:
    """Write a PNG thumbnail of the slide with the mask in its label colours and a legend."""
    from slideseg.tools.preview import write_preview

    result = write_preview(mask, output, **_given(slide_path=slide, size=size, alpha=alpha, overwrite=overwrite))
    under = f"over {result.slide} (level {result.slide_level})" if result.slide else "on white"
    out.print(f"wrote {result.path} ({result.shape[1]} x {result.shape[0]} px, mask level {result.mask_level} "
              f"{under})", highlight=False)
    if result.note:
        err.print(f"slideseg: {result.note}", highlight=False)
