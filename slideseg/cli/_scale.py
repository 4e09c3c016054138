"""The scale-out options shared by the commands that run Dask tasks (``predict``, ``objects``): one
definition of each flag and its help, so the commands cannot drift apart."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

PANEL = "Scale-out (cluster)"

SchedulerFile = Annotated[Path | None, typer.Option(
    help="Use the running Dask cluster of this scheduler file.", rich_help_panel=PANEL)]
SchedulerAddress = Annotated[str | None, typer.Option(
    help="Use the running Dask scheduler at tcp://host:port.", rich_help_panel=PANEL)]
Cluster = Annotated[str | None, typer.Option(
    help="slurm | pbs: start workers as batch jobs (needs slideseg\\[hpc]).", rich_help_panel=PANEL)]
Jobs = Annotated[int | None, typer.Option(help="Batch jobs (one worker each). (default: 1)", rich_help_panel=PANEL)]
Cores = Annotated[int | None, typer.Option(help="Cores per job. (default: 8)", rich_help_panel=PANEL)]
Memory = Annotated[str | None, typer.Option(help="Memory per job. (default: 32GB)", rich_help_panel=PANEL)]
Walltime = Annotated[str | None, typer.Option(help="Walltime per job. (default: 04:00:00)", rich_help_panel=PANEL)]
Queue = Annotated[str | None, typer.Option(help="Partition or queue.", rich_help_panel=PANEL)]
Account = Annotated[str | None, typer.Option(help="Account or project.", rich_help_panel=PANEL)]
Interface = Annotated[str | None, typer.Option(help="Scheduler network interface (e.g. ib0).", rich_help_panel=PANEL)]
