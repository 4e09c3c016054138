"""`slideseg train` and `slideseg evaluate` as a user runs them: a model trained from directories
predicts and evaluates, and bad data is one line and exit code 2."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile

from slideseg.errors import TrainingDataError
from slideseg.train.data import load_training_data
from tests.conftest import run_cli


def test_cli_train_and_evaluate(data_root: Path, tmp_path: Path) -> None:
    tr, va = data_root / "train", data_root / "val"
    r = run_cli("train", "--images", tr, "--masks", tr, "--val-images", va, "--val-masks", va,
                "-o", tmp_path / "m.safetensors", "--depth", "2", "--width", "4", "--tile", "132", "--steps", "4",
                "--tiles-per-epoch", "2", "--batch-size", "1", "--val-tiles", "2", "--optimizer", "adam")
    assert r.exit_code == 0, r.stderr
    assert "wrote" in r.stdout and "m.metrics.csv" in r.stdout
    assert "train: epoch 2, step 4/4" in r.stderr  # not a terminal: one line per epoch
    r = run_cli("predict", va / "val.ome.tif", "-o", tmp_path / "p.zarr", "--model", tmp_path / "m.safetensors",
                "--no-progress")
    assert r.exit_code == 0, r.stderr
    assert "untrained" not in r.stderr
    r = run_cli("evaluate", tmp_path / "p.zarr", va / "val.truth.zarr", "--json")
    assert r.exit_code == 0, r.stderr
    assert {"iou", "dice", "objects", "merges"} <= set(json.loads(r.stdout))


@pytest.mark.parametrize(("setup", "match"), [
    ("empty", "no images in"),
    ("mismatch", "is 40 x 50 px but its mask"),
])
def test_cli_bad_data_exits_2_with_one_line(tmp_path: Path, setup: str, match: str) -> None:
    d = tmp_path / "d"
    d.mkdir()
    if setup == "mismatch":
        tifffile.imwrite(d / "a.tif", np.zeros((40, 50, 3), np.uint8), photometric="rgb")
        tifffile.imwrite(d / "a_mask.tif", np.zeros((41, 50), np.uint8))
    r = run_cli("train", "--images", d, "--masks", d, "-o", tmp_path / "m.safetensors")
    assert r.exit_code == 2
    assert len(r.stderr.strip().splitlines()) == 1
    assert match in r.stderr.replace("\n", " ")
    with pytest.raises(TrainingDataError, match=match):  # the library says the same
        load_training_data(images=d, masks=d)


def test_cli_separation_width_is_checked_before_data_is_read(tmp_path: Path) -> None:
    r = run_cli("train", "--images", tmp_path / "none", "--masks", tmp_path / "none", "-o", tmp_path / "m.safetensors",
                "--separation-width", "3")
    assert r.exit_code == 2
    assert r.stderr.strip().splitlines() == [r.stderr.strip()]
    assert "--separation-width must be 1 or 2 px, got 3" in r.stderr
