"""The procedural synthetic slide (slideseg.tools.synth) and its writer."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr
from hypothesis import given, settings
from hypothesis import strategies as st

from slideseg.errors import ConfigError, OutputExistsError
from slideseg.plan.tiles import level_shape
from slideseg.tools.synth import (
    SynthConfig,
    SynthResult,
    measure_tissue_fraction,
    render_labels,
    render_region,
    truth_path_for,
    write_synthetic_slide,
)

CFG = SynthConfig(size=(700, 530), seed=7)


@pytest.fixture(scope="module")
def full_levels() -> dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Whole renderings of levels 0-3 of CFG, to crop from."""
    return {level: render_region(CFG, 0, h, 0, w, level)
            for level in range(4) for h, w in [level_shape(CFG.size, level)]}


# ------------------------------------------------------------------------------------- config


def test_config_round_trips_through_json() -> None:
    cfg = SynthConfig(size=(300, 400), seed=3, mpp=0.25, tissue_fraction=0.5,
                      nucleus_radius=(4, 8), cell=16, tile=128)
    again = SynthConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg
    assert again.size == (300, 400) and again.nucleus_radius == (4.0, 8.0)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"size": (0, 10)}, "size must be"),  # empty slide
    ({"size": (10,)}, "pair"),  # not (H, W)
    ({"size": (10.5, 10)}, "integer"),  # fractional size
    ({"seed": -1}, "seed"),  # negative seed
    ({"mpp": 0}, "mpp"),  # no pixel size
    ({"tissue_fraction": 0.0}, r"\(0, 1\]"),  # no tissue
    ({"tissue_fraction": 1.5}, r"\(0, 1\]"),  # more than everything
    ({"nucleus_radius": (6, 20)}, "< cell"),  # nucleus could reach past its neighbours
    ({"nucleus_radius": (8, 6)}, "min <= max"),  # reversed
    ({"cell": 1}, "cell"),  # no room for a nucleus
    ({"tile": 100}, "nearest are 96 and 112"),  # not a multiple of 16
])
def test_config_rejects_bad_values(kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        SynthConfig(**{"size": (64, 64), **kwargs})


def test_from_dict_rejects_unknown_and_missing_keys() -> None:
    with pytest.raises(ConfigError, match="Unknown SynthConfig keys"):
        SynthConfig.from_dict({"size": [8, 8], "sead": 1})
    with pytest.raises(ConfigError, match="needs 'size'"):
        SynthConfig.from_dict({"seed": 1})


# ----------------------------------------------------------------------------------- geometry


def test_truth_path_beside_the_slide() -> None:
    assert truth_path_for("/d/demo.ome.tif") == Path("/d/demo.truth.zarr")
    assert truth_path_for("x.OME.TIFF") == Path("x.truth.zarr")
    assert truth_path_for("x.tif") == Path("x.truth.zarr")


@pytest.mark.parametrize(("box", "level", "match"), [
    ((0, 701, 0, 10), 0, r"Region \[0:701, 0:10\] is not inside level 0 of shape \(700, 530\)"),  # one row too many
    ((5, 4, 0, 10), 0, r"Region \[5:4, 0:10\] is not inside"),  # reversed
    ((0, 10, 0, 10), -1, r"level must be in \[0, \d+\], got -1"),  # negative level
    ((0, 176, 0, 10), 2, r"not inside level 2 of shape \(175, 133\)"),  # level 2 has 175 rows
])
def test_region_outside_level_is_an_error(box: tuple[int, int, int, int], level: int, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        render_region(CFG, *box, level=level)


# ------------------------------------------------------------------------------------- render


@settings(max_examples=40, deadline=None)
@given(level=st.integers(0, 3), data=st.data())
def test_any_region_equals_the_crop_of_the_whole(full_levels, level: int, data) -> None:
    h, w = level_shape(CFG.size, level)
    y0 = data.draw(st.integers(0, h - 1))
    y1 = data.draw(st.integers(y0 + 1, min(h, y0 + 150)))
    x0 = data.draw(st.integers(0, w - 1))
    x1 = data.draw(st.integers(x0 + 1, min(w, x0 + 150)))
    part = render_region(CFG, y0, y1, x0, x1, level)
    for whole, crop in zip(full_levels[level], part, strict=True):
        np.testing.assert_array_equal(whole[y0:y1, x0:x1], crop)
    np.testing.assert_array_equal(render_labels(CFG, y0, y1, x0, x1, level), part[1])


@pytest.mark.parametrize("level", [1, 2, 3])
def test_levels_sample_level0(full_levels, level: int) -> None:
    step = 2**level
    for level0, reduced in zip(full_levels[0], full_levels[level], strict=True):
        np.testing.assert_array_equal(level0[::step, ::step], reduced)


def test_empty_region_has_empty_arrays() -> None:
    rgb, inst, cls = render_region(CFG, 5, 5, 0, 9)
    assert rgb.shape == (0, 9, 3) and inst.shape == cls.shape == (0, 9)


def test_same_seed_same_slide_other_seed_other_slide(full_levels) -> None:
    rgb, inst, _ = render_region(CFG, 0, 200, 0, 200)
    np.testing.assert_array_equal(rgb, full_levels[0][0][:200, :200])
    other_rgb, other_inst, _ = render_region(SynthConfig(size=CFG.size, seed=8), 0, 200, 0, 200)
    assert np.mean(rgb != other_rgb) > 0.5
    assert np.mean(inst != other_inst) > 0.1


def test_labels_are_consistent_and_nuclei_touch(full_levels) -> None:
    rgb, inst, cls = full_levels[0]
    assert rgb.dtype == np.uint8 and inst.dtype == np.uint32 and cls.dtype == np.uint8
    np.testing.assert_array_equal(cls, (inst > 0).astype(np.uint8))
    # an id is its cell index + 1, and its pixels lie within one cell of that cell
    n_cells_x = -(-CFG.size[1] // CFG.cell)
    ys, xs = np.nonzero(inst)
    cy, cx = np.divmod(inst[ys, xs].astype(np.int64) - 1, n_cells_x)
    assert np.abs(ys // CFG.cell - cy).max() <= 1 and np.abs(xs // CFG.cell - cx).max() <= 1
    # touching: different nuclei share a boundary (4-adjacent pixels with two nonzero ids)
    down = (inst[1:] != inst[:-1]) & (inst[1:] > 0) & (inst[:-1] > 0)
    right = (inst[:, 1:] != inst[:, :-1]) & (inst[:, 1:] > 0) & (inst[:, :-1] > 0)
    assert down.sum() + right.sum() > 50


def test_colours_look_like_h_and_e(full_levels) -> None:
    rgb, inst, _ = full_levels[0]
    rgb = rgb.astype(np.float64)
    nucleus = rgb[inst > 0].mean(axis=0)
    rest = rgb[inst == 0]
    glass = rest[rest.min(axis=1) > 225].mean(axis=0)
    stroma = rest[rest[:, 1] < 200].mean(axis=0)
    assert np.all((glass > 230) & (glass < 250))  # near-white
    assert stroma[0] > stroma[2] > stroma[1] + 15  # pink: red > blue > green
    assert nucleus[2] > nucleus[0] > nucleus[1] and nucleus.mean() < 110  # dark purple
    assert np.abs(stroma - nucleus).sum() > 200  # clearly separable


@pytest.mark.parametrize("target", [0.3, 0.6, 0.9])
def test_tissue_fraction_is_near_target(target: float) -> None:
    cfg = SynthConfig(size=(2048, 2048), seed=11, tissue_fraction=target)
    rgb, _, _ = render_region(cfg, 0, 256, 0, 256, level=3)  # a coarse sampling
    assert abs(np.mean(rgb[..., 1] < 215) - target) < 0.15  # glass is green >= 225
    assert abs(measure_tissue_fraction(cfg) - target) < 0.05


# -------------------------------------------------------------------------------------- write

WCFG = SynthConfig(size=(1100, 700), seed=5, mpp=0.25, tile=128)


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> tuple[SynthResult, list[tuple[int, int]]]:
    calls: list[tuple[int, int]] = []
    out = tmp_path_factory.mktemp("synth") / "demo.ome.tif"
    result = write_synthetic_slide(out, WCFG, progress=lambda d, t: calls.append((d, t)))
    return result, calls


def test_write_reports_what_it_wrote(written) -> None:
    result, calls = written
    assert result.image_path.name == "demo.ome.tif"
    assert result.truth_path.name == "demo.truth.zarr"
    assert result.shape == (1100, 700) and result.levels == 2
    assert 0.4 < result.tissue_fraction < 0.8 and 0.05 < result.nucleus_fraction < 0.4
    # 9 x 6 + 5 x 3 tiles, then 2 x 1 truth chunks
    assert calls == [(i, 71) for i in range(1, 72)]


def test_tiff_is_a_tiled_jpeg_ome_pyramid(written) -> None:
    result, _ = written
    with tifffile.TiffFile(result.image_path) as tif:
        series = tif.series[0]
        assert tif.is_ome and series.axes == "YXS"
        assert [level.shape for level in series.levels] == [(1100, 700, 3), (550, 350, 3)]
        ome = tif.ome_metadata or ""
        assert 'PhysicalSizeX="0.25"' in ome and 'PhysicalSizeXUnit="µm"' in ome
        for pyramid_level, scale in zip(series.levels, (1, 2), strict=True):
            page = pyramid_level.keyframe
            assert page.compression == tifffile.COMPRESSION.JPEG
            assert (page.tilelength, page.tilewidth) == (128, 128)
            assert page.tags["ResolutionUnit"].value == tifffile.RESUNIT.CENTIMETER
            num, den = page.tags["XResolution"].value
            assert num / den == pytest.approx(1e4 / 0.25 / scale)
        assert series.levels[1].keyframe.subfiletype == 1
        for level, pixels in enumerate(series.levels):  # JPEG: close, not equal
            h, w = level_shape(WCFG.size, level)
            expected = render_region(WCFG, 0, h, 0, w, level)[0].astype(np.int16)
            assert np.abs(pixels.asarray().astype(np.int16) - expected).mean() < 6


def test_truth_zarr_equals_the_rendered_labels(written) -> None:
    result, _ = written
    group = zarr.open_group(result.truth_path, mode="r")
    assert group.attrs["slideseg_synth"] == WCFG.to_dict()
    assert group.attrs["mpp"] == 0.25
    inst, cls = group["instances"], group["classes"]
    assert isinstance(inst, zarr.Array) and isinstance(cls, zarr.Array)
    assert inst.dtype == np.uint32 and cls.dtype == np.uint8
    assert inst.chunks == cls.chunks == (1024, 1024)
    _, labels, classes = render_region(WCFG, 0, 1100, 0, 700)
    np.testing.assert_array_equal(inst[:], labels)
    np.testing.assert_array_equal(cls[:], classes)
    assert result.nucleus_fraction == pytest.approx(classes.mean())


def test_existing_output_needs_overwrite(tmp_path: Path) -> None:
    cfg = SynthConfig(size=(200, 300), seed=1, tile=64)
    out = tmp_path / "s.ome.tif"
    first = write_synthetic_slide(out, cfg)
    with pytest.raises(OutputExistsError, match=r"s\.ome\.tif.*overwrite"):
        write_synthetic_slide(out, cfg)
    out.unlink()  # the truth alone also blocks
    with pytest.raises(OutputExistsError, match=r"s\.truth\.zarr.*overwrite"):
        write_synthetic_slide(out, cfg)
    (first.truth_path / "stale").write_text("old")
    other = SynthConfig(size=(100, 100), seed=2, tile=64)
    again = write_synthetic_slide(out, other, overwrite=True)
    assert not (again.truth_path / "stale").exists()
    assert zarr.open_array(again.truth_path / "instances", mode="r").shape == (100, 100)
    with tifffile.TiffFile(out) as tif:
        assert tif.series[0].shape == (100, 100, 3)


def test_path_must_be_a_tiff(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"\.ome\.tif"):
        write_synthetic_slide(tmp_path / "s.png", SynthConfig(size=(32, 32)))


def test_write_memory_does_not_grow_with_size(tmp_path: Path) -> None:
    write_synthetic_slide(tmp_path / "warm.ome.tif", SynthConfig(size=(64, 64)))  # imports
    peaks = []
    for side in (1024, 2048):  # 4x the area, same tile and chunk sizes
        tracemalloc.start()
        write_synthetic_slide(tmp_path / f"m{side}.ome.tif", SynthConfig(size=(side, side)))
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    assert peaks[1] < 1.25 * peaks[0] and peaks[1] < 64 * 2**20, peaks  # (16 MiB measured)
