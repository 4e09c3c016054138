"""`slideseg.tools.preview`: the slide thumbnail, the mask over it in its colours, and a legend."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile
import zarr
from PIL import Image

import slideseg.tools.preview
from slideseg.errors import ConfigError, OutputExistsError, OutputFormatError, SlideReadError
from slideseg.io.ngff import LabelClass
from slideseg.predict import PredictConfig, predict
from slideseg.tools.preview import write_preview
from slideseg.tools.synth import SynthConfig, render_region, write_synthetic_slide
from tests.conftest import read_level, save_tiny_model, write_mask

RED, GREEN = (230, 25, 75), (0, 200, 80)
CLASSES = (LabelClass(0, "background", (0, 0, 0, 0)), LabelClass(1, "nucleus", (*RED, 255)),
           LabelClass(2, "left block", (*GREEN, 255)))
SHAPE = (1100, 900)  # two pyramid levels in the slide and in the mask


@pytest.fixture(scope="module")
def slide(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("slide") / "s.ome.tif"
    write_synthetic_slide(path, SynthConfig(size=SHAPE, seed=3))
    return path


def truth_mask(slide: Path) -> np.ndarray:
    """The slide's nuclei as class 1, and a solid block of class 2 on the left."""
    mask = np.asarray(zarr.open_group(slide.with_name("s.truth.zarr"), mode="r")["classes"][:]).astype(np.uint8)
    mask[200:700, 0:300] = 2
    return mask


def _source(slide: Path) -> dict[str, Any]:
    """The record of the slide a mask was predicted from (level 0)."""
    return {"path": str(slide), "level": 0}


def png(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        assert im.format == "PNG" and im.mode == "RGB"
        return np.asarray(im)


def nearest(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize, sampling pixel centres."""
    rows = ((np.arange(shape[0]) + 0.5) * mask.shape[0] / shape[0]).astype(int)
    cols = ((np.arange(shape[1]) + 0.5) * mask.shape[1] / shape[1]).astype(int)
    return mask[rows[:, None], cols[None, :]]


def test_overlay_and_legend_by_pixel_statistics(tmp_path: Path, slide: Path) -> None:
    mask = truth_mask(slide)
    mask_path = write_mask(tmp_path / "m.zarr", mask, CLASSES, chunk=512, source=_source(slide))
    result = write_preview(mask_path, tmp_path / "o.png", size=300, alpha=0.5)
    plain = write_preview(mask_path, tmp_path / "plain.png", size=300, alpha=0.0)  # the thumbnail alone
    out, thumb = png(result.path), png(plain.path)
    h, w = result.thumbnail
    assert (h, w) == (300, 245) and out.shape == (*result.shape, 3) and out.shape[0] > h  # legend below
    assert result.slide_level == 1 and result.mask_level == 1  # 550 x 450 is the level closest to 300 x 245
    labels = nearest(mask[::2, ::2], (h, w))  # from the mask's level 1, as the preview reads it
    image, slide_px = out[:h, :w].astype(int), thumb[:h, :w].astype(int)
    assert np.array_equal(image[labels == 0], slide_px[labels == 0])  # slide colours where there is no mask
    for value, colour in ((1, RED), (2, GREEN)):
        blend = 0.5 * slide_px[labels == value] + 0.5 * np.array(colour)
        assert np.abs(image[labels == value] - blend).max() <= 1  # the mask colour where the mask is
    # the thumbnail is the slide: compare with the synthetic slide rendered at the same scale
    rendered = render_region(SynthConfig(size=SHAPE, seed=3), 0, 550, 0, 450, level=1)[0]
    expected = np.asarray(Image.fromarray(rendered).resize((w, h), Image.Resampling.BOX)).astype(int)
    assert np.abs(slide_px - expected).mean() < 8  # JPEG in the slide, nothing else
    legend = out[h:]
    for colour in (RED, GREEN):
        assert (legend == colour).all(axis=2).sum() >= 49  # a colour swatch per class
    assert (legend.max(axis=2) < 100).sum() > 100  # dark text


def test_preview_of_a_real_predict_output(tmp_path: Path) -> None:
    slide = tmp_path / "small.ome.tif"
    write_synthetic_slide(slide, SynthConfig(size=(200, 260), seed=1))
    model = save_tiny_model(tmp_path / "m.safetensors", seed=2, classes=3,
                            class_names=("background", "nucleus", "stroma"))
    predict(slide, tmp_path / "m.zarr", model, PredictConfig(device="cpu", tissue=False))
    result = write_preview(tmp_path / "m.zarr", tmp_path / "p.png", size=260, alpha=1.0)
    out = png(result.path)
    assert result.slide == slide.resolve() and result.thumbnail == (200, 260) and out.shape[1] == 260
    labels = nearest(read_level(tmp_path / "m.zarr"), (200, 260))
    palette = {v: tuple(c) for v, c in enumerate(((0, 0, 0), (230, 25, 75), (60, 180, 75)))}
    assert (labels > 0).any()
    for value in np.unique(labels[labels > 0]):
        assert (out[:200][labels == value] == palette[int(value)]).all()  # alpha 1: pure label colour
    plain = png(write_preview(tmp_path / "m.zarr", tmp_path / "plain.png", size=260, alpha=0.0).path)
    assert np.array_equal(out[:200][labels == 0], plain[:200][labels == 0])  # the slide where there is no mask


def test_without_the_slide_the_mask_is_on_white(tmp_path: Path, slide: Path) -> None:
    mask = truth_mask(slide)
    write_mask(tmp_path / "m.zarr", mask, CLASSES, chunk=512, source=_source(tmp_path / "moved.ome.tif"))
    result = write_preview(tmp_path / "m.zarr", tmp_path / "o.png", size=256)
    assert result.slide is None and result.slide_level is None and "moved.ome.tif" in (result.note or "")
    h, w = result.thumbnail
    out, labels = png(result.path)[:h, :w], nearest(mask[:: 2**result.mask_level, :: 2**result.mask_level], (h, w))
    assert (out[labels == 0] == 255).all()
    assert np.abs(out[labels == 1].astype(int) - (np.array(RED) + 255) / 2).max() <= 1
    explicit = write_preview(tmp_path / "m.zarr", tmp_path / "x.png", slide_path=slide, size=256)
    assert explicit.slide == slide and explicit.note is None


def test_a_slide_without_a_pyramid_is_subsampled_while_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    image = np.zeros((1200, 800, 3), np.uint8)
    image[:, :400] = (200, 40, 40)
    image[:, 400:] = (40, 40, 200)
    tifffile.imwrite(tmp_path / "flat.tif", image, tile=(64, 64), photometric="rgb")
    # Strips are 16 MP by default; no public option makes them smaller, so the module constant is
    # lowered to make this 1200 x 800 slide take the strip-by-strip path (one tile row per read).
    monkeypatch.setattr(slideseg.tools.preview, "_STRIP_PIXELS", 64 * 800 * 3)
    mask = np.zeros((1200, 800), np.uint8)
    write_mask(tmp_path / "m.zarr", mask, CLASSES, chunk=512, source=_source(tmp_path / "flat.tif"))
    result = write_preview(tmp_path / "m.zarr", tmp_path / "o.png", size=120)
    out = png(result.path)
    assert result.slide_level == 0 and result.thumbnail == (120, 80)
    assert (out[:120, :38] == (200, 40, 40)).all() and (out[:120, 42:80] == (40, 40, 200)).all()


def test_errors(tmp_path: Path, slide: Path) -> None:
    mask_path = write_mask(tmp_path / "m.zarr", truth_mask(slide), CLASSES, chunk=512, source=_source(slide))
    out = tmp_path / "o.png"
    with pytest.raises(ConfigError, match=r"\.png"):
        write_preview(mask_path, tmp_path / "o.jpg")
    with pytest.raises(ConfigError, match="--size"):
        write_preview(mask_path, out, size=8)
    with pytest.raises(ConfigError, match="--alpha"):
        write_preview(mask_path, out, alpha=1.5)
    with pytest.raises(SlideReadError, match="does not exist"):
        write_preview(tmp_path / "nope.zarr", out)
    with pytest.raises(SlideReadError, match="does not exist"):
        write_preview(mask_path, out, slide_path=tmp_path / "gone.svs")
    (tmp_path / "plain").mkdir()
    with pytest.raises(OutputFormatError, match="not a"):
        write_preview(tmp_path / "plain", out)
    write_mask(tmp_path / "partial.zarr", np.zeros((10, 10), np.uint8), CLASSES, finalize=False)
    with pytest.raises(OutputFormatError, match="incomplete"):
        write_preview(tmp_path / "partial.zarr", out)
    write_preview(mask_path, out, size=64)
    with pytest.raises(OutputExistsError, match="--overwrite"):
        write_preview(mask_path, out)
    assert write_preview(mask_path, out, size=64, overwrite=True).path == out
    assert not list(tmp_path.glob(".*.tmp"))


def test_a_damaged_mask_chunk_is_a_clean_error(tmp_path: Path) -> None:
    # was: ValueError "Stored and computed checksum do not match" (0.5) or a blosc RuntimeError (0.4) from zarr
    labels = np.ones((100, 150), np.uint8)
    mask_path = write_mask(tmp_path / "m.zarr", labels, CLASSES, chunk=32, source={"path": "", "level": 0})
    chunk = next(f for f in sorted((mask_path / "0").rglob("*")) if f.is_file() and not f.name.startswith("."))
    chunk.write_bytes(b"\x01not a chunk" * 9)
    with pytest.raises(SlideReadError, match=r"could not read level 0 of the mask .*m\.zarr \(\w+"):
        write_preview(mask_path, tmp_path / "o.png", size=64)
    assert not (tmp_path / "o.png").exists()


class _Flat:
    """A slide without a pyramid whose pixel (y, x) is (y % 256, x % 256, 0); records its largest read."""

    def __init__(self, shape: tuple[int, int]) -> None:
        self.shape, self.dtype, self.largest = (*shape, 3), np.dtype(np.uint8), 0
        self.levels = [self]

    def __enter__(self) -> _Flat:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        self.largest = max(self.largest, (y1 - y0) * (x1 - x0))
        yy, xx = np.mgrid[y0:y1, x0:x1]
        return np.stack([yy % 256, xx % 256, np.zeros_like(yy)], axis=2).astype(np.uint8)


@pytest.mark.parametrize(("shape", "thumb", "step"), [
    ((3000, 2000), (300, 200), 5),  # the aspect of the mask: at least 2x the thumbnail, 3000 // (2 * 300)
    # a --slide of another aspect: not read whole at step 1, but at most 16x the thumbnail's pixels,
    # ceil(sqrt(64 * 200000 / (16 * 200 * 150)))
    ((64, 200_000), (200, 150), 6),
])
def test_the_slide_is_read_in_bounded_blocks_and_sampled_exactly(monkeypatch: pytest.MonkeyPatch,
                                                                 shape: tuple[int, int], thumb: tuple[int, int],
                                                                 step: int) -> None:
    # was: full-width strips of whole tile rows (GBs for a wide slide), and the whole level at step 1
    flat = _Flat(shape)
    seen: list[np.ndarray] = []
    monkeypatch.setattr(slideseg.tools.preview, "open_slide", lambda *a, **k: flat)
    monkeypatch.setattr(slideseg.tools.preview, "_STRIP_PIXELS", 4096)
    monkeypatch.setattr(slideseg.tools.preview, "_resize_rgb", lambda rgb, shape: seen.append(rgb) or rgb)
    slideseg.tools.preview._slide_thumbnail(Path("flat.tif"), None, thumb)
    yy, xx = np.mgrid[0:shape[0]:step, 0:shape[1]:step]
    assert np.array_equal(seen[0][..., 0], yy % 256) and np.array_equal(seen[0][..., 1], xx % 256)
    assert flat.largest <= max(4096, step)
