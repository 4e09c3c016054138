"""The command line: the user's walk-through and every bad input, as a user meets them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
from typer.testing import CliRunner

from slideseg.cli import app
from slideseg.errors import ConfigError
from slideseg.model.config import read_model_config
from slideseg.predict import DEFAULT_MODEL, BatchItem, PredictConfig, PredictResult, predict_slides
from slideseg.write.mask import describe_mask
from tests.conftest import random_rgb, write_tiff

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


def test_predict_help_groups_its_options() -> None:
    code, out, _ = run("predict", "--help")
    assert code == 0
    panels = ["Input", "Model and engine", "Output", "Scale-out (cluster)", "Display"]
    starts = [out.find(f"─ {p} ─") for p in panels]
    assert all(i >= 0 for i in starts) and starts == sorted(starts), out  # each panel, in this order
    scale_out = out[starts[3]:starts[4]]
    assert "--workers" in scale_out and "--walltime" in scale_out and "slideseg[hpc]" in scale_out
    assert "--precision" in out[starts[1]:starts[2]] and "--resume" in out[starts[2]:starts[3]]


def test_no_output(tmp_path: Path, model: Path) -> None:
    slide = write_tiff(tmp_path / "s.ome.tif", random_rgb((60, 60)))
    code, _, err = run("predict", slide, "--model", model)
    _one_line_error(code, err, "no output given")


def test_several_slides_into_a_directory(tmp_path: Path, model: Path) -> None:
    slides = [write_tiff(tmp_path / f"{n}.ome.tif", random_rgb((60, 80), seed=k)) for k, n in enumerate("ab")]
    args: tuple[str | Path, ...] = ("predict", *slides, "-o", tmp_path / "masks", "--model", model,
                                    "--chunk", "64", "--no-progress")
    code, out, err = run(*args)
    assert code == 0, err
    assert "2 slides" in out and out.count("done in") == 2
    assert sorted(p.name for p in (tmp_path / "masks").iterdir()) == ["a.zarr", "b.zarr"]
    code, out, err = run(*args)  # again: both are complete
    assert code == 0, err
    assert out.count("skipped") == 2 and "done in" not in out


# ------------------------------------------------------------------ the routing behind the command


def test_predict_slides_routes_one_slide_or_several(tmp_path: Path, model: Path) -> None:
    slide = write_tiff(tmp_path / "s.ome.tif", random_rgb((60, 80)))
    cfg = PredictConfig(chunk=64, device="cpu")
    one = predict_slides([slide], tmp_path / "m.zarr", model, cfg)
    assert isinstance(one, PredictResult) and one.output == tmp_path / "m.zarr"
    into_dir = predict_slides([slide], f"{tmp_path / 'dir'}/", model, cfg)  # a trailing slash names a directory
    assert isinstance(into_dir, list) and [it.output for it in into_dir] == [tmp_path / "dir" / "s.zarr"]
    (tmp_path / "existing").mkdir()
    in_existing = predict_slides([slide], tmp_path / "existing", model, cfg)  # an existing directory
    assert isinstance(in_existing, list) and isinstance(in_existing[0], BatchItem)
    assert in_existing[0].output == tmp_path / "existing" / "s.zarr" and in_existing[0].result is not None


@pytest.mark.parametrize(("slides", "output", "into", "match"), [
    ([], "m.zarr", None, "no slide given"),
    (["s.ome.tif"], None, None, "no output given"),
    (["s.ome.tif", "t.ome.tif"], None, "image.zarr", "--into writes the label of one image"),
])
def test_predict_slides_refuses_what_cannot_run(tmp_path: Path, model: Path, slides: list[str], output: str | None,
                                               into: str | None, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        predict_slides([tmp_path / s for s in slides], output, model, PredictConfig(into=into))


def test_predict_slides_defaults_to_the_bundled_model(tmp_path: Path) -> None:
    slide = write_tiff(tmp_path / "s.ome.tif", random_rgb((60, 80)))
    result = predict_slides([slide], tmp_path / "m.zarr", None, PredictConfig(chunk=64, device="cpu"))
    assert isinstance(result, PredictResult)
    record = describe_mask(result.output)["slideseg"]
    bundled, metadata = read_model_config(DEFAULT_MODEL)
    assert record["model_config"] == bundled.to_dict() and record["model_metadata"] == metadata


def test_truncated_tiff_fails_when_its_tiles_are_read(tmp_path: Path, model: Path) -> None:
    path = write_tiff(tmp_path / "s.ome.tif", random_rgb((512, 512)))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    code, _, err = run("predict", path, "-o", tmp_path / "m.zarr", "--model", model, "--mpp", "0.5",
                       "--no-tissue", "--no-progress")
    _one_line_error(code, err, "s.ome.tif")
