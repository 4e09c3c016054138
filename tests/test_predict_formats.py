"""`predict` on every input format slideseg reads: the mask has the model's pixel size, the right
shape, and the pixels of a plain-TIFF run of the same image."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr

from slideseg.errors import ConfigError
from slideseg.io.slide import open_slide
from slideseg.model.config import UNetConfig
from slideseg.model.files import save_model
from slideseg.model.unet import build_unet
from slideseg.predict import PredictConfig, predict
from tests.test_formats import Source, fluo, ndpi, ome_zarr, svs  # noqa: F401  (fixtures)


def _model(tmp_path: Path, channels: int, mpp: float | None, mean: float = 127.5) -> Path:
    cfg = UNetConfig(depth=2, width=4, in_channels=channels, mpp=mpp, norm_mean=(mean,), norm_std=(mean,))
    save_model(tmp_path / f"m{channels}.safetensors", build_unet(cfg, seed=1), cfg)
    return tmp_path / f"m{channels}.safetensors"


def _mask(path: Path) -> np.ndarray:
    return np.asarray(zarr.open_group(path, mode="r")["0"][:])  # type: ignore[index]


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
    assert _mask(tmp_path / "mask.zarr").shape == r.shape


def test_predict_on_ome_zarr(tmp_path: Path, ome_zarr: Source) -> None:  # noqa: F811
    path, levels = ome_zarr
    model = _model(tmp_path, 3, mpp=0.5, mean=32768.0)
    r = predict(path, tmp_path / "mask.zarr", model, PredictConfig(device="cpu", tissue=False))
    src = zarr.open_group(tmp_path / "mask.zarr", mode="r").attrs["slideseg"]["source"]  # type: ignore[index]
    assert src["level"] == 1 and src["resample_factor"] == 1.0 and r.shape == levels[1].shape[:2]


def test_predict_picks_channels(tmp_path: Path, fluo: Source) -> None:  # noqa: F811
    path, _ = fluo
    model = _model(tmp_path, 2, mpp=None, mean=32768.0)
    r = predict(path, tmp_path / "a.zarr", model, PredictConfig(device="cpu", tissue=False, channels=(0, 2)))
    src = zarr.open_group(tmp_path / "a.zarr", mode="r").attrs["slideseg"]  # type: ignore[index]
    assert src["predict_config"]["channels"] == [0, 2] and src["source"]["channels"] == 2
    assert r.shape == _mask(tmp_path / "a.zarr").shape
    with pytest.raises(ConfigError, match="channel"):
        predict(path, tmp_path / "b.zarr", model, PredictConfig(device="cpu", tissue=False, channels=(0, 9)))
