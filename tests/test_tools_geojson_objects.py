"""`export-geojson --objects`: one QuPath detection per object of `slideseg objects`, with a stable
UUID, the object's table row as measurements, and polygons that rasterise back to the instance image."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest

import slideseg.tools.geojson as geojson_module
from slideseg.errors import ConfigError, OutputFormatError
from slideseg.tools.geojson import export_geojson
from slideseg.tools.objects import ObjectsConfig, objects
from tests.conftest import rasterise, read_level, run_cli
from tests.test_tools_objects import class_mask, write_mask


def raster_objects(fc: dict[str, Any], shape: tuple[int, int]) -> np.ndarray:
    """The features rasterised, each filled with its measured object id."""
    polys = []
    for f in fc["features"]:
        g = f["geometry"]
        for rings in g["coordinates"] if g["type"] == "MultiPolygon" else [g["coordinates"]]:
            polys.append((f["properties"]["measurements"]["id"], [np.asarray(r, np.int64)[:-1] for r in rings]))
    return rasterise(polys, shape)


@pytest.fixture
def mask_with_objects(tmp_path: Path) -> Path:
    path = write_mask(tmp_path / "mask.zarr", class_mask((60, 50), seed=3))
    objects(path, ObjectsConfig(connectivity=8))  # 8-connected: some objects are several polygons
    return path


def test_one_detection_per_object_with_its_row(tmp_path: Path, mask_with_objects: Path) -> None:
    path = mask_with_objects
    result = export_geojson(path, tmp_path / "a.geojson", objects=True)
    fc = json.loads((tmp_path / "a.geojson").read_text())
    table = pq.read_table(path.parent / "mask.objects.parquet").to_pylist()
    assert result.features == len(fc["features"]) == len(table) > 10
    assert any(f["geometry"]["type"] == "MultiPolygon" for f in fc["features"])
    for f, row in zip(fc["features"], table, strict=True):  # in id order, joined by id
        props = f["properties"]
        assert props["objectType"] == "detection" and uuid.UUID(f["id"]).version == 5
        assert props["classification"]["name"] == row["class_name"]
        expected = {k: v for k, v in row.items() if k != "class_name" and v == v}  # NaN (no pixel size) left out
        assert props["measurements"] == pytest.approx(expected)
    instances = read_level(path, "objects/0")
    assert np.array_equal(raster_objects(fc, instances.shape), instances)


def test_ids_are_stable_and_streaming_does_not_change_the_file(tmp_path: Path, mask_with_objects: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    path = mask_with_objects
    export_geojson(path, tmp_path / "a.geojson", objects=True)
    first = json.loads((tmp_path / "a.geojson").read_text())
    objects(path, ObjectsConfig(connectivity=8, overwrite=True))  # the same objects made again
    monkeypatch.setattr(geojson_module, "OBJECT_BAND_ROWS", 3)  # tall objects traced from the image in stripes
    monkeypatch.setattr(geojson_module, "STRIPE_PIXELS", 2 * 50)
    export_geojson(path, tmp_path / "b.geojson", objects=True)
    second = json.loads((tmp_path / "b.geojson").read_text())
    assert first["features"] == second["features"]
    objects(path, ObjectsConfig(overwrite=True))  # other options: other objects, other ids
    export_geojson(path, tmp_path / "c.geojson", objects=True)
    third = json.loads((tmp_path / "c.geojson").read_text())
    assert not {f["id"] for f in first["features"]} & {f["id"] for f in third["features"]}


def test_classes_min_area_and_errors(tmp_path: Path, mask_with_objects: Path) -> None:
    path = mask_with_objects
    table = pq.read_table(path.parent / "mask.objects.parquet").to_pylist()
    r = export_geojson(path, tmp_path / "s.geojson", objects=True, classes="2", min_area=4, object_type="annotation")
    kept = [row for row in table if row["class"] == 2 and row["pixels"] >= 4]
    fc = json.loads((tmp_path / "s.geojson").read_text())
    assert r.features == len(kept) == len(fc["features"]) and r.dropped == sum(
        row["class"] == 2 and row["pixels"] < 4 for row in table) > 0
    assert {f["properties"]["objectType"] for f in fc["features"]} == {"annotation"}
    with pytest.raises(ConfigError, match="drop --level and --by-class"):
        export_geojson(path, tmp_path / "x.geojson", objects=True, by_class=True)
    bare = write_mask(tmp_path / "bare.zarr", class_mask((20, 20)))
    with pytest.raises(OutputFormatError, match=r"has no objects/; .* run `slideseg objects .*bare.zarr` first"):
        export_geojson(bare, tmp_path / "x.geojson", objects=True)
    cli = run_cli("export-geojson", bare, "-o", tmp_path / "x.geojson", "--objects")
    assert cli.exit_code == 2 and "slideseg objects" in cli.output and not (tmp_path / "x.geojson").exists()
