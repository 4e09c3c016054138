"""`predict` on every input format slideseg reads, and at every pixel size: the mask has the
model's pixel size (a pyramid level that has it, or the finest level resampled to it), the right
shape, and records where its pixels came from."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr

from slideseg.errors import ConfigError
from slideseg.io.slide import open_slide
from slideseg.predict import PredictConfig, predict
from tests.conftest import Source, random_rgb, read_level, save_tiny_model


def _model(tmp_path: Path, channels: int, mpp: float | None, mean: float = 127.5) -> Path:
    return save_tiny_model(tmp_path / f"m{channels}.safetensors", seed=1, in_channels=channels, mpp=mpp,
                           norm_mean=(mean,), norm_std=(mean,))


def _source(mask: Path) -> dict:
    return zarr.open_group(mask, mode="r").attrs["slideseg"]["source"]  # type: ignore[index,no-any-return]


@pytest.mark.parametrize("fixture", ["svs", "ndpi"])
def test_predict_on_scanner_files(request: pytest.FixtureRequest, tmp_path: Path, fixture: str) -> None:
    path, _ = request.getfixturevalue(fixture)
    with open_slide(path) as s:
        mpp0, shape0 = s.mpp, s.shape[:2]
    assert mpp0 is not None
    model = _model(tmp_path, 3, mpp=round(2 * mpp0, 4))  # the model wants level 1 (x2 scanners) or resampling
    r = predict(path, tmp_path / "mask.zarr", model, PredictConfig(device="cpu", tissue=False))
    assert r.mpp == pytest.approx(2 * mpp0, rel=0.011)
    assert r.shape == pytest.approx((shape0[0] / 2, shape0[1] / 2), abs=1)
    assert read_level(tmp_path / "mask.zarr").shape == r.shape


def test_predict_on_ome_zarr(tmp_path: Path, ome_zarr: Source) -> None:
    path, levels = ome_zarr
    model = _model(tmp_path, 3, mpp=0.5, mean=32768.0)
    r = predict(path, tmp_path / "mask.zarr", model, PredictConfig(device="cpu", tissue=False))
    src = _source(tmp_path / "mask.zarr")
    assert src["level"] == 1 and src["resample_factor"] == 1.0 and r.shape == levels[1].shape[:2]


def test_predict_picks_channels(tmp_path: Path, fluo: Source) -> None:
    path, _ = fluo
    model = _model(tmp_path, 2, mpp=None, mean=32768.0)
    r = predict(path, tmp_path / "a.zarr", model, PredictConfig(device="cpu", tissue=False, channels=(0, 2)))
    src = zarr.open_group(tmp_path / "a.zarr", mode="r").attrs["slideseg"]  # type: ignore[index]
    assert src["predict_config"]["channels"] == [0, 2] and src["source"]["channels"] == 2
    assert r.shape == read_level(tmp_path / "a.zarr").shape
    with pytest.raises(ConfigError, match="channel"):
        predict(path, tmp_path / "b.zarr", model, PredictConfig(device="cpu", tissue=False, channels=(0, 9)))


# --------------------------------------------------------------------------------------------
# Pixel size: level choice and resampling
# --------------------------------------------------------------------------------------------


def write_pyramid(path: Path, image: np.ndarray, mpp: float, factors: tuple[int, ...]) -> Path:
    """An OME-TIFF with sub-resolution levels at the given downsample factors (strided)."""
    with tifffile.TiffWriter(path) as tw:
        tw.write(image, tile=(64, 64), photometric="rgb", subifds=len(factors),
                 metadata={"axes": "YXS", "PhysicalSizeX": mpp, "PhysicalSizeY": mpp})
        for f in factors:
            tw.write(image[::f, ::f], tile=(64, 64), photometric="rgb", subfiletype=1)
    return path


def test_slide_at_025_reads_level_1(tmp_path: Path, model_05: Path) -> None:
    slide = write_pyramid(tmp_path / "s.ome.tif", random_rgb((400, 600)), 0.25, (2, 4))
    r = predict(slide, tmp_path / "m.zarr", model_05, PredictConfig(device="cpu", tissue=False))
    src = _source(tmp_path / "m.zarr")
    assert src["level"] == 1 and src["resample_factor"] == 1.0
    assert r.shape == (200, 300) and r.mpp == pytest.approx(0.5)


def test_slide_at_03_reads_level_0_and_resamples(tmp_path: Path, model_05: Path) -> None:
    slide = write_pyramid(tmp_path / "s.ome.tif", random_rgb((500, 600)), 0.3, (4,))  # levels 0.3 and 1.2
    r = predict(slide, tmp_path / "m.zarr", model_05, PredictConfig(device="cpu", tissue=False))
    g = zarr.open_group(tmp_path / "m.zarr", mode="r")
    src = g.attrs["slideseg"]["source"]  # type: ignore[index]
    assert src["level"] == 0 and src["resample_factor"] == pytest.approx(0.5 / 0.3)
    assert r.shape == (300, 360) and g["0"].shape == (300, 360)  # type: ignore[union-attr]
    scale = g.attrs["multiscales"][0]["datasets"][0]["coordinateTransformations"][0]["scale"]  # type: ignore[index]
    assert scale == [0.5, 0.5]  # the output's scale is the model's pixel size, exactly
    assert any("resampled" in n for n in r.warnings)


def test_missing_pixel_size_needs_mpp_or_level(tmp_path: Path, model_05: Path) -> None:
    tifffile.imwrite(tmp_path / "s.tif", random_rgb((100, 100)), photometric="rgb")
    with pytest.raises(ConfigError, match="no pixel size"):
        predict(tmp_path / "s.tif", tmp_path / "m.zarr", model_05, PredictConfig(device="cpu"))
    r = predict(tmp_path / "s.tif", tmp_path / "m.zarr", model_05, PredictConfig(device="cpu", mpp=0.25))
    assert r.shape == (50, 50) and r.mpp == 0.5
    r = predict(tmp_path / "s.tif", tmp_path / "n.zarr", model_05, PredictConfig(device="cpu", level=0))
    assert r.shape == (100, 100) and r.mpp is None
