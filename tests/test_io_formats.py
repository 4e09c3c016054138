"""Tests for slideseg.io.formats and the format-specific paths of slideseg.io.slide.

Every input is generated here: SVS-like and NDPI-like TIFFs (which tifffile itself classifies as
SVS and NDPI), OME-TIFF, OME-Zarr 0.4 and 0.5, plain Zarr, PNG and JPEG. Each test reads regions
back and compares them with the source pixels, and checks the metadata slideseg derives.
"""

from __future__ import annotations

import io as pyio
import json
import pickle
import struct
from pathlib import Path
from typing import Any

import imagecodecs
import numpy as np
import pytest
import tifffile
import zarr

from slideseg.errors import ConfigError, SlideReadError
from slideseg.io import formats
from slideseg.io.formats import (
    SeriesInfo,
    choose_series,
    image_size,
    ome_image,
    resolution_to_mpp,
    svs_mpp_and_objective,
)
from slideseg.io.slide import SlideHandle, open_slide
from tests.conftest import NDPI_MPP, SVS_DESCRIPTION, Source, ngff_meta, smooth_rgb


def _rng(seed: int = 7) -> np.random.Generator:
    return np.random.default_rng(seed)


def _assert_reads(path: Path, levels: list[np.ndarray], **kw: Any) -> None:
    """Every level: shape, dtype, the whole level and a few regions equal ``levels``."""
    for level, expected in enumerate(levels):
        with open_slide(path, level=level, **kw) as slide:
            assert slide.shape == expected.shape
            assert slide.dtype == expected.dtype
            h, w = expected.shape[:2]
            for y0, y1, x0, x1 in [(0, h, 0, w), (1, h // 2 + 3, w // 3, w - 1), (h - 1, h, 0, 1)]:
                np.testing.assert_array_equal(slide.read(y0, y1, x0, x1), expected[y0:y1, x0:x1])


# --- SVS ---------------------------------------------------------------------------------------

def test_svs_reads_the_pyramid_not_the_extras(svs: Source) -> None:
    path, levels = svs
    _assert_reads(path, levels)
    for level, mpp in enumerate([0.499, 0.998, 1.996]):  # MPP of the description, x2 per level
        with open_slide(path, level=level) as slide:
            assert (slide.format, slide.series, slide.mpp) == ("svs", 0, pytest.approx(mpp))
            assert slide.objective_power == 20.0


def test_svs_describe(svs: Source) -> None:
    path, _ = svs
    with open_slide(path, level=1) as slide:
        info = slide.describe()
    assert json.loads(json.dumps(info)) == info
    assert info["format"] == "svs"
    assert info["objective_power"] == 20.0
    assert info["compression"] == "jpeg"
    assert info["tile"] == [64, 64]
    assert info["mpp"] == pytest.approx(0.998)
    assert info["channels"] == 3 and info["channel_names"] == ["red", "green", "blue"]
    assert [lv["shape"] for lv in info["levels"]] == [[256, 384], [128, 192], [64, 96]]
    assert [lv["mpp"] for lv in info["levels"]] == pytest.approx([0.499, 0.998, 1.996])
    assert [(s["name"], s["associated"]) for s in info["all_series"]] == [
        ("Baseline", False), ("Thumbnail", True), ("Label", True), ("Macro", True)]


def test_svs_label_only_when_asked(svs: Source) -> None:
    path, _ = svs
    with open_slide(path, series=2) as label:
        assert label.shape == (40, 60, 3)
        assert label.mpp is None  # its description repeats nothing about its own pixels
        assert len(label.levels) == 1


# --- NDPI --------------------------------------------------------------------------------------

def test_ndpi_reads_levels_with_mpp_from_centimetres(ndpi: Source) -> None:
    path, levels = ndpi
    _assert_reads(path, levels)
    for level, mpp in enumerate([NDPI_MPP, 4 * NDPI_MPP, 16 * NDPI_MPP]):
        with open_slide(path, level=level) as slide:
            assert (slide.format, slide.series, slide.mpp) == ("ndpi", 0, pytest.approx(mpp))
            assert slide.objective_power == 20.0
            assert slide.levels[level].tile == (32, 32)


def test_ndpi_macro_is_not_chosen(ndpi: Source) -> None:
    path, _ = ndpi
    with open_slide(path) as slide:
        info = slide.describe()
    assert [(s["name"], s["associated"], s["levels"]) for s in info["all_series"]] == [
        ("Label HE-7", False, 3), ("Macro", True, 1)]  # the pyramid despite its name
    with open_slide(path, series=1) as macro:
        assert macro.shape == (60, 160, 3)
        assert macro.objective_power is None  # magnification -1 marks the macro


# --- OME-TIFF: fluorescence, channel names, several images ----------------------------------


@pytest.mark.parametrize(
    "channels",
    [
        None,  # all four
        (0, 2),  # the brief's example
        (3, 0),  # reordered
        (1,),  # one
        (2, 2, 2),  # repeated: a greyscale channel into a 3-channel model
    ],
)
def test_channel_selection(fluo: Source, channels: tuple[int, ...] | None) -> None:
    path, levels = fluo
    picked = slice(None) if channels is None else list(channels)
    _assert_reads(path, [lv[:, :, picked] for lv in levels], channels=channels)
    with open_slide(path, channels=channels) as slide:
        names = np.array(["DAPI", "FITC", "TRITC", "Cy5"])[picked]
        assert slide.channel_names == tuple(names)
        assert slide.mpp == pytest.approx(0.325)
        assert slide.describe()["channel_selection"] == (None if channels is None else list(channels))


def test_channel_out_of_range_names_the_channels(fluo: Source) -> None:
    path, _ = fluo
    with pytest.raises(ConfigError, match=r"channel 4 is out of range: fluo\.ome\.tif has 4 channel\(s\): 0 \(DAPI\), "
                                          r"1 \(FITC\), 2 \(TRITC\), 3 \(Cy5\); pass --channels with numbers between "
                                          r"0 and 3"):
        open_slide(path, channels=(0, 4))


def test_channels_travel_with_the_handle(fluo: Source) -> None:
    path, levels = fluo
    with open_slide(path, level=1, channels="3,1") as slide:
        handle = slide.handle
        copy = pickle.loads(pickle.dumps(slide))
    assert handle == SlideHandle(str(path), level=1, series=0, channels=(3, 1))
    with pickle.loads(pickle.dumps(handle)).open() as again, copy:
        np.testing.assert_array_equal(again.read(0, 48, 0, 64), levels[1][:, :, [3, 1]])
        np.testing.assert_array_equal(copy.read(5, 9, 7, 30), levels[1][5:9, 7:30][:, :, [3, 1]])


@pytest.fixture
def ome_with_extras(tmp_path: Path) -> Source:
    """OME-TIFF of three images: 'macro' (flat), 'Scene A' (pyramid), 'label' (flat)."""
    rng = _rng()
    scene = rng.integers(0, 256, (128, 160, 3), dtype=np.uint8)
    path = tmp_path / "extras.ome.tif"
    with tifffile.TiffWriter(path, ome=True) as tw:
        tw.write(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8), photometric="rgb", metadata={"Name": "macro"})
        tw.write(scene, photometric="rgb", tile=(32, 32), subifds=1, metadata={"Name": "Scene A", "PhysicalSizeX": 0.5})
        tw.write(scene[::2, ::2], photometric="rgb", tile=(32, 32), subfiletype=1)
        tw.write(rng.integers(0, 256, (20, 60, 3), dtype=np.uint8), photometric="rgb", metadata={"Name": "label"})
    return path, [scene, scene[::2, ::2]]


def test_ome_series_zero_is_not_always_the_slide(ome_with_extras: Source) -> None:
    path, levels = ome_with_extras
    _assert_reads(path, levels)
    with open_slide(path, level=1) as slide:
        assert (slide.format, slide.series, slide.mpp) == ("ome-tiff", 1, pytest.approx(1.0))
        assert [s["associated"] for s in slide.describe()["all_series"]] == [True, False, True]
    with open_slide(path, series=0) as macro:  # asked for: given
        assert macro.shape == (30, 40, 3)


@pytest.fixture
def scenes(tmp_path: Path) -> Path:
    """A multi-scene TIFF: three flat images of different sizes, none a pyramid."""
    path = tmp_path / "scenes.ome.tif"
    with tifffile.TiffWriter(path, ome=True) as tw:
        for shape in ((100, 120), (80, 200), (60, 50)):
            tw.write(_rng().integers(0, 256, shape, dtype=np.uint8), tile=(32, 32))
    return path


def test_multi_series_ambiguity_lists_series(scenes: Path) -> None:
    with pytest.raises(SlideReadError, match=r"scenes\.ome\.tif has 3 image series and none is clearly the slide "
                                             r"\(none has a pyramid\): 0: 'Image0' YX 100x120, 1 level; "
                                             r"1: 'Image1' YX 80x200, 1 level; 2: 'Image2' YX 60x50, 1 level; "
                                             r"choose one with --series N"):
        open_slide(scenes)
    with open_slide(scenes, series=1) as slide:
        assert slide.shape == (80, 200, 1) and slide.series == 1
        assert slide.handle.series == 1


@pytest.mark.parametrize(
    ("listing", "expected"),
    [
        ([("Baseline", 3), ("Thumbnail", 1), ("Label", 1), ("Macro", 1)], 0),  # SVS
        ([("macro image", 1), ("", 4)], 1),  # extras named by the scanner
        ([("Scene A", 1), ("Scene B", 5)], 1),  # the only pyramid
        ([("label", 1)], 0),  # the only series, whatever its name
        ([("A", 1), ("B", 1)], None),  # two flat scenes
        ([("A", 3), ("B", 2)], None),  # two pyramids
        ([("Label", 1), ("Macro", 1)], None),  # nothing but extras
    ],
)
def test_choose_series(listing: list[tuple[str, int]], expected: int | None) -> None:
    series = [SeriesInfo.make(i, name, (10, 10), "YX", n) for i, (name, n) in enumerate(listing)]
    if expected is None:
        with pytest.raises(SlideReadError, match=r"none is clearly the slide .*--series N"):
            choose_series(series, Path("x.tif"))
    else:
        assert choose_series(series, Path("x.tif")) == expected


# --- RGBA, greyscale, dtypes ------------------------------------------------------------------


def test_rgba_tiff_drops_alpha(tmp_path: Path) -> None:
    rgba = _rng().integers(0, 256, (70, 90, 4), dtype=np.uint8)
    path = tmp_path / "rgba.tif"
    tifffile.imwrite(path, rgba, photometric="rgb", tile=(32, 32))  # ExtraSamples = unassociated alpha
    _assert_reads(path, [rgba[:, :, :3]])
    _assert_reads(path, [rgba[:, :, [2]]], channels=(2,))
    with open_slide(path) as slide:
        assert slide.describe()["alpha_dropped"] is True
        assert slide.channel_names == ("red", "green", "blue")
    with pytest.raises(ConfigError, match=r"channel 3 is out of range: .*3 channel\(s\), alpha dropped: 0 \(red\)"):
        open_slide(path, channels=(3,))


def test_uint16_greyscale_tiff(tmp_path: Path) -> None:
    grey = _rng().integers(0, 65536, (64, 96), dtype=np.uint16)
    path = tmp_path / "grey16.tif"
    tifffile.imwrite(path, grey, tile=(32, 32), compression="zlib", resolution=(4e4, 4e4), resolutionunit="CENTIMETER")
    _assert_reads(path, [grey[:, :, None]])
    _assert_reads(path, [np.stack([grey] * 3, axis=-1)], channels=(0, 0, 0))
    with open_slide(path) as slide:
        assert (slide.format, slide.mpp, slide.compression) == ("tiff", pytest.approx(0.25), "adobe_deflate")


def test_float32_passes_through(tmp_path: Path) -> None:
    data = _rng().random((3, 40, 50), dtype=np.float32)
    path = tmp_path / "f.zarr"
    zarr.create_array(path, data=data, chunks=(1, 16, 16))  # plain CYX Zarr
    _assert_reads(path, [data.transpose(1, 2, 0)])


# --- OME-Zarr 0.4 and 0.5, plain Zarr ---------------------------------------------------------


def test_ome_zarr_levels_mpp_channels(ome_zarr: Source) -> None:
    path, levels = ome_zarr
    _assert_reads(path, levels)
    _assert_reads(path, [lv[:, :, [2, 0]] for lv in levels], channels=(2, 0))
    version = "0.4" if "0.4" in path.name else "0.5"
    for level, mpp in enumerate([0.25, 0.5, 1.0]):  # each dataset's own scale, not 101/26
        with open_slide(path, level=level, channels=(2,)) as slide:
            assert (slide.format, slide.mpp, slide.channel_names) == ("ome-zarr", pytest.approx(mpp), ("Cy5",))
            info = slide.describe()
            assert info["format_version"] == version
            assert info["tile"] == [32, 32]
            assert info["all_series"] == [{"index": 0, "name": "img", "shape": [3, 90, 101], "axes": "CYX",
                                           "levels": 3, "associated": False}]


def test_bioformats2raw_skips_the_macro(tmp_path: Path) -> None:
    """Images 0 (macro, flat) and 1 (a pyramid) of a bioformats2raw Zarr, names in OME-XML."""
    path = tmp_path / "b2r.zarr"
    root = zarr.open_group(path, mode="w", zarr_format=2)
    root.attrs["bioformats2raw.layout"] = 3
    img = _rng().integers(0, 256, (3, 64, 80), dtype=np.uint8)
    for key, levels in (("0", [img[:, :20, :30]]), ("1", [img, img[:, ::2, ::2]])):
        g = root.create_group(key)
        for i, data in enumerate(levels):
            g.create_array(f"s{i}", data=data, chunks=(1, 32, 32))
        g.attrs.update(ngff_meta("0.4", [0.5 * 2**i for i in range(len(levels))], "micrometer"))
    root.create_group("OME").attrs["series"] = ["0", "1"]  # as bioformats2raw writes it
    (path / "OME" / "METADATA.ome.xml").write_text(
        '<OME xmlns="http://www.openmicroscopy.org/Schemas/OME/2016-06">'
        '<Image ID="Image:0" Name="macro image"/><Image ID="Image:1" Name="slide"/></OME>'
    )
    _assert_reads(path, [img.transpose(1, 2, 0), img[:, ::2, ::2].transpose(1, 2, 0)])
    with open_slide(path) as slide:
        assert (slide.series, slide.mpp) == (1, pytest.approx(0.5))
        assert [s["name"] for s in slide.describe()["all_series"]] == ["macro image", "slide"]


def test_plain_zarr_rgb(tmp_path: Path) -> None:
    img = _rng().integers(0, 256, (50, 70, 3), dtype=np.uint8)
    path = tmp_path / "rgb.zarr"
    zarr.create_array(path, data=img, chunks=(16, 16, 3))
    _assert_reads(path, [img])
    with open_slide(path) as slide:
        assert (slide.format, slide.mpp) == ("zarr", None)


# --- PNG and JPEG ------------------------------------------------------------------------------


def _png(path: Path, pixels: np.ndarray) -> Path:
    path.write_bytes(imagecodecs.png_encode(pixels))
    return path


@pytest.mark.parametrize(
    ("pixels", "expected"),
    [
        (_rng().integers(0, 256, (33, 47, 3), dtype=np.uint8), slice(None)),  # RGB
        (_rng().integers(0, 256, (33, 47, 4), dtype=np.uint8), slice(0, 3)),  # RGBA: alpha dropped
        (_rng().integers(0, 256, (33, 47, 2), dtype=np.uint8), slice(0, 1)),  # grey + alpha
        (_rng().integers(0, 65536, (33, 47), dtype=np.uint16), None),  # uint16 greyscale
    ],
)
def test_png(tmp_path: Path, pixels: np.ndarray, expected: slice | None) -> None:
    path = _png(tmp_path / "small.png", pixels)
    _assert_reads(path, [pixels[:, :, None] if expected is None else pixels[:, :, expected]])
    with open_slide(path) as slide:
        assert (slide.format, slide.mpp, slide.compression, len(slide.levels)) == ("image", None, "png", 1)


def test_in_memory_reads_are_copies(tmp_path: Path) -> None:
    grey = _rng().integers(0, 256, (20, 30), dtype=np.uint8)
    with open_slide(_png(tmp_path / "g.png", grey)) as slide:
        slide.read(0, 20, 0, 30)[:] = 0  # a caller normalising in place
        np.testing.assert_array_equal(slide.read(0, 20, 0, 30)[:, :, 0], grey)


def test_jpeg(tmp_path: Path) -> None:
    path = tmp_path / "photo.jpg"
    path.write_bytes(imagecodecs.jpeg8_encode(np.ascontiguousarray(smooth_rgb(60, 80)), level=90))
    _assert_reads(path, [imagecodecs.imread(path, codec="jpeg8")])
    with open_slide(path) as slide:
        assert (slide.format, slide.shape, slide.compression) == ("image", (60, 80, 3), "jpeg")


def _huge_png_header() -> bytes:
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + struct.pack(">IIBBBBB", 20000, 15000, 8, 2, 0, 0, 0)


def _huge_jpeg_header() -> bytes:
    app0 = b"\xff\xe0" + struct.pack(">H", 16) + b"JFIF\x00" + b"\x00" * 9
    sof0 = b"\xff\xc0" + struct.pack(">HBHHB", 11, 8, 15000, 20000, 1) + b"\x01\x11\x00"
    return b"\xff\xd8" + app0 + sof0


@pytest.mark.parametrize(("name", "head"), [("big.png", _huge_png_header()), ("big.jpg", _huge_jpeg_header())])
def test_huge_image_is_refused_before_decoding(tmp_path: Path, name: str, head: bytes) -> None:
    path = tmp_path / name
    path.write_bytes(head)
    with pytest.raises(SlideReadError, match=r"is a 15000x20000 px (PNG|JPEG) \(300 MP\), over the 268 MP .* "
                                             r"convert it to a tiled TIFF, e\.g\. `vips tiffsave"):
        open_slide(path)


def test_image_size_from_headers() -> None:
    assert image_size(pyio.BytesIO(_huge_png_header()), "png") == (15000, 20000)
    assert image_size(pyio.BytesIO(_huge_jpeg_header()), "jpeg") == (15000, 20000)
    assert image_size(pyio.BytesIO(b"\xff\xd8\xff\xe0"), "jpeg") is None  # truncated


def test_huge_tiff_strip_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "strip.tif"
    tifffile.imwrite(path, np.zeros((64, 64), np.uint8), rowsperstrip=64)  # one 4096-px strip
    monkeypatch.setattr(formats, "MAX_IN_MEMORY_PIXELS", 4000)
    with pytest.raises(SlideReadError, match=r"stores 64x64 px in strips of 64x64 px.*expected a tiled TIFF"):
        open_slide(path)


def test_corrupt_png(tmp_path: Path) -> None:
    path = tmp_path / "bad.png"
    path.write_bytes(_huge_png_header()[:24].replace(struct.pack(">II", 20000, 15000), struct.pack(">II", 4, 4)))
    with pytest.raises(SlideReadError, match=r"bad\.png is a corrupt PNG"):
        open_slide(path)


# --- missing mpp, metadata helpers ------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "write"),
    [
        ("plain.tif", lambda p: tifffile.imwrite(p, np.zeros((8, 8), np.uint8))),  # no resolution tags
        ("a.png", lambda p: _png(p, np.zeros((8, 8), np.uint8))),  # PNG: never a pixel size
        ("a.zarr", lambda p: zarr.create_array(p, data=np.zeros((8, 8), np.uint8))),  # plain Zarr
        ("svs.tif", lambda p: tifffile.imwrite(p, np.zeros((8, 8), np.uint8), tile=(16, 16), metadata=None,
                                               description="Aperio Image Library v1\n8x8|AppMag = 40")),  # no MPP
    ],
)
def test_missing_mpp_is_none(tmp_path: Path, name: str, write: Any) -> None:
    write(tmp_path / name)
    with open_slide(tmp_path / name) as slide:
        assert slide.mpp is None
        assert slide.describe()["levels"][0]["mpp"] is None


@pytest.mark.parametrize(
    ("description", "expected"),
    [
        (SVS_DESCRIPTION, (0.499, 20.0)),
        ("Aperio Image Library v12.0.0 \n1x1|AppMag = 40|MPP = 0.2525", (0.2525, 40.0)),
        ("Aperio Image Library v12.0.0 \n1x1|MPP = 0|AppMag = x", (None, None)),  # junk values
        ("ImageJ=1.54", (None, None)),  # not Aperio
    ],
)
def test_svs_mpp_and_objective(description: str, expected: tuple[float | None, float | None]) -> None:
    assert svs_mpp_and_objective(description) == pytest.approx(expected)


def test_ome_image_objective_and_units() -> None:
    xml = (
        '<OME xmlns="http://www.openmicroscopy.org/Schemas/OME/2016-06"><Instrument ID="Instrument:0">'
        '<Objective ID="Objective:0" NominalMagnification="40.0"/></Instrument>'
        '<Image ID="Image:0"><ObjectiveSettings ID="Objective:0"/>'
        '<Pixels PhysicalSizeX="250" PhysicalSizeXUnit="nm"><Channel Name="DAPI"/><Channel/></Pixels></Image></OME>'
    )
    assert ome_image(xml, 0) == formats.OmeImage(0.25, ("DAPI", None), 40.0)
    assert ome_image(xml, 1) == formats.OmeImage(None, (), None)  # no such image
    assert ome_image("<not xml", 0) == formats.OmeImage(None, (), None)


def test_resolution_to_mpp() -> None:
    assert resolution_to_mpp(4e4, 3) == pytest.approx(0.25)  # pixels per centimetre
    assert resolution_to_mpp(0.0, 3) is None


@pytest.mark.parametrize(("series_mpp", "resolution", "expected"), [
    (0.5, None, 0.5),              # tifffile >= 2026.5 knows a pixel size slideseg does not find itself
    ((0.26, 0.25), None, 0.25),    # given as (y, x): x is the pixel size
    (9.0, (2e4, "CENTIMETER"), 0.5),  # slideseg's own reading (the resolution tags) comes first
])
def test_newer_tifffile_series_mpp_is_a_fallback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 series_mpp: Any, resolution: tuple[float, str] | None,
                                                 expected: float) -> None:
    """tifffile >= 2026.5 has ``series.mpp``; the installed one may not, so the attribute is added here."""
    path = tmp_path / "s.tif"
    kw: dict[str, Any] = {}
    if resolution is not None:
        kw = {"resolution": (resolution[0], resolution[0]), "resolutionunit": resolution[1]}
    tifffile.imwrite(path, np.zeros((16, 16), np.uint8), **kw)
    monkeypatch.setattr(tifffile.TiffPageSeries, "mpp", property(lambda self: series_mpp), raising=False)
    with open_slide(path) as slide:
        assert slide.mpp == pytest.approx(expected)
