"""The library functions behind the commands (plan, export, info, new-model), the defaults the
commands' help promises, and the progress the commands show."""

from __future__ import annotations

import importlib.util
import inspect
import io
import json
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import tifffile
from rich.console import Console
from typer.testing import CliRunner

from slideseg.cli import app
from slideseg.engines.export import ExportConfig, default_tile, export_model
from slideseg.errors import ConfigError, OutputExistsError, SlideReadError
from slideseg.model.config import UNetConfig, read_model_config
from slideseg.plan.geometry import Geometry
from slideseg.plan.tiles import plan_slide
from slideseg.tools.describe import describe
from slideseg.tools.new_model import write_new_model
from slideseg.tools.seam import halos_to_measure, plan_report

runner = CliRunner()
needs_onnx = pytest.mark.skipif(any(importlib.util.find_spec(m) is None for m in ("onnxscript", "onnxruntime")),
                                reason="the onnx extra (onnx, onnxscript, onnxruntime) is not installed")
VALID = UNetConfig(depth=2, width=4, classes=3)
"""Tiles 4k (>= 44), 20 px of context per side: tiny, and exact when tiled."""
SAME = UNetConfig(depth=2, width=4, classes=2, padding="same", halo=8)


@pytest.fixture
def valid_model(tmp_path: Path) -> Path:
    return write_new_model(tmp_path / "valid.safetensors", VALID, seed=1).path


@pytest.fixture
def same_model(tmp_path: Path) -> Path:
    return write_new_model(tmp_path / "same.safetensors", SAME, seed=0).path


def _slide(path: Path, shape: tuple[int, int], seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (shape[0] // 8 + 1, shape[1] // 8 + 1, 3), dtype=np.uint8)
    image = np.repeat(np.repeat(coarse, 8, 0), 8, 1)[: shape[0], : shape[1]]
    tifffile.imwrite(path, image, tile=(64, 64), photometric="rgb", metadata={"axes": "YXS"})
    return path


# ------------------------------------------------------------------------------------ plan


def test_plan_report_of_a_valid_model_says_how_it_tiles_and_that_it_tiles_exactly(valid_model: Path) -> None:
    report = plan_report(valid_model, region=96, device="cpu")
    assert set(report) == {"model", "engine", "padding", "depth", "alignment", "context", "valid_tiles",
                           "seam_error"}
    assert (report["padding"], report["depth"], report["alignment"], report["context"]) == ("valid", 2, 4, 20)
    assert report["engine"]["engine"] == "torch"  # .safetensors models measure with torch by default
    (row,) = report["seam_error"]  # valid models: one row, no halo
    assert row["halo"] == 0 and row["region"] == [96, 96] and row["chunk"] == 48  # seams: chunk = region / 2
    assert row["max_abs"] < 1e-5 and row["changed_ids"] == 0  # float rounding only (~1e-7)


def test_plan_report_of_a_same_padded_model_measures_each_halo(same_model: Path) -> None:
    report = plan_report(same_model, region=128, device="cpu")
    rows = report["seam_error"]
    assert [r["halo"] for r in rows] == [0, 4, 8, 16, 32]  # 0, 1, 2, 4, 8 pooling steps; its own 8 among them
    errors = [r["max_abs"] for r in rows]
    assert errors[0] > 1e-2  # same padding does not tile exactly without a halo
    assert errors[-1] < 1e-5  # a halo beyond the receptive field does
    assert errors[0] > errors[2] > errors[-1]


def test_plan_report_measures_only_the_halos_asked_for(same_model: Path) -> None:
    report = plan_report(same_model, halos=[16, 0], region=64, device="cpu")
    assert [r["halo"] for r in report["seam_error"]] == [0, 16]
    with pytest.raises(ConfigError, match="multiple of 4"):
        plan_report(same_model, halos=[6], region=64, device="cpu")


def test_plan_report_for_a_slide_plans_as_predict_plans_and_measures_its_centre(tmp_path: Path,
                                                                                valid_model: Path) -> None:
    slide = _slide(tmp_path / "s.ome.tif", (300, 200))
    report = plan_report(valid_model, slide, chunk=128, region=1000, seam_chunk=64, device="cpu")
    assert report["plan"] == plan_slide((300, 200), VALID.geometry, chunk=128).describe()
    assert report["plan"]["grid"] == [3, 2]
    (row,) = report["seam_error"]
    assert row["region"] == [200, 200] and row["chunk"] == 64  # the region is clipped to the slide
    assert "seam_error" not in plan_report(valid_model, slide, measure=False, device="cpu")


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"chunk": 8}, "--chunk must be >= 16"),  # as predict says
    ({"region": 0}, "--region must be >= 1"),
    ({"tile": 50}, "nearest are 48 and 52"),  # checked by the planner, as predict checks it
])
def test_plan_report_rejects_bad_options(tmp_path: Path, valid_model: Path, kwargs: dict, match: str) -> None:
    slide = _slide(tmp_path / "s.ome.tif", (100, 100))
    with pytest.raises(ConfigError, match=match):
        plan_report(valid_model, slide, measure=False, device="cpu", **kwargs)


def test_halos_to_measure_keeps_a_valid_model_to_one_pass() -> None:
    assert halos_to_measure(VALID, [8, 16]) == [None]
    assert halos_to_measure(SAME, [16, 16, 0]) == [0, 16]


# ------------------------------------------------------------------------------------ export


def test_default_tile_covers_the_default_chunk_with_one_tile() -> None:
    for g in (Geometry(2), Geometry(3), Geometry(4), Geometry(4, "same", 32)):
        tile = default_tile(g)
        assert g.usable_output(tile) >= 1024 > g.usable_output(g.nearest_valid(tile)[0])
        assert tile == plan_slide((5000, 5000), g, chunk=1024).tile  # what predict picks on a large slide


@needs_onnx
def test_export_writes_an_onnx_file_and_checks_it_against_torch(tmp_path: Path, valid_model: Path) -> None:
    result = export_model(valid_model, ExportConfig(tile=64, max_batch=2, output=tmp_path / "m.onnx"))
    assert result.path == tmp_path / "m.onnx" and result.path.is_file()
    assert (result.format, result.tile, result.tile_output, result.max_batch) == ("onnx", 64, 24, 2)
    assert result.max_abs_diff is not None and result.max_abs_diff < 1e-4 and result.not_checked is None
    with pytest.raises(OutputExistsError, match="--overwrite"):
        export_model(valid_model, ExportConfig(tile=64, output=tmp_path / "m.onnx"))
    again = export_model(valid_model, ExportConfig(tile=64, output=tmp_path / "m.onnx", overwrite=True, check=False))
    assert again.max_abs_diff is None and again.not_checked is None  # not asked to check


@needs_onnx
def test_a_bf16_export_says_why_it_was_not_checked(valid_model: Path) -> None:
    result = export_model(valid_model, ExportConfig(tile=48, max_batch=1, precision="bf16"))
    assert result.path.is_file() and result.max_abs_diff is None
    assert result.not_checked is not None and "bf16" in result.not_checked


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"format": "tflite"}, "--format must be one of onnx, tensorrt"),
    ({"format": "tensorrt", "output": Path("x.plan")}, "drop -o"),  # plans live in the engine cache
    ({"max_batch": 0}, "--max-batch must be >= 1"),
    ({"precision": "fp8"}, "--precision must be one of"),
])
def test_export_config_rejects_bad_options(kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        ExportConfig(**kwargs)


class _FakeTensorRT:
    """Stands in for a TensorRT engine (no GPU here): records the tile its plan is built for."""

    def __init__(self, config: UNetConfig, fixed_tile: int | None) -> None:
        self.config, self.fixed_tile = config, fixed_tile
        self.prepared: list[int] = []

    def prepare(self, tile: int) -> dict[str, object]:
        self.prepared.append(tile)
        return {"plan": f"engines/x-t{tile}.plan", "cache": "miss", "key": {}}


@pytest.mark.parametrize(("name", "fixed_tile", "tile", "expected"), [
    ("m.safetensors", None, None, default_tile(VALID.geometry)),  # the tile predict picks
    ("m.safetensors", None, 64, 64),  # --tile wins
    ("m.onnx", 96, None, 96),  # an ONNX file's own fixed tile
])
def test_a_tensorrt_export_builds_the_plan_for_the_tile_that_predict_will_use(
        monkeypatch: pytest.MonkeyPatch, name: str, fixed_tile: int | None, tile: int | None, expected: int) -> None:
    import slideseg.engines.export

    fake = _FakeTensorRT(VALID, fixed_tile)
    loaded: list[tuple[object, str, dict]] = []

    def load_engine(path: object, engine: str, **options: object) -> _FakeTensorRT:
        loaded.append((path, engine, options))
        return fake

    monkeypatch.setattr(slideseg.engines.export, "load_engine", load_engine)
    result = export_model(Path(name), ExportConfig(format="tensorrt", tile=tile, precision="fp16", opt_level=5))
    assert fake.prepared == [expected] and result.tile == expected and result.cache == "miss"
    assert result.path == Path(f"engines/x-t{expected}.plan") and result.tile_output == expected - 40
    ((path, engine, options),) = loaded
    assert path == Path(name) and engine == "tensorrt"
    assert options == {"device": "cuda", "precision": "fp16", "max_batch": 8, "opt_level": 5, "workspace_gib": 4.0}


def test_a_tensorrt_plan_of_a_dynamic_onnx_file_needs_a_tile(monkeypatch: pytest.MonkeyPatch) -> None:
    import slideseg.engines.export

    monkeypatch.setattr(slideseg.engines.export, "load_engine", lambda *a, **k: _FakeTensorRT(SAME, None))
    with pytest.raises(ConfigError, match="--tile is needed"):
        export_model(Path("mine.onnx"), ExportConfig(format="tensorrt"))


def test_an_onnx_file_is_not_exported_to_onnx_again(tmp_path: Path) -> None:
    (tmp_path / "m.onnx").write_bytes(b"")
    with pytest.raises(ConfigError, match=r"ONNX file already.*--format tensorrt"):
        export_model(tmp_path / "m.onnx")


# ------------------------------------------------------------------------------------ info, new-model


def test_describe_says_what_a_path_is(tmp_path: Path, valid_model: Path) -> None:
    model = describe(valid_model)
    assert model["kind"] == "model" and model["config"]["depth"] == 2 and model["metadata"]["trained"] is False
    assert model["valid_tiles"] == VALID.geometry.describe_valid()
    slide = describe(_slide(tmp_path / "s.ome.tif", (70, 90)))
    assert slide["kind"] == "slide" and list(slide["levels"][0]["shape"][:2]) == [70, 90]
    with pytest.raises(SlideReadError, match=r"nope\.tif does not exist"):
        describe(tmp_path / "nope.tif")


def test_new_model_writes_the_config_and_keeps_an_existing_file(tmp_path: Path) -> None:
    made = write_new_model(tmp_path / "m.safetensors", SAME, seed=3)
    cfg, meta = read_model_config(made.path)
    assert cfg == SAME and meta == {"trained": False, "seed": 3} and len(made.weights_sha256) == 64
    with pytest.raises(OutputExistsError, match="--overwrite"):
        write_new_model(made.path)
    assert read_model_config(made.path)[0] == SAME  # untouched
    assert write_new_model(made.path, overwrite=True).config == UNetConfig()  # the defaults


# ------------------------------------------------------------------------------------ the commands


def _help_defaults(command: str) -> dict[str, str]:
    """``--option -> the text of its '(default: ...)'`` in a command's help (one line per option)."""
    r = runner.invoke(app, [command, "--help"], env={"COLUMNS": "400"})
    assert r.exit_code == 0
    rows = (re.match(r"│\s+(?:\*\s+)?(--[a-z-]+)\b.*?\(default: (.*)\)\s*│$", line) for line in r.stdout.splitlines())
    return {m[1]: m[2] for m in rows if m}


def test_export_help_shows_the_library_defaults() -> None:
    shown = _help_defaults("export")
    cfg = ExportConfig()
    for option, field in [("--format", "format"), ("--max-batch", "max_batch"), ("--precision", "precision"),
                          ("--opt-level", "opt_level"), ("--workspace", "workspace_gib"), ("--device", "device")]:
        assert shown[option] == str(getattr(cfg, field)), option
    assert shown["--check"] == "check" and cfg.check


def test_plan_help_shows_the_library_defaults() -> None:
    shown = _help_defaults("plan")
    params = inspect.signature(plan_report).parameters
    for option, name in [("--chunk", "chunk"), ("--region", "region"), ("--device", "device")]:
        assert shown[option] == str(params[name].default), option
    assert shown["--measure"] == "measure" and params["measure"].default is True


def test_cli_plan_needs_a_model_and_prints_json(valid_model: Path) -> None:
    r = runner.invoke(app, ["plan", "--region", "64"])
    assert r.exit_code == 2 and "--model" in r.stderr
    r = runner.invoke(app, ["plan", "-m", str(valid_model), "--region", "64", "--device", "cpu", "--json"])
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["seam_error"][0]["region"] == [64, 64]


def test_cli_synth_progress_is_one_task_counted_to_the_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import slideseg.cli.progress

    started: list[int] = []
    ticks: list[int] = []

    @contextmanager
    def recording(label: str, **_: object) -> Iterator[Callable[[int, int], Callable[[int], None]]]:
        def start(n: int, pixels: int) -> Callable[[int], None]:
            started.append(n)
            return ticks.append

        yield start

    monkeypatch.setattr(slideseg.cli.progress, "chunk_progress", recording)
    r = runner.invoke(app, ["synth", str(tmp_path / "s.ome.tif"), "--size", "300", "400"])
    assert r.exit_code == 0, r.stderr
    assert started == [5] and len(ticks) == 5  # one task (a bar on a terminal): 2 x 2 TIFF tiles + 1 truth chunk


def test_train_progress_prints_one_line_per_epoch_off_a_terminal() -> None:
    from slideseg.cli.progress import train_progress
    from slideseg.train.loop import TrainEvent

    buffer = io.StringIO()
    with train_progress(True, console=Console(file=buffer, force_terminal=False, width=200)) as on_event:
        assert on_event is not None
        on_event(TrainEvent("start", 0, 4))
        on_event(TrainEvent("step", 1, 4, loss=0.5))
        on_event(TrainEvent("epoch", 2, 4, row={"epoch": 1, "train_loss": 0.25, "tiles_per_s": 3.0}))
    assert buffer.getvalue() == "train: epoch 1, step 2/4, loss 0.2500, 3.00 tiles/s\n"
    with train_progress(False) as off:
        assert off is None
