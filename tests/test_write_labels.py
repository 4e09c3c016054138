"""`predict --into`: the mask becomes labels/NAME of an existing OME-Zarr image, level for level, in
the image's own format, and can be replaced or resumed."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import zarr

from slideseg.errors import ConfigError
from slideseg.predict import PredictConfig, predict
from tests.conftest import random_rgb, read_level, write_ome_zarr_image


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_into_writes_a_label_per_image_level(tmp_path: Path, model_05: Path, version: str) -> None:
    image = write_ome_zarr_image(tmp_path / "image.ome.zarr", random_rgb((300, 440)), 0.25, 3, version)
    r = predict(image, None, model_05, PredictConfig(device="cpu", tissue=False, into=str(image), name="nuclei"))
    label = image / "labels" / "nuclei"
    assert r.output == label and r.shape == (150, 220)  # predicted at the model's 0.5 µm/px
    img, lab = zarr.open_group(image, mode="r"), zarr.open_group(label, mode="r")
    for lv in range(3):
        assert lab[str(lv)].shape == img[str(lv)].shape[1:]  # type: ignore[union-attr]
    pred = predict(image, tmp_path / "plain.zarr", model_05, PredictConfig(device="cpu", tissue=False))
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


def test_into_reader_finds_the_label(tmp_path: Path, model_05: Path) -> None:
    from ome_zarr.format import FormatV04
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Label, Reader

    image = write_ome_zarr_image(tmp_path / "image.ome.zarr", random_rgb((256, 256)), 0.5, 2)
    predict(image, None, model_05, PredictConfig(device="cpu", tissue=False, into=str(image), name="nuclei"))
    location = parse_url(str(image), fmt=FormatV04())  # open the image: its labels are found from it
    assert location is not None
    nodes = list(Reader(location)())
    labels = [n for n in nodes if any(isinstance(s, Label) for s in n.specs)]
    assert len(labels) == 1 and "labels/nuclei" in str(labels[0].zarr)
    assert [d.shape for d in labels[0].data] == [(256, 256), (128, 128)]


def test_into_errors(tmp_path: Path, model_05: Path) -> None:
    image = write_ome_zarr_image(tmp_path / "image.ome.zarr", random_rgb((128, 128)), 0.5, 1)
    other = write_ome_zarr_image(tmp_path / "other.ome.zarr", random_rgb((64, 64)), 0.5, 1)
    with pytest.raises(ConfigError, match="--into needs the image the slide came from"):
        predict(image, None, model_05, PredictConfig(device="cpu", into=str(other)))
    zarr.create_array(tmp_path / "plain.zarr", shape=(10, 10), dtype="uint8")
    with pytest.raises(ConfigError, match="expected an OME-Zarr image"):
        predict(image, None, model_05, PredictConfig(device="cpu", into=str(tmp_path / "plain.zarr")))
    with pytest.raises(ConfigError, match="must be a plain name"):
        predict(image, None, model_05, PredictConfig(device="cpu", into=str(image), name="../x"))


def _rename_levels(image: Path) -> None:
    """Make an image's levels s0, s1 (not digits)."""
    g = zarr.open_group(image, mode="r+")
    attrs = dict(g.attrs)
    for d in attrs["multiscales"][0]["datasets"]:
        (image / d["path"]).rename(image / f"s{d['path']}")
        d["path"] = f"s{d['path']}"
    g.attrs.put(attrs)


def test_into_takes_the_image_format_and_can_be_overwritten(tmp_path: Path, model_05: Path) -> None:
    image = write_ome_zarr_image(tmp_path / "image.ome.zarr", random_rgb((128, 128)), 0.5, 2)
    _rename_levels(image)
    cfg = PredictConfig(device="cpu", tissue=False, into=str(image), name="n", ngff="0.5")
    predict(image, None, model_05, cfg)  # a 0.4 image: the label is 0.4 too, whatever --ngff says
    label = zarr.open_group(image / "labels" / "n", mode="r")
    assert label.metadata.zarr_format == 2 and label["s1"].shape == (64, 64)  # type: ignore[union-attr]
    first = read_level(image / "labels" / "n", "s0")
    predict(image, None, model_05, dataclasses.replace(cfg, overwrite=True))
    np.testing.assert_array_equal(read_level(image / "labels" / "n", "s0"), first)
    with pytest.raises(ConfigError, match=r"--shard needs an NGFF 0\.5 image"):
        predict(image, None, model_05, dataclasses.replace(cfg, overwrite=True, shard=2048))


def test_resumed_into_probabilities_keep_their_scale(tmp_path: Path, model_05: Path) -> None:
    image = write_ome_zarr_image(tmp_path / "image.ome.zarr", random_rgb((256, 256)), 0.25, 2)
    cfg = PredictConfig(device="cpu", tissue=False, into=str(image), name="n", probabilities=True, chunk=64)
    predict(image, None, model_05, cfg)
    label = image / "labels" / "n"
    probs = zarr.open_group(label / "probabilities", mode="r").attrs["multiscales"][0]  # type: ignore[index]
    scale = probs["datasets"][0]["coordinateTransformations"][0]["scale"]
    zarr.open_array(label / "chunks_done", mode="r+")[0, 0] = 0  # as if the run had died before chunk (0, 0)
    again = predict(image, None, model_05, dataclasses.replace(cfg, resume=True))
    assert again.chunks_run == 1
    probs = zarr.open_group(label / "probabilities", mode="r").attrs["multiscales"][0]  # type: ignore[index]
    assert probs["datasets"][0]["coordinateTransformations"][0]["scale"] == scale == [1.0, 0.5, 0.5]
