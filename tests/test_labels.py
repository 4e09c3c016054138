"""`predict --into`: the mask becomes labels/NAME of an existing OME-Zarr image, level for level."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr

from slideseg.errors import ConfigError
from slideseg.model.config import UNetConfig
from slideseg.model.files import save_model
from slideseg.model.unet import build_unet
from slideseg.predict import PredictConfig, predict
from tests.conftest import random_rgb


def write_ome_zarr_image(path: Path, image: np.ndarray, mpp: float, levels: int, version: str = "0.4") -> Path:
    """A small OME-Zarr image (c, y, x) with a x2 pyramid."""
    fmt = 2 if version == "0.4" else 3
    root = zarr.open_group(path, mode="w", zarr_format=fmt)
    datasets = []
    for lv in range(levels):
        data = np.ascontiguousarray(image.transpose(2, 0, 1)[:, :: 2**lv, :: 2**lv])
        kw = {"dimension_names": ("c", "y", "x")} if fmt == 3 else {}
        root.create_array(str(lv), data=data, chunks=(3, 64, 64), **kw)
        datasets.append({"path": str(lv), "coordinateTransformations": [
            {"type": "scale", "scale": [1.0, mpp * 2**lv, mpp * 2**lv]}]})
    ms = {"name": "image", "axes": [{"name": "c", "type": "channel"},
                                    {"name": "y", "type": "space", "unit": "micrometer"},
                                    {"name": "x", "type": "space", "unit": "micrometer"}], "datasets": datasets}
    if fmt == 2:
        root.attrs["multiscales"] = [{"version": "0.4", **ms}]
    else:
        root.attrs["ome"] = {"version": "0.5", "multiscales": [ms]}
    return path


@pytest.fixture
def model(tmp_path: Path) -> Path:
    cfg = UNetConfig(depth=2, width=4, mpp=0.5, class_names=("background", "nucleus"))
    save_model(tmp_path / "m.safetensors", build_unet(cfg, seed=3), cfg)
    return tmp_path / "m.safetensors"


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_into_writes_a_label_per_image_level(tmp_path: Path, model: Path, version: str) -> None:
    image = write_ome_zarr_image(tmp_path / "image.ome.zarr", random_rgb((300, 440)), 0.25, 3, version)
    r = predict(image, None, model, PredictConfig(device="cpu", tissue=False, into=str(image), name="nuclei"))
    label = image / "labels" / "nuclei"
    assert r.output == label and r.shape == (150, 220)  # predicted at the model's 0.5 µm/px
    img, lab = zarr.open_group(image, mode="r"), zarr.open_group(label, mode="r")
    for lv in range(3):
        assert lab[str(lv)].shape == img[str(lv)].shape[1:]  # type: ignore[union-attr]
    pred = predict(image, tmp_path / "plain.zarr", model, PredictConfig(device="cpu", tissue=False))
    plain = zarr.open_group(tmp_path / "plain.zarr", mode="r")["0"][:]  # type: ignore[index]
    assert pred.shape == plain.shape
    np.testing.assert_array_equal(lab["1"][:], plain)  # type: ignore[index]  # same grid: identical
    np.testing.assert_array_equal(lab["0"][:], np.repeat(np.repeat(plain, 2, 0), 2, 1))  # type: ignore[index]
    if version == "0.4":
        from ome_zarr_models.v04.image import Image
        from ome_zarr_models.v04.image_label import ImageLabel

        ImageLabel.from_zarr(lab)
        labels = Image.from_zarr(img).labels
        assert labels is not None and labels.attributes.labels == ["nuclei"]
        assert lab.attrs["image-label"]["source"] == {"image": "../../"}  # type: ignore[index]
    else:
        from ome_zarr_models.v05.image_label import ImageLabel as ImageLabel05

        ImageLabel05.from_zarr(lab)
        assert zarr.open_group(image / "labels", mode="r").attrs["ome"]["labels"] == ["nuclei"]  # type: ignore[index]


def test_into_reader_finds_the_label(tmp_path: Path, model: Path) -> None:
    from ome_zarr.format import FormatV04
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Label, Reader

    image = write_ome_zarr_image(tmp_path / "image.ome.zarr", random_rgb((256, 256)), 0.5, 2)
    predict(image, None, model, PredictConfig(device="cpu", tissue=False, into=str(image), name="nuclei"))
    location = parse_url(str(image), fmt=FormatV04())  # open the image: its labels are found from it
    assert location is not None
    nodes = list(Reader(location)())
    labels = [n for n in nodes if any(isinstance(s, Label) for s in n.specs)]
    assert len(labels) == 1 and "labels/nuclei" in str(labels[0].zarr)
    assert [d.shape for d in labels[0].data] == [(256, 256), (128, 128)]


def test_into_errors(tmp_path: Path, model: Path) -> None:
    image = write_ome_zarr_image(tmp_path / "image.ome.zarr", random_rgb((128, 128)), 0.5, 1)
    other = write_ome_zarr_image(tmp_path / "other.ome.zarr", random_rgb((64, 64)), 0.5, 1)
    with pytest.raises(ConfigError, match="--into needs the image the slide came from"):
        predict(image, None, model, PredictConfig(device="cpu", into=str(other)))
    zarr.create_array(tmp_path / "plain.zarr", shape=(10, 10), dtype="uint8")
    with pytest.raises(ConfigError, match="expected an OME-Zarr image"):
        predict(image, None, model, PredictConfig(device="cpu", into=str(tmp_path / "plain.zarr")))
    with pytest.raises(ConfigError, match="must be a plain name"):
        predict(image, None, model, PredictConfig(device="cpu", into=str(image), name="../x"))
