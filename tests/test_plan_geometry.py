"""Geometry of valid and same-padded U-Nets against the network itself."""

from __future__ import annotations

import pytest
import torch

from slideseg.errors import ConfigError
from slideseg.model.config import UNetConfig
from slideseg.model.unet import build_unet
from slideseg.plan.geometry import Geometry


@pytest.mark.parametrize("depth", [1, 2, 3, 4])
def test_output_size_matches_the_network(depth: int) -> None:
    g = Geometry(depth)
    net = build_unet(UNetConfig(depth=depth, width=2), seed=0).eval()
    sizes = [n for n in range(g.min_input, g.min_input + 3 * g.alignment + 1)]
    with torch.no_grad():
        for n in sizes:
            if g.is_valid(n):
                assert net(torch.zeros(1, 3, n, n)).shape[-1] == g.output_size(n)
    # exactly one valid size per alignment step, and the closed form of the context
    assert sum(g.is_valid(n) for n in sizes[:-1]) == 3
    assert g.context == 6 * 2**depth - 4


def test_depth4_numbers_from_the_paper() -> None:
    g = Geometry(4)
    assert g.min_input == 188
    assert g.output_size(572) == 388
    assert g.output_size(1500) == 1316
    assert all(g.is_valid(16 * k + 12) for k in range(11, 100))
    assert not g.is_valid(176)  # 16k + 12 but below the minimum


def test_invalid_tile_names_the_nearest_valid_sizes() -> None:
    with pytest.raises(ConfigError, match=r"Tile 500 px .* 16k\+12 .* nearest are 492 and 508"):
        Geometry(4).output_size(500)


def test_tile_too_small_to_tile_is_rejected() -> None:
    g = Geometry(4)
    assert g.output_size(188) == 4
    with pytest.raises(ConfigError, match="at least 204 px"):
        g.check_tile(188)
    assert g.check_tile(204) == 204


def test_same_padding_keeps_size_and_drops_halo() -> None:
    g = Geometry(3, "same", halo=16)
    assert g.output_size(64) == 64 and g.usable_output(64) == 32 and g.context == 16
    with pytest.raises(ConfigError, match="multiples of 8"):
        g.output_size(60)
    net = build_unet(UNetConfig(depth=3, width=2, padding="same", halo=16), seed=0).eval()
    with torch.no_grad():
        assert net(torch.zeros(1, 3, 64, 64)).shape[-1] == 64
