"""The command line: the user's walk-through and every bad input, as a user meets them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
from typer.testing import CliRunner

from slideseg.cli import app
from tests.conftest import random_rgb
from tests.test_predict import write_tiff

runner = CliRunner()


def run(*args: str | Path) -> tuple[int, str, str]:
    r = runner.invoke(app, [str(a) for a in args])
    return r.exit_code, r.stdout, r.stderr


@pytest.fixture
def model(tmp_path: Path) -> Path:
    code, out, err = run("new-model", "-o", tmp_path / "m.safetensors", "--depth", "3", "--width", "4")
    assert code == 0, err
    assert "valid tiles: sizes are 8k+4 (>= 92)" in out
    return tmp_path / "m.safetensors"


def test_walk_through(tmp_path: Path, model: Path) -> None:
    code, _, err = run("synth", tmp_path / "demo.ome.tif", "--size", "300", "400", "--no-progress")
    assert code == 0, err
    code, out, err = run("predict", tmp_path / "demo.ome.tif", "-o", tmp_path / "mask.zarr", "--model", model,
                         "--chunk", "128", "--no-progress")
    assert code == 0, err
    assert "wrote" in out and "300 x 400 px" in out
    assert "untrained" in err  # said plainly
    code, out, err = run("info", tmp_path / "mask.zarr", "--json")
    assert code == 0, err
    info = json.loads(out)
    assert info["kind"] == "mask"
    code, out, _ = run("info", tmp_path / "demo.ome.tif", "--json")
    assert code == 0 and json.loads(out)["kind"] == "slide"
    code, out, _ = run("info", model, "--json")
    assert code == 0 and json.loads(out)["config"]["depth"] == 3


def _one_line_error(code: int, err: str, match: str) -> None:
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert match in lines[0], lines[0]


def test_missing_file(tmp_path: Path, model: Path) -> None:
    code, _, err = run("predict", tmp_path / "nope.tif", "-o", tmp_path / "m.zarr", "--model", model)
    _one_line_error(code, err, "nope.tif")


def test_not_an_image(tmp_path: Path, model: Path) -> None:
    (tmp_path / "notes.tif").write_text("hello, I am text")
    code, _, err = run("predict", tmp_path / "notes.tif", "-o", tmp_path / "m.zarr", "--model", model)
    _one_line_error(code, err, "notes.tif")


def test_truncated_tiff(tmp_path: Path, model: Path) -> None:
    path = write_tiff(tmp_path / "s.ome.tif", random_rgb((512, 512)))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    code, _, err = run("predict", path, "-o", tmp_path / "m.zarr", "--model", model, "--no-progress")
    _one_line_error(code, err, "s.ome.tif")


def test_z_stack_is_rejected(tmp_path: Path, model: Path) -> None:
    tifffile.imwrite(tmp_path / "z.ome.tif", np.zeros((3, 64, 64), np.uint8), metadata={"axes": "ZYX"})
    code, _, err = run("predict", tmp_path / "z.ome.tif", "-o", tmp_path / "m.zarr", "--model", model)
    _one_line_error(code, err, "Z")


def test_channel_mismatch(tmp_path: Path, model: Path) -> None:
    grey = write_tiff(tmp_path / "g.ome.tif", random_rgb((60, 60))[..., 0])
    code, _, err = run("predict", grey, "-o", tmp_path / "m.zarr", "--model", model)
    _one_line_error(code, err, "--in-channels 1")


def test_invalid_tile(tmp_path: Path, model: Path) -> None:
    slide = write_tiff(tmp_path / "s.ome.tif", random_rgb((60, 60)))
    code, _, err = run("predict", slide, "-o", tmp_path / "m.zarr", "--model", model, "--tile", "130")
    _one_line_error(code, err, "nearest are 124 and 132")


def test_existing_output(tmp_path: Path, model: Path) -> None:
    slide = write_tiff(tmp_path / "s.ome.tif", random_rgb((60, 60)))
    (tmp_path / "m.zarr").mkdir()
    (tmp_path / "m.zarr" / "precious.txt").write_text("keep me")
    code, _, err = run("predict", slide, "-o", tmp_path / "m.zarr", "--model", model)
    _one_line_error(code, err, "--overwrite")
    assert (tmp_path / "m.zarr" / "precious.txt").read_text() == "keep me"


def test_existing_model_file(model: Path) -> None:
    code, _, err = run("new-model", "-o", model)
    _one_line_error(code, err, "--overwrite")


def test_missing_model(tmp_path: Path) -> None:
    slide = write_tiff(tmp_path / "s.ome.tif", random_rgb((60, 60)))
    code, _, err = run("predict", slide, "-o", tmp_path / "m.zarr", "--model", tmp_path / "x.safetensors")
    _one_line_error(code, err, "slideseg new-model")


def test_debug_shows_the_traceback(tmp_path: Path, model: Path) -> None:
    r = runner.invoke(app, ["--debug", "predict", str(tmp_path / "nope.tif"), "-o", str(tmp_path / "m.zarr"),
                            "--model", str(model)])
    assert r.exit_code != 0 and r.exception is not None


def test_help_explains() -> None:
    code, out, _ = run("predict", "--help")
    assert code == 0 and "seamless" in out and "--tile" in out and "--overwrite" in out


def test_truncated_tiff_fails_when_its_tiles_are_read(tmp_path: Path, model: Path) -> None:
    path = write_tiff(tmp_path / "s.ome.tif", random_rgb((512, 512)))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    code, _, err = run("predict", path, "-o", tmp_path / "m.zarr", "--model", model, "--mpp", "0.5",
                       "--no-tissue", "--no-progress")
    _one_line_error(code, err, "s.ome.tif")
