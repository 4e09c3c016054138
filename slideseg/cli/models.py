"""`slideseg new-model`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from slideseg.cli._app import _friendly_errors, _given, app, out


@app.command("new-model")
@_friendly_errors
def new_model(
    output: Annotated[Path, typer.Option("-o", "--output", help="Model file to write (.safetensors).")],
    depth: Annotated[int | None, typer.Option(help="Poolings. (default: 4)")] = None,
    width: Annotated[int | None, typer.Option(help="Channels of the first level. (default: 64)")] = None,
    in_channels: Annotated[int | None, typer.Option(help="Input channels. (default: 3)")] = None,
    classes: Annotated[int | None, typer.Option(help="Classes incl. background. (default: 2)")] = None,
    padding: Annotated[str | None, typer.Option(help="valid (exact tiling) | same. (default: valid)")] = None,
    halo: Annotated[int | None, typer.Option(help="Tiling halo for same padding, px. (default: 0)")] = None,
    dropout: Annotated[float | None, typer.Option(help="Dropout at the bottom. (default: 0.5)")] = None,
    mirror: Annotated[str | None, typer.Option(help="reflect | symmetric border mode. (default: reflect)")] = None,
    mpp: Annotated[float | None, typer.Option(help="Pixel size the model expects, µm. (default: 0.5)")] = None,
    norm_mean: Annotated[str | None, typer.Option(help="Input mean, comma-separated. (default: 127.5)")] = None,
    norm_std: Annotated[str | None, typer.Option(help="Input std, comma-separated. (default: 127.5)")] = None,
    class_names: Annotated[str | None, typer.Option(
        help="Class names, comma-separated. (default: background, class 1, ...)")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of the He-normal initialisation. (default: 0)")] = None,
    overwrite: Annotated[bool | None, typer.Option("--overwrite", help="Replace an existing file.")] = None,
) -> None:
    """Write a He-initialised (untrained) U-Net: the start for `train`, and a model for checks."""
    from slideseg.model.config import UNetConfig
    from slideseg.tools.new_model import write_new_model

    cfg = UNetConfig(**_given(
        depth=depth, width=width, in_channels=in_channels, classes=classes, padding=padding, halo=halo,
        dropout=dropout, mirror=mirror, mpp=mpp, norm_mean=_floats(norm_mean, "--norm-mean"),
        norm_std=_floats(norm_std, "--norm-std"),
        class_names=tuple(class_names.split(",")) if class_names else None))
    made = write_new_model(output, cfg, **_given(seed=seed, overwrite=overwrite))
    c = made.config
    out.print(f"wrote {made.path}: depth {c.depth}, width {c.width}, {c.in_channels} -> {c.classes} "
              f"classes, {c.padding} padding; valid tiles: {c.geometry.describe_valid()}; "
              f"sha256 {made.weights_sha256[:12]}")


def _floats(text: str | None, option: str) -> tuple[float, ...] | None:
    """Parse comma-separated numbers ("127.5,127.5,127.5"); None stays None (not given)."""
    from slideseg.errors import ConfigError

    if text is None:
        return None
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise ConfigError(f"{option} expects comma-separated numbers such as 127.5,127.5,127.5; "
                          f"got {text!r}") from None
