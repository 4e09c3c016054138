"""The U-Net itself: He initialisation, and weights that are a function of the seed."""

from __future__ import annotations

import math

import pytest
import torch

from slideseg.model.config import UNetConfig
from slideseg.model.unet import build_unet


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
