"""The seamless promise: tiled inference equals one forward pass over the whole mirror-padded
image, for valid-convolution U-Nets of several depths, on awkward slide sizes, with several tile
and chunk sizes (including slides smaller than the network's context)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from slideseg.engines.torch_engine import TorchEngine
from slideseg.model.config import UNetConfig
from slideseg.model.files import LoadedModel
from slideseg.model.unet import build_unet
from slideseg.plan.tiles import make_plan
from slideseg.schedule.chunks import infer_chunk, softmax
from tests.conftest import ArraySlide, random_rgb


def _model(depth: int, mirror: str = "reflect", seed: int = 0) -> LoadedModel:
    cfg = UNetConfig(depth=depth, width=4, classes=3, mirror=mirror)  # type: ignore[arg-type]
    return LoadedModel(build_unet(cfg, seed=seed).eval(), cfg, "test")


def whole_image_probabilities(model: LoadedModel, image: np.ndarray) -> np.ndarray:
    """Reference: mirror-pad the whole image (numpy), one forward pass, crop. (K, H, W)."""
    g = model.config.geometry
    h, w = image.shape[:2]
    n_y, n_x = g.smallest_tile_covering(h), g.smallest_tile_covering(w)
    c = g.context
    padded = np.pad(image, ((c, n_y - h - c), (c, n_x - w - c), (0, 0)), mode=model.config.mirror)
    x = torch.from_numpy(padded.transpose(2, 0, 1)[None].astype(np.float32))
    x = (x - 127.5) / 127.5
    with torch.no_grad():
        logits = model.net(x)[0, :, :h, :w].numpy()
    return softmax(logits)


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


def assert_seamless(tiled: np.ndarray, whole: np.ndarray) -> None:
    assert not np.isnan(tiled).any()
    np.testing.assert_allclose(tiled, whole, atol=1e-5, rtol=0)
    top2 = np.sort(whole, axis=0)[-2:]
    sure = (top2[1] - top2[0]) > 1e-4
    assert (tiled.argmax(0) == whole.argmax(0))[sure].all()


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
    model = _model(depth)
    g = model.config.geometry
    tile = g.smallest_tile_covering(g.alignment) + k * g.alignment
    image = random_rgb(shape, seed=depth)
    assert_seamless(tiled_probabilities(model, image, tile, chunk), whole_image_probabilities(model, image))


def test_symmetric_mirror_mode_is_also_exact() -> None:
    model = _model(3, mirror="symmetric")
    image = random_rgb((150, 97), seed=7)
    assert_seamless(tiled_probabilities(model, image, 108, 64), whole_image_probabilities(model, image))


def test_unaligned_tiles_are_not_seamless() -> None:
    """The control: shifting tile origins off the pooling grid breaks equality, so the test above
    can fail (it is not comparing a computation with itself)."""
    model = _model(3)
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
