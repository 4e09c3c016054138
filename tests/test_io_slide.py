"""Tests for slideseg.io.slide: every format reads back exactly what numpy slicing of the source gives."""

from __future__ import annotations

import json
import pickle
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile
import zarr

from slideseg.errors import ConfigError, SlideReadError
from slideseg.io import slide as io_slide
from slideseg.io.slide import LevelInfo, SlideHandle, open_slide
from tests.conftest import Source


def _rng() -> np.random.Generator:
    return np.random.default_rng(1234)


def _regions(shape: tuple[int, ...], n: int, seed: int = 0) -> list[tuple[int, int, int, int]]:
    """Random in-bounds regions plus the corners and the whole level."""
    rng = np.random.default_rng(seed)
    h, w = shape[:2]
    out = [(0, h, 0, w), (0, 1, 0, 1), (h - 1, h, w - 1, w)]
    for _ in range(n):
        y0, y1 = sorted(rng.integers(0, h + 1, 2))
        x0, x1 = sorted(rng.integers(0, w + 1, 2))
        out.append((int(y0), int(y1), int(x0), int(x1)))
    return out


# --- test files ------------------------------------------------------------------------------


@pytest.fixture
def ome_rgb(tmp_path: Path) -> Source:
    """Tiled RGB OME-TIFF, 0.25 µm/px, with two x2 sub-resolutions in SubIFDs."""
    img = _rng().integers(0, 256, (300, 500, 3), dtype=np.uint8)
    path = tmp_path / "rgb.ome.tif"
    meta = {"axes": "YXS", "PhysicalSizeX": 0.25, "PhysicalSizeXUnit": "µm"}
    with tifffile.TiffWriter(path, ome=True) as tw:
        tw.write(img, subifds=2, tile=(64, 64), photometric="rgb", compression="zlib", metadata=meta)
        for lv in (1, 2):
            tw.write(img[:: 2**lv, :: 2**lv], subfiletype=1, tile=(64, 64), photometric="rgb",
                     compression="zlib")  # fmt: skip
    return path, [img, img[::2, ::2], img[::4, ::4]]


@pytest.fixture
def grey_tiff(tmp_path: Path) -> Source:
    """Tiled uint16 greyscale TIFF, 20000 px/cm = 0.5 µm/px."""
    img = _rng().integers(0, 65536, (200, 300), dtype=np.uint16)
    path = tmp_path / "grey.tif"
    tifffile.imwrite(path, img, tile=(32, 48), resolution=(2e4, 2e4), resolutionunit="CENTIMETER")
    return path, [img[:, :, None]]


@pytest.fixture
def cyx_ome(tmp_path: Path) -> Source:
    """Four-channel planar OME-TIFF (axes CYX), pixel size given in nanometres."""
    img = _rng().integers(0, 256, (4, 120, 130), dtype=np.uint8)
    path = tmp_path / "cyx.ome.tif"
    meta = {"axes": "CYX", "PhysicalSizeX": 500, "PhysicalSizeXUnit": "nm"}
    tifffile.imwrite(path, img, tile=(32, 32), ome=True, metadata=meta)
    return path, [img.transpose(1, 2, 0)]


@pytest.fixture
def plain_tiff(tmp_path: Path) -> Source:
    """A small stripped (untiled) greyscale TIFF without resolution."""
    img = _rng().integers(0, 256, (50, 40), dtype=np.uint8)
    path = tmp_path / "plain.tif"
    tifffile.imwrite(path, img, rowsperstrip=16)
    return path, [img[:, :, None]]


@pytest.fixture
def plain_zarr(tmp_path: Path) -> Source:
    """A plain (Y, X, C) Zarr array."""
    img = _rng().integers(0, 256, (90, 70, 3), dtype=np.uint8)
    path = tmp_path / "plain.zarr"
    zarr.create_array(path, data=img, chunks=(32, 32, 3))
    return path, [img]


@pytest.fixture
def ome_zarr_2ch(tmp_path: Path) -> Source:
    """An OME-Zarr 0.4 image (c, y, x), two levels, 0.5 µm/px, metadata written by hand."""
    img = _rng().integers(0, 256, (2, 100, 150), dtype=np.uint8)
    path = tmp_path / "img.ome.zarr"
    group = zarr.open_group(path, mode="w", zarr_format=2)
    for lv in (0, 1):
        data = img[:, :: 2**lv, :: 2**lv]
        group.create_array(str(lv), data=data, chunks=(1, 32, 32))
    axes = [{"name": "c", "type": "channel"}] + [{"name": n, "type": "space", "unit": "micrometer"} for n in "yx"]
    datasets = [
        {"path": str(lv), "coordinateTransformations": [{"type": "scale", "scale": [1, s, s]}]}
        for lv, s in ((0, 0.5), (1, 1.0))
    ]
    meta: dict[str, Any] = {"multiscales": [{"version": "0.4", "axes": axes, "datasets": datasets}]}
    group.attrs.update(meta)
    return path, [img.transpose(1, 2, 0), img[:, ::2, ::2].transpose(1, 2, 0)]


@pytest.fixture
def ome_zarr_v05(tmp_path: Path) -> Source:
    """An OME-Zarr 0.5 image (y, x), attributes under ``ome``, 2 µm/px (given in mm)."""
    img = _rng().integers(0, 256, (64, 80), dtype=np.uint8)
    path = tmp_path / "img5.ome.zarr"
    group = zarr.open_group(path, mode="w", zarr_format=3)
    group.create_array("s0", data=img, chunks=(16, 16), dimension_names=["y", "x"])
    axes = [{"name": n, "type": "space", "unit": "millimeter"} for n in "yx"]
    datasets = [{"path": "s0", "coordinateTransformations": [{"type": "scale", "scale": [2e-3, 2e-3]}]}]
    meta: dict[str, Any] = {"version": "0.5", "multiscales": [{"axes": axes, "datasets": datasets}]}
    group.attrs.update({"ome": meta})
    return path, [img[:, :, None]]


SOURCES = ["ome_rgb", "grey_tiff", "cyx_ome", "plain_tiff", "plain_zarr", "ome_zarr_2ch", "ome_zarr_v05"]


def _jpeg_tiff(path: Path) -> np.ndarray:
    """A 256 x 256 RGB TIFF of 64 x 64 JPEG tiles; returns its decoded pixels."""
    yy, xx = np.mgrid[:256, :256]
    img = np.stack([yy, xx, (yy + xx) // 2], axis=-1).astype(np.uint8)
    tifffile.imwrite(path, img, tile=(64, 64), photometric="rgb", compression="jpeg")
    return tifffile.imread(path)


def _corrupt_tiles(src: Path, dst: Path, keep: Callable[[int], bool]) -> None:
    """Copy a TIFF, overwriting the bytes of every tile whose index is not kept."""
    with tifffile.TiffFile(src) as tif:
        page = tif.pages[0]
        segments = list(zip(page.dataoffsets, page.databytecounts, strict=True))
    data = bytearray(src.read_bytes())
    for i, (offset, count) in enumerate(segments):
        if not keep(i):
            data[offset + 2 : offset + count] = b"\x00" * (count - 2)  # keep SOI, break the rest
    dst.write_bytes(bytes(data))


# --- reading ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", SOURCES)
def test_read_equals_numpy_slicing(name: str, request: pytest.FixtureRequest) -> None:
    path, levels = request.getfixturevalue(name)
    for level, expected in enumerate(levels):
        with open_slide(path, level=level) as slide:
            assert slide.shape == expected.shape
            assert slide.dtype == expected.dtype
            for y0, y1, x0, x1 in _regions(expected.shape, 20, seed=level):
                got = slide.read(y0, y1, x0, x1)
                np.testing.assert_array_equal(got, expected[y0:y1, x0:x1])
                assert got.flags.c_contiguous


@pytest.mark.parametrize(
    ("name", "fmt", "mpps"),
    [
        ("ome_rgb", "ome-tiff", [0.25, 0.5, 1.0]),  # OME PhysicalSizeX in µm, x2 per level
        ("grey_tiff", "tiff", [0.5]),  # XResolution 20000 px/cm
        ("cyx_ome", "ome-tiff", [0.5]),  # 500 nm
        ("plain_tiff", "tiff", [None]),  # no resolution tags
        ("plain_zarr", "zarr", [None]),
        ("ome_zarr_2ch", "ome-zarr", [0.5, 1.0]),  # scale of each dataset, micrometer
        ("ome_zarr_v05", "ome-zarr", [2.0]),  # 2e-3 millimeter
    ],
)
def test_format_and_mpp_per_level(
    name: str, fmt: str, mpps: list[float | None], request: pytest.FixtureRequest
) -> None:
    path, _ = request.getfixturevalue(name)
    for level, mpp in enumerate(mpps):
        with open_slide(path, level=level) as slide:
            assert slide.format == fmt
            assert slide.mpp == pytest.approx(mpp)


@pytest.mark.parametrize(
    ("resolution", "unit", "mpp"),
    [
        (2e4, "CENTIMETER", 0.5),  # 1e4 / res
        (50800, "INCH", 0.5),  # 25400 / res
        (1, "CENTIMETER", None),  # resolution 1 is a placeholder
        (2e4, "NONE", None),  # no unit: unknown
    ],
)
def test_mpp_from_resolution_tags(tmp_path: Path, resolution: float, unit: str, mpp: float | None) -> None:
    path = tmp_path / "r.tif"
    tifffile.imwrite(path, np.zeros((16, 16), np.uint8), resolution=(resolution, resolution),
                     resolutionunit=unit)  # fmt: skip
    with open_slide(path) as slide:
        assert slide.mpp == pytest.approx(mpp)


def test_levels_and_describe(ome_rgb: Source) -> None:
    path, _ = ome_rgb
    with open_slide(path, level=1) as slide:
        assert slide.levels == (
            LevelInfo((300, 500), 1.0, (64, 64), 0.25),
            LevelInfo((150, 250), 2.0, (64, 64), 0.5),
            LevelInfo((75, 125), 4.0, (64, 64), 1.0),
        )
        info = slide.describe()
    assert json.loads(json.dumps(info)) == info
    assert info["format"] == "ome-tiff"
    assert info["shape"] == [150, 250, 3]
    assert info["channels"] == 3
    assert info["dtype"] == "uint8"
    assert info["mpp"] == pytest.approx(0.5)
    assert info["tile"] == [64, 64]
    assert info["compression"] == "adobe_deflate"
    assert [lv["shape"] for lv in info["levels"]] == [[300, 500], [150, 250], [75, 125]]
    assert [lv["mpp"] for lv in info["levels"]] == pytest.approx([0.25, 0.5, 1.0])


def test_describe_zarr(ome_zarr_2ch: Source) -> None:
    path, _ = ome_zarr_2ch
    with open_slide(path) as slide:
        info = slide.describe()
    assert json.loads(json.dumps(info)) == info
    assert info["tile"] == [32, 32]
    assert info["channels"] == 2
    assert info["compression"] is not None


def test_handle_pickles_and_reopens(ome_rgb: Source) -> None:
    path, levels = ome_rgb
    with open_slide(path, level=2) as slide:
        handle = slide.handle
        copy = pickle.loads(pickle.dumps(slide))  # a Slide pickles as its handle
    again = pickle.loads(pickle.dumps(handle))
    assert again == SlideHandle(str(path), level=2, series=0)
    with again.open() as reopened, copy:
        np.testing.assert_array_equal(reopened.read(0, 75, 0, 125), levels[2])
        np.testing.assert_array_equal(copy.read(10, 20, 30, 40), levels[2][10:20, 30:40])


def test_threads_read_like_serial(ome_rgb: Source) -> None:
    path, _ = ome_rgb
    regions = _regions((300, 500), 64, seed=7)
    with open_slide(path) as slide:
        serial = [slide.read(*r) for r in regions]
        with ThreadPoolExecutor(max_workers=8) as pool:
            parallel = list(pool.map(lambda r: slide.read(*r), regions))
    for a, b in zip(serial, parallel, strict=True):
        np.testing.assert_array_equal(a, b)


def test_read_decodes_only_the_tiles_of_the_region(tmp_path: Path) -> None:
    src = tmp_path / "j.tif"
    decoded = _jpeg_tiff(src)
    bad = tmp_path / "others_corrupt.tif"
    _corrupt_tiles(src, bad, keep=lambda i: i in (5, 6))  # tile row 1, columns 1 and 2
    with open_slide(bad) as slide:
        np.testing.assert_array_equal(slide.read(64, 128, 64, 192), decoded[64:128, 64:192])
        with pytest.raises(SlideReadError, match=r"region y 0:65, x 64:128 .*corrupt"):
            slide.read(0, 65, 64, 128)  # touches tile 1


def test_newer_tifffile_api_is_used_when_present(ome_rgb: Source, monkeypatch: pytest.MonkeyPatch) -> None:
    """tifffile >= 2026.5: ``imread(return_as='zarr')`` instead of the deprecated ``aszarr``."""
    path, levels = ome_rgb
    real_imread = tifffile.imread
    calls: list[dict[str, Any]] = []

    def imread(files: Any, *, series: int = 0, level: int = 0, return_as: str = "numpy") -> Any:
        calls.append({"series": series, "level": level, "return_as": return_as})
        return real_imread(files, series=series, level=level, aszarr=return_as == "zarr")

    monkeypatch.setattr(tifffile, "imread", imread)
    # slideseg looks at tifffile's signature once per process (a cached check): no public call
    # forgets it, so the cache is cleared here to make it see the newer API, and after the test.
    io_slide._tifffile_has_return_as.cache_clear()
    try:
        with open_slide(path, level=1) as slide:
            np.testing.assert_array_equal(slide.read(5, 50, 7, 90), levels[1][5:50, 7:90])
    finally:
        io_slide._tifffile_has_return_as.cache_clear()
    assert calls == [{"series": 0, "level": 1, "return_as": "zarr"}]


# --- errors ----------------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(SlideReadError, match=r"nope\.tif does not exist.*check the path"):
        open_slide(tmp_path / "nope.tif")


@pytest.mark.parametrize("name", ["notes.tif", "mystery.dat"])
def test_not_an_image(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_text("hello, not a slide\n")
    with pytest.raises(SlideReadError, match=r"not an image of a supported format \(found b'hell' at the start\); "
                       r"supported: OME-TIFF, SVS \(Aperio\), NDPI \(Hamamatsu\), .*PNG, JPEG") as info:
        open_slide(path)
    assert "\n" not in str(info.value)  # one line


def test_truncated_tiff_fails_at_open(tmp_path: Path) -> None:
    src = tmp_path / "j.tif"
    _jpeg_tiff(src)
    cut = tmp_path / "cut.tif"
    cut.write_bytes(src.read_bytes()[:100])
    with pytest.raises(SlideReadError, match=r"corrupt or truncated TIFF .*copy or export it again"):
        open_slide(cut)


def test_truncated_tiled_jpeg_fails_at_read(tmp_path: Path) -> None:
    src = tmp_path / "j.tif"
    decoded = _jpeg_tiff(src)
    cut = tmp_path / "cut.tif"
    data = src.read_bytes()
    cut.write_bytes(data[: len(data) * 2 // 3])  # the header and first tiles survive
    with open_slide(cut) as slide:
        np.testing.assert_array_equal(slide.read(0, 64, 0, 64), decoded[:64, :64])
        with pytest.raises(SlideReadError, match=r"region y 192:256, x 192:256 of .*cut\.tif"):
            slide.read(192, 256, 192, 256)


def test_level_out_of_range(ome_rgb: Source) -> None:
    path, _ = ome_rgb
    with pytest.raises(SlideReadError, match=r"level 3 is out of range: .* 3 levels \(0: 300x500; "):
        open_slide(path, level=3)


def test_series_out_of_range(grey_tiff: Source) -> None:
    path, _ = grey_tiff
    with pytest.raises(SlideReadError, match=r"series 1 is out of range: .*--series between 0 and 0"):
        open_slide(path, series=1)


def test_zarr_level_out_of_range(ome_zarr_2ch: Source) -> None:
    path, _ = ome_zarr_2ch
    with pytest.raises(SlideReadError, match=r"level 2 is out of range.*1: 50x75"):
        open_slide(path, level=2)


def test_z_stack_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "tz.ome.tif"
    tifffile.imwrite(path, np.zeros((1, 3, 20, 30), np.uint8), ome=True, metadata={"axes": "TZYX"})
    with pytest.raises(SlideReadError, match=r"expected a 2-D image .*Z has size 3.*one Z plane"):
        open_slide(path)


def test_region_out_of_bounds(grey_tiff: Source) -> None:
    path, _ = grey_tiff
    with open_slide(path) as slide, pytest.raises(ConfigError, match=r"not inside .*200 x 300 px"):
        slide.read(190, 210, 0, 10)


def test_read_after_close(grey_tiff: Source) -> None:
    path, _ = grey_tiff
    slide = open_slide(path)
    slide.close()
    slide.close()  # idempotent
    with pytest.raises(SlideReadError, match="is closed"):
        slide.read(0, 1, 0, 1)


def test_directory_that_is_not_zarr(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    with pytest.raises(SlideReadError, match=r"not a readable Zarr"):
        open_slide(tmp_path / "d")


def test_zarr_group_without_multiscales(tmp_path: Path) -> None:
    zarr.open_group(tmp_path / "g.zarr", mode="w")
    with pytest.raises(SlideReadError, match=r"without OME-NGFF 'multiscales'"):
        open_slide(tmp_path / "g.zarr")


def test_zarr_array_of_unknown_layout(tmp_path: Path) -> None:
    zarr.create_array(tmp_path / "a.zarr", shape=(10, 20, 30), dtype="uint8")
    with pytest.raises(SlideReadError, match=r"found shape \(10, 20, 30\)"):
        open_slide(tmp_path / "a.zarr")
