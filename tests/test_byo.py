"""Bring your own model: sidecars, ONNX / TorchScript / torch.export files through `load_engine`
and `predict`, and the measured seam error of a same-padded network."""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from typer.testing import CliRunner

from slideseg.cli import app
from slideseg.engines.cache import ENV_DIR
from slideseg.engines.registry import load_engine
from slideseg.errors import ConfigError, ModelFileError
from slideseg.model.config import UNetConfig
from slideseg.model.external import parse_sidecar, sidecar_path
from slideseg.model.unet import build_unet
from slideseg.predict import PredictConfig, predict
from slideseg.schedule.chunks import softmax
from slideseg.tools.seam import measure_seam_error
from tests.conftest import random_rgb
from tests.test_predict import write_tiff

HALO = 8
SAME = UNetConfig(depth=2, width=4, classes=3, padding="same", halo=HALO)
SIDECAR = {"padding": "same", "depth": 2, "halo": HALO, "classes": 3, "in_channels": 3,
           "norm_mean": [127.5], "norm_std": [127.5], "class_names": ["background", "a", "b"]}


@pytest.fixture(autouse=True)
def engines_dir(tmp_path: Path) -> Iterator[Path]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(ENV_DIR, str(tmp_path / "engines"))
        yield tmp_path / "engines"


@pytest.fixture(scope="module")
def same_net() -> torch.nn.Module:
    return build_unet(SAME, seed=2).eval()


def _export(net: torch.nn.Module, path: Path, dynamic_hw: bool = True, size: int = 64) -> Path:
    """What a user does: torch.onnx.export of their own network (no slideseg metadata)."""
    d = torch.export.Dim
    shapes = {0: d("batch"), 2: 4 * d("h4"), 3: 4 * d("w4")} if dynamic_hw else {0: d("batch")}
    with warnings.catch_warnings():  # raised inside torch 2.13's exporter (its pytree internals)
        warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)", category=FutureWarning)
        torch.onnx.export(net, (torch.rand(2, 3, size, size),), str(path), dynamo=True, verbose=False,
                          input_names=["image"], output_names=["scores"], dynamic_shapes={"x": shapes},
                          external_data=False)
    return path


@pytest.fixture(scope="module")
def same_onnx(same_net: torch.nn.Module, tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    folder = tmp_path_factory.mktemp("byo")
    path = _export(same_net, folder / "same.onnx")
    (folder / "same.onnx.json").write_text(json.dumps(SIDECAR))
    return path


def whole_image_probabilities(net: torch.nn.Module, image: np.ndarray, halo: int) -> np.ndarray:
    """Reference, written out independently: mirror-pad by the halo (and up to a multiple of 4),
    one forward pass, crop the region. (K, H, W)."""
    h, w = image.shape[:2]
    n = -(-(max(h, w) + 2 * halo) // 4) * 4
    padded = np.pad(image, ((halo, n - h - halo), (halo, n - w - halo), (0, 0)), mode="reflect")
    x = (torch.from_numpy(padded.transpose(2, 0, 1)[None].astype(np.float32)) - 127.5) / 127.5
    with torch.no_grad():
        logits = net(x)[0, :, halo : halo + h, halo : halo + w].numpy()
    return softmax(logits)


# --------------------------------------------------------------------------------------------
# The promise: a same-padded ONNX model through predict, and a seam error that matches
# --------------------------------------------------------------------------------------------


def test_same_padded_onnx_model_runs_through_predict_and_its_seam_error_is_what_predict_gets(
        tmp_path: Path, same_onnx: Path, same_net: torch.nn.Module) -> None:
    image = random_rgb((200, 232), seed=8)
    slide = write_tiff(tmp_path / "s.ome.tif", image)
    cfg = PredictConfig(tile=64, chunk=64, batch_size=4, probabilities=True, device="cpu", engine="onnxruntime")
    result = predict(slide, tmp_path / "mask.zarr", same_onnx, cfg)
    assert result.engine["engine"] == "onnxruntime" and result.plan["tile_output"] == 64 - 2 * HALO
    root = zarr.open_group(tmp_path / "mask.zarr", mode="r")
    ids, probs = root["0"][:], root["probabilities/0"][:].astype(np.float32) / 255
    assert root.attrs["image-label"]["properties"][1]["class"] == "a"  # names came from the sidecar

    whole = whole_image_probabilities(same_net, image, HALO)
    actual_max = float(np.abs(probs - whole).max())
    actual_changed = float((ids != whole.argmax(0)).mean())

    engine = load_engine(same_onnx, "onnxruntime", device="cpu")
    reported = measure_seam_error(engine, image, halo=HALO, tile=64, chunk=64)
    assert reported.halo == HALO and reported.region == (200, 232)
    assert reported.max_abs > 1e-3  # same padding does not tile exactly: the measurement sees it
    assert abs(reported.max_abs - actual_max) <= 0.5 / 255 + 1e-4  # predict stores uint8 probabilities
    assert abs(reported.changed_ids - actual_changed) < 1e-3


def test_seam_error_falls_to_zero_once_the_halo_covers_the_receptive_field(same_onnx: Path) -> None:
    engine = load_engine(same_onnx, "onnxruntime", device="cpu")
    image = random_rgb((128, 128), seed=1)
    errors = {h: measure_seam_error(engine, image, halo=h, chunk=64).max_abs for h in (0, 8, 32)}
    assert errors[0] > errors[8] > 1e-3 and errors[32] < 1e-5


def test_valid_models_tile_exactly() -> None:
    from slideseg.engines.torch_engine import TorchEngine
    from tests.test_engines import tiny_model

    engine = TorchEngine(tiny_model(), device="cpu")
    err = measure_seam_error(engine, random_rgb((150, 170), seed=3), chunk=64)
    assert err.halo == 0 and err.max_abs < 1e-5 and err.changed_ids == 0


def test_cli_plan_reports_the_seam_error_per_halo(same_onnx: Path) -> None:
    r = CliRunner().invoke(app, ["plan", "--model", str(same_onnx), "--device", "cpu", "--region", "128",
                                 "--halo", "0", "--halo", "16", "--json"])
    assert r.exit_code == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["padding"] == "same" and [row["halo"] for row in report["seam_error"]] == [0, 16]
    assert report["seam_error"][0]["max_abs"] > report["seam_error"][1]["max_abs"]


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def test_onnx_engine_matches_the_network(same_onnx: Path, same_net: torch.nn.Module) -> None:
    engine = load_engine(same_onnx, device="cpu")  # auto: the only CPU engine for an ONNX file
    assert engine.name == "onnxruntime" and engine.reason and engine.fixed_tile is None
    batch = np.random.default_rng(0).integers(0, 256, (2, 3, 48, 48), dtype=np.uint8)
    with torch.no_grad():
        want = same_net((torch.from_numpy(batch.astype(np.float32)) - 127.5) / 127.5).numpy()
    np.testing.assert_allclose(engine.infer(batch), want, atol=1e-4, rtol=0)
    assert engine.describe()["normalisation"] == "numpy"


@pytest.mark.parametrize("kind", ["torch.export", "torchscript"])
def test_torch_files_run_in_the_torch_engine(tmp_path: Path, same_net: torch.nn.Module, kind: str) -> None:
    x = torch.rand(2, 3, 64, 64)
    if kind == "torch.export":
        d = torch.export.Dim
        ep = torch.export.export(same_net, (x,), dynamic_shapes={"x": {0: d("b"), 2: 4 * d("h"), 3: 4 * d("w")}})
        path = tmp_path / "m.pt2"
        torch.export.save(ep, str(path))
    else:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", r"`torch\.jit\.trace", DeprecationWarning)  # the user's side
            traced = torch.jit.trace(same_net, x)
        path = tmp_path / "m.pt"
        traced.save(str(path))
    (tmp_path / "m.json").write_text(json.dumps(SIDECAR))  # MODEL.json works too
    engine = load_engine(path, device="cpu")
    assert engine.name == "torch" and engine.metadata["external"]["format"] == kind
    batch = np.random.default_rng(1).integers(0, 256, (2, 3, 64, 64), dtype=np.uint8)
    with torch.no_grad():
        want = same_net((torch.from_numpy(batch.astype(np.float32)) - 127.5) / 127.5).numpy()
    np.testing.assert_allclose(engine.infer(batch), want, atol=1e-5, rtol=0)


def test_a_fixed_size_onnx_file_takes_its_size_only(tmp_path: Path, same_net: torch.nn.Module) -> None:
    pytest.importorskip("onnxruntime")
    path = _export(same_net, tmp_path / "fixed.onnx", dynamic_hw=False, size=64)
    (tmp_path / "fixed.json").write_text(json.dumps(SIDECAR))
    engine = load_engine(path, "onnxruntime", device="cpu")
    assert engine.fixed_tile == 64
    assert engine.infer(np.zeros((1, 3, 64, 64), np.uint8)).shape == (1, 3, 64, 64)
    with pytest.raises(ConfigError, match="--tile 64"):
        engine.infer(np.zeros((1, 3, 96, 96), np.uint8))


def test_a_sidecar_that_does_not_fit_the_model_is_caught(tmp_path: Path, same_onnx: Path) -> None:
    wrong = tmp_path / "wrong.onnx"
    wrong.write_bytes(same_onnx.read_bytes())
    (tmp_path / "wrong.json").write_text(json.dumps({**SIDECAR, "padding": "valid", "halo": 0}))
    engine = load_engine(wrong, "onnxruntime", device="cpu")
    with pytest.raises(ModelFileError, match="fix the sidecar JSON"):
        engine.infer(np.zeros((1, 3, 92, 92), np.uint8))  # valid depth 2: 92 -> 4 px promised, got 92


@pytest.mark.parametrize(("suffix", "engine", "match"), [
    (".onnx", "torch", "is an ONNX file: run it with --engine onnxruntime or tensorrt"),
    (".pt2", "onnxruntime", "is a torch model: run it with --engine torch"),
])
def test_engines_that_cannot_run_a_file_say_which_can(tmp_path: Path, suffix: str, engine: str, match: str,
                                                      same_onnx: Path) -> None:
    path = tmp_path / f"m{suffix}"
    path.write_bytes(same_onnx.read_bytes() if suffix == ".onnx" else b"")
    (tmp_path / "m.json").write_text(json.dumps(SIDECAR))
    with pytest.raises(ConfigError, match=match):
        load_engine(path, engine, device="cpu")


def test_a_model_file_without_a_sidecar_says_what_to_write(tmp_path: Path, same_onnx: Path) -> None:
    bare = tmp_path / "bare.onnx"
    bare.write_bytes(same_onnx.read_bytes())
    with pytest.raises(ModelFileError, match=r"needs a sidecar JSON \(bare.onnx.json or bare.json"):
        load_engine(bare, device="cpu")


def test_a_pickle_is_not_loaded(tmp_path: Path) -> None:
    path = tmp_path / "weights.pt"
    torch.save({"w": torch.zeros(1)}, str(path))
    (tmp_path / "weights.json").write_text(json.dumps(SIDECAR))
    with pytest.raises(ModelFileError, match="not a TorchScript archive"):
        load_engine(path, device="cpu")


# --------------------------------------------------------------------------------------------
# Sidecars
# --------------------------------------------------------------------------------------------


def test_sidecar_beside_the_model_prefers_the_full_name(tmp_path: Path) -> None:
    model = tmp_path / "m.onnx"
    assert sidecar_path(model) is None
    (tmp_path / "m.json").write_text("{}")
    assert sidecar_path(model) == tmp_path / "m.json"
    (tmp_path / "m.onnx.json").write_text("{}")
    assert sidecar_path(model) == tmp_path / "m.onnx.json"


def test_sidecar_alignment_gives_the_depth_and_fields_reach_the_config() -> None:
    cfg, extras = parse_sidecar({"padding": "same", "alignment": 16, "halo": 32, "classes": 4, "in_channels": 1,
                                 "mpp": 0.25, "mirror": "symmetric", "normalised_in_model": True})
    assert (cfg.depth, cfg.halo, cfg.classes, cfg.in_channels, cfg.mpp, cfg.mirror) == (4, 32, 4, 1, 0.25,
                                                                                         "symmetric")
    assert cfg.geometry.describe_valid() == "sizes are multiples of 16" and extras["normalised_in_model"]


@pytest.mark.parametrize(("data", "match"), [
    ({"padding": "same", "depth": 2}, "must give classes"),
    ({"padding": "same", "depth": 2, "classes": 2, "colour": 1}, r"unknown keys \['colour'\]"),
    ({"padding": "same", "alignment": 12, "classes": 2}, "alignment must be a power of two"),
    ({"padding": "same", "alignment": 8, "depth": 2, "classes": 2}, "contradicts depth 2"),
    ({"padding": "same", "depth": 2, "halo": 6, "classes": 2}, "halo must be a multiple of 4"),
])
def test_bad_sidecars_are_explained(data: dict, match: str) -> None:
    with pytest.raises(ModelFileError, match=match):
        parse_sidecar(data)


def test_cli_plan_for_a_slide_shows_the_plan_and_an_exact_valid_model(tmp_path: Path) -> None:
    from slideseg.model.files import save_model

    cfg = UNetConfig(depth=3, width=4, classes=3)
    save_model(tmp_path / "m.safetensors", build_unet(cfg, seed=1), cfg)
    slide = write_tiff(tmp_path / "s.ome.tif", random_rgb((300, 200), seed=2))
    args = ["plan", str(slide), "--model", str(tmp_path / "m.safetensors"), "--chunk", "128", "--region", "160"]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.stderr
    assert "plan: 3 x 2 chunks of 128 px" in r.stdout and "n/a (valid)" in r.stdout
    report = json.loads(CliRunner().invoke(app, [*args, "--json"]).stdout)
    (row,) = report["seam_error"]
    assert row["region"] == [160, 160] and row["max_abs"] < 1e-5 and row["changed_ids"] < 1e-3  # exact
