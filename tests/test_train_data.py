"""Training data: pairing by name, manifests, image and mask checks, and statistics."""

from __future__ import annotations

from pathlib import Path

import imagecodecs
import numpy as np
import pytest
import tifffile

from slideseg.errors import ConfigError, TrainingDataError
from slideseg.train.data import (
    Item,
    Pair,
    check_mask_values,
    estimate_statistics,
    load_training_data,
    open_item,
    pair_directories,
    read_manifest,
)
from tests.conftest import ArraySlide, array_item, random_rgb


def touch(folder: Path, *names: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for n in names:
        (folder / n).write_bytes(b"")


def test_pairs_are_matched_by_name(tmp_path: Path) -> None:
    touch(tmp_path / "img", "a.tif", "b.ome.tif", "c.png", "notes.txt")
    touch(tmp_path / "msk", "a.png", "b_mask.tif", "c.labels.tif")
    pairs = pair_directories(tmp_path / "img", tmp_path / "msk")
    assert [(p.image.name, p.mask.name) for p in pairs] == [
        ("a.tif", "a.png"), ("b.ome.tif", "b_mask.tif"), ("c.png", "c.labels.tif")]


def test_one_directory_holds_images_and_marked_masks(tmp_path: Path) -> None:
    touch(tmp_path, "s1.ome.tif", "s2.ome.tif")
    (tmp_path / "s1.truth.zarr").mkdir()
    (tmp_path / "s2.truth.zarr").mkdir()
    pairs = pair_directories(tmp_path, tmp_path)
    assert [(p.image.name, p.mask.name, p.name) for p in pairs] == [
        ("s1.ome.tif", "s1.truth.zarr", "s1"), ("s2.ome.tif", "s2.truth.zarr", "s2")]


@pytest.mark.parametrize(("images", "masks", "match"), [
    ((), ("a.png",), "no images in"),  # empty image directory
    (("a.tif", "b.tif"), ("a.png",), r"1 image\(s\) .* have no mask .*b.tif"),
    (("a.tif",), ("a.png", "a_mask.png"), "two masks match"),
])
def test_pairing_errors(tmp_path: Path, images: tuple[str, ...], masks: tuple[str, ...], match: str) -> None:
    touch(tmp_path / "img", *images)
    touch(tmp_path / "msk", *masks)
    with pytest.raises(TrainingDataError, match=match):
        pair_directories(tmp_path / "img", tmp_path / "msk")


def test_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(TrainingDataError, match="does not exist"):
        pair_directories(tmp_path / "nope", tmp_path)


def test_manifest_with_splits(tmp_path: Path) -> None:
    touch(tmp_path / "d", "a.tif", "a.png", "b.tif", "b.png")
    (tmp_path / "m.csv").write_text("image,mask,split\nd/a.tif,d/a.png,train\nd/b.tif,d/b.png,val\n")
    train, val = read_manifest(tmp_path / "m.csv")
    assert train == [Pair(tmp_path / "d/a.tif", tmp_path / "d/a.png")]
    assert val == [Pair(tmp_path / "d/b.tif", tmp_path / "d/b.png")]
    (tmp_path / "bad.csv").write_text("img,msk\nx,y\n")
    with pytest.raises(TrainingDataError, match="expected 'image' and 'mask'"):
        read_manifest(tmp_path / "bad.csv")
    (tmp_path / "gone.csv").write_text("image,mask\nd/zz.tif,d/a.png\n")
    with pytest.raises(TrainingDataError, match=r"line 2: .*zz.tif does not exist"):
        read_manifest(tmp_path / "gone.csv")


def write_pair(folder: Path, name: str, image: np.ndarray, mask: np.ndarray, png: bool = False) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    if png:
        (folder / f"{name}.png").write_bytes(imagecodecs.png_encode(image))
        (folder / f"{name}_mask.png").write_bytes(imagecodecs.png_encode(mask))
    else:
        tifffile.imwrite(folder / f"{name}.tif", image)
        tifffile.imwrite(folder / f"{name}_mask.tif", mask)


def test_png_and_tiff_pairs_load(tmp_path: Path) -> None:
    mask = np.zeros((40, 50), np.uint16)
    mask[5:15, 5:20] = 3
    write_pair(tmp_path, "a", random_rgb((40, 50)), mask.astype(np.uint8), png=True)
    write_pair(tmp_path, "b", random_rgb((40, 50), seed=1), mask)
    data = load_training_data(images=tmp_path, masks=tmp_path, val_fraction=0.5, seed=0)
    assert len(data.train) == 1 and len(data.val) == 1 and data.channels == 3
    for it in (*data.train, *data.val):
        assert it.shape == (40, 50)
        assert it.mask.read(0, 40, 0, 50).max() == 3
    data.close()


def test_size_mismatch_is_a_clear_error(tmp_path: Path) -> None:
    write_pair(tmp_path, "a", random_rgb((40, 50)), np.zeros((40, 51), np.uint8))
    with pytest.raises(TrainingDataError, match=r"a.tif is 40 x 50 px but its mask a_mask.tif is 40 x 51"):
        open_item(Pair(tmp_path / "a.tif", tmp_path / "a_mask.tif"), "instances")


def test_rgb_mask_is_rejected(tmp_path: Path) -> None:
    write_pair(tmp_path, "a", random_rgb((10, 10)), random_rgb((10, 10), seed=2), png=True)
    with pytest.raises(TrainingDataError, match="single-channel"):
        load_training_data(images=tmp_path, masks=tmp_path)


@pytest.mark.parametrize(("mask", "kind", "match"), [
    (np.array([[0, 255]], np.uint8), "classes", r"class id 255 .* 0/255\? divide it by 255"),
    (np.array([[0, 3]], np.uint8), "classes", "expected ids 0..1 for a 2-class model"),
    (np.array([[0, -1]], np.int16), "instances", "negative"),
    (np.array([[0, 0.5]], np.float32), "instances", "non-integer"),
])
def test_unexpected_mask_values(mask: np.ndarray, kind: str, match: str) -> None:
    with pytest.raises(TrainingDataError, match=match):
        check_mask_values(mask, kind, 2, "m.tif")  # type: ignore[arg-type]


def test_data_option_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--images DIR --masks DIR, or as --manifest"):
        load_training_data()
    with pytest.raises(ConfigError, match="go together"):
        load_training_data(images=tmp_path, masks=tmp_path, val_images=tmp_path)


def test_statistics_of_uint16_fluorescence() -> None:
    r = np.random.default_rng(0)
    image = r.normal(1000, 50, (64, 64)).astype(np.uint16)
    image[:16] += 20000
    mask = np.zeros((64, 64), np.uint16)
    mask[:16] = 5
    stats = estimate_statistics([array_item(image[..., None], mask)], "instances", seed=0)
    assert stats.mean[0] == pytest.approx(float(image.mean()), rel=1e-6)
    assert stats.std[0] == pytest.approx(float(image.std()), rel=1e-6)
    assert stats.class_counts == (48 * 64, 16 * 64)


def test_statistics_sample_large_images() -> None:
    big = ArraySlide(np.full((3000, 1500, 3), 7, np.uint8))
    item = Item("big", big, ArraySlide(np.zeros((3000, 1500), np.uint8)))
    stats = estimate_statistics([item], "classes", seed=0, windows=2, size=64)
    assert stats.mean == (7.0, 7.0, 7.0) and stats.std == (1.0, 1.0, 1.0)  # constant: left unscaled
    assert stats.class_counts == (3000 * 1500,)  # classes are counted exactly, over the whole mask
    assert len(big.reads) == 2  # the image itself is sampled: two windows
