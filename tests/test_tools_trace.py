"""Tracing: pixel-edge polygons (holes, pinches, corners, borders) that rasterise back to the mask
exactly, one per 4-connected region (the regions of slideseg.tools.components), whatever the
stripe height, each yielded as soon as its region ends."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy import ndimage

import slideseg.tools.trace
from slideseg.errors import ConfigError
from slideseg.tools.trace import STRIPE_BYTES_PER_PIXEL, Polygon, iter_polygons, trace_polygons
from tests.conftest import AWKWARD, random_mask, rasterise, signed_area
from tests.test_tools_components import SETTINGS, masks, reference


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


def traced_in_stripes(mask: np.ndarray, rows: int, values: list[int]) -> list[tuple[Polygon, int, int]]:
    """Each polygon with the stripe ``(y0, y1)`` being read when it came out."""
    read: list[tuple[int, int]] = []

    def read_rows(y0: int, y1: int) -> np.ndarray:
        read.append((y0, y1))
        return mask[y0:y1]

    return [(p, *read[-1]) for p in iter_polygons(read_rows, mask.shape, values, rows)]


@SETTINGS
@given(mask=masks(max_side=16), values=st.sampled_from([[1, 2, 3], [2], [3, 1]]))
def test_every_stripe_height_gives_the_polygons_of_the_whole_mask(mask: np.ndarray, values: list[int]) -> None:
    """One polygon per region of the whole-mask labelling, for stripes of 1 px to taller than the
    mask, each yielded with the stripe that holds its region's last row or with the next."""
    regions = reference(mask, tuple(values), 4)
    whole = trace_polygons(mask, values)
    found = []
    for p in whole:
        inside = raster_polygons([p], mask.shape) > 0
        ids = np.unique(regions[inside])
        assert len(ids) == 1 and np.array_equal(inside, regions == ids[0])  # exactly one region
        found.append((values.index(p.value), int(ids[0])))
    assert found == sorted(found) and len(found) == regions.max()  # class by class, in raster order
    for rows in range(1, mask.shape[0] + 2):
        striped = traced_in_stripes(mask, rows, values)
        assert canonical([p for p, _, _ in striped]) == canonical(whole)
        for p, y0, y1 in striped:
            bottom = int(p.exterior[:, 1].max())  # the region's last row is bottom - 1
            assert y0 <= bottom and bottom - 1 < y1


@pytest.mark.parametrize("flip", [False, True])
def test_regions_joined_below_a_seam_keep_their_holes_and_open_boundaries(flip: bool) -> None:
    """Two regions that a later row joins: the older name wins, and the hole and boundary pieces
    traced under the other name move to it (read row by row, each stripe holds one step)."""
    mask = np.array([[1, 0, 1, 1, 1],
                     [1, 0, 1, 0, 1],
                     [1, 0, 1, 1, 1],
                     [1, 1, 1, 0, 0]], np.uint8)  # fmt: skip
    mask = mask[:, ::-1].copy() if flip else mask
    for rows in range(1, 6):
        (polygon,) = trace_polygons(mask, stripe_rows=rows)
        assert polygon.area == 14 and len(polygon.holes) == 1
        assert np.array_equal(raster_polygons([polygon], mask.shape), mask)


def test_a_mask_too_wide_to_trace_is_refused_before_reading() -> None:
    def read_rows(y0: int, y1: int) -> np.ndarray:
        raise AssertionError("nothing may be read")

    wide = 2**40
    with pytest.raises(ConfigError, match=rf"the mask is {wide} px wide: .* GiB.* expected a mask at most \d+ px wide"):
        next(iter_polygons(read_rows, (10, wide), [1], 1))


def test_stripes_are_cut_to_the_memory_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    mask = random_mask(3, (40, 30), n_classes=3, blob=2)
    monkeypatch.setattr(slideseg.tools.trace, "MAX_STRIPE_BYTES", 7 * 30 * STRIPE_BYTES_PER_PIXEL)
    striped = traced_in_stripes(mask, 1000, [1, 2])
    assert {y1 - y0 for _, y0, y1 in striped} <= {7, 40 % 7}  # 7 rows fit
    assert canonical([p for p, _, _ in striped]) == canonical(trace_polygons(mask, [1, 2], stripe_rows=40))


def test_a_reader_that_gives_the_wrong_rows() -> None:
    with pytest.raises(ValueError, match=r"read_rows\(0, 4\) gave an array of shape \(4, 5\); expected \(4, 6\)"):
        list(iter_polygons(lambda y0, y1: np.ones((y1 - y0, 5), np.uint8), (4, 6), [1], 4))
