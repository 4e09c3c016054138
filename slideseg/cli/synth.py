"""`slideseg synth`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

from slideseg.cli._app import _friendly_errors, _given, app, err, out


@app.command()
@_friendly_errors
def synth(
    output: Annotated[Path, typer.Argument(help="Slide to write (.ome.tif); truth goes to .truth.zarr.")],
    size: Annotated[tuple[int, int], typer.Option(help="Height and width in px.")] = (4096, 4096),
    seed: Annotated[int | None, typer.Option(help="Random seed. (default: 0)")] = None,
    mpp: Annotated[float | None, typer.Option(help="Pixel size, µm. (default: 0.5)")] = None,
    tissue_fraction: Annotated[float | None, typer.Option(
        help="Fraction covered by tissue, in (0, 1]. (default: 0.6)")] = None,
    touching: Annotated[float | None, typer.Option(
        help="Fraction of the nuclei pressed together in pairs, in [0, 1) (touching objects for training "
             "and evaluating their separation). (default: 0)")] = None,
    overwrite: Annotated[bool | None, typer.Option("--overwrite", help="Replace existing files.")] = None,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show progress.")] = True,
) -> None:
    """Write a synthetic H&E-like pyramidal OME-TIFF with ground-truth labels beside it."""
    from slideseg.cli.progress import chunk_progress
    from slideseg.tools.synth import SynthConfig, write_synthetic_slide

    cfg = SynthConfig(size=size, **_given(seed=seed, mpp=mpp, tissue_fraction=tissue_fraction,
                                                     touching=touching))
    with chunk_progress(f"synth {output.name}", enabled=progress, console=err, unit="tiles") as start:
        ticks: list[Callable[[int], None]] = []  # one progress task, started at the first tile

        def on_tile(done: int, total: int) -> None:
            if not ticks:
                ticks.append(start(total, 0))
            ticks[0](0)

        result = write_synthetic_slide(output, cfg, progress=on_tile, **_given(overwrite=overwrite))
    out.print(f"wrote {result.image_path} ({result.shape[0]} x {result.shape[1]} px, {result.levels} levels, "
              f"tissue {result.tissue_fraction:.0%}, nuclei {result.nucleus_fraction:.0%}) "
              f"and {result.truth_path}")
