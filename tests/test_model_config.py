"""The U-Net configuration: round trips through JSON, and refuses bad values with the reason."""

from __future__ import annotations

import json

import pytest

from slideseg.errors import ConfigError
from slideseg.model.config import UNetConfig


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
    with pytest.raises(ConfigError, match=r"Unknown UNetConfig keys \['colour'\]"):
        UNetConfig.from_dict({"depth": 4, "colour": 1})
