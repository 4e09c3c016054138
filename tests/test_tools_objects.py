"""slideseg.tools.objects and `slideseg objects`: the instance image and the object table of a mask."""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tifffile
import zarr
from ome_zarr.format import FormatV04
from ome_zarr.io import parse_url
from ome_zarr.reader import Label, Reader
from ome_zarr_models.v04.image_label import ImageLabel
from skimage.measure import regionprops_table

import slideseg.cli.objects  # noqa: F401  (registers the command)
import slideseg.tools.objects as objects_module
from slideseg.errors import ConfigError, OutputExistsError, OutputFormatError
from slideseg.io.ngff import LabelClass
from slideseg.plan.tiles import grid_box
from slideseg.schedule.cluster import ClusterConfig, dask_client
from slideseg.tools.components import Numbering
from slideseg.tools.objects import ObjectsConfig, objects, record_hash
from slideseg.write.instances import TableWriter
from slideseg.write.mask import create_mask, read_mask
from tests.conftest import run_cli, write_ome_zarr_image, write_tiff
from tests.test_tools_components import paint, reference

CLASSES = (LabelClass(0, "background", (0, 0, 0, 0)), LabelClass(1, "nucleus", (255, 0, 0, 255)),
           LabelClass(2, "stroma", (0, 200, 0, 255)))
MPP = 0.5


def class_mask(shape: tuple[int, int] = (90, 70), seed: int = 0) -> np.ndarray:
    """Discs, snakes across chunks, rings with holes, corner contacts and objects on the edge."""
    rng = np.random.default_rng(seed)
    m = np.zeros(shape, np.uint8)
    h, w = shape
    for _ in range(40):
        paint(m, str(rng.choice(["blob", "ring", "checker", "edge"])), int(rng.integers(1, 3)),
              int(rng.integers(0, h)), int(rng.integers(0, w)), int(rng.integers(1, 6)), [])
    for _ in range(4):
        paint(m, "snake", int(rng.integers(1, 3)), int(rng.integers(0, h)), int(rng.integers(0, w)), 1,
              rng.integers(0, 4, 120).tolist())
    return m


def write_mask(path: Path, mask: np.ndarray, *, chunk: int = 32, source: dict[str, Any] | None = None,
               ngff: str = "0.4", probs: np.ndarray | None = None, finalize: bool = True, **kw: Any) -> Path:
    """A slideseg mask of ``mask`` (and ``probs``, uint8 (3, H, W)), as predict writes it."""
    writer = create_mask(path, mask.shape, chunk, CLASSES, MPP, {"source": source or {"path": "", "level": 0}},
                         probabilities=probs is not None, ngff=ngff, **kw)
    gy, gx = writer.grid
    for iy in range(gy):
        for ix in range(gx):
            y0, y1, x0, x1 = grid_box(iy, ix, mask.shape, writer.chunk)
            writer.write_chunk(iy, ix, mask[y0:y1, x0:x1], None if probs is None else probs[:, y0:y1, x0:x1])
    if finalize:
        writer.finalize()
    return path


@pytest.fixture(scope="module")
def cluster() -> Iterator[ClusterConfig]:
    """One in-process Dask cluster for the module: runs then take milliseconds to connect."""
    with dask_client(ClusterConfig()) as client:
        yield ClusterConfig(scheduler_address=client.scheduler.address)


@pytest.fixture
def scene(tmp_path: Path) -> tuple[Path, np.ndarray, np.ndarray, np.ndarray]:
    """(mask path, class ids, probabilities (3, H, W), slide pixels (H, W, 3)) of a mask whose
    recorded slide is there."""
    mask = class_mask()
    rng = np.random.default_rng(1)
    slide = rng.integers(0, 256, (*mask.shape, 3), dtype=np.uint8)
    probs = rng.integers(0, 256, (3, *mask.shape), dtype=np.uint8)
    tif = write_tiff(tmp_path / "slide.ome.tif", slide, MPP)
    source = {"path": str(tif), "level": 0, "resample_factor": 1.0, "series": 0}
    return write_mask(tmp_path / "mask.zarr", mask, source=source, probs=probs), mask, probs, slide


def level(path: Path, key: str) -> np.ndarray:
    return np.asarray(zarr.open_group(path, mode="r")[key][:])  # type: ignore[index]


@pytest.mark.parametrize("chunk", [9, 32, 200])  # many units, a few, one larger than the mask
def test_instances_and_table_equal_one_pass_over_the_whole_mask(scene: Any, cluster: ClusterConfig,
                                                                chunk: int) -> None:
    path, mask, probs, slide = scene
    result = objects(path, ObjectsConfig(chunk=chunk), cluster)
    ref = reference(mask, (1, 2), 4)
    np.testing.assert_array_equal(level(path, "objects/0"), ref)
    table = pq.read_table(result.table).to_pydict()
    own = np.take_along_axis(probs, mask[None].astype(np.intp), 0)[0].astype(np.float64)
    image = np.concatenate([slide.astype(np.float64), own[..., None]], -1)
    props = regionprops_table(ref, image, properties=("label", "area", "centroid", "bbox", "eccentricity",
                                                      "equivalent_diameter_area", "intensity_mean", "intensity_std"))
    assert table["id"] == props["label"].tolist() == list(range(1, ref.max() + 1))
    assert table["pixels"] == props["area"].tolist() and result.objects == ref.max()
    assert table["class"] == [int(mask[ref == i][0]) for i in table["id"]]
    assert set(table["class_name"]) == {"nucleus", "stroma"}
    np.testing.assert_allclose(table["area_um2"], props["area"] * MPP**2, rtol=1e-9, atol=1e-12)
    # pixel corners are at integers, so a pixel's centre is at +0.5
    np.testing.assert_allclose(table["centroid_y_px"], props["centroid-0"] + 0.5, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(table["centroid_x_um"], (props["centroid-1"] + 0.5) * MPP, rtol=1e-9, atol=1e-12)
    for k, name in enumerate(["bbox_y0_px", "bbox_x0_px", "bbox_y1_px", "bbox_x1_px"]):
        assert table[name] == props[f"bbox-{k}"].tolist()
    np.testing.assert_allclose(table["eccentricity"], props["eccentricity"], rtol=1e-9, atol=1e-7)
    np.testing.assert_allclose(table["equivalent_diameter_um"], props["equivalent_diameter_area"] * MPP, rtol=1e-9)
    for c in range(3):
        np.testing.assert_allclose(table[f"channel_{c}_mean"], props[f"intensity_mean-{c}"], rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(table[f"channel_{c}_std"], props[f"intensity_std-{c}"], rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(table["mean_probability"], props["intensity_mean-3"] / 255, rtol=1e-9, atol=1e-12)
    padded = np.pad(mask.astype(np.int64), 1, constant_values=-1)
    faces = sum((padded[1:-1, 1:-1] != np.roll(padded, s, a)[1:-1, 1:-1]).astype(int) for s in (1, -1) for a in (0, 1))
    np.testing.assert_allclose(table["perimeter_um"], np.bincount(ref.ravel(), faces.ravel())[1:] * MPP, rtol=1e-9)
    assert not (path.parent / ".mask.objects.parquet.partial").exists()  # the staging is gone
    np.testing.assert_array_equal(level(path, "0"), mask)  # the mask is untouched


def test_metadata_and_pyramid(scene: Any, cluster: ClusterConfig) -> None:
    path = scene[0]
    result = objects(path, ObjectsConfig(csv=True), cluster)
    meta = json.loads(pq.read_schema(result.table).metadata[b"slideseg"])
    assert meta["mask"] == str(path.resolve()) and meta["mask_record_sha256"] == record_hash(read_mask(path).record)
    assert meta["objects"] == result.objects and meta["objects_config"]["connectivity"] == 4
    assert list(meta["columns"]) == pq.read_schema(result.table).names
    assert meta["columns"]["channel_2_std"].startswith("Standard deviation (population) of slide channel 2 (")
    assert len(meta["channels"]) == 3 and meta["level0_scale"]["sx"] == 1.0
    assert result.csv is not None and len(result.csv.read_text().splitlines()) == result.objects + 1
    ids = level(path, "objects/0")
    assert ids.dtype == np.uint32
    label = ImageLabel.from_zarr(zarr.open_group(path / "objects", mode="r"))
    assert [d.path for d in label.attributes.multiscales[0].datasets] == ["0"]  # 90 x 70: one level, as the mask
    ImageLabel.from_zarr(zarr.open_group(path, mode="r"))  # the mask still validates with objects/ inside
    attrs: dict[str, Any] = dict(zarr.open_group(path / "objects", mode="r").attrs)
    assert attrs["slideseg"]["complete"] and "properties" not in attrs["image-label"]
    location = parse_url(str(path / "objects"), fmt=FormatV04())
    assert location is not None
    node = next(iter(Reader(location)()))
    assert any(isinstance(s, Label) for s in node.specs)
    np.testing.assert_array_equal(np.asarray(node.data[0]), ids)


def test_ngff_05_sharded_mask(tmp_path: Path, cluster: ClusterConfig) -> None:
    from ome_zarr_models.v05.image_label import ImageLabel as ImageLabel05

    mask = class_mask((1100, 60), seed=3)
    path = write_mask(tmp_path / "m.zarr", mask, chunk=64, ngff="0.5", shard=256)
    objects(path, ObjectsConfig(), cluster)
    group = zarr.open_group(path / "objects", mode="r")
    level0 = group["0"]
    assert isinstance(level0, zarr.Array) and level0.chunks == (64, 64) and level0.shards == (256, 256)
    ids = np.asarray(level0[:])
    np.testing.assert_array_equal(ids, reference(mask, (1, 2), 4))
    np.testing.assert_array_equal(level(path, "objects/1"), ids[::2, ::2])
    label = ImageLabel05.from_zarr(group)
    assert [d.path for d in label.attributes.ome.multiscales[0].datasets] == ["0", "1"]
    ImageLabel05.from_zarr(zarr.open_group(path, mode="r"))


def test_min_area_connectivity_and_classes(scene: Any, cluster: ClusterConfig) -> None:
    path, mask, _, _ = scene
    result = objects(path, ObjectsConfig(min_area=8 * MPP**2, connectivity=8, classes="stroma"), cluster)
    ref = reference(mask, (2,), 8, min_area=8)
    ids = level(path, "objects/0")
    np.testing.assert_array_equal(ids, ref)
    everything = reference(mask, (2,), 8)
    assert result.objects == ids.max() and result.dropped == everything.max() - ids.max() > 0
    assert result.per_class == {"stroma": result.objects}
    assert min(pq.read_table(result.table)["pixels"].to_pylist()) >= 8


def store(path: Path) -> dict[str, bytes]:
    """Every file of an instance image and the table's rows, for comparing runs."""
    files = {str(f.relative_to(path)): f.read_bytes() for f in sorted((path / "objects").rglob("*")) if f.is_file()}
    table = pq.read_table(path.parent / "mask.objects.parquet")
    return {**files, "table": json.dumps(table.to_pydict()).encode(), "meta": table.schema.metadata[b"slideseg"]}


_KILL: dict[str, Any] = {}


def _dies_after_five(*args: Any) -> int:
    """A unit task that fails from its sixth call on, as a killed run would stop (module-level, so
    Dask runs this very function and its count is shared)."""
    _KILL["calls"] += 1
    if _KILL["calls"] > 5:
        raise RuntimeError("killed")
    return int(_KILL["task"](*args))


@pytest.mark.parametrize("stage", ["_label_unit", "_write_unit"])
def test_interrupted_and_resumed_equals_uninterrupted(scene: Any, cluster: ClusterConfig,
                                                      monkeypatch: pytest.MonkeyPatch, stage: str) -> None:
    path = scene[0]
    objects(path, ObjectsConfig(chunk=16), cluster)
    expected = store(path)
    _KILL.update(calls=0, task=getattr(objects_module, stage))
    monkeypatch.setattr(objects_module, stage, _dies_after_five)
    with pytest.raises(RuntimeError, match="killed"):
        objects(path, ObjectsConfig(chunk=16, overwrite=True), cluster)
    monkeypatch.setattr(objects_module, stage, _KILL["task"])
    with pytest.raises(OutputExistsError, match="unfinished run; pass --resume"):
        objects(path, ObjectsConfig(chunk=16), cluster)
    with pytest.raises(ConfigError, match=r"cannot resume .*connectivity was 4, now 8"):
        objects(path, ObjectsConfig(chunk=16, resume=True, connectivity=8), cluster)
    result = objects(path, ObjectsConfig(chunk=16, resume=True), cluster)
    assert result.units_already_done == 0 if stage == "_label_unit" else 0 < result.units_already_done <= 5
    assert store(path) == expected


def test_threads_and_worker_processes_give_identical_outputs(scene: Any) -> None:
    path = scene[0]
    objects(path, ObjectsConfig(chunk=16))  # threads in this process (the default)
    expected = store(path)
    objects(path, ObjectsConfig(chunk=16, overwrite=True), ClusterConfig(workers=2))
    assert store(path) == expected


def test_outputs_are_never_replaced_without_overwrite(scene: Any, cluster: ClusterConfig, tmp_path: Path) -> None:
    path = scene[0]
    objects(path, ObjectsConfig(), cluster)
    with pytest.raises(OutputExistsError, match="objects exists; pass --overwrite"):
        objects(path, ObjectsConfig(), cluster)
    objects(path, ObjectsConfig(overwrite=True, table=str(tmp_path / "other.parquet")), cluster)
    with pytest.raises(OutputExistsError, match=r"other\.parquet exists"):
        objects(write_mask(tmp_path / "b.zarr", class_mask()), ObjectsConfig(table=str(tmp_path / "other.parquet")),
                cluster)
    write_mask(path, class_mask(), overwrite=True)  # predict --overwrite replaces a mask with its objects/
    assert not (path / "objects").exists()
    foreign = write_mask(tmp_path / "c.zarr", class_mask())
    (foreign / "objects").mkdir()
    with pytest.raises(OutputFormatError, match="not an instance image slideseg wrote"):
        objects(foreign, ObjectsConfig(overwrite=True), cluster)


def test_mask_on_a_coarser_level_is_measured_in_level_0_pixels(tmp_path: Path, cluster: ClusterConfig) -> None:
    mask = class_mask((40, 30), seed=5)
    pixels = np.random.default_rng(2).integers(0, 256, (80, 60), dtype=np.uint8)
    slide = tmp_path / "s.tif"
    with tifffile.TiffWriter(slide) as tif:  # level 1 is level 0 halved
        tif.write(pixels, subifds=1)
        tif.write(pixels[::2, ::2], subfiletype=1)
    path = write_mask(tmp_path / "m.zarr", mask, chunk=16, source={"path": str(slide), "level": 1})
    result = objects(path, ObjectsConfig(), cluster)
    assert result.scale.sx == result.scale.sy == 2.0
    table = pq.read_table(result.table).to_pydict()
    ref = reference(mask, (1, 2), 4)
    props = regionprops_table(ref, pixels[::2, ::2], properties=("centroid", "bbox", "intensity_mean"))
    np.testing.assert_allclose(table["centroid_x_px"], (props["centroid-1"] + 0.5) * 2, rtol=1e-12)
    assert table["bbox_y1_px"] == (props["bbox-2"] * 2.0).tolist()
    np.testing.assert_allclose(table["channel_0_mean"], props["intensity_mean"], rtol=1e-9)


def test_label_of_an_image(tmp_path: Path, cluster: ClusterConfig) -> None:
    """A mask written with --into IMAGE: objects beside it in IMAGE/labels/NAME/objects, the table
    IMAGE.NAME.objects.parquet beside the image, channels from the image's level 0."""
    from slideseg.write.labels import label_path, parent_levels

    mask = class_mask()
    pixels = np.random.default_rng(4).integers(0, 256, (*mask.shape, 3), dtype=np.uint8)
    image = write_ome_zarr_image(tmp_path / "img.ome.zarr", pixels, MPP, 1)
    path = label_path(image, "nuclei")
    source = {"path": str(image), "level": 0, "resample_factor": 1.0}
    write_mask(path, mask, source=source, into=parent_levels(image))
    result = objects(path, ObjectsConfig(), cluster)
    assert result.table == tmp_path / "img.nuclei.objects.parquet"
    np.testing.assert_array_equal(level(path, "objects/0"), reference(mask, (1, 2), 4))
    table = pq.read_table(result.table).to_pydict()
    props = regionprops_table(reference(mask, (1, 2), 4), pixels, properties=("intensity_mean",))
    np.testing.assert_allclose(table["channel_1_mean"], props["intensity_mean-1"], rtol=1e-9)


@pytest.mark.parametrize("fan_in", [2, 4, 1000])  # merged in several rounds, or in one
def test_table_rows_come_out_sorted_whatever_order_they_came_in(tmp_path: Path, fan_in: int) -> None:
    schema = pa.schema([("id", pa.uint32()), ("v", pa.float64())])
    ids = np.random.default_rng(0).permutation(np.arange(1, 20_001)).astype(np.uint32)
    writer = TableWriter(schema, tmp_path / "runs", run_rows=700, merge_rows=900, group_rows=64, fan_in=fan_in)
    for part in np.array_split(ids, 97):
        writer.add(pa.table({"id": part, "v": part * 0.5}))
    writer.finish(tmp_path / "t.parquet", {"made": "here"}, tmp_path / "t.csv")
    table = pq.read_table(tmp_path / "t.parquet")
    np.testing.assert_array_equal(table["id"].to_numpy(), np.arange(1, 20_001))
    np.testing.assert_array_equal(table["v"].to_numpy(), np.arange(1, 20_001) * 0.5)
    assert json.loads(table.schema.metadata[b"slideseg"]) == {"made": "here"}
    assert (tmp_path / "t.csv").read_text().splitlines()[:2] == ['"id","v"', "1,0.5"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.csv", "t.parquet"]


def one_line_error(*args: Any) -> str:
    result = run_cli("objects", *args, "--no-progress")
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("slideseg: "), result.stderr
    return lines[0]


def test_cli(scene: Any) -> None:
    path = scene[0]
    result = run_cli("objects", path, "--csv", "--no-progress", "--min-area", "1")
    assert result.exit_code == 0, result.output
    assert "objects (" in result.stdout and "objects/s" in result.stdout
    assert (path.parent / "mask.objects.csv").is_file()
    assert "pass --overwrite" in one_line_error(path)
    assert "--resume" in one_line_error(path, "--resume", "--overwrite")


def test_cli_refuses_bad_input(tmp_path: Path, scene: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    path = scene[0]
    (tmp_path / "plain").mkdir()
    assert "is not a Zarr group" in one_line_error(tmp_path / "plain")
    zarr.open_group(tmp_path / "group.zarr", mode="w").create_array("0", shape=(4, 4), dtype="uint8")
    assert "is not a slideseg mask" in one_line_error(tmp_path / "group.zarr")
    assert "does not exist" in one_line_error(tmp_path / "nope.zarr")
    assert "incomplete" in one_line_error(write_mask(tmp_path / "part.zarr", class_mask(), finalize=False))
    floats = write_mask(tmp_path / "f.zarr", class_mask())
    zarr.open_group(floats, mode="r+").create_array("0", shape=(90, 70), dtype="float32", overwrite=True)
    assert "float32" in one_line_error(floats)  # refused when the mask is read, or by objects itself
    other = write_tiff(tmp_path / "other.tif", np.zeros((50, 50, 3), np.uint8))
    assert "is 50 x 50 px but the mask" in one_line_error(path, "--slide", other)
    assert "--connectivity is 6" in one_line_error(path, "--connectivity", "6")
    assert "in a missing one" in one_line_error(path, "--table", tmp_path / "gone" / "t.parquet")
    assert "'fat' is not a class" in one_line_error(path, "--classes", "fat")
    assert "--min-area is -1.0; expected a number of µm² >= 0" in one_line_error(path, "--min-area", "-1")
    monkeypatch.setattr(objects_module, "Numbering", functools.partial(Numbering, limit=10))
    assert "more than 10 objects" in one_line_error(path, "--overwrite")
