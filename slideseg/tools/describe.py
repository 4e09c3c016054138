"""What a path is — a model file, a bioimage.io package, a mask written by ``predict``, or a slide —
and its facts (``slideseg info``), as plain JSON-able data."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from slideseg.errors import OutputFormatError, SlideReadError
from slideseg.io.slide import open_slide
from slideseg.model.bioimageio import is_package, read_package
from slideseg.model.config import read_model_config
from slideseg.write.mask import describe_mask
from slideseg.write.mask_meta import instances_record


def describe(path: str | os.PathLike[str], *, series: int | None = None) -> dict[str, Any]:
    """Describe ``path``; ``kind`` says what it is: 'model', 'bioimageio', 'mask' or 'slide'.

    * A ``.safetensors`` model file: its ``config``, ``metadata`` and ``valid_tiles``.
    * A bioimage.io package (``.zip``, ``rdf.yaml``, ``bioimageio.yaml``): what slideseg understood of
      it (:meth:`slideseg.model.bioimageio.BioimageioModel.describe`), validated offline.
    * A directory that :func:`slideseg.write.mask.describe_mask` accepts: the mask's levels,
      classes, completeness and how it was made.
    * Anything else is opened as a slide (image ``series`` of a multi-series file): format,
      levels, channels, pixel size.

    Raises
    ------
    SlideReadError
        ``path`` does not exist, or is neither a model, a mask nor a readable slide.
    ModelFileError
        A ``.safetensors`` file that is not a slideseg model, or a package slideseg cannot run.
    """
    p = Path(path)
    if not p.exists():
        raise SlideReadError(f"{p} does not exist; check the path.")
    if p.suffix == ".safetensors":
        cfg, meta = read_model_config(p)
        return {"kind": "model", "config": cfg.to_dict(), "metadata": meta,
                "valid_tiles": cfg.geometry.describe_valid()}
    if is_package(p):
        return {"kind": "bioimageio", **read_package(p).describe()}
    if p.is_dir():
        try:
            return {"kind": "mask", **describe_mask(p), "objects": _objects(p)}
        except OutputFormatError:
            pass  # a Zarr or OME-Zarr image, not a mask
    with open_slide(p, series=series) as s:
        return {"kind": "slide", **s.describe()}


def _objects(mask: Path) -> dict[str, Any] | None:
    """What ``slideseg objects`` wrote into the mask (count, table, complete), None if nothing; an
    ``objects/`` that slideseg did not write is reported, not read."""
    try:
        record = instances_record(mask)
    except OutputFormatError as e:
        return {"error": str(e)}
    if record is None:
        return None
    return {key: record.get(key) for key in ("objects", "dropped", "table", "complete", "instances")}


__all__ = ["describe"]
