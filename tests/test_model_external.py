"""Bring your own model: sidecar JSONs beside ONNX, TorchScript and torch.export files, what each
engine can run, and that such a model computes what the user's network computes."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from slideseg.engines.registry import load_engine
from slideseg.errors import ConfigError, ModelFileError
from slideseg.model.external import parse_sidecar, sidecar_path
from tests.conftest import SAME_SIDECAR, export_user_onnx

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
    (tmp_path / "m.json").write_text(json.dumps(SAME_SIDECAR))  # MODEL.json works too
    engine = load_engine(path, device="cpu")
    assert engine.name == "torch" and engine.metadata["external"]["format"] == kind
    batch = np.random.default_rng(1).integers(0, 256, (2, 3, 64, 64), dtype=np.uint8)
    with torch.no_grad():
        want = same_net((torch.from_numpy(batch.astype(np.float32)) - 127.5) / 127.5).numpy()
    np.testing.assert_allclose(engine.infer(batch), want, atol=1e-5, rtol=0)


def test_a_fixed_size_onnx_file_takes_its_size_only(tmp_path: Path, same_net: torch.nn.Module) -> None:
    pytest.importorskip("onnxruntime")
    path = export_user_onnx(same_net, tmp_path / "fixed.onnx", dynamic_hw=False, size=64)
    (tmp_path / "fixed.json").write_text(json.dumps(SAME_SIDECAR))
    engine = load_engine(path, "onnxruntime", device="cpu")
    assert engine.fixed_tile == 64
    assert engine.infer(np.zeros((1, 3, 64, 64), np.uint8)).shape == (1, 3, 64, 64)
    with pytest.raises(ConfigError, match="--tile 64"):
        engine.infer(np.zeros((1, 3, 96, 96), np.uint8))


def test_a_sidecar_that_does_not_fit_the_model_is_caught(tmp_path: Path, same_onnx: Path) -> None:
    wrong = tmp_path / "wrong.onnx"
    wrong.write_bytes(same_onnx.read_bytes())
    (tmp_path / "wrong.json").write_text(json.dumps({**SAME_SIDECAR, "padding": "valid", "halo": 0}))
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
    (tmp_path / "m.json").write_text(json.dumps(SAME_SIDECAR))
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
    (tmp_path / "weights.json").write_text(json.dumps(SAME_SIDECAR))
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
