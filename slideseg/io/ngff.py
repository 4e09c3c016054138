"""OME-NGFF metadata, versions 0.4 (Zarr v2) and 0.5 (Zarr v3): pure functions that read the JSON of
input images and masks and build the JSON of slideseg's outputs; no I/O.

0.4 keeps ``multiscales`` and ``image-label`` at the top of the attributes, each with its own
``version``; 0.5 nests them under ``ome`` with one ``version`` there, and its arrays carry
``dimension_names``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from slideseg.errors import ConfigError

NgffVersion = Literal["0.4", "0.5"]
VERSIONS: tuple[NgffVersion, ...] = ("0.4", "0.5")


@dataclass(frozen=True)
class LabelClass:
    """One class of the mask: its pixel value, name and display colour."""

    value: int
    """Pixel value in the mask, 0-255; 0 is the background (and the fill value)."""
    name: str
    """Class name, written as the label's ``class`` property."""
    rgba: tuple[int, int, int, int]
    """Display colour, four integers 0-255."""

    def __post_init__(self) -> None:
        if not 0 <= self.value <= 255:
            raise ConfigError(
                f"class {self.name!r} has value {self.value}; expected 0-255 (the mask is uint8): renumber the classes"
            )
        if len(self.rgba) != 4 or not all(0 <= int(c) <= 255 for c in self.rgba):
            raise ConfigError(
                f"class {self.name!r} has colour {self.rgba}; expected four integers 0-255 "
                f"(r, g, b, a): fix the class colour"
            )


def multiscales_attrs(name: str, n_levels: int, mpp: float | None, channel: bool,
                      version: NgffVersion = "0.4") -> list[Any]:
    """NGFF ``multiscales`` for an x2 pyramid: (c,) y, x; scale ``mpp * 2**level``.

    Without a pixel size the scale is in pixels (1.0 at level 0) and the axes have no unit.
    """
    unit = {} if mpp is None else {"unit": "micrometer"}
    axes = [{"name": n, "type": "space", **unit} for n in "yx"]
    lead = [1.0] if channel else []
    datasets = [
        {
            "path": str(level),
            "coordinateTransformations": [{"type": "scale", "scale": [*lead, *[(mpp or 1.0) * 2**level] * 2]}],
        }
        for level in range(n_levels)
    ]
    return [
        {
            **({"version": version} if version == "0.4" else {}),
            "name": name,
            "axes": ([{"name": "c", "type": "channel"}] if channel else []) + axes,
            "datasets": datasets,
        }
    ]


def image_label_attrs(classes: Sequence[LabelClass], version: NgffVersion = "0.4") -> dict[str, Any]:
    """NGFF ``image-label``: a colour and a ``class`` property for every class value."""
    return {
        **({"version": version} if version == "0.4" else {}),
        "colors": [{"label-value": c.value, "rgba": [int(v) for v in c.rgba]} for c in classes],
        "properties": [{"label-value": c.value, "class": c.name} for c in classes],
    }


def wrap(version: NgffVersion, ome: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """Group attributes: the NGFF keys ``ome`` (placed for ``version``) plus slideseg's own."""
    if version == "0.4":
        return {**ome, **extra}
    return {"ome": {"version": version, **ome}, **extra}


def unwrap(attrs: Mapping[str, Any]) -> tuple[NgffVersion | None, dict[str, Any]]:
    """(version, NGFF keys) of group attributes written by :func:`wrap` (or by other tools)."""
    if isinstance(attrs.get("ome"), Mapping):
        ome = dict(attrs["ome"])
        return ome.get("version"), ome
    ms = attrs.get("multiscales")
    version = ms[0].get("version") if isinstance(ms, list) and ms and isinstance(ms[0], Mapping) else None
    return version, dict(attrs)


def label_classes(ome: Mapping[str, Any]) -> tuple[LabelClass, ...]:
    """The classes of a label image from its ``image-label`` colours and properties, by value.

    A value listed in only one of the two still counts: its name defaults to ``class N`` and its
    colour to transparent black.

    >>> classes = label_classes({"image-label": {"colors": [{"label-value": 1, "rgba": [255, 0, 0, 255]}],
    ...                                          "properties": [{"label-value": 0, "class": "background"}]}})
    >>> [(c.value, c.name, c.rgba) for c in classes]
    [(0, 'background', (0, 0, 0, 0)), (1, 'class 1', (255, 0, 0, 255))]
    """
    label = ome.get("image-label")
    if not isinstance(label, Mapping):
        raise ConfigError("the image has no 'image-label' metadata; expected an OME-Zarr label image")
    names = {int(p["label-value"]): str(p.get("class", f"class {p['label-value']}"))
             for p in label.get("properties") or ()}
    colours = {int(c["label-value"]): tuple(int(v) for v in c["rgba"]) for c in label.get("colors") or ()}
    return tuple(LabelClass(v, names.get(v, f"class {v}"), colours.get(v, (0, 0, 0, 0)))  # type: ignore[arg-type]
                 for v in sorted(names.keys() | colours.keys()))


def check_version(version: str) -> NgffVersion:
    if version not in VERSIONS:
        raise ConfigError(f"--ngff must be one of {', '.join(VERSIONS)}, got {version!r}")
    return version


# --- reading other tools' images ------------------------------------------------------------


def ngff_multiscales(attrs: Mapping[str, Any]) -> tuple[list[Any] | None, str | None]:
    """The ``multiscales`` list of an OME-Zarr group and its NGFF version (0.5: under ``ome``).

    >>> ngff_multiscales({"ome": {"version": "0.5", "multiscales": [{}]}})
    ([{}], '0.5')
    >>> ngff_multiscales({"multiscales": [{"version": "0.4"}]})
    ([{'version': '0.4'}], '0.4')
    """
    ome = attrs.get("ome")
    if isinstance(ome, Mapping) and ome.get("multiscales"):
        return list(ome["multiscales"]), str(ome.get("version", "0.5"))
    multiscales = attrs.get("multiscales")
    if not multiscales:
        return None, None
    version = multiscales[0].get("version") if isinstance(multiscales[0], Mapping) else None
    return list(multiscales), None if version is None else str(version)


def ngff_channel_names(attrs: Mapping[str, Any]) -> tuple[str | None, ...]:
    """Channel labels from an OME-Zarr group's ``omero`` metadata (0.4 top level, 0.5 under ``ome``)."""
    ome = attrs.get("ome")
    omero = (ome.get("omero") if isinstance(ome, Mapping) else None) or attrs.get("omero") or {}
    channels = omero.get("channels") if isinstance(omero, Mapping) else None
    if not isinstance(channels, list):
        return ()
    return tuple(c.get("label") if isinstance(c, Mapping) else None for c in channels)


def ngff_axes(ms: Mapping[str, Any]) -> tuple[str, list[Mapping[str, Any]]]:
    """tifffile-style letters of NGFF axes (a ``channel``-type axis is C) and the axis records.

    >>> ngff_axes({"axes": [{"name": "c", "type": "channel"}, "y", "x"]})[0]
    'CYX'
    """
    meta = [a if isinstance(a, Mapping) else {"name": a} for a in ms["axes"]]
    return "".join("C" if a.get("type") == "channel" else str(a["name"]).upper() for a in meta), meta


def ngff_scale(meta: Mapping[str, Any], axis: int) -> float:
    """The ``scale`` of one axis in an NGFF ``coordinateTransformations`` list (1.0 if none)."""
    for t in meta.get("coordinateTransformations") or ():
        if t.get("type") == "scale" and "scale" in t:
            return float(t["scale"][axis])
    return 1.0

