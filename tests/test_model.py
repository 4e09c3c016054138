"""U-Net configuration, initialisation and model files."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from slideseg.errors import ConfigError, ModelFileError
from slideseg.model.config import UNetConfig
from slideseg.model.files import load_model, read_model_config, save_model
from slideseg.model.unet import build_unet


def test_config_round_trips_through_dict_and_json() -> None:
    cfg = UNetConfig(depth=3, width=8, in_channels=1, classes=3, mpp=0.25, norm_mean=(100.0,),
                     class_names=("bg", "a", "b"))
    again = UNetConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg
    assert cfg.class_colors[0] == (0, 0, 0, 0) and len(cfg.class_colors) == 3


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"depth": 0}, "depth must be in 1..7"),
        ({"classes": 1}, "classes must be in 2..255"),
        ({"norm_mean": (1.0, 2.0)}, "norm_mean needs 1 or 3 values"),
        ({"class_names": ("a",)}, "class_names needs 2 names"),
        ({"padding": "same", "halo": 5}, "halo must be a multiple of 16"),
        ({"halo": 16}, "halo applies to 'same' padding only"),
        ({"mirror": "wrap"}, "mirror must be reflect|symmetric"),
    ],
)
def test_config_rejects_bad_values(kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        UNetConfig(**kwargs)


def test_unknown_config_fields_are_an_error() -> None:
    with pytest.raises(ConfigError, match="Unknown UNetConfig fields"):
        UNetConfig.from_dict({"depth": 4, "colour": 1})


def test_he_initialisation_std() -> None:
    net = build_unet(UNetConfig(depth=2, width=32), seed=0)
    for m in net.modules():
        if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3):
            expected = math.sqrt(2.0 / (m.in_channels * 9))
        elif isinstance(m, torch.nn.ConvTranspose2d):
            expected = math.sqrt(2.0 / m.in_channels)
        else:
            continue
        assert m.weight.std().item() == pytest.approx(expected, rel=0.1)
        assert torch.count_nonzero(m.bias) == 0


def test_seed_makes_weights_reproducible() -> None:
    cfg = UNetConfig(depth=2, width=4)
    a, b, c = build_unet(cfg, seed=1), build_unet(cfg, seed=1), build_unet(cfg, seed=2)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
    assert not torch.equal(a.head.weight, c.head.weight)


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
