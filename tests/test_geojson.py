"""`slideseg.tools.geojson`: pixel-edge polygons that rasterise back to the mask, streamed, for QuPath."""

from __future__ import annotations

import doctest
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile
from scipy import ndimage
from typer.testing import CliRunner

import slideseg.tools.geojson
from slideseg.cli import app
from slideseg.errors import ConfigError, OutputExistsError, OutputFormatError, SlideReadError
from slideseg.io.ngff import LabelClass
from slideseg.tools.geojson import Polygon, export_geojson, level0_scale, parse_classes, trace_polygons
from slideseg.write.mask import create_mask

CLASSES = (LabelClass(0, "background", (0, 0, 0, 0)), LabelClass(1, "tumour", (230, 25, 75, 255)),
           LabelClass(2, "stroma", (60, 180, 75, 255)), LabelClass(3, "fat", (0, 130, 200, 255)))

# An awkward mask: a ring with an island of its own class in the hole and another class in a
# second hole; classes touching along edges; objects on all four borders; pixels touching only at
# corners (separate regions); a region that closes on itself at a corner (a hole touching the
# outside at one vertex); a spiral.
AWKWARD = np.array([
    [2, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3, 3],
    [2, 1, 1, 1, 1, 1, 1, 1, 0, 0, 1, 0, 0, 0, 3],
    [0, 1, 0, 0, 0, 1, 2, 1, 0, 1, 0, 1, 0, 0, 0],
    [0, 1, 0, 1, 0, 1, 2, 1, 0, 0, 1, 0, 0, 1, 1],
    [0, 1, 0, 0, 0, 1, 1, 1, 0, 0, 0, 0, 0, 1, 0],
    [0, 1, 1, 1, 1, 1, 3, 3, 3, 0, 1, 1, 1, 0, 0],
    [0, 0, 0, 0, 0, 0, 3, 0, 3, 0, 1, 0, 0, 0, 0],
    [1, 1, 1, 1, 1, 0, 3, 3, 0, 0, 1, 0, 1, 1, 0],
    [1, 0, 0, 0, 1, 0, 0, 0, 3, 0, 1, 0, 0, 1, 0],
    [1, 0, 1, 0, 1, 0, 2, 2, 2, 0, 1, 1, 1, 1, 0],
    [1, 0, 1, 1, 1, 0, 2, 0, 2, 0, 0, 0, 0, 0, 0],
    [1, 0, 0, 0, 0, 0, 2, 2, 2, 2, 2, 2, 2, 2, 2],
], np.uint8)  # fmt: skip


def rasterise(rings_per_polygon: list[tuple[int, list[np.ndarray]]], shape: tuple[int, int]) -> np.ndarray:
    """Even-odd fill at pixel centres of rectilinear rings (n, 2) of (x, y), class by class."""
    toggles: dict[int, np.ndarray] = {}
    for value, rings in rings_per_polygon:
        d = toggles.setdefault(value, np.zeros((shape[0] + 1, shape[1] + 1), np.uint8))
        for a in rings:
            b = np.roll(a, -1, axis=0)
            assert ((a[:, 0] == b[:, 0]) | (a[:, 1] == b[:, 1])).all(), "edges follow pixel edges"
            vert = a[:, 0] == b[:, 0]  # a vertical edge toggles 'inside' for pixels right of it in its rows
            x, ya, yb = a[vert, 0], a[vert, 1], b[vert, 1]
            np.bitwise_xor.at(d, (np.minimum(ya, yb), x), 1)
            np.bitwise_xor.at(d, (np.maximum(ya, yb), x), 1)
    out = np.zeros(shape, np.uint8)
    for value, d in toggles.items():
        inside = np.bitwise_xor.accumulate(np.bitwise_xor.accumulate(d, axis=0), axis=1)[: shape[0], : shape[1]]
        assert not out[inside.astype(bool)].any(), "classes overlap"
        out[inside.astype(bool)] = value
    return out


def raster_polygons(polygons: list[Polygon], shape: tuple[int, int]) -> np.ndarray:
    return rasterise([(p.value, [p.exterior, *p.holes]) for p in polygons], shape)


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


def canonical(polygons: list[Polygon]) -> list[Any]:
    """Polygons as comparable values, each ring starting at its first vertex in (y, x) order."""
    def ring(r: np.ndarray) -> tuple[Any, ...]:
        start = int(np.lexsort((r[:, 0], r[:, 1]))[0])
        return tuple(map(tuple, np.roll(r, -start, axis=0).tolist()))
    return sorted((p.value, ring(p.exterior), tuple(sorted(ring(h) for h in p.holes)), p.area) for p in polygons)


def signed_area(r: np.ndarray) -> int:
    x, y = r[:, 0], r[:, 1]
    return int(np.dot(x, np.roll(y, -1)) - np.dot(np.roll(x, -1), y)) // 2


def random_mask(seed: int, shape: tuple[int, int], n_classes: int, blob: int) -> np.ndarray:
    r = np.random.default_rng(seed)
    coarse = r.integers(0, n_classes, (-(-shape[0] // blob), -(-shape[1] // blob)))
    return np.repeat(np.repeat(coarse, blob, 0), blob, 1)[: shape[0], : shape[1]].astype(np.uint8)


def write_mask(path: Path, mask: np.ndarray, source: dict[str, Any] | None = None, chunk: int = 64,
               finalize: bool = True) -> Path:
    writer = create_mask(path, mask.shape, chunk, CLASSES, 0.5, {"source": source or {"path": "", "level": 0}})
    for iy in range(writer.grid[0]):
        for ix in range(writer.grid[1]):
            writer.write_chunk(iy, ix, np.ascontiguousarray(mask[iy * chunk : (iy + 1) * chunk,
                                                                 ix * chunk : (ix + 1) * chunk]))
    if finalize:
        writer.finalize()
    return path


NAMES = {c.name: c.value for c in CLASSES}


# --------------------------------------------------------------------------------- tracing


@pytest.mark.parametrize("mask", [
    AWKWARD,  # every hard case at once
    np.ones((5, 7), np.uint8),  # one region filling the image
    np.eye(6, dtype=np.uint8),  # a diagonal: six regions meeting at corners
    (np.indices((9, 9)).sum(0) % 2).astype(np.uint8),  # a checkerboard: saddles everywhere
    np.pad(np.pad([[1]], 1, constant_values=2), 1).astype(np.uint8),  # a ring of 2 around a 1
])
def test_polygons_rasterise_back_to_the_mask(mask: np.ndarray) -> None:
    polygons = trace_polygons(mask)
    assert np.array_equal(raster_polygons(polygons, mask.shape), mask)
    for v in np.unique(mask[mask > 0]):
        assert sum(p.value == v for p in polygons) == ndimage.label(mask == v)[1]  # one per 4-connected region


def test_awkward_mask_in_detail() -> None:
    polygons = trace_polygons(AWKWARD)
    ring = next(p for p in polygons if p.value == 1 and p.exterior.min(0).tolist() == [1, 1])
    assert len(ring.holes) == 2 and ring.area == 22  # the island and the class-2 pocket are holes
    island = next(p for p in polygons if p.value == 1 and p.exterior.tolist() == [[3, 3], [4, 3], [4, 4], [3, 4]])
    assert island.area == 1 and not island.holes
    pinched = next(p for p in polygons if p.value == 3 and p.area == 7)  # closes on itself at vertex (8, 7)
    assert len(pinched.holes) == 1 and [8, 7] in pinched.holes[0].tolist() and [8, 7] in pinched.exterior.tolist()


@pytest.mark.parametrize("seed", range(12))
def test_random_masks_every_stripe_height(seed: int) -> None:
    shape = (int(7 + seed * 3), int(40 - seed * 2))
    mask = random_mask(seed, shape, n_classes=2 + seed % 3, blob=1 + seed % 3)
    whole = trace_polygons(mask)
    assert np.array_equal(raster_polygons(whole, shape), mask)
    for polygon in whole:
        assert signed_area(polygon.exterior) > 0 and all(signed_area(h) < 0 for h in polygon.holes)
        assert polygon.area == signed_area(polygon.exterior) + sum(signed_area(h) for h in polygon.holes)
        for ring in (polygon.exterior, *polygon.holes):
            assert len({tuple(v) for v in ring.tolist()}) == len(ring)  # simple: no vertex twice
            steps = np.sign(np.diff(np.vstack([ring, ring[:1], ring[1:2]]), axis=0))
            assert not (steps[1:] == steps[:-1]).all(axis=1).any()  # every vertex is a corner
    for rows in (1, 2, 3, 5):
        assert canonical(trace_polygons(mask, stripe_rows=rows)) == canonical(whole)


def test_values_select_classes() -> None:
    assert {p.value for p in trace_polygons(AWKWARD, values=[3])} == {3}
    assert trace_polygons(np.zeros((4, 4), np.uint8)) == []


def test_parse_classes() -> None:
    names = {0: "background", 1: "tumour", 2: "stroma"}
    assert parse_classes(None, names) == [1, 2]
    assert parse_classes("2,1", names) == [1, 2]
    assert parse_classes([2, "tumour"], names) == [1, 2]
    with pytest.raises(ConfigError, match="is the background"):
        parse_classes("0", names)
    with pytest.raises(ConfigError, match=r"'fat' is not a class of this mask; expected some of 1 \(tumour\)"):
        parse_classes("fat", names)


def test_doctests() -> None:
    assert doctest.testmod(slideseg.tools.geojson).failed == 0


# --------------------------------------------------------------------------------- export


@pytest.fixture
def mask_path(tmp_path: Path) -> Path:
    mask = np.zeros((1100, 300), np.uint8)  # > 1024 rows: the mask has a level 1
    mask[: 12 * 8, : 15 * 8] = np.kron(AWKWARD, np.ones((8, 8), np.uint8))
    mask[200:1100, 0:300] = random_mask(3, (900, 300), 4, 6)
    mask[1090:, 290:] = 1  # in the bottom-right corner
    return write_mask(tmp_path / "mask.zarr", mask)


def read_level(path: Path, level: int) -> np.ndarray:
    import zarr

    return np.asarray(zarr.open_group(path, mode="r")[str(level)][:])


@pytest.mark.parametrize("level", [0, 1])
def test_export_round_trip(tmp_path: Path, mask_path: Path, level: int) -> None:
    result = export_geojson(mask_path, tmp_path / "m.geojson", level=level)
    fc = json.loads((tmp_path / "m.geojson").read_text())
    expected = read_level(mask_path, level)
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
    level0 = read_level(mask_path, 0)
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
    shape = read_level(mask_path, 0).shape
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
    write_mask(tmp_path / "m.zarr", mask, source)
    export_geojson(tmp_path / "m.zarr", tmp_path / "m.geojson")
    fc = json.loads((tmp_path / "m.geojson").read_text())
    assert fc["features"][0]["geometry"]["coordinates"][0] == [[10, 20], [80, 20], [80, 40], [10, 40], [10, 20]]


def test_missing_slide_assumes_powers_of_two_and_says_so(tmp_path: Path) -> None:
    scale = level0_scale((50, 40), {"path": str(tmp_path / "gone.tif"), "level": 2})
    assert scale.sx == scale.sy == 4.0 and scale.assumed and "--slide" in scale.how
    with pytest.raises(SlideReadError):  # a --slide the user names must exist
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
    write_mask(tmp_path / "partial.zarr", np.ones((10, 10), np.uint8), finalize=False)
    with pytest.raises(OutputFormatError, match=r"incomplete.*--resume"):
        export_geojson(tmp_path / "partial.zarr", tmp_path / "p.geojson")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.geojson", "mask.zarr", "partial.zarr", "plain"]


def test_cli(tmp_path: Path, mask_path: Path) -> None:
    runner = CliRunner()
    r = runner.invoke(app, ["export-geojson", str(mask_path), "-o", str(tmp_path / "m.geojson"), "--level", "1",
                            "--classes", "1,2", "--min-area", "100"])
    assert r.exit_code == 0, r.stderr
    assert "wrote" in r.stdout and "tumour" in r.stdout and "level 1" in r.stdout
    r = runner.invoke(app, ["export-geojson", str(mask_path), "-o", str(tmp_path / "m.geojson")])
    assert r.exit_code == 2 and "--overwrite" in r.stderr and "Traceback" not in r.stderr
