"""bioimage.io model packages (``.zip``, or an unpacked ``rdf.yaml`` / ``bioimageio.yaml``) read as
slideseg models (torch-free; ``bioimageio.spec`` is imported when a package is read).

:func:`read_package` validates the description with ``bioimageio.spec`` (format 0.5, and what the
library converts from 0.4), offline — it never reaches the network: IO checks are off, so no
URL is followed and nothing is downloaded, and the files slideseg reads (weights, test tensors)
are checked against their SHA-256 here. It then maps the description onto what ``predict`` has:

* **axes**: one input ``(batch, channel, y, x)`` and one output, in any order; batch and channel
  may be absent (TorchScript weights). z, time and index axes are refused.
* **size rule** ``min + n*step`` (or a fixed size) → the valid tiles and their alignment
  (``step`` = 2**depth, a power of two).
* **crop**: an output size that refers to the input with ``offset < 0`` is a valid-convolution
  network (it must have the geometry of slideseg's valid U-Net); ``offset 0`` is same-padded, and
  its declared ``halo`` (rounded up to the alignment) is the context tiles read and crop.
* **weights**: TorchScript or ONNX; a package with only other formats (e.g. a PyTorch state dict,
  which needs its architecture's code) is refused with the formats found.
* **pre-processing** → :mod:`slideseg.io.normalise` steps; statistics steps get the statistics of
  the whole slide (never of a tile). **post-processing** (sigmoid, softmax, binarize) says how to
  read the output as class scores (:class:`OutputRule`).
* channel names (the output's are the class names), the pixel size (µm) and the input's padding
  mode, where the package states them.

A JSON file beside the package (``MODEL.zip.json``) may override ``halo``, ``mirror``, ``mpp``,
``class_names``, ``class_colors`` and ``norm`` (``"slide"``: normalise each channel to zero mean and
unit variance with the slide's statistics, instead of the package's pre-processing).
"""

from __future__ import annotations

import io
import json
import os
import warnings
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

from slideseg.errors import ConfigError, ModelFileError
from slideseg.io.normalise import ZeroMeanUnitVariance
from slideseg.model.bioimageio_map import map_description
from slideseg.model.bioimageio_model import (
    READ_FORMATS,
    YAML_NAMES,
    BioimageioModel,
    OutputRule,
    PackageFile,
    is_package,
    to_nchw,
)
from slideseg.model.config import UNetConfig

INSTALL_HINT = "pip install 'slideseg[bioimageio]'"
OVERRIDE_KEYS = ("halo", "mirror", "mpp", "class_names", "class_colors", "norm")


def read_package(path: str | os.PathLike[str]) -> BioimageioModel:
    """Read, validate (offline) and map the bioimage.io package at ``path``.

    Raises
    ------
    ModelFileError
        The package is missing, not valid, or describes a model slideseg cannot run (3-D, several
        inputs, weights it cannot read...), with what to do.
    ConfigError
        ``bioimageio.spec`` is not installed (with the install hint).
    """
    p = Path(path)
    if not p.exists():
        raise ModelFileError(f"Model package {p} does not exist; check the path.")
    descr, notes = _load(p)
    return _apply_overrides(map_description(descr, p, notes))


def load_description(path: Path) -> Any:
    """The validated ``bioimageio.spec`` model description of the package at ``path``, in the
    latest format, without IO checks (offline)."""
    return _load(path)[0]


def _load(path: Path) -> tuple[Any, list[str]]:
    """(description, what the library warned about while reading it, e.g. converting from 0.4)."""
    spec = _import_spec()
    from bioimageio.spec.model.v0_5 import ModelDescr

    try:  # the zip is opened and closed here: the library would leave its file handles to the collector
        with warnings.catch_warnings(record=True) as caught, \
                spec.ValidationContext(perform_io_checks=False, log_warnings=False), _as_zip(path) as z:
            warnings.simplefilter("always")
            descr = spec.load_description(z, format_version="latest", perform_io_checks=False, progressbar=False)
    except (OSError, zipfile.BadZipFile) as exc:
        raise ModelFileError(f"{path} is not a readable bioimage.io package: {_first_line(exc)}") from exc
    except Exception as exc:  # YAML errors, no rdf.yaml in the zip...
        raise ModelFileError(f"{path} is not a readable bioimage.io package: {_first_line(exc)}") from exc
    if isinstance(descr, spec.InvalidDescr):
        raise ModelFileError(f"{path} is not a valid bioimage.io model description: {_first_error(descr)}")
    if not isinstance(descr, ModelDescr):
        kind = getattr(descr, "type", type(descr).__name__)
        raise ModelFileError(f"{path} describes a bioimage.io {kind}, not a model.")
    notes = sorted({f"bioimageio.spec: {_first_line(ValueError(str(w.message)))}" for w in caught
                    if not issubclass(w.category, ResourceWarning)})
    return descr, notes


@contextmanager
def _as_zip(path: Path) -> Iterator[zipfile.ZipFile]:
    """The package as an open zip: the file itself, or an unpacked package's description alone (its
    other files are read from its folder by :meth:`BioimageioModel.read`)."""
    if path.suffix.lower() == ".zip":
        with zipfile.ZipFile(path) as z:
            yield z
        return
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr(path.name, path.read_bytes())
    with zipfile.ZipFile(buf) as z:
        yield z


def _import_spec() -> Any:
    try:
        import bioimageio.spec as spec
    except ImportError as exc:
        raise ConfigError(f"reading bioimage.io packages needs bioimageio.spec: {INSTALL_HINT}") from exc
    return spec


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _first_error(descr: Any) -> str:
    errors = [e for d in descr.validation_summary.details for e in d.errors]
    if not errors:
        return "(no details)"
    e = errors[0]
    where = ".".join(str(part) for part in e.loc)
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{where}: {_first_line(ValueError(e.msg))}{more}"


# ----------------------------------------------------------------------------------- overrides


def override_path(path: Path) -> Path | None:
    """``MODEL.zip.json`` (or ``rdf.yaml.json``) beside a package, if it exists."""
    candidate = path.with_name(path.name + ".json")
    return candidate if candidate.is_file() else None


def _apply_overrides(model: BioimageioModel) -> BioimageioModel:
    side = override_path(model.path)
    if side is None:
        return model
    try:
        data = json.loads(side.read_text())
    except (OSError, ValueError) as exc:
        raise ModelFileError(f"{side} is not a readable JSON file ({exc}).") from exc
    if not isinstance(data, dict) or set(data) - set(OVERRIDE_KEYS):
        raise ModelFileError(f"{side} may set {', '.join(OVERRIDE_KEYS)}; got {data!r}.")
    fields_ = {k: v for k, v in data.items() if k != "norm"}
    try:
        cfg = UNetConfig.from_dict({**model.config.to_dict(), **fields_})
    except ConfigError as exc:
        raise ModelFileError(f"{side}: {exc}") from exc
    notes = (*model.notes, f"{side.name} overrides {', '.join(sorted(data))}.")
    model = replace(model, config=cfg, notes=notes, metadata={**model.metadata, "overrides": str(side)})
    if data.get("norm") not in (None, "model", "slide"):
        raise ModelFileError(f"{side}: norm must be 'slide' or 'model', got {data['norm']!r}.")
    if data.get("norm") == "slide":
        cfg = replace(model.config, norm_mean=(0.0,), norm_std=(1.0,))
        model = replace(model, config=cfg, preprocessing=(ZeroMeanUnitVariance(per_channel=True),))
    return model


__all__ = ["INSTALL_HINT", "OVERRIDE_KEYS", "READ_FORMATS", "YAML_NAMES", "BioimageioModel", "OutputRule",
           "PackageFile", "is_package", "load_description", "read_package", "to_nchw"]
