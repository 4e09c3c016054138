"""Exact pixel size: level choice, on-the-fly resampling, and seamlessness on the resampled grid."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
import zarr

from slideseg.engines.torch_engine import TorchEngine
from slideseg.errors import ConfigError
from slideseg.io.resample import ResampledSlide, choose_level, output_shape, taps
from slideseg.model.config import UNetConfig
from slideseg.model.files import LoadedModel, save_model
from slideseg.model.unet import build_unet
from slideseg.plan.tiles import make_plan
from slideseg.predict import PredictConfig, predict
from slideseg.schedule.chunks import infer_chunk, softmax
from tests.conftest import ArraySlide, random_rgb


def write_pyramid(path: Path, image: np.ndarray, mpp: float, factors: tuple[int, ...]) -> Path:
    """An OME-TIFF with sub-resolution levels at the given downsample factors (strided)."""
    with tifffile.TiffWriter(path) as tw:
        tw.write(image, tile=(64, 64), photometric="rgb", subifds=len(factors),
                 metadata={"axes": "YXS", "PhysicalSizeX": mpp, "PhysicalSizeY": mpp})
        for f in factors:
            tw.write(image[::f, ::f], tile=(64, 64), photometric="rgb", subfiletype=1)
    return path


def test_choose_level() -> None:
    assert choose_level([0.25, 0.5, 1.0], 0.5).level == 1  # exact match: no resampling
    c = choose_level([0.3, 1.2], 0.5)
    assert (c.level, c.mpp) == (0, 0.5) and c.factor == pytest.approx(0.5 / 0.3)
    assert choose_level([0.252, 0.504], 0.5) == choose_level([0.252, 0.504], 0.5, level=1)  # within 1 %
    assert choose_level([0.252, 0.504], 0.5).factor == 1.0
    assert choose_level([0.6, 1.2], 0.5).level == 0  # nothing fine enough: the finest, upsampled
    assert choose_level([None, None], None).level == 0
    assert choose_level([0.25, 0.5], 0.5, level=0).factor == 2.0
    with pytest.raises(ConfigError, match=r"no pixel size .* pass --mpp"):
        choose_level([None, None], 0.5)
    with pytest.raises(ConfigError, match="--level 3 does not exist"):
        choose_level([0.25, 0.5], 0.5, level=3)


def test_taps_are_normalised_and_local() -> None:
    idx, w = taps(0, 50, 1.7, 85)
    np.testing.assert_allclose(w.sum(axis=1), 1.0, rtol=1e-6)
    centre = (np.arange(50) + 0.5) * 1.7 - 0.5
    assert (np.abs((idx * w).sum(axis=1) - np.clip(centre, 0, 84)) < 1.0).all()


def test_resampled_reads_are_region_independent() -> None:
    img = random_rgb((301, 257), seed=2)
    r = ResampledSlide(ArraySlide(img), 1.7)
    assert r.shape == (*output_shape((301, 257), 1.7), 3)
    whole = r.read(0, r.shape[0], 0, r.shape[1])
    part = r.read(37, 120, 5, 99)
    assert np.array_equal(part, whole[37:120, 5:99])  # bit for bit
    assert abs(float(whole.mean()) - float(img.mean())) < 2.0


def test_resampled_tiling_is_seamless() -> None:
    cfg = UNetConfig(depth=3, width=4, classes=3)
    model = LoadedModel(build_unet(cfg, seed=4).eval(), cfg, "t")
    r = ResampledSlide(ArraySlide(random_rgb((400, 350), seed=3)), 1.6)
    g = cfg.geometry
    resampled = r.read(0, r.shape[0], 0, r.shape[1])
    h, w = resampled.shape[:2]
    ny, nx = g.smallest_tile_covering(h), g.smallest_tile_covering(w)
    padded = np.pad(resampled, ((g.context, ny - h - g.context), (g.context, nx - w - g.context), (0, 0)),
                    mode="reflect")
    with torch.no_grad():
        x = (torch.from_numpy(padded.transpose(2, 0, 1)[None].copy()) - 127.5) / 127.5
        whole = softmax(model.net(x)[0, :, :h, :w].numpy())
    plan = make_plan((h, w), tile=108, context=g.context, alignment=g.alignment, chunk=64)
    engine = TorchEngine(model, device="cpu")
    tiled = np.zeros_like(whole)
    for c in plan:
        tiled[:, c.box.y0:c.box.y1, c.box.x0:c.box.x1] = softmax(infer_chunk(r, engine, c, "reflect", 4))
    np.testing.assert_allclose(tiled, whole, atol=1e-5)


@pytest.fixture
def model_05(tmp_path: Path) -> Path:
    cfg = UNetConfig(depth=2, width=4, mpp=0.5)
    save_model(tmp_path / "m.safetensors", build_unet(cfg, seed=0), cfg)
    return tmp_path / "m.safetensors"


def test_slide_at_025_reads_level_1(tmp_path: Path, model_05: Path) -> None:
    slide = write_pyramid(tmp_path / "s.ome.tif", random_rgb((400, 600)), 0.25, (2, 4))
    r = predict(slide, tmp_path / "m.zarr", model_05, PredictConfig(device="cpu", tissue=False))
    src = zarr.open_group(tmp_path / "m.zarr", mode="r").attrs["slideseg"]["source"]  # type: ignore[index]
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
