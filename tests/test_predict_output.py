"""What `predict` writes: a mask that records how it was made, valid OME-NGFF 0.4 (and 0.5 that
can be replaced), background where no tissue was run, a preview beside it, and several slides in
one call."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import tifffile
import zarr

from slideseg.model.files import load_model
from slideseg.predict import PredictConfig, predict, predict_many
from slideseg.write.mask import describe_mask
from tests.conftest import chunk_files, random_rgb, read_level, save_tiny_model, write_tiff


def test_output_records_how_it_was_made(tmp_path: Path, model_file: Path) -> None:
    slide = write_tiff(tmp_path / "s.ome.tif", random_rgb((100, 120)))
    cfg = PredictConfig(chunk=64, device="cpu")
    predict(slide, tmp_path / "mask.zarr", model_file, cfg)
    attrs = zarr.open_group(tmp_path / "mask.zarr", mode="r").attrs.asdict()
    made = attrs["slideseg"]
    assert PredictConfig.from_dict(made["predict_config"]) == cfg
    assert made["predict_config"]["chunk"] == 64
    assert made["model_config"]["class_names"] == ["background", "nucleus", "stroma"]
    assert made["weights_sha256"] == load_model(model_file).weights_sha256
    assert made["engine"]["engine"] == "torch" and made["version"]
    assert made["complete"] is True
    labels = {c["label-value"]: c["class"] for c in attrs["image-label"]["properties"]}
    assert labels == {0: "background", 1: "nucleus", 2: "stroma"}


def test_predict_output_is_valid_ome_ngff_04(tmp_path: Path, model_file: Path) -> None:
    """What predict writes (not just what the writer can write) validates and opens as a label image."""
    from ome_zarr.format import FormatV04
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Label, Reader
    from ome_zarr_models.v04.image import Image
    from ome_zarr_models.v04.image_label import ImageLabel

    slide = write_tiff(tmp_path / "s.ome.tif", random_rgb((2200, 700)), mpp=0.25)  # resampled to 0.5 µm/px
    out = tmp_path / "mask.zarr"
    predict(slide, out, model_file, PredictConfig(chunk=256, probabilities=True, device="cpu"))
    label = ImageLabel.from_zarr(zarr.open_group(out, mode="r"))
    assert [c.label_value for c in label.attributes.image_label.colors or ()] == [0, 1, 2]
    Image.from_zarr(zarr.open_group(out / "probabilities", mode="r"))
    location = parse_url(str(out), fmt=FormatV04())
    assert location is not None
    node = next(iter(Reader(location)()))
    assert any(isinstance(s, Label) for s in node.specs)
    assert [d.shape for d in node.data] == [(1100, 350), (550, 175)]
    assert [t[0]["scale"] for t in node.metadata["coordinateTransformations"]] == [[0.5, 0.5], [1.0, 1.0]]
    ids = np.asarray(node.data[0])
    np.testing.assert_array_equal(np.asarray(node.data[1]), ids[::2, ::2])


def test_overwrite_an_ngff_05_mask(tmp_path: Path, model_05: Path) -> None:
    slide = write_tiff(tmp_path / "s.ome.tif", random_rgb((100, 100)))
    cfg = PredictConfig(device="cpu", ngff="0.5", chunk=64)
    predict(slide, tmp_path / "m.zarr", model_05, cfg)
    first = read_level(tmp_path / "m.zarr")
    again = dataclasses.replace(cfg, chunk=32, overwrite=True)  # another chunk grid: every file is new
    predict(slide, tmp_path / "m.zarr", model_05, again)
    state = describe_mask(tmp_path / "m.zarr")
    assert state["ngff"] == "0.5" and state["complete"] is True
    assert state["levels"][0]["chunks"] == [32, 32]
    assert PredictConfig.from_dict(state["slideseg"]["predict_config"]) == again
    np.testing.assert_array_equal(read_level(tmp_path / "m.zarr"), first)  # the same pixels, rewritten


def test_skipped_chunks_read_as_background(tmp_path: Path) -> None:
    model = save_tiny_model(tmp_path / "m.safetensors", seed=1, classes=3)
    img = np.full((256, 256, 3), 240, np.uint8)
    img[:100, :100] = np.random.default_rng(0).integers(0, 255, (100, 100, 3))
    tifffile.imwrite(tmp_path / "s.tif", img, tile=(64, 64), photometric="rgb")
    res = predict(tmp_path / "s.tif", tmp_path / "m.zarr", model,
                  PredictConfig(chunk=64, probabilities=True, device="cpu", level=0))
    assert res.chunks_run == 4 and res.chunks_skipped == 12
    g = zarr.open_group(tmp_path / "m.zarr", mode="r")
    ids, probs = g["0"][:], g["probabilities/0"][:]  # type: ignore[index]
    assert not ids[128:].any() and not ids[:, 128:].any()
    assert (probs[0, 128:] == 255).all() and not probs[1:, 128:].any()
    assert g["tissue"].attrs["method"] == "otsu-saturation"  # type: ignore[index]
    full = predict(tmp_path / "s.tif", tmp_path / "all.zarr", model,
                   PredictConfig(chunk=64, probabilities=True, device="cpu", tissue=False, level=0))
    assert full.chunks_run == 16 and full.chunks_skipped == 0
    np.testing.assert_array_equal(read_level(tmp_path / "all.zarr")[:128, :128], ids[:128, :128])


def test_preview_beside_the_output(tmp_path: Path, model_file: Path) -> None:
    slide = write_tiff(tmp_path / "s.ome.tif", random_rgb((200, 300)))
    r = predict(slide, tmp_path / "mask.zarr", model_file, PredictConfig(device="cpu", preview=True))
    png = tmp_path / "mask.png"
    assert png.is_file() and any(str(png) in n for n in r.warnings)
    before = png.read_bytes()
    r = predict(slide, tmp_path / "mask.zarr", model_file, PredictConfig(device="cpu", preview=True, resume=True))
    assert png.read_bytes() == before and any("exists" in n for n in r.warnings)  # never silently replaced


def test_several_slides_skip_complete_outputs(tmp_path: Path, model_file: Path) -> None:
    cfg = PredictConfig(chunk=128, probabilities=True, device="cpu")
    slide = write_tiff(tmp_path / "s.ome.tif", random_rgb((200, 300), seed=9))
    other = write_tiff(tmp_path / "b.ome.tif", random_rgb((100, 150), seed=1))
    predict(slide, tmp_path / "reference.zarr", model_file, cfg)
    outdir = tmp_path / "masks"
    items = predict_many([slide, other], outdir, model_file, cfg)
    assert [it.output.name for it in items] == ["s.zarr", "b.zarr"]
    assert all(it.result is not None and it.error is None for it in items)
    assert chunk_files(outdir / "s.zarr") == chunk_files(tmp_path / "reference.zarr")  # as one slide alone
    again = predict_many([slide, other, tmp_path / "missing.tif"], outdir, model_file, cfg)
    assert [it.skipped for it in again[:2]] == ["already complete"] * 2
    assert again[2].error is not None and "missing.tif" in again[2].error
