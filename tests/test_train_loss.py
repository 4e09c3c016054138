"""The weight map and the weighted cross-entropy on analytic cases and a brute-force reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from slideseg.errors import ConfigError
from slideseg.train.loss import (
    TargetSpec,
    balanced_class_weights,
    border_cutoff,
    make_target,
    object_distances,
    separation_borders,
    unet_weight_map,
    weighted_cross_entropy,
)


def two_discs(gap: int, radius: int = 12, size: tuple[int, int] = (64, 120)) -> tuple[np.ndarray, tuple[int, int]]:
    """Two discs on one row whose nearest pixels are ``gap`` px apart (centre to centre); and the
    pixel halfway between them (``gap`` even)."""
    h, w = size
    cy, cx = h // 2, w // 2
    yy, xx = np.mgrid[:h, :w]
    labels = np.zeros(size, np.int32)
    for ident, centre_x in ((1, cx - gap // 2 - radius), (2, cx + gap // 2 + radius)):
        labels[(yy - cy) ** 2 + (xx - centre_x) ** 2 <= radius**2] = ident
    return labels, (cy, cx)


@pytest.mark.parametrize("gap", [2, 4, 6, 10, 16])
@pytest.mark.parametrize("class_weights", [None, (1.0, 1.0), (0.5, 3.0)])
def test_gap_centre_has_the_analytic_weight(gap: int, class_weights: tuple[float, float] | None) -> None:
    labels, (cy, cx) = two_discs(gap)
    w0, sigma = 10.0, 5.0
    w = unet_weight_map(labels, w0, sigma, class_weights)
    wc = (class_weights or balanced_class_weights(np.bincount((labels > 0).ravel())))[0]
    assert w[cy, cx] == pytest.approx(wc + w0 * math.exp(-(gap**2) / (2 * sigma**2)), abs=1e-3)


def test_far_from_objects_the_border_term_vanishes() -> None:
    labels, _ = two_discs(6, radius=6, size=(40, 200))
    w = unet_weight_map(labels, 10.0, 5.0, (1.0, 2.0))
    d1, _ = object_distances(labels)
    far = d1 > 30  # d1 + d2 >= 2 * d1 > 60 px = 12 sigma
    assert far.sum() > 1000
    np.testing.assert_allclose(w[far], 1.0, atol=1e-6)
    assert (w[labels > 0] == 2.0).all()  # object pixels: w_c alone


def test_one_object_alone_has_no_border_term() -> None:
    labels = np.zeros((30, 30), np.int32)
    labels[10:15, 12:20] = 7
    w = unet_weight_map(labels, 10.0, 5.0, (1.0, 1.0))
    assert np.isfinite(w).all()
    np.testing.assert_array_equal(w, 1.0)
    _, d2 = object_distances(labels)
    assert np.isinf(d2).all()


@pytest.mark.parametrize("gap", [1, 2, 3, 5])
def test_border_on_objects_weighs_both_sides_of_a_gap_alike(gap: int) -> None:
    labels = np.zeros((5, 16 + gap), np.int32)
    labels[:, :8] = 1
    labels[:, 8 + gap:] = 2
    w = unet_weight_map(labels, 10.0, 5.0, (1.0, 1.0), border_on_objects=True)
    row = w[2]
    np.testing.assert_allclose(row, row[::-1], rtol=1e-6)  # the gap is centred: mirror symmetric
    # the object pixel next to the gap (d2 = gap + 1) weighs as the gap pixel next to it (d1 = 1, d2 = gap)
    assert row[7] == pytest.approx(1 + 10 * math.exp(-((gap + 1) ** 2) / 50), abs=1e-4)
    assert row[8] == pytest.approx(row[7], abs=1e-4)
    assert (unet_weight_map(labels, 10.0, 5.0, (1.0, 1.0))[labels > 0] == 1.0).all()  # the paper's: background only


def test_no_objects_and_no_border_weight() -> None:
    assert (unet_weight_map(np.zeros((5, 6), np.int32), class_weights=(1.5, 1.0)) == 1.5).all()
    labels, (cy, cx) = two_discs(4)
    assert unet_weight_map(labels, w0=0.0, class_weights=(1.0, 1.0))[cy, cx] == 1.0


def brute_force_weight_map(labels: np.ndarray, w0: float, sigma: float, class_weights: tuple[float, ...],
                           on_objects: bool = False) -> np.ndarray:
    """Every pixel's distance to every object pixel; the two nearest objects; the formula."""
    ids = [i for i in np.unique(labels) if i != 0]
    yy, xx = np.mgrid[: labels.shape[0], : labels.shape[1]]
    dists = []
    for i in ids:
        py, px = np.nonzero(labels == i)
        d = np.sqrt((yy[..., None] - py) ** 2 + (xx[..., None] - px) ** 2).min(-1)
        dists.append(d)
    d = np.sort(np.stack(dists), axis=0) if dists else np.full((1, *labels.shape), np.inf)
    d1 = d[0]
    d2 = d[1] if len(d) > 1 else np.full(labels.shape, np.inf)
    border = w0 * np.exp(-((d1 + d2) ** 2) / (2 * sigma**2))
    return np.asarray(class_weights)[(labels > 0).astype(int)] + np.where(on_objects | (labels == 0), border, 0.0)


@pytest.mark.parametrize("on_objects", [False, True])
@pytest.mark.parametrize("seed", range(6))
def test_matches_brute_force_on_random_labels(seed: int, on_objects: bool) -> None:
    rng = np.random.default_rng(seed)
    h, w = rng.integers(12, 40, 2)
    labels = np.zeros((h, w), np.int64)
    for ident in rng.choice(10**6, size=rng.integers(1, 7), replace=False):  # arbitrary, sparse ids
        y, x = rng.integers(0, h), rng.integers(0, w)
        ry, rx = rng.integers(1, 6, 2)
        labels[max(0, y - ry): y + ry, max(0, x - rx): x + rx] = ident + 1
    sigma = float(rng.uniform(1.5, 6.0))
    expected = brute_force_weight_map(labels, 10.0, sigma, (0.7, 1.9), on_objects)
    got = unet_weight_map(labels, 10.0, sigma, (0.7, 1.9), border_on_objects=on_objects)
    np.testing.assert_allclose(got, expected, atol=1e-4)


def test_distances_are_exact_within_the_cutoff() -> None:
    labels, _ = two_discs(8, radius=5, size=(40, 100))
    cut = border_cutoff(3.0)
    near, second = object_distances(labels, cut)
    ref1, ref2 = object_distances(labels)  # no cutoff
    inside = ref2 <= cut
    np.testing.assert_array_equal(near[inside], ref1[inside])
    np.testing.assert_array_equal(second[inside], ref2[inside])


def test_balanced_class_weights_and_class_maps() -> None:
    assert balanced_class_weights([30, 10]) == pytest.approx((40 / 60, 40 / 20))
    classes = np.array([[0, 1, 2], [0, 0, 2]])
    labels = np.array([[0, 1, 2], [0, 0, 2]])
    w = unet_weight_map(labels, w0=0.0, classes=classes)  # 3 classes of 3, 1, 2 px out of 6
    np.testing.assert_allclose(w, np.array([[2 / 3, 2, 1], [2 / 3, 2 / 3, 1]]), rtol=1e-6)


def test_bad_parameters_are_rejected() -> None:
    with pytest.raises(ConfigError, match="sigma > 0"):
        unet_weight_map(np.zeros((3, 3), np.int32), sigma=0.0)
    with pytest.raises(ConfigError, match="one weight per class"):
        unet_weight_map(np.array([[0, 1]]), class_weights=(1.0,))


def test_separation_borders_mark_both_sides_of_a_contact() -> None:
    labels = np.array([
        [1, 1, 2, 2, 0],
        [1, 1, 0, 2, 0],
        [3, 0, 0, 0, 0],
    ])
    expected = np.array([
        [0, 1, 1, 0, 0],
        [1, 0, 0, 0, 0],
        [1, 0, 0, 0, 0],
    ], bool)
    np.testing.assert_array_equal(separation_borders(labels), expected)


def test_one_px_separation_borders_mark_the_larger_id() -> None:
    labels = np.array([
        [1, 1, 2, 2, 0],
        [1, 1, 0, 2, 0],
        [3, 0, 0, 0, 0],
    ])
    expected = np.array([
        [0, 0, 1, 0, 0],  # 1 | 2: the 2
        [0, 0, 0, 0, 0],
        [1, 0, 0, 0, 0],  # 1 over 3: the 3
    ], bool)
    np.testing.assert_array_equal(separation_borders(labels, width=1), expected)


def packed_labels(seed: int) -> np.ndarray:
    """Random rectangles with arbitrary sparse ids, drawn over each other so that many touch."""
    rng = np.random.default_rng(seed)
    h, w = rng.integers(8, 40, 2)
    labels = np.zeros((h, w), np.int64)
    for ident in rng.choice(10**6, size=rng.integers(2, 12), replace=False):
        y, x = rng.integers(0, h), rng.integers(0, w)
        ry, rx = rng.integers(1, 8, 2)
        labels[max(0, y - ry): y + ry, max(0, x - rx): x + rx] = ident + 1
    return labels


def four_neighbour_pairs(a: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    return [(a[1:], a[:-1]), (a[:, 1:], a[:, :-1])]


@pytest.mark.parametrize("width", [1, 2])
@pytest.mark.parametrize("seed", range(8))
def test_separation_borders_leave_no_two_objects_4_connected(seed: int, width: int) -> None:
    labels = packed_labels(seed)
    kept = np.where(separation_borders(labels, width), 0, labels)
    for a, b in four_neighbour_pairs(kept):
        assert not ((a != b) & (a > 0) & (b > 0)).any()
    assert ((kept == 0) | (kept == labels)).all()  # borders only remove object pixels


@pytest.mark.parametrize("seed", range(8))
def test_one_px_borders_are_half_of_the_two_px_ones_and_turn_with_the_image(seed: int) -> None:
    labels = packed_labels(seed)
    one, two = separation_borders(labels, 1), separation_borders(labels, 2)
    assert two[one].all()
    for (a, b), (one_a, one_b) in zip(four_neighbour_pairs(labels), four_neighbour_pairs(one), strict=True):
        touch = (a != b) & (a > 0) & (b > 0)  # every contact loses its larger-id pixel ...
        assert one_a[touch & (a > b)].all() and one_b[touch & (b > a)].all()
    padded = np.pad(labels, 1)
    neighbours = np.stack([padded[:-2, 1:-1], padded[2:, 1:-1], padded[1:-1, :-2], padded[1:-1, 2:]])
    smaller = ((neighbours > 0) & (neighbours < labels)).any(axis=0)
    assert smaller[one].all()  # ... and only pixels that touch a smaller id are marked
    for k in range(4):
        np.testing.assert_array_equal(separation_borders(np.rot90(labels, k), 1), np.rot90(one, k))
    np.testing.assert_array_equal(separation_borders(labels[::-1], 1), one[::-1])


def test_separation_width_must_be_1_or_2() -> None:
    with pytest.raises(ConfigError, match="must be 1 or 2 px, got 3"):
        separation_borders(np.zeros((2, 2), np.int32), width=3)


def test_weighted_loss_equals_a_hand_computed_3x3_value() -> None:
    ln3 = math.log(3.0)
    logits = torch.zeros(1, 2, 3, 3)
    logits[0, 1, 0, 1] = ln3  # softmax (1/4, 3/4)
    logits[0, 1, 2, 0] = ln3
    target = torch.tensor([[[0, 1, 1], [0, 0, 0], [0, 0, 0]]])
    weight = torch.tensor([[[1.0, 2.0, 0.0], [1.0, 1.0, 1.0], [1.0, 1.0, 1.0]]])
    # (0,0): ln 2; (0,1): 2 ln(4/3); (0,2): weight 0, not counted; (2,0): target 0 with p0 = 1/4: ln 4;
    # the five others: ln 2. Sum = 8 ln 2 + 2 ln(4/3) over 8 labelled pixels.
    expected = math.log(2.0) + math.log(4.0 / 3.0) / 4.0  # 0.765068
    assert float(weighted_cross_entropy(logits, target, weight)) == pytest.approx(expected, abs=1e-6)


def test_unit_weights_give_the_plain_mean_cross_entropy() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 5, 4, generator=g)
    target = torch.randint(0, 3, (2, 5, 4), generator=g)
    plain = torch.nn.functional.cross_entropy(logits, target)
    assert float(weighted_cross_entropy(logits, target, torch.ones(2, 5, 4))) == pytest.approx(float(plain), rel=1e-6)


# --------------------------------------------------------------------------------- targets


def test_instance_targets_get_separation_borders_and_weights() -> None:
    inst = np.zeros((12, 16), np.int32)
    inst[2:10, 2:8] = 1
    inst[2:10, 8:14] = 2  # touching along x = 7 | 8
    target, weight, truth = make_target(inst, TargetSpec("instances", 2, class_weights=(1.0, 1.0)))
    assert (truth == (inst > 0)).all()
    assert (target[2:10, 7:9] == 0).all() and target[5, 4] == 1 and target[5, 10] == 1
    assert weight[5, 7] == pytest.approx(1 + 10 * np.exp(-9 / 50), abs=1e-4)  # in the new 2-px gap: d1 1, d2 2
    _, plain, _ = make_target(inst, TargetSpec("instances", 2, weighted=False))
    assert (plain == 1).all()


def test_class_targets_use_components_as_objects() -> None:
    cls = np.zeros((9, 15), np.uint8)
    cls[2:7, 1:6] = 1
    cls[2:7, 9:14] = 2
    target, weight, truth = make_target(cls, TargetSpec("classes", 3, class_weights=(1.0, 1.0, 1.0)))
    assert (target == cls).all() and (truth == cls).all()
    assert weight[4, 7] == pytest.approx(1 + 10 * np.exp(-16 / 50), abs=1e-4)  # gap of 4 px centre to centre
