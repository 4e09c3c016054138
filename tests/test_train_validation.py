"""Validation tiles: on the pooling grid, and together they own every pixel of an image once."""

from __future__ import annotations

import numpy as np

from slideseg.train.data import TileGeometry
from slideseg.train.validation import validation_tiles
from tests.conftest import array_item


def test_covering_tiles_own_every_pixel_once() -> None:
    item = array_item(np.zeros((70, 101, 1), np.uint8), np.zeros((70, 101), np.uint8))
    count = np.zeros((70, 101), int)
    for _, oy, ox, sy, sx in validation_tiles([item], TileGeometry(76, 36, 8), 100, seed=0):
        assert oy % 8 == 0 and ox % 8 == 0 and sy <= 36 and sx <= 36
        count[oy: oy + sy, ox: ox + sx] += 1
    assert (count == 1).all()
