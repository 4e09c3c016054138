"""`predict --objects`: the objects of the mask right after it, as `slideseg objects` makes them,
without changing the mask or what a resume compares."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

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
