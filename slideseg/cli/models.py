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
    class_names: Annotated[str | None, typer.Option(help="Class names, comma-separated.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the He-normal initialisation.")] = 0,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing file.")] = False,
) -> None:
    """Write a He-initialised (untrained) U-Net: the start for `train`, and a model for checks."""
    from slideseg.errors import OutputExistsError
    from slideseg.model.config import UNetConfig
    from slideseg.model.files import save_model
    from slideseg.model.unet import build_unet

    if output.exists() and not overwrite:
        raise OutputExistsError(f"{output} exists; pass --overwrite to replace it.")
    cfg = UNetConfig(**_given(
        depth=depth, width=width, in_channels=in_channels, classes=classes, padding=padding, halo=halo,
        dropout=dropout, mirror=mirror, mpp=mpp, norm_mean=_floats(norm_mean, "--norm-mean"),
        norm_std=_floats(norm_std, "--norm-std"),
        class_names=tuple(class_names.split(",")) if class_names else None))
    digest = save_model(output, build_unet(cfg, seed=seed), cfg, {"trained": False, "seed": seed})
    g = cfg.geometry
    out.print(f"wrote {output}: depth {cfg.depth}, width {cfg.width}, {cfg.in_channels} -> {cfg.classes} "
              f"classes, {cfg.padding} padding; valid tiles: {g.describe_valid()}; sha256 {digest[:12]}")


def _floats(text: str | None, option: str) -> tuple[float, ...] | None:
    from slideseg.errors import ConfigError

    if text is None:
        return None
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise ConfigError(f"{option} expects comma-separated numbers such as 127.5,127.5,127.5; "
                          f"got {text!r}") from None
