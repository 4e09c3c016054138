"""The seamless promise: tiled inference equals one forward pass over the whole mirror-padded
image, for valid-convolution U-Nets of several depths, on awkward slide sizes, with several tile
and chunk sizes (including slides smaller than the network's context), chunk by chunk and through
``predict`` end to end."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from slideseg.engines.torch_engine import TorchEngine
from slideseg.model.files import LoadedModel, load_model
from slideseg.plan.tiles import make_plan
from slideseg.predict import PredictConfig, predict
from slideseg.schedule.chunks import infer_chunk, softmax
from tests.conftest import (
    ArraySlide,
    random_rgb,
    read_level,
    save_tiny_model,
    tiny_model,
    whole_image_probabilities,
    write_tiff,
)


def tiled_probabilities(model: LoadedModel, image: np.ndarray, tile: int, chunk: int,
                        batch: int = 3) -> np.ndarray:
    g = model.config.geometry
    plan = make_plan(image.shape[:2], tile=tile, context=g.context, alignment=g.alignment, chunk=chunk)
    engine = TorchEngine(model, device="cpu")
    slide = ArraySlide(image)
    out = np.full((model.config.classes, *image.shape[:2]), np.nan, np.float32)
    for c in plan:
        out[:, c.box.y0:c.box.y1, c.box.x0:c.box.x1] = softmax(
            infer_chunk(slide, engine, c, model.config.mirror, batch))
        assert len(slide.reads) == 1  # one read per chunk, whatever the number of tiles
        slide.reads.clear()
    return out


def sure_pixels(whole: np.ndarray) -> np.ndarray:
    """Where the top two classes of the reference differ by more than 1e-4 (elsewhere the argmax
    may flip with the order of floating-point sums)."""
    top2 = np.sort(whole, axis=0)[-2:]
    return (top2[1] - top2[0]) > 1e-4


def assert_seamless(tiled: np.ndarray, whole: np.ndarray) -> None:
    assert not np.isnan(tiled).any()
    np.testing.assert_allclose(tiled, whole, atol=1e-5, rtol=0)
    assert (tiled.argmax(0) == whole.argmax(0))[sure_pixels(whole)].all()


CASES = [
    # (depth, shape, tile (as k steps above the smallest tileable), chunk)
    (2, (333, 517), 1, 64),      # many small tiles per chunk, chunk not a multiple of the tile
    (2, (40, 60), 3, 1024),      # slide smaller than one chunk
    (3, (333, 517), 2, 100),     # chunk not a multiple of the alignment
    (3, (1000, 1001), 10, 512),  # many chunks
    (4, (40, 60), 0, 256),       # slide smaller than the network's context (92 px)
    (4, (333, 517), 3, 256),
    (4, (1000, 1001), 20, 1024),  # single tile larger than the slide
]


@pytest.mark.parametrize(("depth", "shape", "k", "chunk"), CASES)
def test_tiled_equals_whole_image(depth: int, shape: tuple[int, int], k: int, chunk: int) -> None:
    model = tiny_model(depth=depth)
    g = model.config.geometry
    tile = g.smallest_tile_covering(g.alignment) + k * g.alignment
    image = random_rgb(shape, seed=depth)
    assert_seamless(tiled_probabilities(model, image, tile, chunk), whole_image_probabilities(model, image))


def test_symmetric_mirror_mode_is_also_exact() -> None:
    model = tiny_model(mirror="symmetric")
    image = random_rgb((150, 97), seed=7)
    assert_seamless(tiled_probabilities(model, image, 108, 64), whole_image_probabilities(model, image))


def test_unaligned_tiles_are_not_seamless() -> None:
    """The control: shifting tile origins off the pooling grid breaks equality, so the tests above
    can fail (they are not comparing a computation with itself)."""
    model = tiny_model()
    g = model.config.geometry
    image = random_rgb((200, 200), seed=3)
    whole = whole_image_probabilities(model, image)
    c, tile = g.context, 124  # output 36 px
    shift = 4  # origin at 4 px: not a multiple of 8
    padded = np.pad(image, ((c + 16, 200), (c + 16, 200), (0, 0)), mode="reflect")
    y0 = 16 + shift  # slide y = shift
    patch = padded[y0 : y0 + tile, y0 : y0 + tile]
    x = (torch.from_numpy(patch.transpose(2, 0, 1)[None].astype(np.float32)) - 127.5) / 127.5
    with torch.no_grad():
        p = softmax(model.net(x)[0].numpy())
    out = g.output_size(tile)
    assert np.abs(p - whole[:, shift : shift + out, shift : shift + out]).max() > 1e-3


# --------------------------------------------------------------------------------------------
# Through predict: slide file -> OME-Zarr mask
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("shape", "tile", "chunk"), [((333, 517), 124, 128), ((150, 97), None, 1024)])
def test_predict_equals_whole_image_pass(tmp_path: Path, model_file: Path, shape: tuple[int, int],
                                         tile: int | None, chunk: int) -> None:
    image = random_rgb(shape, seed=11)
    slide = write_tiff(tmp_path / "s.ome.tif", image)
    cfg = PredictConfig(tile=tile, chunk=chunk, batch_size=2, probabilities=True, device="cpu", tissue=False)
    result = predict(slide, tmp_path / "mask.zarr", model_file, cfg)

    whole = whole_image_probabilities(load_model(model_file), image)
    ids = read_level(tmp_path / "mask.zarr")
    assert ids.shape == shape and ids.dtype == np.uint8
    assert (ids == whole.argmax(0))[sure_pixels(whole)].all()
    probs = read_level(tmp_path / "mask.zarr", "probabilities/0")
    assert probs.shape == (3, *shape) and probs.dtype == np.uint8
    assert np.abs(probs.astype(np.float32) - whole * 255).max() <= 0.5 + 1e-3
    assert result.shape == shape and result.mpp == pytest.approx(0.5)


def test_class_ids_of_a_three_class_model_on_uint16_greyscale_equal_the_whole_image_pass(tmp_path: Path) -> None:
    """A one-channel uint16 slide, normalised by the model's own mean and deviation, through a
    3-class model in several chunks: every class id is the whole-image pass's argmax wherever that
    argmax is clear."""
    model_path = save_tiny_model(tmp_path / "g.safetensors", seed=7, in_channels=1, classes=3,
                                 norm_mean=(30000.0,), norm_std=(20000.0,))
    img = np.random.default_rng(0).integers(0, 65535, (70, 90), dtype=np.uint16)
    slide = write_tiff(tmp_path / "g.ome.tif", img)
    predict(slide, tmp_path / "mask.zarr", model_path, PredictConfig(device="cpu", chunk=32, tissue=False))
    ids = read_level(tmp_path / "mask.zarr")
    whole = whole_image_probabilities(load_model(model_path), img)
    sure = sure_pixels(whole)
    assert ids.shape == (70, 90) and sure.mean() > 0.9  # most pixels are compared
    assert (np.bincount(whole.argmax(0).ravel(), minlength=3) > 0.05 * ids.size).all()  # all three classes
    np.testing.assert_array_equal(ids[sure], whole.argmax(0)[sure])
