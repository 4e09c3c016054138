"""`slideseg.tools.geojson`: a mask as pixel-edge polygons in level-0 coordinates that rasterise back
to it, streamed in stripes, for QuPath (the tracing itself: tests/test_tools_trace.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile

import slideseg.tools.geojson
from slideseg.errors import ConfigError, OutputExistsError, OutputFormatError, SlideReadError
from slideseg.io.ngff import LabelClass
from slideseg.tools.geojson import export_geojson, level0_scale, parse_classes
from slideseg.tools.objects import ObjectsConfig, objects
from tests.conftest import AWKWARD, random_mask, rasterise, read_level, signed_area, write_mask
from tests.test_tools_objects import class_mask
from tests.test_tools_objects import write_mask as write_class_mask

CLASSES = (LabelClass(0, "background", (0, 0, 0, 0)), LabelClass(1, "tumour", (230, 25, 75, 255)),
           LabelClass(2, "stroma", (60, 180, 75, 255)), LabelClass(3, "fat", (0, 130, 200, 255)))


def raster_features(fc: dict[str, Any], shape: tuple[int, int], scale: float, names: dict[str, int]) -> np.ndarray:
    """Rasterise a FeatureCollection whose coordinates are the traced level times ``scale``."""
    polys = []
    for f in fc["features"]:
        geometry = f["geometry"]
        parts = geometry["coordinates"] if geometry["type"] == "MultiPolygon" else [geometry["coordinates"]]
        for rings in parts:
            arrays = [np.asarray(r, np.float64)[:-1] / scale for r in rings]
            assert all(np.array_equal(a, np.round(a)) for a in arrays), "level-0 coordinates are scaled pixel corners"
            polys.append((names[f["properties"]["classification"]["name"]], [a.astype(np.int64) for a in arrays]))
    return rasterise(polys, shape)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    fg = (a > 0) | (b > 0)
    return float(((a == b) & fg).sum() / max(fg.sum(), 1))


NAMES = {c.name: c.value for c in CLASSES}


def test_parse_classes() -> None:
    names = {0: "background", 1: "tumour", 2: "stroma"}
    assert parse_classes(None, names) == [1, 2]
    assert parse_classes("2,1", names) == [1, 2]
    assert parse_classes([2, "tumour"], names) == [1, 2]
    with pytest.raises(ConfigError, match="is the background"):
        parse_classes("0", names)
    with pytest.raises(ConfigError, match=r"'fat' is not a class of this mask; expected some of 1 \(tumour\)"):
        parse_classes("fat", names)


# --------------------------------------------------------------------------------- export


@pytest.fixture
def mask_path(tmp_path: Path) -> Path:
    mask = np.zeros((1100, 300), np.uint8)  # > 1024 rows: the mask has a level 1
    mask[: 12 * 8, : 15 * 8] = np.kron(AWKWARD, np.ones((8, 8), np.uint8))
    mask[200:1100, 0:300] = random_mask(3, (900, 300), 4, 6)
    mask[1090:, 290:] = 1  # in the bottom-right corner
    return write_mask(tmp_path / "mask.zarr", mask, CLASSES)


@pytest.mark.parametrize("level", [0, 1])
def test_export_round_trip(tmp_path: Path, mask_path: Path, level: int) -> None:
    result = export_geojson(mask_path, tmp_path / "m.geojson", level=level)
    fc = json.loads((tmp_path / "m.geojson").read_text())
    expected = read_level(mask_path, str(level))
    back = raster_features(fc, expected.shape, 2**level, NAMES)
    assert iou(back, expected) >= 0.99 and np.array_equal(back, expected)  # exact, in fact
    assert result.features == len(fc["features"]) == sum(result.polygons.values())
    assert result.scale.sx == result.scale.sy == 1.0 and not result.scale.assumed


def test_level_1_coordinates_are_level_0_pixels(tmp_path: Path, mask_path: Path) -> None:
    export_geojson(mask_path, tmp_path / "m.geojson", level=1, classes="tumour")
    fc = json.loads((tmp_path / "m.geojson").read_text())
    corner = [f for f in fc["features"] if [300, 1100] in f["geometry"]["coordinates"][0]]
    assert len(corner) == 1  # the bottom-right square ends at level-0 corner (300, 1100), not (150, 550)
    xy = np.concatenate([np.asarray(r) for f in fc["features"] for r in f["geometry"]["coordinates"]])
    assert (xy % 2 == 0).all() and xy.max(0).tolist() == [300, 1100]
    assert fc["slideseg"]["scale_to_level0"] == [2.0, 2.0] and fc["slideseg"]["level"] == 1


def test_qupath_structure(tmp_path: Path, mask_path: Path) -> None:
    export_geojson(mask_path, tmp_path / "m.geojson", object_type="detection")
    fc = json.loads((tmp_path / "m.geojson").read_text())
    assert fc["type"] == "FeatureCollection" and fc["features"]
    colours = {c.name: list(c.rgba[:3]) for c in CLASSES}
    for f in fc["features"]:
        assert f["type"] == "Feature" and f["geometry"]["type"] == "Polygon"
        props = f["properties"]
        assert props["objectType"] == "detection"
        assert props["classification"]["color"] == colours[props["classification"]["name"]]
        assert props["classification"]["name"] != "background"
        for ring in f["geometry"]["coordinates"]:
            assert ring[0] == ring[-1] and len(ring) >= 5  # closed, at least a square
    assert any(len(f["geometry"]["coordinates"]) > 1 for f in fc["features"])  # holes kept


def test_by_class_writes_one_multipolygon_per_class(tmp_path: Path, mask_path: Path) -> None:
    result = export_geojson(mask_path, tmp_path / "m.geojson", by_class=True, classes=[1, 3])
    fc = json.loads((tmp_path / "m.geojson").read_text())
    assert [f["properties"]["classification"]["name"] for f in fc["features"]] == ["tumour", "fat"]
    assert all(f["geometry"]["type"] == "MultiPolygon" for f in fc["features"])
    assert [len(f["geometry"]["coordinates"]) for f in fc["features"]] == [result.polygons["tumour"],
                                                                           result.polygons["fat"]]
    level0 = read_level(mask_path)
    assert np.array_equal(raster_features(fc, level0.shape, 1, NAMES), np.where(np.isin(level0, [1, 3]), level0, 0))


def test_min_area_drops_small_regions(tmp_path: Path, mask_path: Path) -> None:
    every = export_geojson(mask_path, tmp_path / "a.geojson")
    big = export_geojson(mask_path, tmp_path / "b.geojson", min_area=64 * 10)  # 10 AWKWARD pixels
    assert big.dropped > 0 and big.features + big.dropped == every.features
    fc = json.loads((tmp_path / "b.geojson").read_text())
    areas = [signed_area(np.asarray(f["geometry"]["coordinates"][0])) for f in fc["features"]]
    assert min(areas) >= 640
    at_level_1 = export_geojson(mask_path, tmp_path / "c.geojson", level=1, min_area=64 * 10)
    assert at_level_1.features <= big.features + 5  # the same level-0 threshold at any level


def test_streaming_in_narrow_stripes_gives_the_same_file(tmp_path: Path, mask_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    export_geojson(mask_path, tmp_path / "whole.geojson")
    monkeypatch.setattr(slideseg.tools.geojson, "STRIPE_PIXELS", 300 * 7)  # 7-row stripes
    export_geojson(mask_path, tmp_path / "striped.geojson")
    whole, striped = (json.loads((tmp_path / f"{n}.geojson").read_text()) for n in ("whole", "striped"))
    shape = read_level(mask_path).shape
    assert np.array_equal(raster_features(whole, shape, 1, NAMES), raster_features(striped, shape, 1, NAMES))
    assert len(whole["features"]) == len(striped["features"])


def write_pyramid_tiff(path: Path, shapes: list[tuple[int, int]]) -> Path:
    with tifffile.TiffWriter(path) as tif:
        for i, shape in enumerate(shapes):
            tif.write(np.zeros((*shape, 3), np.uint8), photometric="rgb", subifds=len(shapes) - 1 if i == 0 else None,
                      subfiletype=1 if i else None)
    return path


def test_scale_from_the_slide_when_predicted_on_level_1(tmp_path: Path) -> None:
    slide = write_pyramid_tiff(tmp_path / "s.tif", [(101, 81), (51, 41)])
    source = {"path": str(slide), "level": 1}
    assert level0_scale((51, 41), source).sx == 2.0  # ceil-halved once: exactly 2
    odd = write_pyramid_tiff(tmp_path / "odd.tif", [(150, 120), (37, 30)])  # a x4 scanner-like level
    scale = level0_scale((37, 30), {"path": str(odd), "level": 1})
    assert (scale.sx, scale.sy) == (4.0, pytest.approx(150 / 37)) and not scale.assumed
    mask = np.zeros((51, 41), np.uint8)
    mask[10:20, 5:40] = 2
    write_mask(tmp_path / "m.zarr", mask, CLASSES, source=source)
    export_geojson(tmp_path / "m.zarr", tmp_path / "m.geojson")
    fc = json.loads((tmp_path / "m.geojson").read_text())
    assert fc["features"][0]["geometry"]["coordinates"][0] == [[10, 20], [80, 20], [80, 40], [10, 40], [10, 20]]


def test_missing_slide_assumes_powers_of_two_and_says_so(tmp_path: Path) -> None:
    scale = level0_scale((50, 40), {"path": str(tmp_path / "gone.tif"), "level": 2})
    assert scale.sx == scale.sy == 4.0 and scale.assumed and "--slide" in scale.how
    with pytest.raises(SlideReadError, match=r"gone\.tif does not exist"):  # a --slide the user names must exist
        level0_scale((50, 40), {"level": 2}, tmp_path / "gone.tif")
    other = write_pyramid_tiff(tmp_path / "wide.tif", [(100, 400)])
    with pytest.raises(ConfigError, match="does not have the mask's shape"):
        level0_scale((50, 40), {"level": 1}, other)


def test_errors(tmp_path: Path, mask_path: Path) -> None:
    out = tmp_path / "m.geojson"
    with pytest.raises(ConfigError, match=r"--level 2 is out of range: .* has 2 levels \(0: 1100x300; 1: 550x150\)"):
        export_geojson(mask_path, out, level=2)
    with pytest.raises(SlideReadError, match="does not exist"):
        export_geojson(tmp_path / "nope.zarr", out)
    (tmp_path / "plain").mkdir()
    with pytest.raises(OutputFormatError, match="not a"):
        export_geojson(tmp_path / "plain", out)
    with pytest.raises(ConfigError, match="--object-type"):
        export_geojson(mask_path, out, object_type="cell")
    with pytest.raises(ConfigError, match="--min-area"):
        export_geojson(mask_path, out, min_area=-1)
    export_geojson(mask_path, out)
    with pytest.raises(OutputExistsError, match="--overwrite"):
        export_geojson(mask_path, out)
    export_geojson(mask_path, out, overwrite=True, classes="fat")
    assert {f["properties"]["classification"]["name"] for f in json.loads(out.read_text())["features"]} == {"fat"}
    write_mask(tmp_path / "partial.zarr", np.ones((10, 10), np.uint8), CLASSES, finalize=False)
    with pytest.raises(OutputFormatError, match=r"incomplete.*--resume"):
        export_geojson(tmp_path / "partial.zarr", tmp_path / "p.geojson")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.geojson", "mask.zarr", "partial.zarr", "plain"]


# --------------------------------------------------------------------------------- damaged masks


@pytest.mark.parametrize("damage", [b"\x00garbage" * 20, b""])
def test_a_damaged_chunk_is_a_clean_error_and_leaves_no_file(tmp_path: Path, mask_path: Path, damage: bytes) -> None:
    # was: RuntimeError "error during blosc decompression" from numcodecs, escaping the reading boundary
    chunk = next(f for f in sorted((mask_path / "0").rglob("*")) if f.is_file() and not f.name.startswith("."))
    chunk.write_bytes(damage)
    with pytest.raises(SlideReadError, match=r"could not read rows \d+:\d+ of level 0 in .*mask\.zarr \(\w+"):
        export_geojson(mask_path, tmp_path / "m.geojson")
    assert not (tmp_path / "m.geojson").exists()


def test_a_level_with_zero_row_chunks_is_refused_before_tracing(tmp_path: Path, mask_path: Path) -> None:
    # was: ZeroDivisionError in _stripe_rows
    meta = json.loads((mask_path / "1" / ".zarray").read_text())
    (mask_path / "1" / ".zarray").write_text(json.dumps({**meta, "chunks": [0, 64]}))
    with pytest.raises(SlideReadError, match=r"the chunk shape of level '1' is \(0, 64\)"):
        export_geojson(mask_path, tmp_path / "m.geojson", level=1)
    assert slideseg.tools.geojson._stripe_rows(300, 0) == slideseg.tools.geojson.STRIPE_PIXELS // 300


def test_a_record_of_the_wrong_type_is_a_clean_error(tmp_path: Path, mask_path: Path) -> None:
    # was: ValueError from int("one") in level0_scale
    attrs = json.loads((mask_path / ".zattrs").read_text())
    attrs["slideseg"]["source"]["level"] = "one"
    (mask_path / ".zattrs").write_text(json.dumps(attrs))
    with pytest.raises(SlideReadError, match=r"the source slide's 'level' in its record is 'one'"):
        export_geojson(mask_path, tmp_path / "m.geojson")


@pytest.fixture
def mask_with_objects(tmp_path: Path) -> Path:
    path = write_class_mask(tmp_path / "objects.zarr", class_mask((60, 50), seed=3))
    objects(path, ObjectsConfig())
    return path


def _damage_instance_chunk(mask: Path) -> None:
    chunk = next(f for f in sorted((mask / "objects" / "0").rglob("*")) if f.is_file() and not f.name.startswith("."))
    chunk.write_bytes(b"\x02damaged" * 7)


def _instance_shape(mask: Path) -> None:
    meta = json.loads((mask / "objects" / "0" / ".zarray").read_text())
    (mask / "objects" / "0" / ".zarray").write_text(json.dumps({**meta, "shape": [60, 2**30]}))


def _level0_scale(mask: Path) -> None:
    attrs = json.loads((mask / "objects" / ".zattrs").read_text())
    attrs["slideseg"]["level0_scale"] = {"sx": "1", "sy": 1}
    (mask / "objects" / ".zattrs").write_text(json.dumps(attrs))


@pytest.mark.parametrize(("damage", "match"), [
    (_damage_instance_chunk, r"could not read rows \d+:\d+ of the instance image in .*objects/0"),  # was: from zarr
    (_instance_shape, r"objects/0 is uint32 \(60, 1073741824\); expected uint32 \(60, 50\)"),  # was: read for hours
    (_level0_scale, r"level0_scale is \{'sx': '1', 'sy': 1\}; expected"),  # was: float('1') taken, or a TypeError
])
def test_damaged_objects_are_a_clean_error(tmp_path: Path, mask_with_objects: Path, damage: Any, match: str) -> None:
    damage(mask_with_objects)
    with pytest.raises(SlideReadError, match=match):
        export_geojson(mask_with_objects, tmp_path / "o.geojson", objects=True)
    assert not (tmp_path / "o.geojson").exists()
