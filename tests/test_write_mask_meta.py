"""Tests for slideseg.write.mask_meta: a damaged mask (edited attributes, broken array metadata,
damaged chunks) is one clean error from every reader of masks, never a crash or a huge allocation;
a good mask is read as before. Each case was a crash found by the input fuzzer (tests/fuzz)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from slideseg.errors import OutputFormatError, SlideReadError, SlideSegError
from slideseg.io.ngff import LabelClass
from slideseg.tools.describe import describe
from slideseg.write.mask import create_mask, open_mask_writer
from slideseg.write.mask_meta import count_done, describe_mask, open_mask, parse_mask_attrs, read_mask

CLASSES = (LabelClass(0, "background", (0, 0, 0, 0)), LabelClass(1, "tumour", (255, 0, 0, 255)))
SOURCE = {"path": "gone.svs", "series": 0, "level": 0, "resample_factor": 1.0, "level0_shape": [1100, 60]}
SHAPE = (1100, 60)
"""Two levels (1100 > 1024): 1100 x 60 and 550 x 30; 18 x 1 chunks of 64 px."""


def _mask(tmp_path: Path, ngff: str = "0.4", complete: bool = True) -> Path:
    path = tmp_path / f"m-{ngff}.zarr"
    writer = create_mask(path, SHAPE, 64, CLASSES, 0.5, {"source": SOURCE}, ngff=ngff, probabilities=ngff == "0.4")
    ids = (np.indices(SHAPE).sum(axis=0) % 7 == 0).astype(np.uint8)
    for iy, ix in np.ndindex(*writer.grid):
        unit = writer.chunk
        block = ids[iy * unit:(iy + 1) * unit, ix * unit:(ix + 1) * unit]
        probs = np.stack([(block == k).astype(np.uint8) * 255 for k in range(2)]) if ngff == "0.4" else None
        writer.write_chunk(iy, ix, block, probs)
    if complete:
        writer.finalize(num_workers=1)
    return path


def _edit(path: Path, edit: Callable[[dict[str, Any]], Any]) -> None:
    meta = json.loads(path.read_text())
    edit(meta)
    path.write_text(json.dumps(meta))


def _attrs(mask: Path) -> Path:
    return mask / ".zattrs"


def _set(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def edit(meta: dict[str, Any]) -> None:
        meta[key] = value
    return edit


# --- a good mask ---------------------------------------------------------------------------------


@pytest.mark.parametrize("ngff", ["0.4", "0.5"])
def test_a_good_mask_reads_whole(tmp_path: Path, ngff: str) -> None:
    mask = read_mask(_mask(tmp_path, ngff))
    assert [tuple(a.shape) for a in mask.levels] == [SHAPE, (550, 30)]
    assert mask.mpp == 0.5 and mask.names == {0: "background", 1: "tumour"} and mask.source == SOURCE
    info = describe_mask(tmp_path / f"m-{ngff}.zarr")
    assert info["chunks_done"] == info["chunks_total"] == (18 if ngff == "0.4" else 5)


def test_done_is_counted_in_bands_exactly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _mask(tmp_path, complete=False)
    writer = open_mask_writer(path)
    writer._done[3, 0] = 0  # type: ignore[index]
    monkeypatch.setattr("slideseg.write.mask_meta._DONE_BAND", 2)  # 2 rows of the 18 x 1 grid at a time
    done = count_done(writer._done, path)
    assert done.shape == (18, 1) and done.sum() == 17 and not done[3, 0]
    assert describe_mask(path)["chunks_done"] == 17


# --- damaged attributes --------------------------------------------------------------------------


def _axes(meta: dict[str, Any]) -> None:
    meta["multiscales"][0]["axes"] = ["z", "x"]


def _scale(meta: dict[str, Any]) -> None:
    meta["multiscales"][0]["datasets"][0]["coordinateTransformations"][0]["scale"] = ["a", 0.5]


def _datasets(meta: dict[str, Any]) -> None:
    meta["multiscales"][0]["datasets"] = 3


def _colors(meta: dict[str, Any]) -> None:
    meta["image-label"]["colors"] = [{"label-value": 1, "rgba": "red"}]


def _image_label(meta: dict[str, Any]) -> None:
    meta["image-label"] = 7


def _source_level(meta: dict[str, Any]) -> None:
    meta["slideseg"]["source"]["level"] = "abc"


def _source(meta: dict[str, Any]) -> None:
    meta["slideseg"]["source"] = 5


def _into(meta: dict[str, Any]) -> None:
    meta["slideseg"]["into"] = {"paths": ["0", "1"], "shapes": 3}


@pytest.mark.parametrize(("edit", "match"), [
    (_axes, r"its axes is 'zx'; expected y, x"),  # was: masks of any axes read as (y, x)
    (_scale, r"scale as 2 finite numbers > 0, found \['a', 0\.5\]"),  # was: TypeError comparing the scale
    (_datasets, r"'datasets' as a non-empty list of objects, found 3"),  # was: TypeError iterating 3
    (_colors, r"'rgba' as four integers 0-255"),  # was: a class colour of "red" in info
    (_image_label, r"no 'image-label' metadata"),  # was: AttributeError on 7.get
    (_set("slideseg", [1, 2]), r"its 'slideseg' record is \[1, 2\]; expected an object"),  # was: TypeError
    (_source, r"the record of its source slide is 5; expected an object"),  # was: TypeError in dict(5)
    (_source_level, r"source slide's 'level' in its record is 'abc'; expected an integer >= 0"),  # was: int('abc')
    (_into, r"the record of the image it labels \('into'\)"),  # was: KeyError in ParentLevels.from_dict
    (lambda m: m["multiscales"][0].update(version="0.3"), r"its NGFF version is '0\.3'; expected 0\.4 or 0\.5"),
])
def test_malformed_attributes_are_a_clean_error(tmp_path: Path, edit: Callable[[dict[str, Any]], Any],
                                                match: str) -> None:
    mask = _mask(tmp_path)
    _edit(_attrs(mask), edit)
    for read in (read_mask, describe_mask, open_mask_writer):
        with pytest.raises(SlideReadError, match=match):
            read(mask)
    with pytest.raises(SlideReadError, match=match):  # a damaged mask, not an image: info does not fall back
        describe(mask)


def test_parse_mask_attrs_tells_a_foreign_group_from_a_damaged_mask() -> None:
    with pytest.raises(OutputFormatError, match=r"not a slideseg mask: .*image-label, slideseg missing"):
        parse_mask_attrs({"multiscales": [{"axes": ["y", "x"], "datasets": [{"path": "0"}]}]}, "a.zarr")


@pytest.mark.parametrize("damage", [
    lambda m: (m / ".zattrs").write_bytes(b""),  # was: JSONDecodeError from zarr
    lambda m: (m / ".zgroup").write_bytes(b'{"zarr_f\xaf\xff'),  # was: UnicodeDecodeError from json
])
def test_group_metadata_that_zarr_cannot_parse(tmp_path: Path, damage: Callable[[Path], Any]) -> None:
    mask = _mask(tmp_path)
    damage(mask)
    with pytest.raises(OutputFormatError, match=r"is not a Zarr group \((JSONDecodeError|UnicodeDecodeError)"):
        open_mask(mask)
    with pytest.raises(SlideSegError):  # then read as an image by info: refused by the image reader
        describe(mask)


# --- damaged arrays ------------------------------------------------------------------------------


@pytest.mark.parametrize(("ngff", "file", "edit", "match"), [
    # metadata zarr itself cannot parse (was: ValueError / TypeError / JSONDecodeError from zarr)
    ("0.4", "0/.zarray", _set("compressor", 1.5),
     r"could not open the array '0' of .*m-0\.4\.zarr \(\w+Error"),
    ("0.5", "0/zarr.json", lambda m: m["codecs"][0]["configuration"].update(index_codecs=[True]),
     r"could not open the array '0' of .*\(TypeError"),
    ("0.4", "chunks_done/.zarray", _set("shape", 2**40), r"could not open the array 'chunks_done'"),
    ("0.5", "chunks_done/zarr.json", lambda m: m["chunk_key_encoding"].pop("name"),
     r"could not open the array 'chunks_done'"),
    # metadata zarr accepts but slideseg does not
    ("0.4", "0/.zarray", _set("chunks", [0, 64]), r"the chunk shape of level '0' is \(0, 64\)"),
    ("0.4", "0/.zarray", _set("chunks", [2**16, 2**16]), r"chunk shape of level '0' is \(65536, 65536\)"),
    ("0.4", "0/.zarray", _set("dtype", "<u2"), r"level '0' is 'uint16 \(1100, 60\)'; expected a 2-D uint8 array"),
    ("0.4", "0/.zarray", _set("shape", [1100, 2**30]), r"the shape of level '0' is \(1100, 1073741824\); expected "
                                                       r"sides of 1 to 16777216 px"),
    ("0.4", "1/.zarray", _set("shape", [550, 3000]), r"the shape of level '1' is \(550, 3000\); expected \(550, 30\)"),
])
def test_array_metadata_is_checked_before_reading(tmp_path: Path, ngff: str, file: str,
                                                  edit: Callable[[dict[str, Any]], Any], match: str) -> None:
    mask = _mask(tmp_path, ngff)
    _edit(mask / file, edit)
    with pytest.raises(SlideReadError, match=match):
        read_mask(mask)


@pytest.mark.parametrize(("shape", "dtype"), [
    ([18, 2**40], "|u1"),  # was: MemoryError reading done[:] of 2**44 elements
    ([2**20, 2**20], "|u1"),  # would be read for hours, (1, 1) chunk by chunk
    ([18], "|u1"),
    ([18, 1], "<f8"),
])
def test_chunks_done_must_match_the_level0_grid_before_it_is_read(tmp_path: Path, shape: list[int],
                                                                  dtype: str) -> None:
    mask = _mask(tmp_path)
    _edit(mask / "chunks_done" / ".zarray", lambda m: m.update(shape=shape, dtype=dtype, chunks=[1] * len(shape)))
    for read in (describe_mask, read_mask, open_mask_writer):
        with pytest.raises(SlideReadError, match=r"its 'chunks_done' record is|the shape of its 'chunks_done' record "
                                                 r"is .*; expected \(18, 1\) \(from level 0\)"):
            read(mask)


@pytest.mark.parametrize("ngff", ["0.4", "0.5"])
def test_a_damaged_done_chunk_is_a_clean_error(tmp_path: Path, ngff: str) -> None:
    mask = _mask(tmp_path, ngff)
    done = next(f for f in sorted((mask / "chunks_done").rglob("*")) if f.is_file() and not f.name.startswith(
        (".", "zarr.json")))
    done.write_bytes(b"")  # was: ValueError "cannot reshape array of size 0" from zarr
    with pytest.raises(SlideReadError, match=r"could not read rows .* of 'chunks_done' in .*m-0\.[45]\.zarr"):
        describe_mask(mask)


@pytest.mark.parametrize(("edit", "match"), [
    (lambda m: _edit(m / "probabilities" / "0" / ".zarray", _set("shape", [3, 1100, 60])),
     r"the shape of 'probabilities/0' is \(3, 1100, 60\); expected \(2, 1100, 60\)"),
    (lambda m: (m / "probabilities" / "0" / ".zarray").unlink(), r"its 'probabilities/0' array is 'missing'"),
])
def test_resume_checks_the_probabilities(tmp_path: Path, edit: Callable[[Path], Any], match: str) -> None:
    # was: AssertionError or KeyError in MaskWriter, or writes of the wrong shape
    mask = _mask(tmp_path, complete=False)
    edit(mask)
    with pytest.raises(SlideReadError, match=match):
        open_mask_writer(mask)
