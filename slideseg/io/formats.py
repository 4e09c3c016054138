"""What kind of file a slide is and what its metadata says: helpers for :mod:`slideseg.io.slide`.

Nothing here reads pixels. The functions take file headers, tifffile series and tags, Aperio
ImageDescriptions, OME-XML and NGFF attributes, and return small records: the format, the pixel
size in micrometres, the objective power, channel names and alpha, and which image series to
open by default (:func:`choose_series`).

>>> svs_metadata("Aperio Image Library v12.0.0 \\n2220x2967 (256x256) JPEG/RGB|AppMag = 20|MPP = 0.4990")
{'Header': 'Aperio Image Library v12.0.0 \\n2220x2967 (256x256) JPEG/RGB', 'AppMag': 20, 'MPP': 0.499}
"""

from __future__ import annotations

import math
import os
import re
import struct
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import tifffile

from slideseg.errors import SlideReadError
from slideseg.io.ngff import SPACE_UNITS_UM, ngff_multiscales, parse_multiscale

SUPPORTED_FORMATS = (
    "OME-TIFF, SVS (Aperio), NDPI (Hamamatsu), tiled or plain TIFF, OME-Zarr (NGFF 0.4/0.5), "
    "Zarr arrays, PNG, JPEG"
)
"""What :func:`slideseg.io.slide.open_slide` reads, as error messages list it."""


MAX_IN_MEMORY_PIXELS = 2**28
"""Largest image (or TIFF strip) decoded whole, in pixels (~268 MP): beyond it, use a tiled TIFF."""


_MAGIC = {
    b"II*\x00": "tiff", b"MM\x00*": "tiff", b"II+\x00": "tiff", b"MM\x00+": "tiff",
    b"\x89PNG": "png", b"\xff\xd8\xff": "jpeg",
}  # fmt: skip


# Length units of OME-XML (UnitsLength symbols) and OME-NGFF (UDUNITS-2 names), in micrometres.
_UM_PER_UNIT: dict[str, float] = {
    **SPACE_UNITS_UM,
    "Ym": 1e30, "Zm": 1e27, "Em": 1e24, "Pm": 1e21, "Tm": 1e18, "Gm": 1e15, "Mm": 1e12, "km": 1e9, "hm": 1e8,
    "dam": 1e7, "m": 1e6, "dm": 1e5, "cm": 1e4, "mm": 1e3, "µm": 1.0, "μm": 1.0, "um": 1.0, "nm": 1e-3,
    "pm": 1e-6, "fm": 1e-9, "am": 1e-12, "zm": 1e-15, "ym": 1e-18, "Å": 1e-4, "thou": 25.4, "li": 2116.666,
    "in": 25400.0, "ft": 304800.0, "yd": 914400.0, "mi": 1609344e3, "ua": 1.495978707e17, "ly": 9.4607e21,
    "pc": 3.0857e22, "pt": 352.777, "micron": 1.0,
}  # fmt: skip

MPP_RANGE = (1e-5, 1e6)
"""Pixel sizes slideseg takes seriously, in µm (0.01 nm to 1 m); anything else counts as unknown."""


# TIFF ResolutionUnit -> micrometres per unit (4 and 5 are tifffile's non-standard mm and µm).
_UM_PER_RESUNIT = {2: 25400.0, 3: 1e4, 4: 1e3, 5: 1.0}


# Series names of the scanner's extra pictures (slide label, macro photo, thumbnail, overview).
_ASSOCIATED = re.compile(r"\b(thumbnail|label|macro|overview|map)\b", re.IGNORECASE)


def sniff(head: bytes) -> str | None:
    """The container a file's first bytes announce: ``'tiff'``, ``'png'``, ``'jpeg'`` or None.

    >>> sniff(b"II*\\x00\\x08\\x00"), sniff(b"\\x89PNG\\r\\n"), sniff(b"hello")
    ('tiff', 'png', None)
    """
    return next((kind for magic, kind in _MAGIC.items() if head.startswith(magic)), None)


def unit_to_um(value: float, unit: str | None) -> float | None:
    """A length in an OME or NGFF unit as micrometres, or None if the unit is unknown or not
    physical (``pixel``, ``reference frame``), or the result is not a usable pixel size.

    >>> unit_to_um(250.0, "nm")
    0.25
    >>> unit_to_um(0.5, None) is None, unit_to_um(1e-30, "µm") is None, unit_to_um(float("nan"), "µm") is None
    (True, True, True)
    """
    factor = _UM_PER_UNIT.get(unit or "")
    if factor is None or not isinstance(value, int | float) or isinstance(value, bool):
        return None
    return _usable_mpp(value * factor)


def _usable_mpp(um: float) -> float | None:
    """``um`` if it is a plausible pixel size (finite, within :data:`MPP_RANGE`), else None."""
    return float(um) if math.isfinite(um) and MPP_RANGE[0] <= um <= MPP_RANGE[1] else None


def resolution_to_mpp(resolution: float, unit: int) -> float | None:
    """Micrometres per pixel from TIFF XResolution (pixels per unit) and ResolutionUnit.

    Resolution 1 and unit NONE (1) are what writers store when they know nothing: None.
    NDPI files give pixels per centimetre, hence 1e4 / resolution.

    >>> resolution_to_mpp(40000.0, 3)  # pixels per centimetre
    0.25
    >>> resolution_to_mpp(72.0, 1) is None
    True
    """
    per_unit = _UM_PER_RESUNIT.get(int(unit))
    if per_unit is None or not math.isfinite(resolution) or resolution <= 0 or resolution == 1:
        return None
    return _usable_mpp(per_unit / resolution)


def _positive(value: Any) -> float | None:
    """``value`` as a finite positive float, else None (metadata is often missing or 0)."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) and v > 0 else None


def svs_metadata(description: str) -> dict[str, Any]:
    """Key-value pairs of an Aperio ImageDescription (``'Aperio ...|AppMag = 20|MPP = 0.4990'``).

    Uses tifffile's parser; a description that is not Aperio's gives ``{}``.
    """
    try:
        return dict(tifffile.tifffile.svs_description_metadata(description))
    except Exception:  # optional metadata: whatever its parser trips over, the file says nothing
        return {}


def svs_mpp_and_objective(description: str) -> tuple[float | None, float | None]:
    """Level-0 µm per pixel (``MPP``) and objective power (``AppMag``) of an SVS description.

    >>> svs_mpp_and_objective("Aperio Image Library v12.0.0 \\n1x1|AppMag = 40|MPP = 0.2525")
    (0.2525, 40.0)
    >>> svs_mpp_and_objective("Aperio Image Library v12.0.0 \\n1x1|AppMag = 20")
    (None, 20.0)
    """
    meta = svs_metadata(description)
    mpp = _positive(meta.get("MPP"))
    return None if mpp is None else _usable_mpp(mpp), _positive(meta.get("AppMag"))


def ndpi_objective(magnification: Any) -> float | None:
    """Objective power from NDPI tag 65421 (Magnification); -1 (macro) and -2 (map) are not one.

    >>> ndpi_objective(20.0), ndpi_objective(-1.0)
    (20.0, None)
    """
    return _positive(magnification)


@dataclass(frozen=True)
class OmeImage:
    """What slideseg uses from one ``<Image>`` of OME-XML."""

    mpp: float | None
    """PhysicalSizeX in µm (None if absent or in an unknown unit)."""
    channel_names: tuple[str | None, ...]
    """The ``Name`` of each ``<Channel>`` (an RGB image has one Channel of 3 samples)."""
    objective_power: float | None
    """NominalMagnification of the Image's objective, if the XML has one."""


def ome_image(omexml: str, image: int) -> OmeImage:
    """Pixel size, channel names and objective power of the ``image``-th OME Image.

    Anything missing or malformed comes back as None (or no channel names).
    """
    try:
        root = ET.fromstring(omexml)
    except ET.ParseError:
        return OmeImage(None, (), None)
    images = [e for e in root if _tag(e) == "Image"]
    if not 0 <= image < len(images):
        return OmeImage(None, (), None)
    pixels = next((e for e in images[image] if _tag(e) == "Pixels"), None)
    mpp: float | None = None
    names: tuple[str | None, ...] = ()
    if pixels is not None:
        size = _positive(pixels.get("PhysicalSizeX"))
        mpp = None if size is None else unit_to_um(size, pixels.get("PhysicalSizeXUnit", "µm"))  # bad: unknown
        names = tuple(c.get("Name") for c in pixels if _tag(c) == "Channel")
    return OmeImage(mpp, names, _ome_objective(root, images[image]))


def _ome_objective(root: ET.Element, image: ET.Element) -> float | None:
    objectives = {o.get("ID"): o for o in root.iter() if _tag(o) == "Objective"}
    wanted = next((s.get("ID") for s in image if _tag(s) == "ObjectiveSettings"), None)
    objective = objectives.get(wanted) if wanted else None
    if objective is None and len(objectives) == 1:
        objective = next(iter(objectives.values()))
    return None if objective is None else _positive(objective.get("NominalMagnification"))


def _tag(element: ET.Element) -> str:
    return element.tag.rsplit("}", 1)[-1]


def image_size(f: IO[bytes], kind: str) -> tuple[int, int] | None:
    """(H, W) of a PNG or JPEG from its header, without decoding; None if not found.

    Reading stops at the JPEG frame header, so even a huge file costs a few reads.
    """
    f.seek(0)
    if kind == "png":  # signature (8), IHDR length and type (8), width, height
        head = f.read(24)
        if len(head) < 24 or head[12:16] != b"IHDR":
            return None
        w, h = struct.unpack(">II", head[16:24])
        return int(h), int(w)
    return _jpeg_size(f)


def _jpeg_size(f: IO[bytes]) -> tuple[int, int] | None:
    f.seek(2)  # after SOI
    while True:
        marker = f.read(2)
        if len(marker) < 2 or marker[0] != 0xFF:
            return None
        code = marker[1]
        if code == 0xFF:  # fill byte
            f.seek(-1, 1)
            continue
        if code in (0x01, *range(0xD0, 0xD8)):  # markers without a length
            continue
        length_bytes = f.read(2)
        if len(length_bytes) < 2:
            return None
        (length,) = struct.unpack(">H", length_bytes)
        if 0xC0 <= code <= 0xCF and code not in (0xC4, 0xC8, 0xCC):  # a start-of-frame marker
            frame = f.read(5)
            if len(frame) < 5:
                return None
            h, w = struct.unpack(">HH", frame[1:5])
            return int(h), int(w)
        f.seek(length - 2, 1)


@dataclass(frozen=True)
class SeriesInfo:
    """One image series of a file, as :func:`choose_series` and ``slideseg info`` see it."""

    index: int
    name: str
    shape: tuple[int, ...]
    """Level-0 shape in ``axes`` order."""
    axes: str
    """tifffile-style axis letters (Y, X, C/S channels, Z, T, ...)."""
    levels: int
    """Number of pyramid levels (1 without a pyramid)."""
    associated: bool
    """A label, macro, thumbnail or overview picture, never opened by default."""

    @classmethod
    def make(cls, index: int, name: str, shape: Sequence[int], axes: str, levels: int,
             associated: bool | None = None) -> SeriesInfo:  # fmt: skip
        """A record; ``associated=None`` decides by the name (``'Label'``, ``'macro image'``...)."""
        if associated is None:
            associated = bool(_ASSOCIATED.search(name or ""))
        return cls(index, name or "", tuple(int(n) for n in shape), axes, int(levels), associated)

    def text(self) -> str:
        """One line: ``"1: 'Scene A' YXS 300x400x3, 2 levels"``."""
        extra = ", associated image" if self.associated else ""
        plural = "s" if self.levels != 1 else ""
        return (f"{self.index}: {self.name!r} {self.axes} {'x'.join(map(str, self.shape))}, "
                f"{self.levels} level{plural}{extra}")  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form for ``Slide.describe()``."""
        return {"index": self.index, "name": self.name, "shape": list(self.shape), "axes": self.axes,
                "levels": self.levels, "associated": self.associated}  # fmt: skip


def choose_series(series: Sequence[SeriesInfo], path: Path) -> int:
    """The series to open when none is given.

    The rule: scanner extras (label, macro, thumbnail, overview, map) are never chosen; if one
    series is left, it is the slide; if several are left and exactly one has a pyramid, that one
    is the slide. Anything else (several scenes, several pyramids, several flat images) is
    ambiguous and raises.

    >>> s = [SeriesInfo.make(0, "Baseline", (9, 9, 3), "YXS", 3), SeriesInfo.make(1, "Label", (2, 2, 3), "YXS", 1)]
    >>> choose_series(s, Path("a.svs"))
    0

    Raises
    ------
    SlideReadError
        No single series stands out; the message lists every series and asks for ``--series``.
    """
    if len(series) == 1:
        return series[0].index
    candidates = [s for s in series if not s.associated]
    if len(candidates) == 1:
        return candidates[0].index
    pyramids = [s for s in candidates if s.levels > 1]
    if len(pyramids) == 1:
        return pyramids[0].index
    why = (f"{len(pyramids)} have a pyramid" if pyramids else "none has a pyramid") if candidates else (
        "all are label/macro/thumbnail pictures")  # fmt: skip
    listed = "; ".join(s.text() for s in series)
    raise SlideReadError(
        f"{path.name} has {len(series)} image series and none is clearly the slide ({why}): {listed}; "
        f"choose one with --series N (open_slide(..., series=N))"
    )


@dataclass(frozen=True)
class SourceInfo:
    """What a file says about one series beyond its pixels."""

    format: str
    """``svs``, ``ndpi``, ``ome-tiff``, ``tiff``, ``ome-zarr``, ``zarr`` or ``image`` (PNG/JPEG)."""
    mpp: float | None = None
    """Level-0 micrometres per pixel."""
    objective_power: float | None = None
    """Objective magnification (SVS AppMag, NDPI Magnification, OME NominalMagnification)."""
    channel_names: tuple[str | None, ...] = ()
    """Name of each stored channel, alpha included; empty if unknown."""
    alpha: tuple[int, ...] = ()
    """Stored channels that are alpha (TIFF ExtraSamples, PNG colour type): never returned."""
    compression: str | None = None
    series: tuple[SeriesInfo, ...] = ()
    """Every image series of the file, chosen or not."""
    format_version: str | None = None
    """NGFF version of an OME-Zarr image."""


RGB_NAMES = ("red", "green", "blue")


def tiff_series_listing(tif: tifffile.TiffFile, series: Sequence[Any]) -> tuple[SeriesInfo, ...]:
    """One record per tifffile series; SVS thumbnail/label/macro and NDPI macro/map are extras.

    SVS and NDPI extras are known by structure (everything but the series starting at page 0),
    since an NDPI pyramid is named after its slide label text; other files' extras by their name.
    """
    scanner = tif.is_svs or tif.is_ndpi
    return tuple(
        SeriesInfo.make(i, s.name, s.shape, s.axes, len(s.levels), s.keyframe.index != 0 if scanner else None)
        for i, s in enumerate(series)
    )


def tiff_source(tif: tifffile.TiffFile, s: Any, index: int, listing: tuple[SeriesInfo, ...]) -> SourceInfo:
    """Format, level-0 mpp, objective, channel names and alpha of tifffile series ``s``.

    The pixel size comes from OME-XML, the SVS description (``MPP``), the resolution tags
    (NDPI: pixels per centimetre), or tifffile's own ``series.mpp`` (tifffile >= 2026.5).
    """
    key = s.keyframe
    fmt = "svs" if tif.is_svs else "ndpi" if tif.is_ndpi else "ome-tiff" if tif.is_ome else "tiff"
    mpp = objective = None
    names: tuple[str | None, ...] = ()
    if fmt == "ome-tiff" and tif.ome_metadata:
        ome = ome_image(tif.ome_metadata, index)
        mpp, names, objective = ome.mpp, ome.channel_names, ome.objective_power
    elif fmt == "svs":
        mpp, objective = svs_mpp_and_objective(key.description)
        if listing[index].associated:  # a label's description repeats the slide's MPP
            mpp = None
    elif fmt == "ndpi":
        objective = ndpi_objective(key.tags.valueof(65421))
    if mpp is None:
        resolution = key.resolution if isinstance(key.resolution, tuple) and key.resolution else (None,)
        x_resolution, unit = _number(resolution[0]), _number(key.resolutionunit)
        mpp = None if x_resolution is None or unit is None else resolution_to_mpp(x_resolution, int(unit))
    if mpp is None:
        mpp = _tifffile_series_mpp(s)
    spp = int(_number(key.samplesperpixel) or 1)
    extras = tuple(int(e) for e in (key.extrasamples if isinstance(key.extrasamples, tuple) else ())
                   if _number(e) is not None)
    alpha = tuple(spp - len(extras) + i for i, e in enumerate(extras) if e in (1, 2))  # (un)associated alpha
    if _number(key.photometric) in (2, 6) and spp - len(extras) == 3 and len(names) != spp:  # RGB, YCbCr (as RGB)
        names = (*RGB_NAMES, *(("alpha" if e in (1, 2) else None) for e in extras))
    code = _number(key.compression)
    compression = "unknown" if code is None else compression_name(int(code))
    return SourceInfo(fmt, mpp, objective, names, alpha, compression, listing)


def compression_name(code: int) -> str | None:
    """``jpeg``, ``zlib``... of a TIFF compression code; None for none; the number for unknown ones.

    >>> compression_name(7), compression_name(1), compression_name(60000)
    ('jpeg', None, '60000')
    """
    try:
        codec = tifffile.COMPRESSION(code)
    except ValueError:
        return str(code)
    return None if codec == tifffile.COMPRESSION.NONE else codec.name.lower()


def _tifffile_series_mpp(s: Any) -> float | None:
    """``series.mpp`` of tifffile >= 2026.5 as one number (x of a pair); None before."""
    value: Any = getattr(s, "mpp", None)
    if isinstance(value, Sequence) and value:
        value = value[-1]
    mpp = _positive(value)
    return None if mpp is None else _usable_mpp(mpp)


def tiff_tile(page: Any) -> tuple[int, int] | None:
    """(H, W) of a page's tiles (NDPI: tifffile's tiles from JPEG restart markers) or strips."""
    if page.is_tiled:
        return int(page.tilelength), int(page.tilewidth)
    rows = int(_number(page.rowsperstrip) or 0)
    return (min(rows, int(page.imagelength)), int(page.imagewidth)) if rows > 0 else None


def _number(value: Any) -> float | None:
    """A tag value as a plain number; None for what a corrupt tag gives instead (a tuple, text...).

    >>> _number(7), _number(()), _number("x"), _number(True)
    (7, None, None, None)
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return value


def ngff_series_info(index: int, attrs: Mapping[str, Any], shape: Sequence[int], name: str) -> SeriesInfo:
    """The record of one image of a bioformats2raw Zarr (``shape``: its first dataset's)."""
    try:
        multiscales, _ = ngff_multiscales(attrs)
        ms = parse_multiscale(multiscales[0], name) if multiscales else None
    except SlideReadError:  # described as it is; opening it says what is wrong
        ms = None
    return SeriesInfo.make(index, name, shape, "", 0) if ms is None else SeriesInfo.make(
        index, name, shape, ms.axes, len(ms.paths))


def bioformats2raw_names(path: Path) -> list[str]:
    """Image names from ``OME/METADATA.ome.xml`` of a bioformats2raw Zarr (label, macro...)."""
    try:
        root = ET.fromstring((path / "OME" / "METADATA.ome.xml").read_text())
    except (OSError, ET.ParseError):
        return []
    return [e.get("Name") or "" for e in root if _tag(e) == "Image"]


def zarr_codec_name(array: Any) -> str | None:
    """``blosc/zstd``, ``zstd``, ``gzip``... of a Zarr array's first compressor; None if none."""
    codecs = array.compressors
    if not codecs:
        return None
    codec = codecs[0]
    name = getattr(codec, "codec_id", None) or type(codec).__name__.removesuffix("Codec").lower()
    cname = getattr(codec, "cname", None)
    return f"{name}/{getattr(cname, 'value', cname)}" if cname else str(name)


IMAGE_SUFFIXES = (".ome.tiff", ".ome.tif", ".ome.zarr", ".tiff", ".tif", ".svs", ".ndpi", ".zarr", ".png", ".jpeg",
                  ".jpg")
"""File-name endings of images, compound ones first."""


def slide_stem(path: str | os.PathLike[str]) -> str:
    """A file name without its image suffix.

    >>> slide_stem("a/demo.ome.tif"), slide_stem("b.svs"), slide_stem("c.truth.zarr"), slide_stem("notes")
    ('demo', 'b', 'c.truth', 'notes')
    """
    name = Path(path).name
    for suffix in IMAGE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name

