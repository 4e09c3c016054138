"""slideseg.tools.components: objects labelled in blocks, or in stripes in one pass, equal one
labelling of the whole mask; and their pixel sums (slideseg.tools.pixel_sums) equal regionprops
of the whole mask."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import ndimage
from skimage.measure import regionprops_table

from slideseg.errors import ConfigError
from slideseg.plan.tiles import grid_boxes
from slideseg.tools.components import (
    BlockSummary,
    LabelSpec,
    Numbering,
    StripeStitcher,
    label_image,
    relabel_block,
    stitch,
    summarise_block,
)
from slideseg.tools.pixel_sums import Sums, SumsMerger, edge_counts, merge_sums, unit_sums

KINDS = ("blob", "snake", "ring", "checker", "line", "edge")
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def paint(m: np.ndarray, kind: str, c: int, y: int, x: int, size: int, steps: list[int]) -> None:
    """Draw one shape of class ``c`` into ``m``."""
    h, w = m.shape
    yy, xx = np.mgrid[:h, :w]
    if kind == "blob":  # a filled disc
        m[(yy - y) ** 2 + (xx - x) ** 2 <= size**2] = c
    elif kind == "snake":  # a 1-px random walk, which wanders across many blocks
        for d in steps:
            m[y, x] = c
            y = min(h - 1, max(0, y + (0, 1, 0, -1)[d]))
            x = min(w - 1, max(0, x + (1, 0, -1, 0)[d]))
    elif kind == "ring":  # a square ring around a hole
        ring = (np.maximum(abs(yy - y), abs(xx - x)) == size)
        m[ring] = c
    elif kind == "checker":  # pixels that touch only at corners
        m[(abs(yy - y) < size) & (abs(xx - x) < size) & ((yy + xx) % 2 == 0)] = c
    elif kind == "line":  # a whole row or column
        if size % 2:
            m[y, :] = c
        else:
            m[:, x] = c
    else:  # a rectangle touching the mask's edge
        m[: size, x : x + size] = c


@st.composite
def masks(draw: st.DrawFn, max_side: int = 20) -> np.ndarray:
    h, w = draw(st.integers(1, max_side)), draw(st.integers(1, max_side))
    m = np.zeros((h, w), np.uint8)
    shapes = st.tuples(st.sampled_from(KINDS), st.integers(1, 3), st.integers(0, h - 1), st.integers(0, w - 1),
                       st.integers(1, 8), st.lists(st.integers(0, 3), max_size=60))
    for shape in draw(st.lists(shapes, max_size=8)):
        paint(m, *shape)
    return m


def reference(mask: np.ndarray, values: tuple[int, ...], connectivity: int, min_area: int = 0) -> np.ndarray:
    """scipy.ndimage.label of the whole mask, per value, renumbered in raster order of first pixel."""
    structure = ndimage.generate_binary_structure(2, 1 if connectivity == 4 else 2)
    labels = np.zeros(mask.shape, np.int64)
    n = 0
    for v in values:
        lab, k = ndimage.label(mask == v, structure)
        labels[lab > 0] = lab[lab > 0] + n
        n += k
    area = np.bincount(labels.ravel(), minlength=n + 1)
    flat = labels.ravel()
    fg = np.flatnonzero(flat)
    uniq, first = np.unique(flat[fg], return_index=True)
    keep = area[uniq] >= min_area
    order = np.argsort(fg[first][keep])
    remap = np.zeros(n + 1, np.int64)
    remap[uniq[keep][order]] = np.arange(1, int(keep.sum()) + 1)
    return remap[labels]


def measure(mask: np.ndarray, spec: LabelSpec, block: int, channels: np.ndarray | None = None, min_area: int = 0,
            order: list[int] | None = None) -> tuple[np.ndarray, Sums]:
    """The objects pipeline in memory: pass 1, stitch, number band by band, pass 2 with sums, and
    the sums merged with the blocks taken in ``order``."""
    h, w = mask.shape
    grid = (-(-h // block), -(-w // block))
    boxes = grid_boxes(mask.shape, block)
    stitched = stitch((summarise_block(mask[y0:y1, x0:x1], (y0, y1, x0, x1), w, spec) for y0, y1, x0, x1 in boxes),
                      grid, spec)
    numbering = Numbering(stitched, min_area)
    framed = np.pad(mask.astype(np.int64), 1, constant_values=-1)
    ids = np.zeros(mask.shape, np.uint32)
    parts = []
    for band in range(grid[0]):
        row = boxes[band * grid[1] : (band + 1) * grid[1]]
        maps = numbering.band([summarise_block(mask[y0:y1, x0:x1], (y0, y1, x0, x1), w, spec)
                               for y0, y1, x0, x1 in row])
        for (y0, y1, x0, x1), bids in zip(row, maps, strict=True):
            ids[y0:y1, x0:x1], labels, values = relabel_block(mask[y0:y1, x0:x1], spec, bids.mapping)
            parts.append(unit_sums(labels, values, bids, (y0, x0), edges=edge_counts(framed[y0 : y1 + 2, x0 : x1 + 2]),
                                   channels=None if channels is None else channels[y0:y1, x0:x1]))
    merger = SumsMerger()
    done = [merger.add(*parts[i]) for i in (order or range(len(parts)))]
    assert merger.open == 0
    whole = Sums.concat(done, 0 if channels is None else channels.shape[2])
    return ids, whole.take(np.argsort(whole.ids))


@SETTINGS
@given(mask=masks(), block=st.integers(1, 24), connectivity=st.sampled_from([4, 8]),
       values=st.sampled_from([(1, 2, 3), (1,), (2, 3)]))
def test_ids_equal_whole_mask_labelling(mask: np.ndarray, block: int, connectivity: int,
                                        values: tuple[int, ...]) -> None:
    """Identical ids for every block size (1 px up to larger than the mask) and both connectivities."""
    got = label_image(mask, LabelSpec(values, connectivity), block=block)
    np.testing.assert_array_equal(got, reference(mask, values, connectivity))


@SETTINGS
@given(mask=masks(), block=st.integers(1, 12), min_area=st.integers(0, 12))
def test_min_area_drops_objects_and_keeps_ids_consecutive(mask: np.ndarray, block: int, min_area: int) -> None:
    got = label_image(mask, LabelSpec((1, 2, 3)), block=block, min_area=min_area)
    np.testing.assert_array_equal(got, reference(mask, (1, 2, 3), 4, min_area))
    assert set(np.unique(got)) - {0} == set(range(1, int(got.max()) + 1))


@SETTINGS
@given(mask=masks(), block=st.integers(1, 24), connectivity=st.sampled_from([4, 8]), seed=st.integers(0, 2**16))
def test_sums_equal_regionprops_of_the_whole_mask(mask: np.ndarray, block: int, connectivity: int,
                                                  seed: int) -> None:
    """Per-object sums merged over blocks (taken in a random order) equal regionprops to 1e-9."""
    rng = np.random.default_rng(seed)
    image = rng.uniform(0, 255, (*mask.shape, 2))
    grid = -(-mask.shape[0] // block) * -(-mask.shape[1] // block)
    ids, sums = measure(mask, LabelSpec((1, 2, 3), connectivity), block, image, order=list(rng.permutation(grid)))
    ref = reference(mask, (1, 2, 3), connectivity)
    np.testing.assert_array_equal(ids, ref)
    props = regionprops_table(ref, image, properties=("label", "area", "centroid", "bbox", "eccentricity",
                                                      "intensity_mean", "intensity_std"))
    np.testing.assert_array_equal(sums.ids, props["label"])
    np.testing.assert_array_equal(sums.count, props["area"])
    np.testing.assert_array_equal(sums.value, [mask[ref == i][0] for i in sums.ids])
    np.testing.assert_allclose(sums.mean_y, props["centroid-0"], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(sums.mean_x, props["centroid-1"], rtol=1e-9, atol=1e-12)
    np.testing.assert_array_equal(np.stack([sums.y_min, sums.x_min, sums.y_max + 1, sums.x_max + 1]),
                                  [props[f"bbox-{k}"] for k in range(4)])
    n = sums.count
    a, c, b = sums.m2_yy / n, sums.m2_xx / n, sums.m2_xy / n
    l1 = (a + c) / 2 + np.hypot((a - c) / 2, b)
    l2 = np.maximum((a + c) / 2 - np.hypot((a - c) / 2, b), 0)
    ecc = np.where(l1 > 0, np.sqrt(1 - l2 / np.where(l1 > 0, l1, 1)), 0)
    np.testing.assert_allclose(ecc, props["eccentricity"], rtol=1e-9, atol=1e-7)
    for k in range(2):
        np.testing.assert_allclose(sums.mean_v[:, k], props[f"intensity_mean-{k}"], rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(np.sqrt(sums.m2_v[:, k] / n), props[f"intensity_std-{k}"], rtol=1e-9, atol=1e-9)
    # perimeter: pixel edges facing another value or the outside, counted on the whole mask
    padded = np.pad(mask.astype(np.int64), 1, constant_values=-1)
    centre = padded[1:-1, 1:-1]
    faces = sum((centre != np.roll(padded, s, axis)[1:-1, 1:-1]).astype(int) for s in (1, -1) for axis in (0, 1))
    np.testing.assert_array_equal(sums.edges, np.bincount(ref.ravel(), faces.ravel())[1:].astype(np.int64))


def test_plain_per_block_labelling_is_not_the_same() -> None:
    """The control: labelling each block on its own splits a snake that crosses blocks."""
    mask = np.zeros((12, 12), np.uint8)
    paint(mask, "snake", 1, 0, 0, 1, [0] * 10 + [1] * 10 + [2] * 8)
    plain = np.zeros(mask.shape, np.int64)
    n = 0
    for y0, y1, x0, x1 in grid_boxes(mask.shape, 4):  # each block's labels after the previous blocks'
        lab, k = ndimage.label(mask[y0:y1, x0:x1] == 1)
        plain[y0:y1, x0:x1] = np.where(lab > 0, lab + n, 0)
        n += k
    whole = reference(mask, (1,), 4)
    assert len(np.unique(whole)) == 2 and len(np.unique(plain)) == 8  # one snake, cut into seven pieces
    assert not np.array_equal(plain, whole)
    np.testing.assert_array_equal(label_image(mask, LabelSpec((1,)), block=4), whole)


@pytest.mark.parametrize("connectivity", [4, 8])
def test_long_borders_join_once(connectivity: int) -> None:
    """An object that touches itself across a border at hundreds of pixels is still one object."""
    mask = np.ones((4, 1030), np.uint8)
    ids = label_image(mask, LabelSpec((1,), connectivity), block=2)
    assert ids.min() == ids.max() == 1


@pytest.mark.parametrize("connectivity", [4, 8])
def test_diagonal_contacts_by_connectivity(connectivity: int) -> None:
    """Corner-touching pixels in different blocks: one object with 8-connectivity, four with 4."""
    mask = np.eye(4, dtype=np.uint8)
    ids = label_image(mask, LabelSpec((1,), connectivity), block=1)
    assert ids[np.eye(4, dtype=bool)].tolist() == ([1, 1, 1, 1] if connectivity == 8 else [1, 2, 3, 4])


def test_touching_classes_are_different_objects() -> None:
    mask = np.array([[1, 1, 2, 2], [1, 1, 2, 2]], np.uint8)
    assert label_image(mask, LabelSpec((1, 2)), block=3).tolist() == [[1, 1, 2, 2], [1, 1, 2, 2]]
    assert label_image(mask, LabelSpec((1, 2), by_class=False), block=3).tolist() == [[1, 1, 1, 1], [1, 1, 1, 1]]


@SETTINGS
@given(mask=masks(), block=st.integers(1, 24), connectivity=st.sampled_from([4, 8]))
def test_foreground_objects_without_classes(mask: np.ndarray, block: int, connectivity: int) -> None:
    """``by_class=False``: components of the union of the values (what ``evaluate`` counts)."""
    got = label_image(mask, LabelSpec((1, 2, 3), connectivity, by_class=False), block=block)
    np.testing.assert_array_equal(got, reference((mask > 0).astype(np.uint8), (1,), connectivity))


def stripe_regions(mask: np.ndarray, rows: int, spec: LabelSpec) -> tuple[np.ndarray, list[tuple[int, int, list[int]]]]:
    """Feed ``mask`` to a :class:`StripeStitcher` in stripes of ``rows``: the region of every pixel
    (joins followed to the end) and, per stripe, ``(y0, y1, regions that end there)``."""
    stitcher = StripeStitcher(mask.shape, spec)
    out = np.full(mask.shape, -1, np.int64)
    ends = []
    for y0 in range(0, mask.shape[0], rows):
        y1 = min(mask.shape[0], y0 + rows)
        stripe = stitcher.feed(mask[y0:y1])
        for old, new in stripe.joined.items():
            out[out == old] = new
        np.testing.assert_array_equal(stripe.above, out[y0 - 1] if y0 else -1)  # the row above, after the joins
        out[y0:y1] = stripe.regions[stripe.labels]
        np.testing.assert_array_equal(stripe.done_values, mask.ravel()[stripe.done])  # each region's first pixel
        ends.append((y0, y1, stripe.done.tolist()))
    assert stitcher.rows == mask.shape[0]
    return out, ends


@SETTINGS
@given(mask=masks(), rows=st.integers(1, 24), connectivity=st.sampled_from([4, 8]),
       values=st.sampled_from([(1, 2, 3), (1,), (2, 3)]), by_class=st.booleans())
def test_stripes_in_one_pass_give_the_regions_of_the_whole_mask(mask: np.ndarray, rows: int, connectivity: int,
                                                                values: tuple[int, ...], by_class: bool) -> None:
    """Every stripe height: the regions are those of one labelling of the whole mask, each is named
    by its first pixel and ends exactly once, with the stripe that holds its last row or the next."""
    spec = LabelSpec(values, connectivity, by_class)
    regions, ends = stripe_regions(mask, rows, spec)
    expected = reference(mask if by_class else np.isin(mask, values).astype(np.uint8), values if by_class else (1,),
                         connectivity)
    names, first = np.unique(regions.ravel(), return_index=True)
    real = names[names >= 0]
    np.testing.assert_array_equal(real, first[names >= 0])  # a region's name is its first pixel
    ranks = np.where(regions >= 0, np.searchsorted(real, regions) + 1, 0)
    np.testing.assert_array_equal(ranks, expected)  # the same regions, named in raster order
    ended = sorted(r for _, _, done in ends for r in done)
    assert ended == real.tolist()  # each region ends once
    last_row = {int(r): int(np.flatnonzero((regions == r).any(axis=1))[-1]) for r in real}
    for y0, y1, done in ends:
        assert all(y0 - 1 <= last_row[r] < y1 for r in done)


def test_stripes_must_follow_one_another() -> None:
    stitcher = StripeStitcher((4, 3), LabelSpec((1,)))
    stitcher.feed(np.ones((3, 3), np.uint8))
    with pytest.raises(ValueError, match=r"after row 3 of a 4 x 3 mask; expected \(1..1, 3\)"):
        stitcher.feed(np.ones((2, 3), np.uint8))
    assert stitcher.feed(np.ones((1, 3), np.uint8)).done.tolist() == [0]


def test_more_objects_than_the_limit() -> None:
    mask = np.eye(5, dtype=np.uint8)
    spec = LabelSpec((1,))
    stitched = stitch([summarise_block(mask, (0, 5, 0, 5), 5, spec)], (1, 1), spec)
    with pytest.raises(ConfigError, match=r"more than 4 objects.*uint32.*--min-area"):
        Numbering(stitched, limit=4).band([summarise_block(mask, (0, 5, 0, 5), 5, spec)])
    assert Numbering(stitched, limit=5).band([summarise_block(mask, (0, 5, 0, 5), 5, spec)])[0].mapping.max() == 5


def test_summary_round_trip_and_merge_is_exact_for_split_objects() -> None:
    mask = np.zeros((6, 7), np.uint8)
    mask[1:5, 1:6] = 2
    s = summarise_block(mask[:3], (0, 3, 0, 7), 7, LabelSpec((2,)))
    back = BlockSummary.from_arrays(s.to_arrays())
    assert back.box == s.box
    assert all(np.array_equal(getattr(back, k), v) for k, v in s.to_arrays().items() if k != "box")
    _, sums = measure(mask, LabelSpec((2,)), 3)
    assert sums.ids.tolist() == [1] and sums.count.tolist() == [20] and sums.edges.tolist() == [18]
    assert (sums.mean_y[0], sums.mean_x[0], sums.m2_yy[0]) == (2.5, 3.0, 25.0)
    assert len(merge_sums(Sums.concat([sums, sums]))) == 1


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"values": (1,), "connectivity": 6}, "--connectivity is 6"),
    ({"values": ()}, "one or more values"),
])
def test_bad_specs(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        LabelSpec(**kwargs)  # type: ignore[arg-type]
