"""Writing a mask into an existing OME-Zarr image as ``labels/NAME`` (``predict --into``).

The NGFF spec asks a label image to have as many levels as its image, in the same coordinate
system. The network predicts on its own grid (the model's pixel size); each label level is then
made from that prediction by nearest-neighbour sampling onto the matching image level's pixel
grid, chunk by chunk, so the label lines up with the image at every level.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from slideseg.errors import ConfigError
from slideseg.io.ngff import NgffVersion, unwrap
from slideseg.plan.tiles import nearest_index

LABELS = "labels"


@dataclass(frozen=True)
class ParentLevels:
    """The levels of the image a label is written into: dataset paths, (Y, X) shapes and scales."""

    paths: tuple[str, ...]
    shapes: tuple[tuple[int, int], ...]
    scales: tuple[tuple[float, float], ...]
    unit: str | None
    version: NgffVersion

    def to_dict(self) -> dict[str, Any]:
        return {"paths": list(self.paths), "shapes": [list(s) for s in self.shapes],
                "scales": [list(s) for s in self.scales], "unit": self.unit, "version": self.version}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ParentLevels:
        return cls(tuple(d["paths"]), tuple((int(s[0]), int(s[1])) for s in d["shapes"]),
                   tuple((float(s[0]), float(s[1])) for s in d["scales"]), d["unit"], d["version"])

    def multiscales(self, name: str) -> list[dict[str, Any]]:
        unit = {"unit": self.unit} if self.unit else {}
        return [{
            **({"version": "0.4"} if self.version == "0.4" else {}),
            "name": name,
            "axes": [{"name": n, "type": "space", **unit} for n in "yx"],
            "datasets": [{"path": p, "coordinateTransformations": [{"type": "scale", "scale": list(s)}]}
                         for p, s in zip(self.paths, self.scales, strict=True)],
        }]


def parent_levels(image: str | os.PathLike[str]) -> ParentLevels:
    """Read the levels of the OME-Zarr image at ``image``; ConfigError if it is not one."""
    p = Path(image)
    try:
        group = zarr.open_group(p, mode="r")
    except (OSError, ValueError, KeyError, FileNotFoundError) as exc:
        raise ConfigError(f"--into {p} is not a Zarr group ({type(exc).__name__}); expected an OME-Zarr "
                          "image (a group with multiscales): check the path") from exc
    version, ome = unwrap(dict(group.attrs))
    ms = ome.get("multiscales")
    if not ms or "image-label" in ome or version not in ("0.4", "0.5"):
        what = "a label image" if "image-label" in ome else f"not an OME-Zarr 0.4/0.5 image (version {version})"
        raise ConfigError(f"--into {p} is {what}; expected an OME-Zarr image with multiscales: "
                          "pass the image's root group")
    axes = [a["name"] if isinstance(a, Mapping) else a for a in ms[0]["axes"]]
    if "y" not in axes or "x" not in axes:
        raise ConfigError(f"--into {p} has axes {axes}; expected y and x among them")
    iy, ix = axes.index("y"), axes.index("x")
    unit = ms[0]["axes"][ix].get("unit") if isinstance(ms[0]["axes"][ix], Mapping) else None
    paths, shapes, scales = [], [], []
    for d in ms[0]["datasets"]:
        arr: Any = group[d["path"]]
        scale = next(t["scale"] for t in d["coordinateTransformations"] if t["type"] == "scale")
        paths.append(d["path"])
        shapes.append((int(arr.shape[iy]), int(arr.shape[ix])))
        scales.append((float(scale[iy]), float(scale[ix])))
    return ParentLevels(tuple(paths), tuple(shapes), tuple(scales), unit, version)


def label_path(image: str | os.PathLike[str], name: str) -> Path:
    """Where ``--into IMAGE --name NAME`` writes: ``IMAGE/labels/NAME``."""
    if not name or "/" in name or name.startswith("."):
        raise ConfigError(f"--name {name!r} must be a plain name such as 'tissue' or 'nuclei'")
    return Path(image) / LABELS / name


def prepare_labels_group(image: str | os.PathLike[str], version: NgffVersion) -> None:
    """Make sure ``IMAGE/labels`` exists as a group (its list is updated once the label is complete)."""
    path = Path(image) / LABELS
    if not path.exists():
        attrs: dict[str, Any] = {"labels": []} if version == "0.4" else {"ome": {"version": version, "labels": []}}
        zarr.open_group(path, mode="w-", zarr_format=2 if version == "0.4" else 3, attributes=attrs)


def register_label(image: str | os.PathLike[str], name: str, version: NgffVersion) -> None:
    """Add ``name`` to the ``labels`` list of ``IMAGE/labels`` (once)."""
    group = zarr.open_group(Path(image) / LABELS, mode="r+")
    attrs: dict[str, Any] = dict(group.attrs)
    holder: dict[str, Any] = attrs if version == "0.4" else dict(attrs.get("ome", {"version": version}))
    names = list(holder.get("labels", []))
    if name not in names:
        names.append(name)
    holder["labels"] = names
    group.attrs.put(attrs if version == "0.4" else {**attrs, "ome": holder})


def resample_nearest(src: Any, dst: Any, box: tuple[int, int, int, int]) -> None:
    """Fill ``dst[box]`` from ``src`` by nearest-neighbour sampling of pixel centres."""
    y0, y1, x0, x1 = box
    (hs, ws), (hd, wd) = src.shape[-2:], dst.shape[-2:]
    iy, ix = nearest_index(hs, hd, y0, y1), nearest_index(ws, wd, x0, x1)
    region = np.asarray(src[int(iy[0]) : int(iy[-1]) + 1, int(ix[0]) : int(ix[-1]) + 1])
    block = region[np.ix_(iy - iy[0], ix - ix[0])]
    if block.any():
        dst[y0:y1, x0:x1] = block


def check_alignment(parent: ParentLevels, grid_shape: tuple[int, int], grid_mpp: float | None) -> None:
    """The prediction must cover the image: its extent in µm must match level 0's within a pixel."""
    if grid_mpp is None or parent.unit != "micrometer":
        return
    extent = [grid_shape[i] * grid_mpp for i in (0, 1)]
    image = [parent.shapes[0][i] * parent.scales[0][i] for i in (0, 1)]
    if any(not math.isclose(e, m, abs_tol=2 * max(grid_mpp, parent.scales[0][i])) for i, (e, m) in
           enumerate(zip(extent, image, strict=True))):
        raise ConfigError(f"the slide covers {extent[0]:.1f} x {extent[1]:.1f} µm but the --into image covers "
                          f"{image[0]:.1f} x {image[1]:.1f} µm; --into needs the image the slide came from")
