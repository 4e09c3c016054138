"""What `predict` refuses before it writes anything: an existing output, a model that does not fit
the slide, an invalid tile, an output inside its input, and a resume that would mix two runs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr

from slideseg.errors import ConfigError, ModelFileError, OutputExistsError
from slideseg.predict import PredictConfig, predict
from slideseg.write.mask import describe_mask
from tests.conftest import chunk_files, random_rgb, write_tiff


def test_existing_output_is_never_touched(tmp_path: Path, model_file: Path) -> None:
    slide = write_tiff(tmp_path / "s.ome.tif", random_rgb((50, 50)))
    out = tmp_path / "mask.zarr"
    predict(slide, out, model_file, PredictConfig(device="cpu"))
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    with pytest.raises(OutputExistsError, match="--overwrite"):
        predict(slide, out, model_file, PredictConfig(device="cpu"))
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before
    r = predict(slide, out, model_file, PredictConfig(device="cpu", overwrite=True))
    assert r.chunks_run == 1 and describe_mask(out)["complete"] is True


def test_model_channels_must_fit_the_slide(tmp_path: Path, model_file: Path) -> None:
    grey = write_tiff(tmp_path / "g.ome.tif", random_rgb((60, 60))[..., 0])
    with pytest.raises(ModelFileError, match=r"expects 3 input channel\(s\) .* has 1; use a model made with "
                       r"--in-channels 1"):
        predict(grey, tmp_path / "mask.zarr", model_file, PredictConfig(device="cpu"))
    assert not (tmp_path / "mask.zarr").exists()


def test_invalid_tile_names_valid_sizes(tmp_path: Path, model_file: Path) -> None:
    slide = write_tiff(tmp_path / "s.ome.tif", random_rgb((60, 60)))
    with pytest.raises(ConfigError, match=r"Tile 130 px is not valid .* nearest are 124 and 132"):
        predict(slide, tmp_path / "mask.zarr", model_file, PredictConfig(tile=130, device="cpu"))
    assert not (tmp_path / "mask.zarr").exists()


def test_output_must_not_overlap_input(tmp_path: Path, model_file: Path) -> None:
    store = tmp_path / "in.zarr"
    zarr.create_array(store, data=random_rgb((60, 60)))
    with pytest.raises(ConfigError, match="overlaps the input"):
        predict(store, store, model_file, PredictConfig(device="cpu", overwrite=True))
    assert zarr.open_array(store, mode="r").shape == (60, 60, 3)


# --------------------------------------------------------------------------------------------
# Resuming
# --------------------------------------------------------------------------------------------


def test_resume_refuses_another_batch_size(tmp_path: Path, model_05: Path) -> None:
    slide = write_tiff(tmp_path / "s.ome.tif", random_rgb((100, 100)))
    predict(slide, tmp_path / "m.zarr", model_05, PredictConfig(device="cpu", batch_size=2))
    before = chunk_files(tmp_path / "m.zarr")
    with pytest.raises(ConfigError, match="per batch"):
        predict(slide, tmp_path / "m.zarr", model_05, PredictConfig(device="cpu", batch_size=3, resume=True))
    assert chunk_files(tmp_path / "m.zarr") == before


def test_resume_refuses_a_slide_replaced_at_the_same_path(tmp_path: Path, model_05: Path) -> None:
    slide = write_tiff(tmp_path / "s.ome.tif", random_rgb((100, 100)))
    predict(slide, tmp_path / "m.zarr", model_05, PredictConfig(device="cpu"))
    write_tiff(slide, random_rgb((120, 100)))
    with pytest.raises(ConfigError, match="level shape was"):
        predict(slide, tmp_path / "m.zarr", model_05, PredictConfig(device="cpu", resume=True))


def test_relative_and_absolute_tissue_mask_paths_resume(tmp_path: Path, model_05: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The same tissue mask named relative to the working directory, then absolutely, is the same
    option: the resumed run is accepted and finds everything done."""
    slide = write_tiff(tmp_path / "s.ome.tif", random_rgb((100, 100)))
    tifffile.imwrite(tmp_path / "t.tif", np.ones((10, 10), np.uint8))
    monkeypatch.chdir(tmp_path)
    first = predict(slide, tmp_path / "m.zarr", model_05, PredictConfig(device="cpu", tissue_mask="t.tif"))
    assert first.chunks_run == 1
    again = predict(slide, tmp_path / "m.zarr", model_05,
                    PredictConfig(device="cpu", tissue_mask=str(tmp_path / "t.tif"), resume=True))
    assert again.chunks_run == again.chunks_skipped == 0 and again.chunks_already_done == 1
