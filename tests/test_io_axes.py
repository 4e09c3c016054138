"""Axes and channels: size-one axes are squeezed, channel selections are parsed once."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from slideseg.errors import ConfigError
from slideseg.io.axes import parse_axes, parse_channels


def test_parse_axes_squeezes_size_one_axes() -> None:
    m = parse_axes("TCZYX", (1, 3, 1, 5, 6), "x.tif")
    assert m.selection(1, 2, 3, 4) == (0, slice(None), 0, slice(1, 2), slice(3, 4))
    assert m.to_yxc(np.zeros((3, 1, 1))).shape == (1, 1, 3)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("0,2", (0, 2)),
        (" 2, 0 ", (2, 0)),
        ([1], (1,)),
        (None, None),
    ],
)
def test_parse_channels(value: Any, expected: tuple[int, ...] | None) -> None:
    assert parse_channels(value) == expected


@pytest.mark.parametrize("value", ["", "a,b", "-1", [], (0, -2)])
def test_parse_channels_rejects(value: Any) -> None:
    with pytest.raises(ConfigError, match=r"is not a channel selection; expected channel numbers >= 0"):
        parse_channels(value)
