"""Regressions found in review: format of --into labels, overwriting 0.5 outputs and labels of
images with named levels, --into with several slides, resumed probabilities' scale, tissue at the
slide border, resume with another batch size, `-o DIR/` for one slide."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr
from typer.testing import CliRunner

from slideseg.cli import app
from slideseg.errors import ConfigError
from slideseg.io.tissue import clean
from slideseg.model.config import UNetConfig
from slideseg.model.files import save_model
from slideseg.model.unet import build_unet
from slideseg.predict import PredictConfig, predict
from slideseg.write.mask import open_mask_writer
from tests.conftest import random_rgb
from tests.test_labels import write_ome_zarr_image
from tests.test_predict import write_tiff


@pytest.fixture
def model(tmp_path: Path) -> Path:
    cfg = UNetConfig(depth=2, width=4, mpp=0.5)
    save_model(tmp_path / "m.safetensors", build_unet(cfg, seed=3), cfg)
    return tmp_path / "m.safetensors"


def _rename_levels(image: Path) -> None:
    """Make an image's levels s0, s1 (not digits)."""
    g = zarr.open_group(image, mode="r+")
    attrs = dict(g.attrs)
    for d in attrs["multiscales"][0]["datasets"]:
        (image / d["path"]).rename(image / f"s{d['path']}")
        d["path"] = f"s{d['path']}"
    g.attrs.put(attrs)


def test_into_takes_the_image_format_and_can_be_overwritten(tmp_path: Path, model: Path) -> None:
    image = write_ome_zarr_image(tmp_path / "image.ome.zarr", random_rgb((128, 128)), 0.5, 2)
    _rename_levels(image)
    cfg = PredictConfig(device="cpu", tissue=False, into=str(image), name="n", ngff="0.5")
    predict(image, None, model, cfg)  # a 0.4 image: the label is 0.4 too, whatever --ngff says
    label = zarr.open_group(image / "labels" / "n", mode="r")
    assert label.metadata.zarr_format == 2 and label["s1"].shape == (64, 64)  # type: ignore[union-attr]
    predict(image, None, model, PredictConfig(**{**cfg.to_dict(), "overwrite": True}))
    with pytest.raises(ConfigError, match=r"--shard needs an NGFF 0\.5 image"):
        predict(image, None, model, PredictConfig(**{**cfg.to_dict(), "overwrite": True, "shard": 2048}))


def test_overwrite_an_ngff_05_mask(tmp_path: Path, model: Path) -> None:
    slide = write_tiff(tmp_path / "s.ome.tif", random_rgb((100, 100)))
    cfg = PredictConfig(device="cpu", ngff="0.5")
    predict(slide, tmp_path / "m.zarr", model, cfg)
    predict(slide, tmp_path / "m.zarr", model, PredictConfig(**{**cfg.to_dict(), "overwrite": True}))


def test_into_refuses_several_slides(tmp_path: Path, model: Path) -> None:
    image = write_ome_zarr_image(tmp_path / "image.ome.zarr", random_rgb((64, 64)), 0.5, 1)
    r = CliRunner().invoke(app, ["predict", str(image), str(image), "--into", str(image), "--model", str(model)])
    assert r.exit_code == 2 and "one slide at a time" in r.stderr


def test_resumed_into_probabilities_keep_their_scale(tmp_path: Path, model: Path) -> None:
    image = write_ome_zarr_image(tmp_path / "image.ome.zarr", random_rgb((256, 256)), 0.25, 2)
    cfg = PredictConfig(device="cpu", tissue=False, into=str(image), name="n", probabilities=True, chunk=64)
    predict(image, None, model, cfg)
    label = image / "labels" / "n"
    writer = open_mask_writer(label)
    writer._done[0, 0] = 0
    predict(image, None, model, PredictConfig(**{**cfg.to_dict(), "resume": True}))
    probs = zarr.open_group(label / "probabilities", mode="r").attrs["multiscales"][0]  # type: ignore[index]
    assert probs["datasets"][0]["coordinateTransformations"][0]["scale"] == [1.0, 0.5, 0.5]


def test_tissue_touching_the_border_survives_cleaning() -> None:
    thin = np.zeros((2, 40), bool)
    thin[:, 10:30] = True
    assert clean(thin)[:, 12:28].all()
    edge = np.zeros((50, 50), bool)
    edge[:, :2] = True
    assert clean(edge)[:, :2].all()


def test_resume_refuses_another_batch_size(tmp_path: Path, model: Path) -> None:
    slide = write_tiff(tmp_path / "s.ome.tif", random_rgb((100, 100)))
    predict(slide, tmp_path / "m.zarr", model, PredictConfig(device="cpu", batch_size=2))
    with pytest.raises(ConfigError, match="per batch"):
        predict(slide, tmp_path / "m.zarr", model, PredictConfig(device="cpu", batch_size=3, resume=True))


def test_output_directory_with_a_slash_for_one_slide(tmp_path: Path, model: Path) -> None:
    slide = write_tiff(tmp_path / "s.ome.tif", random_rgb((64, 64)))
    r = CliRunner().invoke(app, ["predict", str(slide), "-o", f"{tmp_path / 'results'}/", "--model", str(model),
                                 "--no-progress"])
    assert r.exit_code == 0, r.stderr
    assert (tmp_path / "results" / "s.zarr" / "0").is_dir()


def test_resume_refuses_a_slide_replaced_at_the_same_path(tmp_path: Path, model: Path) -> None:
    slide = write_tiff(tmp_path / "s.ome.tif", random_rgb((100, 100)))
    predict(slide, tmp_path / "m.zarr", model, PredictConfig(device="cpu"))
    write_tiff(slide, random_rgb((120, 100)))
    with pytest.raises(ConfigError, match="level shape was"):
        predict(slide, tmp_path / "m.zarr", model, PredictConfig(device="cpu", resume=True))


def test_relative_and_absolute_tissue_mask_paths_resume(tmp_path: Path, model: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    import tifffile

    slide = write_tiff(tmp_path / "s.ome.tif", random_rgb((100, 100)))
    tifffile.imwrite(tmp_path / "t.tif", np.ones((10, 10), np.uint8))
    monkeypatch.chdir(tmp_path)
    predict(slide, tmp_path / "m.zarr", model, PredictConfig(device="cpu", tissue_mask="t.tif"))
    predict(slide, tmp_path / "m.zarr", model, PredictConfig(device="cpu", tissue_mask=str(tmp_path / "t.tif"),
                                                            resume=True))
