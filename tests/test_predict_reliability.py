"""What `predict` must never do, whatever it is handed: write onto an input, continue an output from a
slide that changed, keep an output of several slides made by another model, or put a mask inside an
interrupted one; and what it checks before it creates anything."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from slideseg.errors import ConfigError
from slideseg.predict import PredictConfig, PredictResult, predict, predict_many, predict_slides
from tests.conftest import TILE, random_rgb, save_tiny_model, tiny_model, write_tiff

CPU = PredictConfig(device="cpu", tissue=False, chunk=64)


def _png(path: Path, pixels: np.ndarray) -> Path:
    from PIL import Image

    Image.fromarray(pixels).save(path)
    return path


def test_a_preview_never_lands_on_the_input(tmp_path: Path, model_file: Path) -> None:
    slide = _png(tmp_path / "s.png", random_rgb((96, 128)))
    before = slide.read_bytes()
    cfg = dataclasses.replace(CPU, preview=True, overwrite=True, mpp=0.5)
    with pytest.raises(ConfigError, match=r"--preview would write .*s\.png, which is an input"):
        predict(slide, tmp_path / "s.zarr", model_file, cfg)
    assert slide.read_bytes() == before and not (tmp_path / "s.zarr").exists()  # checked before anything


def test_no_output_lands_on_another_slide_of_the_batch(tmp_path: Path, model_file: Path) -> None:
    outdir = tmp_path / "masks"
    outdir.mkdir()
    a = _png(outdir / "a.png", random_rgb((64, 64)))
    b = write_tiff(tmp_path / "b.ome.tif", random_rgb((64, 64), seed=2))
    before = a.read_bytes()
    items = predict_many([b, a], outdir, model_file, dataclasses.replace(CPU, preview=True, mpp=0.5))
    assert items[1].error is not None and "is an input" in items[1].error  # masks/a.png would be a's preview
    assert items[0].error is None and items[0].result is not None  # b's preview is masks/b.png: fine
    assert a.read_bytes() == before


def test_resume_refuses_a_slide_rewritten_in_place(tmp_path: Path, model_file: Path) -> None:
    slide = write_tiff(tmp_path / "s.ome.tif", random_rgb((96, 128)))
    predict(slide, tmp_path / "m.zarr", model_file, CPU)
    write_tiff(slide, random_rgb((96, 128), seed=5))  # same path, shape and pixel size; other pixels
    with pytest.raises(ConfigError, match="the slide was changed since the output was started"):
        predict(slide, tmp_path / "m.zarr", model_file, dataclasses.replace(CPU, resume=True))


def test_resume_of_a_complete_output_from_the_same_slide_does_nothing(tmp_path: Path, model_file: Path) -> None:
    slide = write_tiff(tmp_path / "s.ome.tif", random_rgb((96, 128)))
    predict(slide, tmp_path / "m.zarr", model_file, CPU)
    again = predict(slide, tmp_path / "m.zarr", model_file, dataclasses.replace(CPU, resume=True))
    assert again.already_complete and again.chunks_run == 0


def test_several_slides_do_not_keep_an_output_made_by_another_model(tmp_path: Path, model_file: Path) -> None:
    slide = write_tiff(tmp_path / "b.ome.tif", random_rgb((96, 128)))
    other = save_tiny_model(tmp_path / "other.safetensors", seed=11)
    predict_many([slide], tmp_path / "masks", other, CPU)
    items = predict_many([slide], tmp_path / "masks", model_file, CPU)
    assert items[0].skipped is None and items[0].error is not None and "model weights differ" in items[0].error
    items = predict_many([slide], tmp_path / "masks", model_file, dataclasses.replace(CPU, chunk=128))
    assert items[0].error is not None
    redone = predict_many([slide], tmp_path / "masks", model_file, dataclasses.replace(CPU, overwrite=True))
    assert redone[0].result is not None and redone[0].error is None


def test_an_existing_mask_is_one_output_whatever_its_name(tmp_path: Path, model_file: Path) -> None:
    slide = write_tiff(tmp_path / "s.ome.tif", random_rgb((96, 128)))
    out = tmp_path / "result"  # no .zarr suffix
    predict(slide, out, model_file, CPU)
    again = predict_slides([slide], out, model_file, dataclasses.replace(CPU, resume=True))
    assert isinstance(again, PredictResult) and again.already_complete  # not a directory of outputs
    assert not (out / "s.zarr").exists()
    with pytest.raises(ConfigError, match="is a Zarr group"):
        predict_slides([slide, slide], out, model_file, CPU)


def test_a_wrong_tile_for_a_fixed_tile_model_is_refused_before_the_output_exists(tmp_path: Path) -> None:
    pytest.importorskip("onnxscript")
    pytest.importorskip("onnxruntime")
    from slideseg.engines.onnx import export_onnx

    onnx_file = export_onnx(tiny_model(), TILE, output=tmp_path / "fixed.onnx")
    slide = write_tiff(tmp_path / "s.ome.tif", random_rgb((96, 128)))
    wrong = TILE + 8 if TILE % 8 else TILE + 16
    cfg = dataclasses.replace(CPU, tile=wrong, engine="onnxruntime")
    with pytest.raises(ConfigError, match=rf"takes {TILE} px tiles only, got --tile {wrong}"):
        predict(slide, tmp_path / "m.zarr", onnx_file, cfg)
    assert not (tmp_path / "m.zarr").exists()
