"""`slideseg objects`: exact instance objects of a mask, and a table that measures them."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Annotated

import typer

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
    resume: Annotated[bool | None, typer.Option("--resume", help="Finish an interrupted run.")] = None,
    overwrite: Annotated[bool | None, typer.Option(
        "--overwrite", help="Replace an existing instance image and table.")] = None,
    workers: Annotated[int | None, typer.Option(
        help="Run on a local cluster of this many worker processes. (default: threads in this process)",
        rich_help_panel=PANEL)] = None,
    io_threads: Annotated[int | None, typer.Option(
        help="Threads per worker labelling and writing units. (default: 2)", rich_help_panel=PANEL)] = None,
    scheduler_file: SchedulerFile = None,
    scheduler_address: SchedulerAddress = None,
    cluster: Cluster = None,
    jobs: Jobs = None,
    cores: Cores = None,
    memory: Memory = None,
    walltime: Walltime = None,
    queue: Queue = None,
    account: Account = None,
    interface: Interface = None,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show progress.")] = True,
) -> None:
    """Label every object of the mask exactly as one pass over the whole mask would (ids 1, 2, ... in
    raster order of each object's first pixel), write them as a uint32 label image in
    MASK/objects, and measure each one into a Parquet table.

    Objects are the connected regions of each class. The mask is processed chunk by chunk in two
    passes, so memory does not grow with the slide; --resume finishes a killed run. The chunks run
    as Dask tasks where predict's do: threads here, --workers, or a running cluster.
    """
    from slideseg.schedule.cluster import ClusterConfig
    from slideseg.tools.objects import ObjectsConfig
    from slideseg.tools.objects import objects as run

    cfg = ObjectsConfig(**_given(min_area=min_area, connectivity=connectivity, classes=classes,
                                 slide=str(slide) if slide else None, table=str(table) if table else None, csv=csv,
                                 resume=resume, overwrite=overwrite))
    cc = ClusterConfig(**_given(
        threads=io_threads, workers=workers, scheduler_file=str(scheduler_file) if scheduler_file else None,
        scheduler_address=scheduler_address, cluster=cluster, jobs=jobs, cores=cores, memory=memory,
        walltime=walltime, queue=queue, account=account, interface=interface))
    with ExitStack() as stack:
        result = run(mask, cfg, cc, _PassProgress(stack, progress))
    per_class = ", ".join(f"{n} {name}" for name, n in result.per_class.items()) or "none"
    dropped = f", {result.dropped} under --min-area dropped" if result.dropped else ""
    resumed = f"; {result.units_already_done} of {result.units} units were done already" \
        if result.units_already_done else ""
    out.print(f"wrote {result.objects} objects ({per_class}{dropped}) to {result.instances} and {result.table}"
              f"{f' and {result.csv}' if result.csv else ''} in {result.seconds:.1f} s "
              f"({result.objects_per_second:.0f} objects/s, {result.megapixels_per_second:.1f} MP/s){resumed}",
              highlight=False)
    for note in result.notes:
        err.print(f"slideseg: {note}", highlight=False)
