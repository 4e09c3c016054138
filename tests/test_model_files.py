"""Model files: the weights and their config round-trip, the weights hash ignores metadata, and
missing, foreign or mismatched files say what is wrong."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from slideseg.errors import ModelFileError
from slideseg.model.config import UNetConfig
from slideseg.model.files import load_model, read_model_config, save_model
from slideseg.model.unet import build_unet


def test_model_file_round_trip(tmp_path: Path) -> None:
    cfg = UNetConfig(depth=2, width=4, classes=3)
    net = build_unet(cfg, seed=3)
    digest = save_model(tmp_path / "m.safetensors", net, cfg, {"trained": False})
    loaded = load_model(tmp_path / "m.safetensors")
    assert loaded.config == cfg and loaded.weights_sha256 == digest and loaded.metadata == {"trained": False}
    x = torch.rand(1, 3, 44, 44)
    with torch.no_grad():
        assert torch.equal(loaded.net(x), net.eval()(x))
    assert read_model_config(tmp_path / "m.safetensors")[0] == cfg


def test_weights_hash_ignores_metadata(tmp_path: Path) -> None:
    cfg = UNetConfig(depth=2, width=4)
    net = build_unet(cfg, seed=3)
    assert save_model(tmp_path / "a.safetensors", net, cfg, {"x": 1}) == save_model(
        tmp_path / "b.safetensors", net, cfg, {"x": 2})


def test_missing_and_foreign_model_files(tmp_path: Path) -> None:
    with pytest.raises(ModelFileError, match="does not exist; create one with `slideseg new-model"):
        load_model(tmp_path / "nope.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a model")
    with pytest.raises(ModelFileError, match=r"not a readable \.safetensors model file"):
        load_model(tmp_path / "junk.safetensors")
    save_file({"w": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ModelFileError, match="no slideseg model config"):
        load_model(tmp_path / "other.safetensors")


def test_weights_that_do_not_fit_the_config(tmp_path: Path) -> None:
    net = build_unet(UNetConfig(depth=2, width=4), seed=0)
    save_model(tmp_path / "m.safetensors", net, UNetConfig(depth=3, width=4))
    with pytest.raises(ModelFileError, match="weights do not fit the config"):
        load_model(tmp_path / "m.safetensors")
