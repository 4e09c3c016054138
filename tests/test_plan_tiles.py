"""The overlap-tile planner: exact partitions, phase alignment, bounded windows; mirror indices
and pyramid shapes."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from slideseg.errors import ConfigError
from slideseg.plan.geometry import Geometry
from slideseg.plan.tiles import Box, auto_tile, level_shape, make_plan, mirror_index, pyramid_shapes, tile_origins


@st.composite
def plans(draw: st.DrawFn):  # type: ignore[no-untyped-def]
    depth = draw(st.integers(1, 5))
    g = Geometry(depth)
    k = draw(st.integers(0, 12))
    tile = g.smallest_tile_covering(g.alignment) + k * g.alignment
    shape = (draw(st.integers(1, 700)), draw(st.integers(1, 700)))
    chunk = draw(st.integers(16, 400))
    return make_plan(shape, tile=tile, context=g.context, alignment=g.alignment, chunk=chunk,
                     tile_output=g.usable_output(tile))


@settings(max_examples=60, deadline=None)
@given(plans())
def test_every_output_pixel_is_written_once(plan) -> None:  # type: ignore[no-untyped-def]
    chunk_cover = np.zeros(plan.shape, np.int32)
    tile_cover = np.zeros(plan.shape, np.int32)
    for c in plan:
        chunk_cover[c.box.y0:c.box.y1, c.box.x0:c.box.x1] += 1
        for t in c.tiles:
            w = t.write
            assert c.box.y0 <= w.y0 < w.y1 <= c.box.y1 and c.box.x0 <= w.x0 < w.x1 <= c.box.x1
            tile_cover[w.y0:w.y1, w.x0:w.x1] += 1
    assert (chunk_cover == 1).all()  # chunks partition the output
    assert (tile_cover == 1).all()  # every pixel comes from exactly one tile


@settings(max_examples=60, deadline=None)
@given(plans())
def test_tiles_are_phase_aligned_and_inside_their_window(plan) -> None:  # type: ignore[no-untyped-def]
    c_ = plan.context
    for c in plan:
        for t in c.tiles:
            out_y, out_x = t.read.y0 + c_, t.read.x0 + c_
            assert out_y % plan.alignment == 0 and out_x % plan.alignment == 0
            assert t.read.shape == (plan.tile, plan.tile)
            # the write region lies in the part of the tile output that is kept
            assert out_y <= t.write.y0 and t.write.y1 <= out_y + plan.tile_output
            assert out_x <= t.write.x0 and t.write.x1 <= out_x + plan.tile_output
            w = c.window
            assert w.y0 <= t.read.y0 and t.read.y1 <= w.y1 and w.x0 <= t.read.x0 and t.read.x1 <= w.x1
        # the window reaches at most one halo (context + one alignment step + one tile) past the slide
        h, w_ = plan.shape
        reach = c_ + plan.alignment + plan.tile
        assert c.window.y0 >= -reach and c.window.x0 >= -reach
        assert c.window.y1 <= h + reach and c.window.x1 <= w_ + reach
        assert c.window.y0 >= c.box.y0 - c_ - plan.alignment


def test_plan_example_and_redundancy() -> None:
    g = Geometry(4)
    p = make_plan((2048, 2048), tile=572, context=g.context, alignment=16, chunk=1024)
    c = p.chunk(0, 0)
    assert [t.read.y0 + 92 for t in c.tiles[::3]] == [0, 384, 640]
    assert c.window == Box(-92, 640 + 388 + 92, -92, 640 + 388 + 92)
    compute, read = p.redundancy()
    assert compute == pytest.approx((3 * 572 / 1024) ** 2)
    assert read == pytest.approx(((640 + 572) / 1024) ** 2)
    brute = sum(len(ch.tiles) for ch in p) * 572**2 / 2048**2
    assert compute == pytest.approx(brute)


def test_stride_388_is_never_used() -> None:
    # 572 -> 388 px of output, but 388 is not a multiple of 16: origins step by 384.
    assert tile_origins(0, 2000, 388, 16)[:3] == [0, 384, 768]


def test_auto_tile_covers_one_chunk() -> None:
    g = Geometry(4)
    t = auto_tile((5000, 5000), 1024, 16, g.smallest_tile_covering)
    assert g.output_size(t) >= 1024 and g.output_size(t - 16) < 1024
    small = auto_tile((40, 60), 1024, 16, g.smallest_tile_covering)
    assert g.output_size(small) >= 64
    p = make_plan((5000, 5000), tile=t, context=g.context, alignment=16, chunk=1024)
    assert all(len(c.tiles) == 1 for c in p)


def test_plan_errors() -> None:
    with pytest.raises(ConfigError, match="less than the pooling step"):
        make_plan((100, 100), tile=188, context=92, alignment=16, chunk=64)
    with pytest.raises(ConfigError, match="slide shape must be positive"):
        make_plan((0, 100), tile=572, context=92, alignment=16, chunk=64)
    with pytest.raises(IndexError, match=r"chunk \(2, 0\) is outside the chunk grid \(2, 2\)"):
        make_plan((100, 100), tile=572, context=92, alignment=16, chunk=64).chunk(2, 0)


@pytest.mark.parametrize("mode", ["reflect", "symmetric"])
@pytest.mark.parametrize("n", [2, 3, 7])
@pytest.mark.parametrize("pad", [1, 5, 20])
def test_mirror_index_matches_numpy_pad(mode: str, n: int, pad: int) -> None:
    a = np.arange(n)
    expected = np.pad(a, pad, mode=mode)  # type: ignore[call-overload]
    assert mirror_index(np.arange(-pad, n + pad), n, mode).tolist() == expected.tolist()  # type: ignore[arg-type]


def test_mirror_index_single_pixel() -> None:
    assert mirror_index(np.arange(-4, 5), 1, "reflect").tolist() == [0] * 9


def test_pyramid_shapes_halve_until_1024() -> None:
    assert pyramid_shapes((1024, 1024)) == [(1024, 1024)]  # already <= 1024: level 0 only
    assert pyramid_shapes((1025, 10)) == [(1025, 10), (513, 5)]  # ceil-halved
    assert pyramid_shapes((500, 300)) == [(500, 300)]
    assert pyramid_shapes((4100, 1000)) == [(4100, 1000), (2050, 500), (1025, 250), (513, 125)]
    assert len(pyramid_shapes((100_000, 80_000))) == 1 + math.ceil(math.log2(100_000 / 1024))


def test_level_shape_is_the_ceil_halved_shape() -> None:
    assert level_shape((1001, 512), 2) == (251, 128)
    assert [level_shape((4100, 1000), lv) for lv in range(4)] == pyramid_shapes((4100, 1000))
