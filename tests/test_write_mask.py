"""Tests for slideseg.write.mask: what is written reads back, the pyramid is exact, and the output is
an OME-NGFF 0.4 label image that ome-zarr-models validates and ome-zarr reads."""

from __future__ import annotations

import json
import tracemalloc
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from ome_zarr.format import FormatV04
from ome_zarr.io import parse_url
from ome_zarr.reader import Label, Multiscales, Reader
from ome_zarr_models.v04.image import Image
from ome_zarr_models.v04.image_label import ImageLabel

from slideseg.errors import ConfigError, OutputExistsError, OutputFormatError, SlideReadError
from slideseg.io.ngff import LabelClass
from slideseg.plan.tiles import grid_box
from slideseg.write.mask import MaskWriter, create_mask, describe_mask, open_mask
from tests.conftest import read_level

CLASSES = (
    LabelClass(0, "background", (0, 0, 0, 0)),
    LabelClass(1, "tumour", (255, 0, 0, 255)),
    LabelClass(2, "stroma", (0, 200, 0, 128)),
)
ATTRS = {"version": "0.1.0", "weights_sha256": "ab" * 32, "predict": {"tile": 572, "level": 0}}


def _fill(writer: MaskWriter, seed: int = 0, probabilities: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Write random ids (and probabilities) chunk by chunk from 4 threads; return what was written."""
    rng = np.random.default_rng(seed)
    h, w = writer.shape
    ids = rng.integers(0, 3, (h, w), dtype=np.uint8)
    ids[: h // 3, : w // 3] = 0  # some all-background chunks, which are not stored
    probs = rng.integers(0, 256, (writer.n_classes, h, w), dtype=np.uint8)

    def write(ij: tuple[int, int]) -> None:
        y0, y1, x0, x1 = grid_box(*ij, writer.shape, writer.chunk)
        p = probs[:, y0:y1, x0:x1] if probabilities else None
        writer.write_chunk(*ij, ids[y0:y1, x0:x1], p)

    ny, nx = writer.grid
    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(write, [(iy, ix) for iy in range(ny) for ix in range(nx)]))
    return ids, probs


def _scales(group: zarr.Group) -> list[list[float]]:
    attrs: dict[str, Any] = dict(group.attrs)
    return [d["coordinateTransformations"][0]["scale"] for d in attrs["multiscales"][0]["datasets"]]


@pytest.mark.parametrize(
    ("shape", "chunk", "n_levels"),
    [
        ((1000, 1500), 256, 2),  # 1500 > 1024, so one more level: 500 x 750
        ((40, 60), 16, 1),  # already <= 1024: level 0 only
        ((2100, 300), 512, 3),  # 2100 -> 1050 -> 525
    ],
)
def test_round_trip_and_pyramid(tmp_path: Path, shape: tuple[int, int], chunk: int, n_levels: int) -> None:
    path = tmp_path / "mask.zarr"
    writer = create_mask(path, shape, chunk, CLASSES, 0.25, ATTRS)
    ids, _ = _fill(writer)
    assert describe_mask(path)["complete"] is False
    writer.finalize(num_workers=3)

    group = open_mask(path)
    assert sorted(k for k, _ in group.arrays()) == [*(str(lv) for lv in range(n_levels)), "chunks_done"]
    assert np.asarray(group["chunks_done"][:]).all()  # type: ignore[index]
    for level in range(n_levels):
        arr = group[str(level)]
        assert isinstance(arr, zarr.Array)
        assert arr.dtype == np.uint8
        assert arr.chunks == (chunk, chunk)
        np.testing.assert_array_equal(arr[:], ids[:: 2**level, :: 2**level])
    last = group[str(n_levels - 1)]
    assert isinstance(last, zarr.Array)
    assert max(last.shape) <= 1024
    assert _scales(group) == [[0.25 * 2**lv] * 2 for lv in range(n_levels)]
    assert json.loads(json.dumps(describe_mask(path)))["complete"] is True


def test_pyramid_is_built_chunk_by_chunk_in_bounded_memory(tmp_path: Path) -> None:
    """finalize reads the source of one output chunk at a time: its peak memory is a few chunks,
    far below one level, and the all-background chunks of every level stay unstored."""
    shape, chunk = (4096, 2048), 256  # level 0: 8 MiB; levels 1 and 2: 2048 x 1024 and 1024 x 512
    ids = (np.add.outer(np.arange(shape[0]) // 7, np.arange(shape[1]) // 5) % 3).astype(np.uint8)
    ids[: shape[0] // 2] = 0  # the top half is background
    path = tmp_path / "mask.zarr"
    writer = create_mask(path, shape, chunk, CLASSES, None, ATTRS)
    for iy, ix in np.ndindex(*writer.grid):
        y0, y1, x0, x1 = grid_box(iy, ix, shape, chunk)
        writer.write_chunk(iy, ix, ids[y0:y1, x0:x1])
    tracemalloc.start()
    try:
        writer.finalize(num_workers=2)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < ids.nbytes // 2, f"{peak / 2**20:.1f} MiB"  # (about 1.2 MiB measured)
    for level, (h, w) in ((1, (2048, 1024)), (2, (1024, 512))):
        np.testing.assert_array_equal(read_level(path, str(level)), ids[:: 2**level, :: 2**level])
        stored = {f.relative_to(path / str(level)).parts for f in (path / str(level)).rglob("*")
                  if f.is_file() and not f.name.startswith(".")}
        rows = range(h // 2 // chunk, -(-h // chunk))  # only the chunk rows of the bottom half hold labels
        assert stored == {(str(iy), str(ix)) for iy in rows for ix in range(-(-w // chunk))}


def test_zarr_v2_layout(tmp_path: Path) -> None:
    path = tmp_path / "mask.zarr"
    writer = create_mask(path, (40, 60), 16, CLASSES, 0.5, ATTRS)
    writer.write_chunk(1, 2, np.full((16, 16), 2, np.uint8))
    writer.finalize()
    meta = json.loads((path / "0" / ".zarray").read_text())
    assert meta["zarr_format"] == 2
    assert meta["dimension_separator"] == "/"
    assert meta["dtype"] == "|u1"
    assert meta["fill_value"] == 0
    assert meta["compressor"] == {"id": "blosc", "cname": "zstd", "clevel": 5, "shuffle": 2, "blocksize": 0}
    assert (path / "0" / "1" / "2").is_file()  # nested chunk keys
    assert not (path / "0" / "0" / "0").exists()  # all-background chunks are not stored


def test_validates_with_ome_zarr_models(tmp_path: Path) -> None:
    path = tmp_path / "mask.zarr"
    writer = create_mask(path, (1000, 1500), 256, CLASSES, 0.25, ATTRS, probabilities=True)
    _fill(writer, probabilities=True)
    writer.finalize()
    label = ImageLabel.from_zarr(zarr.open_group(path, mode="r"))
    assert [c.label_value for c in label.attributes.image_label.colors or ()] == [0, 1, 2]
    assert [d.path for d in label.attributes.multiscales[0].datasets] == ["0", "1"]
    probs = Image.from_zarr(zarr.open_group(path / "probabilities", mode="r"))
    assert [a.name for a in probs.attributes.multiscales[0].axes] == ["c", "y", "x"]


def test_label_image_needs_matching_colors_and_properties(tmp_path: Path) -> None:
    """ome-zarr-models rejects a label image whose colors and properties list other values."""
    path = tmp_path / "mask.zarr"
    create_mask(path, (40, 60), 16, CLASSES, None, ATTRS).finalize()
    group = zarr.open_group(path, mode="r+")
    attrs: dict[str, Any] = dict(group.attrs)
    attrs["image-label"]["properties"] = attrs["image-label"]["properties"][1:]  # drop 0
    group.attrs.put(attrs)
    with pytest.raises(ValueError, match=r"Inconsistent `label_value` attributes in `colors` and `properties`"):
        ImageLabel.from_zarr(zarr.open_group(path, mode="r"))


def test_opens_with_ome_zarr_reader(tmp_path: Path) -> None:
    path = tmp_path / "mask.zarr"
    writer = create_mask(path, (1000, 1500), 256, CLASSES, 0.25, ATTRS)
    ids, _ = _fill(writer)
    writer.finalize()
    location = parse_url(str(path), fmt=FormatV04())
    assert location is not None
    node = next(iter(Reader(location)()))
    assert any(isinstance(s, Label) for s in node.specs)
    assert any(isinstance(s, Multiscales) for s in node.specs)
    assert [d.shape for d in node.data] == [(1000, 1500), (500, 750)]
    np.testing.assert_array_equal(np.asarray(node.data[1]), ids[::2, ::2])
    transforms = node.metadata["coordinateTransformations"]
    assert [t[0]["scale"] for t in transforms] == [[0.25, 0.25], [0.5, 0.5]]
    assert node.metadata["color"] == {c.value: [v / 255 for v in c.rgba] for c in CLASSES}
    assert node.metadata["properties"][1] == {"class": "tumour"}


def test_probabilities_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "mask.zarr"
    writer = create_mask(path, (1100, 300), 128, CLASSES, None, ATTRS, probabilities=True)
    _, probs = _fill(writer, seed=3, probabilities=True)
    writer.finalize()
    group = zarr.open_group(path / "probabilities", mode="r")
    for level in (0, 1):
        arr = group[str(level)]
        assert isinstance(arr, zarr.Array)
        assert arr.chunks == (1, 128, 128)
        np.testing.assert_array_equal(arr[:], probs[:, :: 2**level, :: 2**level])
    assert _scales(group) == [[1.0, 1.0, 1.0], [1.0, 2.0, 2.0]]  # no mpp: scale in pixels
    info = describe_mask(path)
    assert info["mpp"] is None
    assert [lv["shape"] for lv in info["probabilities"]] == [[3, 1100, 300], [3, 550, 150]]


def test_metadata_and_describe(tmp_path: Path) -> None:
    path = tmp_path / "mask.zarr"
    create_mask(path, (40, 60), 16, CLASSES[::-1], 0.5, ATTRS).finalize()
    attrs: dict[str, Any] = dict(open_mask(path).attrs)
    assert attrs["multiscales"][0]["axes"] == [
        {"name": "y", "type": "space", "unit": "micrometer"},
        {"name": "x", "type": "space", "unit": "micrometer"},
    ]
    assert attrs["image-label"]["colors"][1] == {"label-value": 1, "rgba": [255, 0, 0, 255]}
    assert attrs["slideseg"] == {**ATTRS, "complete": True}
    info = describe_mask(path)
    assert json.loads(json.dumps(info)) == info
    assert info["mpp"] == 0.5
    assert [c["name"] for c in info["classes"]] == ["background", "tumour", "stroma"]
    assert info["levels"] == [{"path": "0", "shape": [40, 60], "chunks": [16, 16], "scale": [0.5, 0.5]}]
    assert info["probabilities"] is None
    assert info["slideseg"]["weights_sha256"] == "ab" * 32


def test_no_mpp_omits_units(tmp_path: Path) -> None:
    path = tmp_path / "mask.zarr"
    create_mask(path, (40, 60), 16, CLASSES, None, ATTRS).finalize()
    attrs: dict[str, Any] = dict(open_mask(path).attrs)
    assert attrs["multiscales"][0]["axes"] == [{"name": "y", "type": "space"}, {"name": "x", "type": "space"}]
    assert _scales(open_mask(path)) == [[1.0, 1.0]]


# --- existing outputs ------------------------------------------------------------------------


def test_existing_output_needs_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "mask.zarr"
    create_mask(path, (40, 60), 16, CLASSES, None, ATTRS).finalize()
    with pytest.raises(OutputExistsError, match=r"mask\.zarr exists; pass --overwrite to replace it"):
        create_mask(path, (40, 60), 16, CLASSES, None, ATTRS)


def test_overwrite_replaces_a_mask(tmp_path: Path) -> None:
    path = tmp_path / "mask.zarr"
    old = create_mask(path, (1100, 60), 64, CLASSES, None, ATTRS, probabilities=True)
    _fill(old, probabilities=True)
    old.finalize()
    new = create_mask(path, (40, 60), 16, CLASSES, None, {"run": 2}, overwrite=True)
    new.finalize()
    assert sorted(p.name for p in path.iterdir()) == [".zattrs", ".zgroup", "0", "chunks_done"]
    assert describe_mask(path)["slideseg"] == {"run": 2, "complete": True}
    assert not np.asarray(zarr.open_array(path / "0", mode="r")[:]).any()


def test_overwrite_refuses_a_regular_file(tmp_path: Path) -> None:
    path = tmp_path / "mask.zarr"
    path.write_text("precious")
    with pytest.raises(OutputFormatError, match=r"not a directory .*refusing to replace it"):
        create_mask(path, (40, 60), 16, CLASSES, None, ATTRS, overwrite=True)
    assert path.read_text() == "precious"


@pytest.mark.parametrize(
    "make",
    [
        lambda p: (p / "notes.txt").write_text("mine"),  # a directory of the user's files
        lambda p: zarr.open_group(p, mode="w", zarr_format=2),  # a Zarr that slideseg did not write
    ],
)
def test_overwrite_refuses_a_directory_we_did_not_write(tmp_path: Path, make: Any) -> None:
    path = tmp_path / "out.zarr"
    path.mkdir()
    make(path)
    before = sorted(p.name for p in path.iterdir())
    with pytest.raises(OutputFormatError, match=r"is not a slideseg mask .*remove it yourself"):
        create_mask(path, (40, 60), 16, CLASSES, None, ATTRS, overwrite=True)
    assert sorted(p.name for p in path.iterdir()) == before


def test_overwrite_refuses_a_mask_with_extra_files(tmp_path: Path) -> None:
    path = tmp_path / "mask.zarr"
    create_mask(path, (40, 60), 16, CLASSES, None, ATTRS).finalize()
    (path / "analysis.csv").write_text("a,b\n")
    with pytest.raises(OutputFormatError, match=r"holds \['analysis\.csv'\]"):
        create_mask(path, (40, 60), 16, CLASSES, None, ATTRS, overwrite=True)


def test_open_mask_errors(tmp_path: Path) -> None:
    with pytest.raises(SlideReadError, match="does not exist"):
        open_mask(tmp_path / "nope.zarr")
    zarr.open_group(tmp_path / "plain.zarr", mode="w", zarr_format=2)
    with pytest.raises(OutputFormatError, match=r"not a slideseg mask: .*image-label, slideseg missing"):
        open_mask(tmp_path / "plain.zarr")


# --- wrong input -----------------------------------------------------------------------------


@pytest.fixture
def writer(tmp_path: Path) -> MaskWriter:
    return create_mask(tmp_path / "mask.zarr", (40, 60), 16, CLASSES, None, ATTRS)


@pytest.mark.parametrize(
    ("iy", "ix", "ids", "match"),
    [
        (0, 0, np.zeros((16, 15), np.uint8), r"shape \(16, 16\); got uint8 \(16, 15\)"),
        (2, 3, np.zeros((16, 16), np.uint8), r"shape \(8, 12\)"),  # edge chunks are clipped
        (0, 0, np.zeros((16, 16), np.int64), r"must be a uint8 array .*got int64"),
        (3, 0, np.zeros((16, 16), np.uint8), r"outside the 3 x 4 grid"),
    ],
)
def test_write_chunk_rejects_wrong_blocks(writer: MaskWriter, iy: int, ix: int, ids: np.ndarray, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        writer.write_chunk(iy, ix, ids)


def test_probabilities_must_match_the_mask(tmp_path: Path, writer: MaskWriter) -> None:
    ids = np.zeros((16, 16), np.uint8)
    with pytest.raises(ValueError, match="probabilities=False"):
        writer.write_chunk(0, 0, ids, np.zeros((3, 16, 16), np.uint8))
    with_probs = create_mask(tmp_path / "p.zarr", (40, 60), 16, CLASSES, None, ATTRS, probabilities=True)
    with pytest.raises(ValueError, match=r"probs for chunk \(0, 0\) must be a uint8 array of shape \(3, 16, 16\)"):
        with_probs.write_chunk(0, 0, ids, np.zeros((2, 16, 16), np.uint8))
    with pytest.raises(ValueError, match="probabilities were not given"):
        with_probs.write_chunk(0, 0, ids)


def test_no_writes_after_finalize(writer: MaskWriter) -> None:
    writer.finalize()
    with pytest.raises(ValueError, match="is finalized"):
        writer.write_chunk(0, 0, np.zeros((16, 16), np.uint8))


@pytest.mark.parametrize(
    ("classes", "match"),
    [
        (CLASSES[1:], r"including the background 0"),
        ((*CLASSES, LabelClass(2, "again", (1, 2, 3, 4))), r"distinct values"),
    ],
)
def test_bad_classes(tmp_path: Path, classes: tuple[LabelClass, ...], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        create_mask(tmp_path / "m.zarr", (40, 60), 16, classes, None, ATTRS)
    assert not (tmp_path / "m.zarr").exists()


def test_attrs_must_be_json(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not JSON"):
        create_mask(tmp_path / "m.zarr", (40, 60), 16, CLASSES, None, {"path": Path("x")})


def test_ngff_05_sharded_round_trip_and_validation(tmp_path: Path) -> None:
    """NGFF 0.5: Zarr v3, attributes under `ome`, dimension names, shards of 4 x 4 chunks written
    whole by one call each; validates with ome-zarr-models and opens with ome-zarr's reader."""
    from ome_zarr.format import FormatV05
    from ome_zarr_models.v05.image import Image as Image05
    from ome_zarr_models.v05.image_label import ImageLabel as ImageLabel05

    path = tmp_path / "mask.zarr"
    writer = create_mask(path, (1000, 1500), 64, CLASSES, 0.5, ATTRS, probabilities=True, ngff="0.5", shard=256)
    assert writer.chunk == 256 and writer.grid == (4, 6)  # the write unit is the shard
    ids, probs = _fill(writer, probabilities=True)
    writer.finalize(num_workers=2)
    group = zarr.open_group(path, mode="r")
    assert group.metadata.zarr_format == 3 and group.attrs["ome"]["version"] == "0.5"  # type: ignore[index]
    level0 = group["0"]
    assert isinstance(level0, zarr.Array)
    assert level0.chunks == (64, 64) and level0.shards == (256, 256)
    assert level0.metadata.dimension_names == ("y", "x")  # type: ignore[union-attr]
    np.testing.assert_array_equal(level0[:], ids)
    np.testing.assert_array_equal(group["1"][:], ids[::2, ::2])  # type: ignore[index]
    np.testing.assert_array_equal(group["probabilities/0"][:], probs)  # type: ignore[index]
    label = ImageLabel05.from_zarr(group)
    assert [c.label_value for c in label.attributes.ome.image_label.colors or ()] == [0, 1, 2]  # type: ignore[union-attr]
    Image05.from_zarr(zarr.open_group(path / "probabilities", mode="r"))
    location = parse_url(str(path), fmt=FormatV05())
    assert location is not None
    node = next(iter(Reader(location)()))
    assert any(isinstance(s, Label) for s in node.specs)
    assert [t[0]["scale"] for t in node.metadata["coordinateTransformations"]] == [[0.5, 0.5], [1.0, 1.0]]
    d = describe_mask(path)
    assert d["ngff"] == "0.5" and d["complete"] is True and d["chunks_done"] == 24


def test_shard_must_hold_whole_chunks(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="multiple of the chunk"):
        create_mask(tmp_path / "m.zarr", (100, 100), 64, CLASSES, None, ATTRS, ngff="0.5", shard=100)
    with pytest.raises(ConfigError, match=r"--shard applies to --ngff 0\.5"):
        create_mask(tmp_path / "m.zarr", (100, 100), 64, CLASSES, None, ATTRS, shard=128)
