"""`predict --objects`: the objects of the mask right after it, as `slideseg objects` makes them,
without changing the mask or what a resume compares; what `objects` would refuse is refused before
the mask is computed."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

import slideseg.predict.run
from slideseg.errors import ConfigError, OutputExistsError, OutputFormatError
from slideseg.predict import PredictConfig, predict
from slideseg.predict.config import OUTPUT_FIELDS
from slideseg.tools.components import LabelSpec, label_image
from slideseg.write.instances import instances_record
from tests.conftest import random_rgb, read_level, run_cli, write_tiff

CPU = PredictConfig(device="cpu", tissue=False, chunk=64)


@pytest.fixture
def slide(tmp_path: Path) -> Path:
    return write_tiff(tmp_path / "s.ome.tif", random_rgb((96, 128)))


def test_objects_follow_the_mask(tmp_path: Path, slide: Path, model_file: Path) -> None:
    result = predict(slide, tmp_path / "m.zarr", model_file, dataclasses.replace(CPU, objects=True))
    mask = read_level(tmp_path / "m.zarr")
    instances = read_level(tmp_path / "m.zarr", "objects/0")
    expected = label_image(mask, LabelSpec(tuple(v for v in np.unique(mask).tolist() if v)))  # objects' defaults
    assert expected.max() > 1 and np.array_equal(instances, expected)
    table = pq.read_table(tmp_path / "m.objects.parquet")
    assert table.column("id").to_pylist() == list(range(1, int(expected.max()) + 1))
    assert instances_record(tmp_path / "m.zarr")["complete"] is True  # type: ignore[index]
    assert any(note.startswith(f"objects: {expected.max()} in ") for note in result.warnings)
    predict(slide, tmp_path / "p.zarr", model_file, CPU)
    assert np.array_equal(read_level(tmp_path / "p.zarr"), mask) and instances_record(tmp_path / "p.zarr") is None
    assert "objects" not in OUTPUT_FIELDS  # the mask is the same with or without it


def test_resuming_a_complete_mask_adds_or_keeps_its_objects(tmp_path: Path, slide: Path, model_file: Path) -> None:
    predict(slide, tmp_path / "m.zarr", model_file, CPU)
    added = predict(slide, tmp_path / "m.zarr", model_file, dataclasses.replace(CPU, resume=True, objects=True))
    assert added.already_complete and instances_record(tmp_path / "m.zarr") is not None
    kept = predict(slide, tmp_path / "m.zarr", model_file, dataclasses.replace(CPU, resume=True, objects=True))
    assert any("already in" in note for note in kept.warnings)


def test_the_option(tmp_path: Path, slide: Path, model_file: Path) -> None:
    r = run_cli("predict", slide, "-o", tmp_path / "m.zarr", "--model", model_file, "--no-tissue", "--device",
                "cpu", "--chunk", "64", "--objects", "--no-progress")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "m.objects.parquet").is_file() and "objects:" in r.output


def _opened(*args: object, **kwargs: object) -> None:
    raise AssertionError("predict opened its output before refusing")


@contextmanager
def refused_before_the_output() -> Iterator[None]:
    """Within: predict fails the test if it gets as far as opening (or writing) its output."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(slideseg.predict.run, "_write", _opened)
        yield


def test_an_object_table_from_another_run_is_refused_before_the_mask(tmp_path: Path, slide: Path,
                                                                      model_file: Path) -> None:
    table = tmp_path / "m.objects.parquet"
    table.write_bytes(b"an earlier table")
    with refused_before_the_output(), pytest.raises(OutputExistsError,
                                                    match=r"m\.objects\.parquet, which exists .*pass --overwrite"):
        predict(slide, tmp_path / "m.zarr", model_file, dataclasses.replace(CPU, objects=True))
    assert not (tmp_path / "m.zarr").exists() and table.read_bytes() == b"an earlier table"
    predict(slide, tmp_path / "m.zarr", model_file, dataclasses.replace(CPU, objects=True, overwrite=True))
    ids = pq.read_table(table).column("id").to_pylist()  # replaced by this mask's objects
    assert ids == list(range(1, int(read_level(tmp_path / "m.zarr", "objects/0").max()) + 1))


def test_resume_refuses_a_table_its_mask_has_no_objects_for(tmp_path: Path, slide: Path, model_file: Path) -> None:
    mask = tmp_path / "m.zarr"
    predict(slide, mask, model_file, CPU)  # a complete mask without objects, and a stale table beside it
    table = tmp_path / "m.objects.parquet"
    table.write_bytes(b"stale")
    resume = dataclasses.replace(CPU, resume=True, objects=True)
    with refused_before_the_output(), pytest.raises(
            OutputExistsError, match=r"drop --objects and run `slideseg objects .*m\.zarr --overwrite`"):
        predict(slide, mask, model_file, resume)
    assert instances_record(mask) is None and table.read_bytes() == b"stale"
    (mask / "objects").mkdir()  # not slideseg's
    with refused_before_the_output(), pytest.raises(OutputFormatError, match="not an instance image slideseg wrote"):
        predict(slide, mask, model_file, resume)


def test_a_table_name_that_is_a_directory(tmp_path: Path, slide: Path, model_file: Path) -> None:
    (tmp_path / "m.objects.parquet").mkdir()
    for overwrite in (False, True):
        with refused_before_the_output(), pytest.raises(ConfigError, match=r"objects\.parquet, which is a directory"):
            predict(slide, tmp_path / "m.zarr", model_file, dataclasses.replace(CPU, objects=True, overwrite=overwrite))
    assert not (tmp_path / "m.zarr").exists()


def test_the_option_refuses_in_one_line(tmp_path: Path, slide: Path, model_file: Path) -> None:
    (tmp_path / "m.objects.parquet").write_bytes(b"")
    r = run_cli("predict", slide, "-o", tmp_path / "m.zarr", "--model", model_file, "--no-tissue", "--device",
                "cpu", "--chunk", "64", "--objects", "--no-progress")
    assert r.exit_code == 2 and r.stderr.count("\n") == 1 and "which exists from another run" in r.stderr, r.output
    assert not (tmp_path / "m.zarr").exists()
