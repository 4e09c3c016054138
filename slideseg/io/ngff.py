"""OME-NGFF metadata, versions 0.4 (Zarr v2) and 0.5 (Zarr v3): pure functions that read the JSON of
input images and masks and build the JSON of slideseg's outputs; no I/O.

0.4 keeps ``multiscales`` and ``image-label`` at the top of the attributes, each with its own
``version``; 0.5 nests them under ``ome`` with one ``version`` there, and its arrays carry
``dimension_names``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeGuard

from slideseg.errors import ConfigError, OutputFormatError, SlideReadError

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
    names: dict[int, str] = {}
    for p in _label_entries(label, "properties"):
        value = _label_value(p)
        names[value] = str(p.get("class", f"class {value}"))
    colours: dict[int, tuple[int, int, int, int]] = {}
    for c in _label_entries(label, "colors"):
        rgba = c.get("rgba")
        if not (isinstance(rgba, list) and len(rgba) == 4 and all(_is_int(v) and 0 <= v <= 255 for v in rgba)):
            raise _bad_label(f"'rgba' as four integers 0-255 for label-value {c.get('label-value')!r}", rgba)
        colours[_label_value(c)] = (int(rgba[0]), int(rgba[1]), int(rgba[2]), int(rgba[3]))
    return tuple(LabelClass(v, names.get(v, f"class {v}"), colours.get(v, (0, 0, 0, 0)))
                 for v in sorted(names.keys() | colours.keys()))


def _is_int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _label_entries(label: Mapping[str, Any], key: str) -> list[Mapping[str, Any]]:
    entries = label.get(key) or []
    if not isinstance(entries, list) or not all(isinstance(e, Mapping) for e in entries):
        raise _bad_label(f"'{key}' as a list of objects", entries)
    return entries


def _label_value(entry: Mapping[str, Any]) -> int:
    value: Any = entry.get("label-value")
    if not (_is_int(value) and 0 <= value <= 255):
        raise _bad_label("'label-value' as an integer 0-255 (slideseg masks are uint8)", value)
    return int(value)


def _bad_label(what: str, found: Any) -> OutputFormatError:
    text = repr(found)
    return OutputFormatError(
        f"the mask's 'image-label' metadata is malformed: expected {what}, found "
        f"{text if len(text) <= 60 else text[:57] + '...'}; write the mask again with slideseg predict"
    )


def check_version(version: str) -> NgffVersion:
    if version not in VERSIONS:
        raise ConfigError(f"--ngff must be one of {', '.join(VERSIONS)}, got {version!r}")
    return version


# --- reading other tools' images ------------------------------------------------------------

SPACE_UNITS_UM: dict[str, float] = {
    "angstrom": 1e-4, "attometer": 1e-12, "centimeter": 1e4, "decimeter": 1e5, "exameter": 1e24,
    "femtometer": 1e-9, "foot": 304800.0, "gigameter": 1e15, "hectometer": 1e8, "inch": 25400.0,
    "kilometer": 1e9, "megameter": 1e12, "meter": 1e6, "micrometer": 1.0, "mile": 1609344e3,
    "millimeter": 1e3, "nanometer": 1e-3, "parsec": 3.0857e22, "petameter": 1e21, "picometer": 1e-6,
    "terameter": 1e18, "yard": 914400.0, "yoctometer": 1e-18, "yottameter": 1e30, "zeptometer": 1e-15,
    "zettameter": 1e27,
}  # fmt: skip
"""The NGFF space units (UDUNITS-2 names), in micrometres."""


@dataclass(frozen=True)
class Multiscale:
    """One validated NGFF ``multiscales`` entry: what slideseg reads from it."""

    name: str
    axes: str
    """tifffile-style letters, one per axis (a ``channel``-type axis is C)."""
    units: tuple[str | None, ...]
    """Each axis's unit (None where none is given)."""
    paths: tuple[str, ...]
    """Dataset paths, finest level first."""
    scales: tuple[tuple[float, ...], ...]
    """Each dataset's scale per axis, the multiscale's own scale applied; all finite and > 0."""


def _bad(source: str, what: str, found: Any) -> SlideReadError:
    text = repr(found)
    text = text if len(text) <= 80 else text[:77] + "..."
    return SlideReadError(
        f"{source}: the OME-NGFF multiscales metadata is malformed: expected {what}, found {text}; "
        f"export the OME-Zarr again (or fix its attributes)"
    )


def ngff_multiscales(attrs: Mapping[str, Any]) -> tuple[list[Any] | None, str | None]:
    """The ``multiscales`` list of an OME-Zarr group and its NGFF version (0.5: under ``ome``).

    Absent metadata gives ``(None, None)``; present but not a non-empty list of objects raises
    :class:`~slideseg.errors.SlideReadError`.

    >>> ngff_multiscales({"ome": {"version": "0.5", "multiscales": [{}]}})
    ([{}], '0.5')
    >>> ngff_multiscales({"multiscales": [{"version": "0.4"}]})
    ([{'version': '0.4'}], '0.4')
    """
    ome = attrs.get("ome")
    if isinstance(ome, Mapping) and "multiscales" in ome:
        multiscales, version = ome["multiscales"], ome.get("version", "0.5")
    elif "multiscales" in attrs:
        multiscales = attrs["multiscales"]
        first = multiscales[0] if isinstance(multiscales, list) and multiscales else None
        version = first.get("version") if isinstance(first, Mapping) else None
    else:
        return None, None
    if not isinstance(multiscales, list) or not multiscales or not all(isinstance(m, Mapping) for m in multiscales):
        raise _bad("the image", "'multiscales' as a non-empty list of objects", multiscales)
    return list(multiscales), None if version is None else str(version)


def ngff_channel_names(attrs: Mapping[str, Any]) -> tuple[str | None, ...]:
    """Channel labels from an OME-Zarr group's ``omero`` metadata (0.4 top level, 0.5 under ``ome``);
    labels that are not strings count as absent."""
    ome = attrs.get("ome")
    omero = (ome.get("omero") if isinstance(ome, Mapping) else None) or attrs.get("omero") or {}
    channels = omero.get("channels") if isinstance(omero, Mapping) else None
    if not isinstance(channels, list):
        return ()
    return tuple(c.get("label") if isinstance(c, Mapping) and isinstance(c.get("label"), str) else None
                 for c in channels)


def ngff_axes(ms: Mapping[str, Any]) -> tuple[str, list[Mapping[str, Any]]]:
    """tifffile-style letters of NGFF axes (a ``channel``-type axis is C) and the axis records.

    >>> ngff_axes({"axes": [{"name": "c", "type": "channel"}, "y", "x"]})[0]
    'CYX'
    """
    axes = ms.get("axes")
    if not isinstance(axes, list) or not axes:
        raise _bad("the image", "'axes' as a list", axes)
    meta = [a if isinstance(a, Mapping) else {"name": a} for a in axes]
    names = [a.get("name") for a in meta]
    if not all(isinstance(a.get("name"), str) and (len(a["name"]) == 1 or a.get("type") == "channel") for a in meta):
        raise _bad("the image", "axes named by one letter (t, c, z, y, x)", names)
    letters = "".join("C" if a.get("type") == "channel" else str(a["name"]).upper() for a in meta)
    if len(set(letters)) != len(letters):
        raise _bad("the image", "distinct axes", letters)
    return letters, meta


def _scale(meta: Mapping[str, Any], ndim: int, source: str, where: str) -> tuple[float, ...]:
    """The ``scale`` of a ``coordinateTransformations`` list (ones if it has none)."""
    transforms = meta.get("coordinateTransformations")
    if transforms is None:
        return (1.0,) * ndim
    if not isinstance(transforms, list) or not all(isinstance(t, Mapping) for t in transforms):
        raise _bad(source, f"{where} coordinateTransformations as a list of objects", transforms)
    scales = [t.get("scale") for t in transforms if t.get("type") == "scale"]
    if not scales:
        return (1.0,) * ndim
    scale = scales[0]
    ok = (isinstance(scale, list) and len(scale) == ndim and all(
        isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) and v > 0 for v in scale))
    if not ok:
        raise _bad(source, f"{where} scale as {ndim} finite numbers > 0", scale)
    return tuple(float(v) for v in scale)


def parse_multiscale(ms: Mapping[str, Any], source: str) -> Multiscale:
    """Validate one ``multiscales`` entry: axes, units, datasets and their scales.

    Raises
    ------
    SlideReadError
        Anything slideseg would trip over: axes that are not a list of distinct named axes,
        units that are not NGFF space units on space axes, no datasets, dataset paths that are
        not strings, scales that are missing numbers, zero, negative or not finite.

    >>> m = parse_multiscale({"axes": ["y", {"name": "x", "unit": "micrometer"}], "datasets": [
    ...     {"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [0.5, 0.5]}]}]}, "a.zarr")
    >>> m.axes, m.paths, m.scales, m.units
    ('YX', ('0',), ((0.5, 0.5),), (None, 'micrometer'))
    """
    try:
        letters, meta = ngff_axes(ms)
    except SlideReadError as e:
        raise SlideReadError(f"{source}{str(e).removeprefix('the image')}") from None
    units: list[str | None] = []
    for letter, a in zip(letters, meta, strict=True):
        unit = a.get("unit")
        if unit is not None and not isinstance(unit, str):
            raise _bad(source, f"axis {letter.lower()}'s unit as a string", unit)
        if letter in "XYZ" and unit is not None and unit not in SPACE_UNITS_UM:
            raise SlideReadError(
                f"{source}: axis {letter.lower()} has unit {unit!r}, which is not an OME-NGFF space unit "
                f"(e.g. micrometer, nanometer, millimeter); fix the axis unit in the OME-Zarr attributes"
            )
        units.append(unit)
    datasets = ms.get("datasets")
    if not isinstance(datasets, list) or not datasets or not all(isinstance(d, Mapping) for d in datasets):
        raise _bad(source, "'datasets' as a non-empty list of objects", datasets)
    paths = [d.get("path") for d in datasets]
    if not all(isinstance(p, str) and p for p in paths) or len(set(paths)) != len(paths):
        raise _bad(source, "a distinct, non-empty string 'path' for every dataset", paths)
    overall = _scale(ms, len(letters), source, "the multiscale's")
    scales = tuple(tuple(a * b for a, b in zip(_scale(d, len(letters), source, f"dataset {d['path']!r}'s"),
                                               overall, strict=True)) for d in datasets)
    name = ms.get("name")
    return Multiscale(name if isinstance(name, str) else "", letters, tuple(units), tuple(paths), scales)
