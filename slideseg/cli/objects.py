"""`slideseg objects`: exact instance objects of a mask, and a table that measures them."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Annotated

import typer

from slideseg.cli._app import _friendly_errors, _given, app, err, out


class _PassProgress:
    """Draws each pass of an ``objects`` run as its own progress bar (an ``Observer``)."""

    def __init__(self, stack: ExitStack, enabled: bool) -> None:
        self.stack, self.enabled = stack, enabled
        self._on_unit: Callable[[int], None] = lambda pixels: None
        self._bar: ExitStack | None = None

    def pass_started(self, name: str, n_units: int, n_pixels: int) -> None:
        from slideseg.cli.progress import chunk_progress

        if self._bar is not None:
            self._bar.close()
        self._bar = self.stack.enter_context(ExitStack())
        start = self._bar.enter_context(chunk_progress(name, enabled=self.enabled, console=err, unit="units"))
        self._on_unit = start(n_units, n_pixels)

    def unit_done(self, pixels: int) -> None:
        self._on_unit(pixels)


@app.command("objects")
@_friendly_errors
def objects(
    mask: Annotated[Path, typer.Argument(help="A complete mask written by `slideseg predict` (mask.zarr).")],
    table: Annotated[Path | None, typer.Option(
        help="Parquet table of the objects to write. (default: mask.objects.parquet beside mask.zarr)")] = None,
    csv: Annotated[bool | None, typer.Option("--csv", help="Also write the table as CSV (TABLE with .csv).")] = None,
    min_area: Annotated[float | None, typer.Option(
        help="Drop objects smaller than this, in µm²: 0 in the instance image, no row; ids stay consecutive. "
             "(default: 0)")] = None,
    connectivity: Annotated[int | None, typer.Option(
        help="4: pixels sharing an edge are one object; 8: sharing an edge or a corner. (default: 4)")] = None,
    classes: Annotated[str | None, typer.Option(
        help="Classes that become objects, by value or name, e.g. 1,2. (default: all but the background)")] = None,
    slide: Annotated[Path | None, typer.Option(
        help="Slide to measure channel means and deviations on. (default: the one recorded in the mask, if it "
             "is there)")] = None,
    workers: Annotated[int | None, typer.Option(
        help="Run on a local cluster of this many worker processes. (default: threads in this process)")] = None,
    resume: Annotated[bool | None, typer.Option("--resume", help="Finish an interrupted run.")] = None,
    overwrite: Annotated[bool | None, typer.Option(
        "--overwrite", help="Replace an existing instance image and table.")] = None,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show progress.")] = True,
) -> None:
    """Label every object of the mask exactly as one pass over the whole mask would (ids 1, 2, ... in
    raster order of each object's first pixel), write them as a uint32 label image in
    MASK/objects, and measure each one into a Parquet table.

    Objects are the connected regions of each class. The mask is processed chunk by chunk in two
    passes, so memory does not grow with the slide; --resume finishes a killed run.
    """
    from slideseg.schedule.cluster import ClusterConfig
    from slideseg.tools.objects import ObjectsConfig
    from slideseg.tools.objects import objects as run

    cfg = ObjectsConfig(**_given(min_area=min_area, connectivity=connectivity, classes=classes,
                                 slide=str(slide) if slide else None, table=str(table) if table else None, csv=csv,
                                 resume=resume, overwrite=overwrite))
    cluster = ClusterConfig(**_given(workers=workers))
    with ExitStack() as stack:
        result = run(mask, cfg, cluster, _PassProgress(stack, progress))
    per_class = ", ".join(f"{n} {name}" for name, n in result.per_class.items()) or "none"
    dropped = f", {result.dropped} under --min-area dropped" if result.dropped else ""
    out.print(f"wrote {result.objects} objects ({per_class}{dropped}) to {result.instances} and {result.table}"
              f"{f' and {result.csv}' if result.csv else ''} in {result.seconds:.1f} s "
              f"({result.objects_per_second:.0f} objects/s, {result.megapixels_per_second:.1f} MP/s)",
              highlight=False)
    for note in result.notes:
        err.print(f"slideseg: {note}", highlight=False)
