"""Tracing: pixel-edge polygons (holes, pinches, corners, borders) that rasterise back to the mask
exactly, one per 4-connected region, whatever the stripe height."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from scipy import ndimage

from slideseg.tools.trace import Polygon, trace_polygons
from tests.conftest import AWKWARD, random_mask, rasterise, signed_area


def raster_polygons(polygons: list[Polygon], shape: tuple[int, int]) -> np.ndarray:
    return rasterise([(p.value, [p.exterior, *p.holes]) for p in polygons], shape)


def canonical(polygons: list[Polygon]) -> list[Any]:
    """Polygons as comparable values, each ring starting at its first vertex in (y, x) order."""
    def ring(r: np.ndarray) -> tuple[Any, ...]:
        start = int(np.lexsort((r[:, 0], r[:, 1]))[0])
        return tuple(map(tuple, np.roll(r, -start, axis=0).tolist()))
    return sorted((p.value, ring(p.exterior), tuple(sorted(ring(h) for h in p.holes)), p.area) for p in polygons)


@pytest.mark.parametrize("mask", [
    AWKWARD,  # every hard case at once
    np.ones((5, 7), np.uint8),  # one region filling the image
    np.eye(6, dtype=np.uint8),  # a diagonal: six regions meeting at corners
    (np.indices((9, 9)).sum(0) % 2).astype(np.uint8),  # a checkerboard: saddles everywhere
    np.pad(np.pad([[1]], 1, constant_values=2), 1).astype(np.uint8),  # a ring of 2 around a 1
])
def test_polygons_rasterise_back_to_the_mask(mask: np.ndarray) -> None:
    polygons = trace_polygons(mask)
    assert np.array_equal(raster_polygons(polygons, mask.shape), mask)
    for v in np.unique(mask[mask > 0]):
        assert sum(p.value == v for p in polygons) == ndimage.label(mask == v)[1]  # one per 4-connected region


def test_awkward_mask_in_detail() -> None:
    polygons = trace_polygons(AWKWARD)
    ring = next(p for p in polygons if p.value == 1 and p.exterior.min(0).tolist() == [1, 1])
    assert len(ring.holes) == 2 and ring.area == 22  # the island and the class-2 pocket are holes
    island = next(p for p in polygons if p.value == 1 and p.exterior.tolist() == [[3, 3], [4, 3], [4, 4], [3, 4]])
    assert island.area == 1 and not island.holes
    pinched = next(p for p in polygons if p.value == 3 and p.area == 7)  # closes on itself at vertex (8, 7)
    assert len(pinched.holes) == 1 and [8, 7] in pinched.holes[0].tolist() and [8, 7] in pinched.exterior.tolist()


@pytest.mark.parametrize("seed", range(12))
def test_random_masks_every_stripe_height(seed: int) -> None:
    shape = (int(7 + seed * 3), int(40 - seed * 2))
    mask = random_mask(seed, shape, n_classes=2 + seed % 3, blob=1 + seed % 3)
    whole = trace_polygons(mask)
    assert np.array_equal(raster_polygons(whole, shape), mask)
    for polygon in whole:
        assert signed_area(polygon.exterior) > 0 and all(signed_area(h) < 0 for h in polygon.holes)
        assert polygon.area == signed_area(polygon.exterior) + sum(signed_area(h) for h in polygon.holes)
        for ring in (polygon.exterior, *polygon.holes):
            assert len({tuple(v) for v in ring.tolist()}) == len(ring)  # simple: no vertex twice
            steps = np.sign(np.diff(np.vstack([ring, ring[:1], ring[1:2]]), axis=0))
            assert not (steps[1:] == steps[:-1]).all(axis=1).any()  # every vertex is a corner
    for rows in (1, 2, 3, 5):
        assert canonical(trace_polygons(mask, stripe_rows=rows)) == canonical(whole)


def test_values_select_classes() -> None:
    assert {p.value for p in trace_polygons(AWKWARD, values=[3])} == {3}
    assert trace_polygons(np.zeros((4, 4), np.uint8)) == []
