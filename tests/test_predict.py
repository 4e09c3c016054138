"""`predict` end to end: slide file -> OME-Zarr mask, equal to the whole-image pass."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr

from slideseg.errors import ConfigError, ModelFileError, OutputExistsError
from slideseg.model.config import UNetConfig
from slideseg.model.files import LoadedModel, load_model, save_model
from slideseg.model.unet import build_unet
from slideseg.predict import PredictConfig, predict
from tests.conftest import random_rgb
from tests.test_seamless import whole_image_probabilities


def write_tiff(path: Path, image: np.ndarray, mpp: float = 0.5) -> Path:
    tifffile.imwrite(path, image, tile=(64, 64), photometric="rgb" if image.ndim == 3 else "minisblack",
                     compression="zlib", metadata={"axes": "YXS" if image.ndim == 3 else "YX",
                                                   "PhysicalSizeX": mpp, "PhysicalSizeY": mpp})
    return path


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    cfg = UNetConfig(depth=3, width=4, classes=3, class_names=("background", "nucleus", "stroma"))
    save_model(tmp_path / "m.safetensors", build_unet(cfg, seed=5), cfg, {"trained": False})
    return tmp_path / "m.safetensors"


@pytest.mark.parametrize(("shape", "tile", "chunk"), [((333, 517), 124, 128), ((150, 97), None, 1024)])
def test_predict_equals_whole_image_pass(tmp_path: Path, model_file: Path, shape: tuple[int, int],
                                         tile: int | None, chunk: int) -> None:
    image = random_rgb(shape, seed=11)
    slide = write_tiff(tmp_path / "s.ome.tif", image)
    cfg = PredictConfig(tile=tile, chunk=chunk, batch_size=2, probabilities=True, device="cpu", tissue=False)
    result = predict(slide, tmp_path / "mask.zarr", model_file, cfg)

    model = load_model(model_file)
    whole = whole_image_probabilities(LoadedModel(model.net, model.config, ""), image)
    root = zarr.open_group(tmp_path / "mask.zarr", mode="r")
    ids = root["0"][:]
    assert ids.shape == shape and ids.dtype == np.uint8
    top2 = np.sort(whole, axis=0)[-2:]
    sure = (top2[1] - top2[0]) > 1e-4
    assert (ids == whole.argmax(0))[sure].all()
    probs = root["probabilities/0"][:]
    assert probs.shape == (3, *shape) and probs.dtype == np.uint8
    assert np.abs(probs.astype(np.float32) - whole * 255).max() <= 0.5 + 1e-3
    assert result.shape == shape and result.mpp == pytest.approx(0.5)


def test_output_records_how_it_was_made(tmp_path: Path, model_file: Path) -> None:
    slide = write_tiff(tmp_path / "s.ome.tif", random_rgb((100, 120)))
    predict(slide, tmp_path / "mask.zarr", model_file, PredictConfig(chunk=64, device="cpu"))
    attrs = zarr.open_group(tmp_path / "mask.zarr", mode="r").attrs.asdict()
    made = attrs["slideseg"]
    assert made["predict_config"] == PredictConfig(chunk=64, device="cpu").to_dict()
    assert made["model_config"]["class_names"] == ["background", "nucleus", "stroma"]
    assert made["weights_sha256"] == load_model(model_file).weights_sha256
    assert made["engine"]["engine"] == "torch" and made["version"]
    assert made["complete"] is True
    labels = {c["label-value"]: c["class"] for c in attrs["image-label"]["properties"]}
    assert labels == {0: "background", 1: "nucleus", 2: "stroma"}


def test_existing_output_is_never_touched(tmp_path: Path, model_file: Path) -> None:
    slide = write_tiff(tmp_path / "s.ome.tif", random_rgb((50, 50)))
    out = tmp_path / "mask.zarr"
    predict(slide, out, model_file, PredictConfig(device="cpu"))
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    with pytest.raises(OutputExistsError, match="--overwrite"):
        predict(slide, out, model_file, PredictConfig(device="cpu"))
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before
    predict(slide, out, model_file, PredictConfig(device="cpu", overwrite=True))


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


def test_greyscale_uint16_slide(tmp_path: Path) -> None:
    cfg = UNetConfig(depth=2, width=4, in_channels=1, norm_mean=(30000.0,), norm_std=(20000.0,))
    save_model(tmp_path / "g.safetensors", build_unet(cfg, seed=1), cfg)
    img = np.random.default_rng(0).integers(0, 65535, (70, 90), dtype=np.uint16)
    slide = write_tiff(tmp_path / "g.ome.tif", img)
    predict(slide, tmp_path / "mask.zarr", tmp_path / "g.safetensors", PredictConfig(device="cpu"))
    ids = zarr.open_group(tmp_path / "mask.zarr", mode="r")["0"][:]
    assert ids.shape == (70, 90) and set(np.unique(ids)) <= {0, 1}


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


def test_preview_beside_the_output(tmp_path: Path, model_file: Path) -> None:
    slide = write_tiff(tmp_path / "s.ome.tif", random_rgb((200, 300)))
    r = predict(slide, tmp_path / "mask.zarr", model_file, PredictConfig(device="cpu", preview=True))
    png = tmp_path / "mask.png"
    assert png.is_file() and any(str(png) in n for n in r.warnings)
    before = png.read_bytes()
    r = predict(slide, tmp_path / "mask.zarr", model_file, PredictConfig(device="cpu", preview=True, resume=True))
    assert png.read_bytes() == before and any("exists" in n for n in r.warnings)  # never silently replaced
