"""Every failure the input fuzzer (tests/fuzz) found in the readers, as a minimal reproducer.

Each test builds the smallest file that showed the bug, says in a comment what used to happen
(a traceback, a hang, gigabytes allocated), and checks the one-line error (or the bounded
behaviour) that replaced it.
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path
from typing import Any

import imagecodecs
import numpy as np
import pytest
import tifffile
import zarr

from slideseg.errors import ConfigError, OutputFormatError, SlideReadError, TrainingDataError
from slideseg.io import checks as io_checks
from slideseg.io import resample, tissue
from slideseg.io.formats import unit_to_um
from slideseg.io.guard import one_line, reading
from slideseg.io.images import open_image, open_mask
from slideseg.io.ngff import label_classes, ngff_multiscales, parse_multiscale
from slideseg.io.slide import open_slide
from slideseg.plan.tiles import MAX_SIDE, make_plan
from slideseg.train.data import Item, check_class_ids, estimate_statistics, load_training_data
from tests.fuzz.tiffedit import Tiff

RGB = np.arange(64 * 96 * 3, dtype=np.uint8).reshape(64, 96, 3)


def _tiled_tiff(path: Path, image: np.ndarray = RGB, **kw: Any) -> Path:
    tifffile.imwrite(path, image, tile=(32, 32), photometric="rgb" if image.ndim == 3 else "minisblack",
                     compression="zlib", metadata=None, **kw)
    return path


def _edit(path: Path, edit: Any) -> Path:
    """Apply ``edit(tiff)`` to the file's structure in place."""
    tiff = Tiff(bytearray(path.read_bytes()))
    edit(tiff)
    path.write_bytes(bytes(tiff.data))
    return path


def _set_tag(path: Path, code: int, value: int, ifd: int = 0) -> Path:
    def edit(t: Tiff) -> None:
        entry = t.ifds[ifd].entry(code)
        assert entry is not None
        t.set_value(entry, 0, value)
    return _edit(path, edit)


def _ome_zarr(path: Path, version: str = "0.4", levels: int = 2) -> Path:
    """A (c, y, x) uint8 OME-Zarr, ``levels`` x2 levels at 0.5 µm/px."""
    img = np.moveaxis(RGB, 2, 0)
    group = zarr.open_group(path, mode="w", zarr_format=2 if version == "0.4" else 3)
    for i in range(levels):
        kw: dict[str, Any] = {} if version == "0.4" else {"dimension_names": ["c", "y", "x"]}
        group.create_array(f"s{i}", data=img[:, :: 2**i, :: 2**i], chunks=(1, 32, 32), **kw)
    axes = [{"name": "c", "type": "channel"}] + [{"name": n, "type": "space", "unit": "micrometer"} for n in "yx"]
    ms = {"axes": axes, "datasets": [
        {"path": f"s{i}", "coordinateTransformations": [{"type": "scale", "scale": [1.0, 0.5 * 2**i, 0.5 * 2**i]}]}
        for i in range(levels)]}
    group.attrs.update({"multiscales": [{"version": "0.4", **ms}]} if version == "0.4"
                       else {"ome": {"version": "0.5", "multiscales": [ms]}})
    return path


def _edit_json(path: Path, edit: Any) -> Path:
    meta = json.loads(path.read_text())
    edit(meta)
    path.write_text(json.dumps(meta))
    return path


def _opens_cleanly(path: Path, match: str, **kw: Any) -> None:
    with pytest.raises(SlideReadError, match=match):
        open_slide(path, **kw)


# --- TIFF ----------------------------------------------------------------------------------------


def test_width_corrupted_upwards_is_refused_not_read_as_black(tmp_path: Path) -> None:
    # was: a 300-px-wide tiled TIFF declared 300,000 px wide opened fine, tifffile read the
    # missing tiles as black, and predict ran for hours (a hang)
    path = _set_tag(_tiled_tiff(tmp_path / "a.tif"), 256, 96_000)
    _opens_cleanly(path, r"needs 6000 tile \(or strip\) offsets, but the file lists 6 offsets")


@pytest.mark.parametrize(("target", "bigtiff"), [("self", False), ("first", False), ("first", True)])
def test_ifd_loop_is_refused(tmp_path: Path, target: str, bigtiff: bool) -> None:
    # was: tifffile read NDPI pages forever when a next-IFD offset pointed back (a hang); classic
    # files logged a warning
    src = _tiled_tiff(tmp_path / "a.tif", bigtiff=bigtiff)
    with tifffile.TiffWriter(src, append=True) as tw:
        tw.write(RGB[::2, ::2], photometric="rgb", metadata=None)

    def loop(t: Tiff) -> None:
        t.set_next(t.ifds[1], t.ifds[1].pos if target == "self" else t.ifds[0].pos)
    _opens_cleanly(_edit(src, loop), r"points back to itself or an earlier IFD of its chain \(a loop\)")


def test_ndpi_ifd_loop_is_refused(tmp_path: Path) -> None:
    # was: a hang inside tifffile's page iteration (NDPI's 8-byte next-IFD offsets)
    from tests.fuzz.seeds import _ndpi

    seed = _ndpi(tmp_path)
    _opens_cleanly(_edit(seed.path, lambda t: t.set_next(t.ifds[2], t.ifds[2].pos)), r"\(a loop\)")


def test_tile_byte_count_beyond_the_file_is_refused(tmp_path: Path) -> None:
    # was: reading the tile allocated its 4 GiB byte count first (a MemoryError in predict; fuzzer case:
    # an SVS tile byte count set to 2**32 - 1)
    path = _edit(_tiled_tiff(tmp_path / "a.tif"), lambda t: t.set_value(t.ifds[0].entry(325), 3, 2**32 - 1))
    _opens_cleanly(path, r"a tile \(or strip\) of the image claims \d+ bytes, more than the \d+-byte file")


def test_unknown_compression_is_refused(tmp_path: Path) -> None:
    # was: ValueError from enum.COMPRESSION in formats.tiff_source
    _opens_cleanly(_set_tag(_tiled_tiff(tmp_path / "a.tif"), 259, 65535), r"compression 65535, which slideseg cannot")


def test_compression_tag_without_a_value_is_refused(tmp_path: Path) -> None:
    # was: TypeError int(()) in the new tile check (compression tag with count 0)
    path = _edit(_tiled_tiff(tmp_path / "a.tif"), lambda t: t.set_header(t.ifds[0].entry(259), count=0))
    _opens_cleanly(path, r"compression \(\), which slideseg cannot decode")


def test_offsets_of_the_wrong_type_are_a_clean_error(tmp_path: Path) -> None:
    # was: TypeError from tifffile in _tiff_level_zarr (TileOffsets stored as ASCII)
    path = _edit(_tiled_tiff(tmp_path / "a.tif"), lambda t: t.set_header(t.ifds[0].entry(324), dtype=2))
    with pytest.raises(SlideReadError), open_slide(path) as slide:
        slide.read(0, 64, 0, 96)


def test_size_of_the_wrong_type_is_a_clean_error(tmp_path: Path) -> None:
    # was: TypeError from tifffile in _tiff_slide (ImageLength stored as ASCII)
    path = _edit(_tiled_tiff(tmp_path / "a.tif"), lambda t: t.set_header(t.ifds[0].entry(257), dtype=2))
    _opens_cleanly(path, r"a\.tif")


def test_samples_per_pixel_changed_on_a_subifd_level(tmp_path: Path) -> None:
    # was: IndexError in the tile check: tifffile gives such a level no pages, only a keyframe
    path = tmp_path / "p.ome.tif"
    with tifffile.TiffWriter(path, ome=True) as tw:
        tw.write(RGB, subifds=1, tile=(32, 32), photometric="rgb", compression="zlib")
        tw.write(RGB[::2, ::2], subfiletype=1, tile=(32, 32), photometric="rgb", compression="zlib")
    _set_tag(path, 277, 4, ifd=1)
    for level in (0, 1):
        try:
            with open_slide(path, level=level) as slide:
                slide.read(0, 8, 0, 8)
        except SlideReadError:
            pass  # refused or unreadable: either is a clean answer


@pytest.mark.parametrize(("code", "value", "match"), [
    (258, 128, r"128-bit samples"),  # a sample type nobody reads
    (322, 0, r"\.tif"),  # a zero tile width
])
def test_unreadable_sample_and_tile_layouts(tmp_path: Path, code: int, value: int, match: str) -> None:
    path = _edit(_tiled_tiff(tmp_path / "a.tif"), lambda t: [t.set_value(e, i, value) for _, e in t.entries(code)
                                                            for i in range(e.count)])
    _opens_cleanly(path, match)


# --- metadata ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "unit", "mpp"), [
    ("0", "µm", None), ("-0.5", "µm", None), ("NaN", "µm", None), ("1e400", "µm", None),  # no usable size
    ("1e-30", "µm", None), ("0.25", "furlong", None), ("0.25", "pixel", None),  # absurd or not a length
    ("250", "nm", 0.25), ("0.5", "µm", 0.5),
])
def test_ome_physical_size_is_validated(tmp_path: Path, value: str, unit: str, mpp: float | None) -> None:
    # was: 0, NaN and absurd sizes reached the resampler (factor 5e29: a MemoryError building taps)
    path = tmp_path / "a.ome.tif"
    tifffile.imwrite(path, RGB, ome=True, photometric="rgb", metadata={"axes": "YXS"})
    with tifffile.TiffFile(path) as tif:
        xml = tif.ome_metadata
    assert xml is not None
    xml = xml.replace("<Pixels ", f'<Pixels PhysicalSizeX="{value}" PhysicalSizeXUnit="{unit}" ', 1)
    with tifffile.TiffFile(path, mode="r+b") as tif:
        tif.pages[0].tags["ImageDescription"].overwrite(xml.encode())
    with open_slide(path) as slide:
        assert slide.mpp == (None if mpp is None else pytest.approx(mpp))


def test_unit_to_um_never_returns_an_absurd_size() -> None:
    assert unit_to_um(1e-30, "m") is None and unit_to_um(1e30, "nm") is None and unit_to_um(True, "µm") is None
    assert unit_to_um(0.5, "micrometer") == 0.5 and unit_to_um(5, "Å") == pytest.approx(5e-4)


def test_svs_description_garbage_is_no_pixel_size(tmp_path: Path) -> None:
    path = tmp_path / "a.svs"
    tifffile.imwrite(path, RGB, tile=(32, 32), photometric="rgb", metadata=None,
                     description="Aperio Image Library v12\n96x64 |MPP = 0.25|AppMag = 20")
    garbage = b"Aperio Image Library v12\n96x64 |MPP = nan|AppMag = \xff\xfe|=|\0"
    _edit(path, lambda t: t.replace_value(t.ifds[0].entry(270), garbage, dtype=2))
    with open_slide(path) as slide:
        assert (slide.mpp, slide.objective_power) == (None, None)


# --- Zarr and OME-Zarr ---------------------------------------------------------------------------


@pytest.mark.parametrize(("version", "file", "edit", "match"), [
    # was: UnknownCodecError from numcodecs in _ngff_level
    ("0.4", "s0/.zarray", lambda m: m.update(compressor={"id": "foo"}), r"could not open .*UnknownCodecError"),
    # was: ValueError from zarr's v2 metadata parser
    ("0.4", "s0/.zarray", lambda m: m.update(zarr_format=[]), r"could not open"),
    # was: TypeError from zarr (chunks missing)
    ("0.4", "s1/.zarray", lambda m: m.pop("chunks"), r"could not open"),
    # was: ValueError from zarr.core.common (v3 chunk grid without a name)
    ("0.5", "s0/zarr.json", lambda m: m["chunk_grid"].pop("name"), r"could not open"),
    # was: TypeError from zarr's zstd codec (level {})
    ("0.5", "s1/zarr.json", lambda m: m["codecs"][1]["configuration"].update(level={}), r"could not open"),
    # was: UnknownCodecError from zarr's v3 metadata (a codec name in capitals)
    ("0.5", "s0/zarr.json", lambda m: m["codecs"][1].update(name="ZSTD"), r"could not open"),
    # a chunk of 2**40 elements would be decoded whole
    ("0.4", "s0/.zarray", lambda m: m.update(chunks=[3, 2**20, 2**20]), r"cannot be decoded"),
    # a complex or string dtype would reach the network
    ("0.4", "s0/.zarray", lambda m: m.update(dtype="<c16", fill_value=None), r"stores pixels as complex128"),
])
def test_broken_zarr_array_metadata(tmp_path: Path, version: str, file: str, edit: Any, match: str) -> None:
    path = _ome_zarr(tmp_path / "a.ome.zarr", version)
    _edit_json(path / file, edit)
    _opens_cleanly(path, match)


@pytest.mark.parametrize(("edit", "match"), [
    # was: TypeError in ngff_multiscales (multiscales = NaN)
    (lambda a: a.update(multiscales=float("nan")), r"'multiscales' as a non-empty list"),
    (lambda a: a["multiscales"][0].pop("axes"), r"'axes' as a list"),
    (lambda a: a["multiscales"][0]["axes"].__setitem__(1, {"name": 5}), r"axes named by one letter"),
    (lambda a: a["multiscales"][0]["axes"].__setitem__(2, {"name": "y"}), r"distinct axes"),
    (lambda a: a["multiscales"][0]["axes"][2].update(unit="furlong"), r"unit 'furlong', which is not"),
    (lambda a: a["multiscales"][0]["datasets"][0].update(path=None), r"string 'path' for every dataset"),
    (lambda a: a["multiscales"][0]["datasets"][1].update(path="nowhere"), r"'nowhere', which is not an array"),
    (lambda a: a["multiscales"][0]["datasets"][0]["coordinateTransformations"][0].update(scale=[1, 0, 0.5]),
     r"scale as 3 finite numbers > 0"),
    (lambda a: a["multiscales"][0]["datasets"][0]["coordinateTransformations"][0].update(scale=[1, "x", 1]),
     r"scale as 3 finite numbers > 0"),
    # level 1's scale says it covers 4x the extent of level 0
    (lambda a: a["multiscales"][0]["datasets"][1]["coordinateTransformations"][0].update(scale=[1, 4, 4]),
     r"do not cover the same extent"),
])
def test_broken_ngff_attributes(tmp_path: Path, edit: Any, match: str) -> None:
    path = _ome_zarr(tmp_path / "a.ome.zarr")
    _edit_json(path / ".zattrs", edit)
    _opens_cleanly(path, match)


def test_ngff_level_shape_corrupted_upwards(tmp_path: Path) -> None:
    # a level-0 shape x1000 with levels below it: refused by the scales, not read as fill values
    path = _ome_zarr(tmp_path / "a.ome.zarr")
    _edit_json(path / "s0" / ".zarray", lambda m: m["shape"].__setitem__(2, 96_000))
    _opens_cleanly(path, r"do not cover the same extent")


def test_sparse_zarr_shape_is_refused(tmp_path: Path) -> None:
    # was: a 96-px-wide plain Zarr declared 96,000 px wide read as fill values: predict --no-tissue ran for hours
    path = tmp_path / "a.zarr"
    zarr.create_array(path, data=RGB, chunks=(32, 32, 3), zarr_format=2)
    _edit_json(path / ".zarray", lambda m: m["shape"].__setitem__(1, 96_000))
    _opens_cleanly(path, r"6000 chunks of \(32, 32, 3\), but stores only 6 of them")


def test_sparse_but_real_zarr_still_opens(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(io_checks, "SPARSE_GRID", 100)
    path = tmp_path / "a.zarr"
    data = np.zeros((8, 640), np.uint8)
    data[:, ::64] = 1  # 10 of 640 one-column chunks hold data: 1.6 % stored
    zarr.create_array(path, data=data, chunks=(8, 1), zarr_format=2, config={"write_empty_chunks": False})
    with open_slide(path) as slide:
        assert slide.shape == (8, 640, 1)
    data[:, 64:] = 0  # 1 of 640: 0.16 %
    zarr.create_array(path, data=data, chunks=(8, 1), zarr_format=2, config={"write_empty_chunks": False},
                      overwrite=True)
    _opens_cleanly(path, r"stores only 1 of them")


def test_non_utf8_metadata_message_stays_printable(tmp_path: Path) -> None:
    # was: UnicodeEncodeError while printing an error that quoted a surrogate from the file
    path = tmp_path / "a.zarr"
    zarr.create_array(path, data=RGB, chunks=(32, 32, 3), zarr_format=2)
    _edit_json(path / ".zarray", lambda m: m.update(dimension_separator="\udcff"))
    with pytest.raises(SlideReadError) as info:
        open_slide(path)
    str(info.value).encode("utf-8")  # printable
    assert "\n" not in str(info.value)


def test_one_line() -> None:
    assert one_line("a\nb\t\udcff") == "a b \\udcff"


# --- masks ----------------------------------------------------------------------------------------


def test_corrupt_mask_chunk_is_a_clean_error(tmp_path: Path) -> None:
    # was: RuntimeError from blosc / ValueError from the crc32c codec in io/images.py Mask.read
    path = tmp_path / "m.zarr"
    zarr.create_array(path, data=np.ones((64, 64), np.uint8), chunks=(32, 32), zarr_format=2)
    (path / "0.0").write_bytes(b"\x02\x01" + bytes(30))
    mask = open_mask(path, "classes")
    with pytest.raises(SlideReadError, match=r"could not read region y 0:64, x 0:64 of mask m\.zarr"):
        mask.read(0, 64, 0, 64)


def test_mask_with_a_bad_chunk_key_encoding_is_a_clean_error(tmp_path: Path) -> None:
    # was: ValueError from zarr.core.chunk_key_encodings in io/images.py open_mask
    path = tmp_path / "m.zarr"
    zarr.create_array(path, data=np.ones((64, 64), np.uint8), chunks=(32, 32), zarr_format=3)
    _edit_json(path / "zarr.json", lambda m: m["chunk_key_encoding"]["configuration"].update(separator=-1))
    with pytest.raises(SlideReadError, match=r"could not open the mask"):
        open_mask(path, "classes")


@pytest.mark.parametrize(("label", "match"), [
    # was: KeyError in label_classes (a colour without its label-value)
    ({"colors": [{"rgba": [1, 2, 3, 4]}]}, r"'label-value' as an integer 0-255"),
    ({"colors": [{"label-value": 300, "rgba": [1, 2, 3, 4]}]}, r"'label-value' as an integer 0-255"),
    ({"colors": [{"label-value": 1, "rgba": [1, 2]}]}, r"'rgba' as four integers"),
    ({"properties": "x"}, r"'properties' as a list of objects"),
])
def test_malformed_image_label(label: dict[str, Any], match: str) -> None:
    with pytest.raises(OutputFormatError, match=match):
        label_classes({"image-label": label})


def test_ngff_parsers_accept_what_they_should() -> None:
    ms = parse_multiscale({"axes": ["y", "x"], "datasets": [{"path": "0"}]}, "a")
    assert (ms.axes, ms.scales, ms.units) == ("YX", ((1.0, 1.0),), (None, None))
    assert ngff_multiscales({}) == (None, None)


# --- PNG ------------------------------------------------------------------------------------------


def test_jpeg_declaring_more_pixels_than_its_bytes_hold(tmp_path: Path) -> None:
    # was: a 5 kB 160 x 120 JPEG whose frame header said 65535 rows decoded as 10 Mpx of padding, and
    # predict ran on it for 17 s (a near-hang)
    path = tmp_path / "a.jpg"
    data = bytearray(imagecodecs.jpeg8_encode(RGB, level=90))
    sof = data.index(b"\xff\xc0")
    struct.pack_into(">H", data, sof + 5, 65535)
    path.write_bytes(bytes(data))
    _opens_cleanly(path, r"declares 65535x96 px in a \d+-byte JPEG, more than its compressed data can hold")
    path.write_bytes(imagecodecs.jpeg8_encode(np.full((2000, 2000, 3), 250, np.uint8), level=10))  # flat, small
    with open_slide(path) as slide:
        assert slide.shape == (2000, 2000, 3)


def test_png_declaring_more_pixels_than_its_bytes_hold(tmp_path: Path) -> None:
    # a 24-byte PNG header claiming 16000 x 16000 px: refused before libpng allocates 768 MB
    path = tmp_path / "a.png"
    ihdr = struct.pack(">IIBBBBB", 16000, 16000, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + ihdr)
    _opens_cleanly(path, r"declares 16000x16000 px in a 29-byte PNG, more than its compressed data can hold")


# --- resampling, tissue, planning -------------------------------------------------------------------


@pytest.mark.parametrize("slide_mpp", [5e-30, 1e-3, 1e3, 1e30])
def test_absurd_resampling_ratios_are_refused(slide_mpp: float) -> None:
    # was: factor 5e29 -> taps of 1e30 entries (MemoryError or a hang); 1e-30 -> an output grid of 1e30 px
    with pytest.raises(ConfigError, match=r"beyond the x64 reduction and x16 enlargement"):
        resample.choose_level([slide_mpp], 0.5)
    with pytest.raises(ConfigError):
        resample.ResampledSlide(_Ramp((10, 10, 1)), 0.5 / slide_mpp)


class _Ramp:
    """A slide whose pixel (y, x) is y * 1000 + x; counts the pixels each read returns."""

    def __init__(self, shape: tuple[int, int, int]) -> None:
        self.shape, self.dtype, self.largest = shape, np.dtype(np.float64), 0

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        self.largest = max(self.largest, (y1 - y0) * (x1 - x0))
        yy, xx = np.mgrid[y0:y1, x0:x1]
        return np.repeat((yy * 1000.0 + xx)[..., None], self.shape[2], axis=2)


def test_large_reductions_read_in_bounded_bands(monkeypatch: pytest.MonkeyPatch) -> None:
    ramp = _Ramp((2000, 2000, 3))
    whole = resample.ResampledSlide(ramp, 16.0).read(0, 100, 0, 120)
    monkeypatch.setattr(resample, "BAND_VALUES", 3 * 2000 * 60)
    banded_ramp = _Ramp((2000, 2000, 3))
    banded = resample.ResampledSlide(banded_ramp, 16.0).read(0, 100, 0, 120)
    np.testing.assert_array_equal(banded, whole)  # bitwise: the same sum per pixel in any band
    assert banded_ramp.largest <= 2000 * 60 < ramp.largest


@pytest.mark.parametrize(("shape", "stride", "budget"), [
    ((64, 4096, 3), 4, 4096),  # a wide slide without a pyramid: blocks, never a full-width strip
    ((50, 70, 1), 9, 50),  # stride cells larger than the budget: single sampled rows, in pieces
    ((33, 17, 2), 1, 100),
])
def test_thumbnail_reads_are_bounded_and_exact(shape: tuple[int, int, int], stride: int, budget: int) -> None:
    # was: the tissue thumbnail of a slide without a pyramid read full-width blocks of ~4096 rows
    # (1.2 GB for a 100k-px-wide slide)
    ramp = _Ramp(shape)
    got = tissue.strided(ramp, stride, budget)
    yy, xx = np.mgrid[0:shape[0]:stride, 0:shape[1]:stride]
    np.testing.assert_array_equal(got[..., 0], yy * 1000.0 + xx)
    assert ramp.largest <= max(budget, stride)


class _WideFlat:
    """A slide without a pyramid, 6000 x 40000 px: pixel (y, x) is y % 251. Its reads cost no memory
    (broadcast views); it records the largest."""

    shape, dtype = (6000, 40_000, 1), np.dtype(np.int64)

    def __init__(self) -> None:
        self.levels, self.largest = [self], 0

    def __enter__(self) -> _WideFlat:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        self.largest = max(self.largest, (y1 - y0) * (x1 - x0))
        return np.broadcast_to((np.arange(y0, y1) % 251)[:, None, None], (y1 - y0, x1 - x0, 1))


def test_tissue_thumbnail_of_a_slide_without_a_pyramid_reads_bounded_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    # issue #10 item 20, was: the tissue thumbnail read full-width blocks of ~4096 rows (here 4096 x 40000 =
    # 164 Mpx, 10x the budget; 1.2 GB for a 100k-px-wide RGB slide)
    slide = _WideFlat()
    monkeypatch.setattr(tissue, "open_slide", lambda *a, **k: slide)
    image, scale = tissue.thumbnail("wide.tif", (6000, 40_000), side=1024)
    stride = 40_000 // 1024
    assert image.shape == (-(-6000 // stride), -(-40_000 // stride), 1)
    assert scale == pytest.approx((stride, stride), rel=0.01)
    assert np.array_equal(image[:, 0, 0], np.arange(0, 6000, stride) % 251)
    assert 0 < slide.largest <= tissue.READ_PIXELS


def test_plan_refuses_sizes_beyond_max_side() -> None:
    # was: OverflowError / endless loops planning a declared 2**62-px level
    with pytest.raises(ConfigError, match=r"at most 16777216 px per side"):
        make_plan((2**62, 100), tile=572, context=92, alignment=16, chunk=1024)
    assert make_plan((MAX_SIDE, 1), tile=572, context=92, alignment=16, chunk=1024).grid[0] == MAX_SIDE // 1024


# --- training inputs --------------------------------------------------------------------------------


def _pair(folder: Path, image: np.ndarray, mask: np.ndarray) -> tuple[Path, Path]:
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "masks").mkdir(exist_ok=True)
    (folder / "images" / "a.png").write_bytes(imagecodecs.png_encode(image))
    (folder / "masks" / "a.png").write_bytes(imagecodecs.png_encode(mask))
    return folder / "images", folder / "masks"


@pytest.mark.parametrize(("values", "match"), [
    ((0, 255), r"only the values 0, 255: a binary mask saved as 0/255 .* divide the masks by 255"),
    ((0, 100, 200), r"values 0, 100, 200, not consecutive .* 201-class model .* remap the ids to 0\.\.2 "
                    r"\(0 -> 0, 100 -> 1, 200 -> 2\)"),
])
def test_sparse_and_0_255_masks_are_refused_up_front(tmp_path: Path, values: tuple[int, ...], match: str) -> None:
    # was: {0, 100, 200} silently trained a 201-class model; 0/255 failed with "classes must be in 2..255,
    # got 256", and --classes 2 then suggested --classes 256
    mask = np.array(values, np.uint8)[np.indices((40, 50)).sum(0) % len(values)]
    images, masks = _pair(tmp_path, RGB[:40, :50], mask)
    with pytest.raises(TrainingDataError, match=match):
        load_training_data(images=images, masks=masks, mask_kind="classes")


def test_consecutive_ids_with_a_gap_are_accepted(tmp_path: Path) -> None:
    mask = np.array([0, 1, 3], np.uint8)[np.indices((40, 50)).sum(0) % 3]
    images, masks = _pair(tmp_path, RGB[:40, :50], mask)
    data = load_training_data(images=images, masks=masks, mask_kind="classes")
    assert check_class_ids(data.train, "classes").tolist() == [667, 667, 0, 666]
    data.close()


class _ArrayMask:
    def __init__(self, labels: np.ndarray) -> None:
        self.labels, self.shape, self.reads = labels, (*labels.shape, 1), 0

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        self.reads += 1
        return self.labels[y0:y1, x0:x1]


def test_a_class_only_in_a_corner_of_a_large_image_is_counted() -> None:
    # was: classes guessed from 8 random 512-px windows of images over 4 MP: a class only in a corner was
    # missed, the model got too few outputs, and training died midway on the first tile that held it
    h, w = 2100, 2100
    labels = np.zeros((h, w), np.uint8)
    labels[::7, ::5] = 1
    labels[-3:, -3:] = 2
    image, mask = _ArrayMask(np.zeros((h, w, 1), np.uint8)), _ArrayMask(labels)
    stats = estimate_statistics([Item("big", image, mask)], "classes", seed=0, windows=2, size=64)
    assert len(stats.class_counts) == 3 and stats.class_counts[2] == 9
    assert sum(stats.class_counts) == h * w
    assert mask.reads == math.ceil(h / 2048) * math.ceil(w / 2048)  # block by block, each once


def test_train_and_predict_read_the_same_channels_of_an_rgba_png(tmp_path: Path) -> None:
    # was: train kept a non-opaque alpha channel (a 4-channel model) that predict then refused
    rgba = np.concatenate([RGB, np.full((64, 96, 1), 128, np.uint8)], axis=2)
    path = tmp_path / "a.png"
    path.write_bytes(imagecodecs.png_encode(rgba))
    image = open_image(path)
    with open_slide(path) as slide:
        assert image.shape == slide.shape == (64, 96, 3)
        np.testing.assert_array_equal(image.read(0, 64, 0, 96), slide.read(0, 64, 0, 96))
    image.close()


def test_grey_mask_saved_as_rgba_png_is_one_channel(tmp_path: Path) -> None:
    labels = (np.indices((64, 96)).sum(0) % 2).astype(np.uint8)
    path = tmp_path / "m.png"
    path.write_bytes(imagecodecs.png_encode(np.stack([labels, labels, labels, np.full_like(labels, 255)], 2)))
    np.testing.assert_array_equal(open_mask(path, "classes").read(0, 64, 0, 96), labels)


def _raise(exc: BaseException) -> None:
    raise exc  # outside slideseg: stands for a third-party reader


@pytest.mark.parametrize("exc", [MemoryError(), OSError(12, "Cannot allocate memory"),
                                 RuntimeError("can't start new thread")])
def test_running_out_of_resources_is_not_blamed_on_the_file(exc: BaseException) -> None:
    # seen with the fuzzer's memory limit: "could not open a.tif (RuntimeError: can't start new thread);
    # the file is corrupt" -- the machine was out of memory, the file was fine
    with pytest.raises(type(exc)), reading("a.tif"):
        _raise(exc)
    with pytest.raises(SlideReadError, match=r"could not read a\.tif \(ValueError: bad\)"), reading("a.tif"):
        _raise(ValueError("bad"))


@pytest.mark.parametrize("attrs", [{}, {"scale_yx": [0, 1], "method": "x"}, {"scale_yx": "ab", "method": "x"},
                                   {"scale_yx": [1, 1], "method": "x", "threshold": "t"}])
def test_saved_tissue_mask_with_broken_attributes(tmp_path: Path, attrs: dict[str, Any]) -> None:
    # was: KeyError / ValueError reading back the tissue mask of an output on --resume
    array = zarr.create_array(tmp_path / "tissue", data=np.ones((4, 5), np.uint8), zarr_format=2)
    array.attrs.put(attrs)
    with pytest.raises(OutputFormatError, match=r"expected a 2-D mask with 'scale_yx'"):
        tissue.TissueMask.from_zarr(array)
    array.attrs.put({"scale_yx": [2.0, 3.0], "method": "otsu", "threshold": 0.1})
    assert tissue.TissueMask.from_zarr(array).scale == (2.0, 3.0)
