"""`slideseg export` (ONNX files and TensorRT plans) and `slideseg plan` (the plan of a slide and
the measured seam error per halo), as a user runs them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import random_rgb, run_cli, save_tiny_model, write_tiff


@pytest.fixture
def model(tmp_path: Path) -> Path:
    return save_tiny_model(tmp_path / "m.safetensors", seed=1, depth=3, classes=3)


def test_export_writes_checks_and_refuses_to_overwrite(tmp_path: Path, model: Path) -> None:
    pytest.importorskip("onnxscript")
    args = ["export", model, "--tile", "124", "-o", tmp_path / "m.onnx"]
    r = run_cli(*args)
    assert r.exit_code == 0, r.stderr
    assert "wrote" in r.stdout and "max |logit difference|" in r.stdout
    assert (tmp_path / "m.onnx").stat().st_size > 1000
    r = run_cli(*args)
    assert r.exit_code == 2 and "--overwrite" in r.stderr


def test_export_tensorrt_without_tensorrt_is_one_line_with_a_hint(tmp_path: Path, model: Path) -> None:
    r = run_cli("export", model, "--format", "tensorrt", "--tile", "124")
    assert r.exit_code == 2 and len(r.stderr.strip().splitlines()) == 1
    assert "GPU" in r.stderr or "slideseg[gpu]" in r.stderr


def test_plan_reports_the_seam_error_per_halo(same_onnx: Path) -> None:
    r = run_cli("plan", "--model", same_onnx, "--device", "cpu", "--region", "128", "--halo", "0", "--halo", "16",
                "--json")
    assert r.exit_code == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["padding"] == "same" and [row["halo"] for row in report["seam_error"]] == [0, 16]
    assert report["seam_error"][0]["max_abs"] > report["seam_error"][1]["max_abs"]


def test_plan_for_a_slide_shows_the_plan_and_an_exact_valid_model(tmp_path: Path, model: Path) -> None:
    slide = write_tiff(tmp_path / "s.ome.tif", random_rgb((300, 200), seed=2))
    args = ["plan", slide, "--model", model, "--chunk", "128", "--region", "160"]
    r = run_cli(*args)
    assert r.exit_code == 0, r.stderr
    assert "plan: 3 x 2 chunks of 128 px" in r.stdout and "n/a (valid)" in r.stdout
    report = json.loads(run_cli(*args, "--json").stdout)
    (row,) = report["seam_error"]
    assert row["region"] == [160, 160] and row["max_abs"] < 1e-5 and row["changed_ids"] < 1e-3  # exact
