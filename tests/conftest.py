"""Shared fixtures and builders: tiny models, tiny slides and scanner files, in-memory readers, the
whole-image reference pass and the CLI runner. Everything is generated; nothing is downloaded."""

from __future__ import annotations

import importlib.util
import json
import os
import struct
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile
import torch
import zarr
from click.testing import Result
from typer.testing import CliRunner

from slideseg.cli import app
from slideseg.engines.cache import ENV_DIR
from slideseg.io.images import ArrayImage, Mask
from slideseg.io.ngff import LabelClass
from slideseg.model.config import UNetConfig
from slideseg.model.files import LoadedModel, save_model
from slideseg.model.unet import build_unet
from slideseg.plan.tiles import grid_box
from slideseg.schedule.chunks import softmax
from slideseg.tools.synth import SynthConfig, write_synthetic_slide
from slideseg.train.data import Item
from slideseg.write.mask import create_mask
from tests.fuzz.seeds import write_svs

os.environ.setdefault("OMP_NUM_THREADS", "2")

HAS_ORT = importlib.util.find_spec("onnxruntime") is not None
HAS_CUDA = torch.cuda.is_available()
HAS_TRT = HAS_CUDA and importlib.util.find_spec("tensorrt") is not None
needs_ort = pytest.mark.skipif(not HAS_ORT, reason="onnxruntime is not installed")
TILE = 124
"""A valid tile of :func:`tiny_model` (depth 3): 124 -> 36 px."""

Source = tuple[Path, list[np.ndarray]]
"""A generated input file and the (Y, X, C) pixels of each of its levels."""


@pytest.fixture(autouse=True, scope="session")
def _engine_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Engine artefacts go to a temporary folder, and `--engine auto` on the CPU runs the PyTorch
    engine (the reference the exactness tests compare with) instead of timing engines; the tests of
    that timing clear the variable themselves."""
    saved = {k: os.environ.get(k) for k in (ENV_DIR, "SLIDESEG_CPU_ENGINE")}
    os.environ[ENV_DIR] = str(tmp_path_factory.mktemp("engines"))
    os.environ["SLIDESEG_CPU_ENGINE"] = "torch"
    yield
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture
def engines_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty engine cache of this test's own (exports, plans and measured choices)."""
    monkeypatch.setenv(ENV_DIR, str(tmp_path / "engines"))
    return tmp_path / "engines"


# --------------------------------------------------------------------------------- images


class ArraySlide:
    """An in-memory stand-in for :class:`slideseg.io.slide.Slide` (shape + in-bounds reads)."""

    def __init__(self, pixels: np.ndarray) -> None:
        self.pixels = pixels if pixels.ndim == 3 else pixels[..., None]
        self.reads: list[tuple[int, int, int, int]] = []

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.pixels.shape  # type: ignore[return-value]

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        h, w = self.pixels.shape[:2]
        assert 0 <= y0 < y1 <= h and 0 <= x0 < x1 <= w, (y0, y1, x0, x1)
        self.reads.append((y0, y1, x0, x1))
        return self.pixels[y0:y1, x0:x1]


def random_rgb(shape: tuple[int, int], seed: int = 0) -> np.ndarray:
    """Smooth-ish random RGB uint8 image (structure at several scales, so logits vary)."""
    r = np.random.default_rng(seed)
    img = r.integers(0, 256, (*shape, 3)).astype(np.float32)
    coarse = r.integers(0, 256, (shape[0] // 8 + 1, shape[1] // 8 + 1, 3)).astype(np.float32)
    img = 0.5 * img + 0.5 * np.repeat(np.repeat(coarse, 8, 0), 8, 1)[: shape[0], : shape[1]]
    return img.astype(np.uint8)


def write_tiff(path: Path, image: np.ndarray, mpp: float = 0.5) -> Path:
    """A tiled OME-TIFF of ``image`` (RGB (Y, X, 3) or greyscale (Y, X)) at ``mpp`` µm/px."""
    tifffile.imwrite(path, image, tile=(64, 64), photometric="rgb" if image.ndim == 3 else "minisblack",
                     compression="zlib", metadata={"axes": "YXS" if image.ndim == 3 else "YX",
                                                   "PhysicalSizeX": mpp, "PhysicalSizeY": mpp})
    return path


def write_ome_zarr_image(path: Path, image: np.ndarray, mpp: float, levels: int, version: str = "0.4") -> Path:
    """A small OME-Zarr image (c, y, x) of an RGB ``image`` with a x2 pyramid, NGFF 0.4 or 0.5."""
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


def array_item(image: np.ndarray, mask: np.ndarray, name: str = "a") -> Item:
    """A training item held in memory: an (H, W, C) or (H, W) image and its (H, W) mask."""
    return Item(name, ArrayImage(image), Mask(mask, name))


def write_mask(path: Path, mask: np.ndarray, classes: Sequence[LabelClass], *, chunk: int = 64,
               source: dict[str, Any] | None = None, finalize: bool = True) -> Path:
    """A slideseg mask of the class ids ``mask`` at 0.5 µm/px, written chunk by chunk as predict
    writes it; ``source`` is the slide it says it came from."""
    writer = create_mask(path, mask.shape, chunk, classes, 0.5, {"source": source or {"path": "", "level": 0}})
    for iy, ix in np.ndindex(*writer.grid):
        y0, y1, x0, x1 = grid_box(iy, ix, mask.shape, chunk)
        writer.write_chunk(iy, ix, np.ascontiguousarray(mask[y0:y1, x0:x1]))
    if finalize:
        writer.finalize()
    return path


def chunk_files(root: Path) -> dict[str, bytes]:
    """Every stored chunk of a mask's class ids and probabilities, by key, as bytes on disk."""
    out = {}
    for sub in ("0", "1", "probabilities/0", "probabilities/1"):
        for f in sorted((root / sub).rglob("*")):
            if f.is_file() and not f.name.startswith(".") and ".partial" not in f.name:
                out[str(f.relative_to(root))] = f.read_bytes()
    return out


def read_level(mask: Path, key: str = "0") -> np.ndarray:
    """One array of a mask (``"0"``, ``"1"``, ``"probabilities/0"``...) read whole."""
    return np.asarray(zarr.open_group(mask, mode="r")[key][:])  # type: ignore[index]


@pytest.fixture(scope="session")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Synthetic training and validation slides with their .truth.zarr masks, in ``train/`` and
    ``val/`` (shared: tests only read them)."""
    root = tmp_path_factory.mktemp("synth")
    for sub, size, seed in (("train", (512, 512), 11), ("val", (256, 384), 12)):
        write_synthetic_slide(root / sub / f"{sub}.ome.tif", SynthConfig(size=size, seed=seed))
    return root


# --------------------------------------------------------------------------------- masks and polygons

# An awkward mask: a ring with an island of its own class in the hole and another class in a
# second hole; classes touching along edges; objects on all four borders; pixels touching only at
# corners (separate regions); a region that closes on itself at a corner (a hole touching the
# outside at one vertex); a spiral.
AWKWARD = np.array([
    [2, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3, 3],
    [2, 1, 1, 1, 1, 1, 1, 1, 0, 0, 1, 0, 0, 0, 3],
    [0, 1, 0, 0, 0, 1, 2, 1, 0, 1, 0, 1, 0, 0, 0],
    [0, 1, 0, 1, 0, 1, 2, 1, 0, 0, 1, 0, 0, 1, 1],
    [0, 1, 0, 0, 0, 1, 1, 1, 0, 0, 0, 0, 0, 1, 0],
    [0, 1, 1, 1, 1, 1, 3, 3, 3, 0, 1, 1, 1, 0, 0],
    [0, 0, 0, 0, 0, 0, 3, 0, 3, 0, 1, 0, 0, 0, 0],
    [1, 1, 1, 1, 1, 0, 3, 3, 0, 0, 1, 0, 1, 1, 0],
    [1, 0, 0, 0, 1, 0, 0, 0, 3, 0, 1, 0, 0, 1, 0],
    [1, 0, 1, 0, 1, 0, 2, 2, 2, 0, 1, 1, 1, 1, 0],
    [1, 0, 1, 1, 1, 0, 2, 0, 2, 0, 0, 0, 0, 0, 0],
    [1, 0, 0, 0, 0, 0, 2, 2, 2, 2, 2, 2, 2, 2, 2],
], np.uint8)  # fmt: skip


def rasterise(rings_per_polygon: list[tuple[int, list[np.ndarray]]], shape: tuple[int, int]) -> np.ndarray:
    """Even-odd fill at pixel centres of rectilinear rings (n, 2) of (x, y), class by class."""
    toggles: dict[int, np.ndarray] = {}
    for value, rings in rings_per_polygon:
        d = toggles.setdefault(value, np.zeros((shape[0] + 1, shape[1] + 1), np.uint8))
        for a in rings:
            b = np.roll(a, -1, axis=0)
            assert ((a[:, 0] == b[:, 0]) | (a[:, 1] == b[:, 1])).all(), "edges follow pixel edges"
            vert = a[:, 0] == b[:, 0]  # a vertical edge toggles 'inside' for pixels right of it in its rows
            x, ya, yb = a[vert, 0], a[vert, 1], b[vert, 1]
            np.bitwise_xor.at(d, (np.minimum(ya, yb), x), 1)
            np.bitwise_xor.at(d, (np.maximum(ya, yb), x), 1)
    out = np.zeros(shape, np.uint8)
    for value, d in toggles.items():
        inside = np.bitwise_xor.accumulate(np.bitwise_xor.accumulate(d, axis=0), axis=1)[: shape[0], : shape[1]]
        assert not out[inside.astype(bool)].any(), "classes overlap"
        out[inside.astype(bool)] = value
    return out


def signed_area(r: np.ndarray) -> int:
    """Shoelace area of a ring of (x, y) vertices (traced exteriors are positive, holes negative)."""
    x, y = r[:, 0], r[:, 1]
    return int(np.dot(x, np.roll(y, -1)) - np.dot(np.roll(x, -1), y)) // 2


def random_mask(seed: int, shape: tuple[int, int], n_classes: int, blob: int) -> np.ndarray:
    """Random class ids 0..n_classes-1 in square blobs of ``blob`` px, uint8."""
    r = np.random.default_rng(seed)
    coarse = r.integers(0, n_classes, (-(-shape[0] // blob), -(-shape[1] // blob)))
    return np.repeat(np.repeat(coarse, blob, 0), blob, 1)[: shape[0], : shape[1]].astype(np.uint8)


# --------------------------------------------------------------------------------- models


def tiny_model(seed: int = 0, **config: Any) -> LoadedModel:
    """A depth-3, width-4, 3-class U-Net in memory (``config`` overrides fields)."""
    cfg = UNetConfig(**{"depth": 3, "width": 4, "classes": 3, **config})
    return LoadedModel(build_unet(cfg, seed=seed).eval(), cfg, f"{seed:064x}")


def save_tiny_model(path: Path, seed: int = 0, metadata: dict[str, Any] | None = None, **config: Any) -> Path:
    """A tiny untrained U-Net saved as a model file (depth 2, width 4, 2 classes unless ``config``
    says otherwise)."""
    cfg = UNetConfig(**{"depth": 2, "width": 4, **config})
    save_model(path, build_unet(cfg, seed=seed), cfg, metadata)
    return path


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    """A depth-3, 3-class model file with class names (valid tiles 8k+4 >= 92)."""
    return save_tiny_model(tmp_path / "m.safetensors", seed=5, metadata={"trained": False}, depth=3, classes=3,
                           class_names=("background", "nucleus", "stroma"))


@pytest.fixture
def model_05(tmp_path: Path) -> Path:
    """A depth-2, 2-class model file that wants 0.5 µm/px."""
    return save_tiny_model(tmp_path / "m05.safetensors", seed=3, mpp=0.5, class_names=("background", "nucleus"))


def raw_batch(n: int, tile: int = TILE, dtype: type = np.uint8, seed: int = 0) -> np.ndarray:
    """``n`` random raw tiles (N, 3, tile, tile) as a slide gives them."""
    rng = np.random.default_rng(seed)
    hi = 4096 if dtype == np.uint16 else 256
    return rng.integers(0, hi, (n, 3, tile, tile)).astype(dtype)


def reference_logits(model: LoadedModel, batch: np.ndarray) -> np.ndarray:
    """The network itself on the CPU in fp32, without any engine: normalise with the config's mean
    and standard deviation, one forward pass of a copy of the weights. (N, K, T', T')."""
    net = build_unet(model.config)
    net.load_state_dict({k: v.detach().cpu() for k, v in model.net.state_dict().items()})
    mean = np.asarray(model.config.norm_mean, np.float32).reshape(1, -1, 1, 1)
    std = np.asarray(model.config.norm_std, np.float32).reshape(1, -1, 1, 1)
    x = torch.from_numpy((batch.astype(np.float32) - mean) / std)
    with torch.no_grad():
        return net.eval()(x).numpy()


def whole_image_probabilities(model: LoadedModel, image: np.ndarray) -> np.ndarray:
    """Reference for the seamless promise: mirror-pad the whole image (numpy), one forward pass
    of the network, crop. ``image`` is (H, W, C) or (H, W); returns (K, H, W)."""
    image = image if image.ndim == 3 else image[..., None]
    g = model.config.geometry
    h, w = image.shape[:2]
    n_y, n_x = g.smallest_tile_covering(h), g.smallest_tile_covering(w)
    c = g.context
    padded = np.pad(image, ((c, n_y - h - c), (c, n_x - w - c), (0, 0)), mode=model.config.mirror)
    logits = reference_logits(model, padded.transpose(2, 0, 1)[None])
    return softmax(logits[0, :, :h, :w])


# --------------------------------------------------------------------------------- a same-padded model

SAME_HALO = 8
SAME = UNetConfig(depth=2, width=4, classes=3, padding="same", halo=SAME_HALO)
"""A same-padded U-Net (output size = input size), brought as the user's own ONNX file."""
SAME_SIDECAR = {"padding": "same", "depth": 2, "halo": SAME_HALO, "classes": 3, "in_channels": 3,
                "norm_mean": [127.5], "norm_std": [127.5], "class_names": ["background", "a", "b"]}


def export_user_onnx(net: torch.nn.Module, path: Path, dynamic_hw: bool = True, size: int = 64) -> Path:
    """What a user does: torch.onnx.export of their own network (no slideseg metadata)."""
    d = torch.export.Dim
    shapes = {0: d("batch"), 2: 4 * d("h4"), 3: 4 * d("w4")} if dynamic_hw else {0: d("batch")}
    with warnings.catch_warnings():  # raised inside torch 2.13's exporter (its pytree internals)
        warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)", category=FutureWarning)
        torch.onnx.export(net, (torch.rand(2, 3, size, size),), str(path), dynamo=True, verbose=False,
                          input_names=["image"], output_names=["scores"], dynamic_shapes={"x": shapes},
                          external_data=False)
    return path


@pytest.fixture(scope="session")
def same_net() -> torch.nn.Module:
    return build_unet(SAME, seed=2).eval()


@pytest.fixture(scope="session")
def same_onnx(same_net: torch.nn.Module, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``same_net`` exported by the user, with its sidecar JSON beside it (exported once per session)."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    folder = tmp_path_factory.mktemp("byo")
    path = export_user_onnx(same_net, folder / "same.onnx")
    (folder / "same.onnx.json").write_text(json.dumps(SAME_SIDECAR))
    return path


# --------------------------------------------------------------------------------- the CLI


def run_cli(*args: str | Path) -> Result:
    """``slideseg ARGS...`` in this process; the result has ``exit_code``, ``stdout`` and ``stderr``."""
    return CliRunner().invoke(app, [str(a) for a in args])


# --------------------------------------------------------------------------------- scanner files


def _rng(seed: int = 7) -> np.random.Generator:
    return np.random.default_rng(seed)


def smooth_rgb(h: int, w: int) -> np.ndarray:
    """An RGB gradient (JPEG keeps it close to the source)."""
    yy, xx = np.mgrid[:h, :w]
    return np.stack([yy * 255 // h, xx * 255 // w, (yy + xx) * 255 // (h + w)], axis=-1).astype(np.uint8)


SVS_DESCRIPTION = (
    "Aperio Image Library v12.0.0 \n384x256 [0,100 384x256] (64x64) JPEG/RGB Q=70"
    "|AppMag = 20|StripeWidth = 2040|ScanScope ID = SS1234|MPP = 0.4990"
)


@pytest.fixture
def svs(tmp_path: Path) -> Source:
    """Aperio layout: tiled JPEG baseline, stripped thumbnail, two tiled x2 levels, label, macro.

    tifffile calls a file SVS when page 0's ImageDescription starts with ``'Aperio '``; its SVS
    series are the baseline with the tiled pages after the thumbnail as levels, then the thumbnail,
    then the label (subfiletype 1) and macro (subfiletype 9). Returns tifffile's own decoding of
    each level (JPEG is lossy), checked against the source below.
    """
    img = smooth_rgb(256, 384)
    path = tmp_path / "slide.svs"
    write_svs(path, img, SVS_DESCRIPTION)
    with tifffile.TiffFile(path) as tif:
        assert tif.is_svs
        assert [s.name for s in tif.series] == ["Baseline", "Thumbnail", "Label", "Macro"]
        levels = [lv.asarray() for lv in tif.series[0].levels]
    assert [lv.shape for lv in levels] == [(256, 384, 3), (128, 192, 3), (64, 96, 3)]
    assert np.abs(levels[0].astype(int) - img).mean() < 3  # the pyramid really holds the source
    return path, levels


NDPI_MPP = 0.4545


def _ndpi_tags(magnification: float, slide_label: str | None = None) -> list[tuple[int, str, int, Any, bool]]:
    tags = [(271, "s", 0, "Hamamatsu", True), (272, "s", 0, "C13220", True),
            (65420, "I", 1, 1, True), (65421, "f", 1, magnification, True)]  # fmt: skip
    return tags + ([(65427, "s", 0, slide_label, True)] if slide_label else [])


def _to_ndpi_layout(src: Path, dst: Path) -> None:
    """Rewrite a classic TIFF in NDPI's layout: 8-byte IFD offsets (header, next-IFD) and
    4 high bytes per tag after each IFD. Copies of the IFDs go at the end; data stays put."""
    with tifffile.TiffFile(src) as tif:
        offsets = [page.offset for page in tif.pages]
    data = bytearray(src.read_bytes())
    assert offsets[0] == 8  # the original first IFD is what the 8-byte header offset overwrites
    ifds = [bytes(data[o : o + 2 + 12 * struct.unpack_from("<H", data, o)[0]]) for o in offsets]
    data += b"\0" * (len(data) % 2)
    starts, pos = [], len(data)
    for ifd in ifds:
        starts.append(pos)
        pos += len(ifd) + 8 + 4 * (len(ifd) - 2) // 12
    for i, ifd in enumerate(ifds):
        data += ifd + struct.pack("<Q", starts[i + 1] if i + 1 < len(ifds) else 0) + b"\0" * (4 * (len(ifd) - 2) // 12)
    struct.pack_into("<Q", data, 4, starts[0])
    dst.write_bytes(bytes(data))


@pytest.fixture
def ndpi(tmp_path: Path) -> Source:
    """Hamamatsu layout: one page per level (x4), resolution in pixels per centimetre, tag 65420,
    Make, Magnification (65421; -1 on the macro), SlideLabel (65427, which tifffile uses as the
    pyramid's name), NDPI's 64-bit offsets, ``.ndpi`` name."""
    img = _rng().integers(0, 256, (256, 384, 3), dtype=np.uint8)
    classic = tmp_path / "classic.tif"
    res = 1e4 / NDPI_MPP  # pixels per centimetre
    with tifffile.TiffWriter(classic) as tw:
        for k, mag in ((1, 20.0), (4, 5.0), (16, 1.25)):
            tw.write(img[::k, ::k], photometric="rgb", compression="zlib", tile=(32, 32), metadata=None,
                     resolution=(res / k, res / k), resolutionunit="CENTIMETER",
                     extratags=_ndpi_tags(mag, "Label HE-7" if k == 1 else None))
        tw.write(img[:60, :160], photometric="rgb", compression="zlib", metadata=None,
                 resolution=(1000.0, 1000.0), resolutionunit="CENTIMETER", extratags=_ndpi_tags(-1.0))
    path = tmp_path / "slide.ndpi"
    _to_ndpi_layout(classic, path)
    with tifffile.TiffFile(path) as tif:
        assert tif.is_ndpi and tif.tiff.offsetsize == 8  # read as NDPI, with NDPI's offsets
        assert [s.name for s in tif.series] == ["Label HE-7", "Macro"]
        assert len(tif.series[0].levels) == 3
    return path, [img, img[::4, ::4], img[::16, ::16]]


@pytest.fixture
def fluo(tmp_path: Path) -> Source:
    """Four-channel uint16 OME-TIFF (CYX) with channel names, 0.325 µm/px, two levels."""
    img = _rng().integers(0, 65536, (4, 96, 128), dtype=np.uint16)
    path = tmp_path / "fluo.ome.tif"
    meta = {"axes": "CYX", "PhysicalSizeX": 0.325, "Channel": {"Name": ["DAPI", "FITC", "TRITC", "Cy5"]}}
    with tifffile.TiffWriter(path, ome=True) as tw:
        tw.write(img, subifds=1, tile=(32, 32), compression="zlib", metadata=meta)
        tw.write(img[:, ::2, ::2], subfiletype=1, tile=(32, 32), compression="zlib")
    return path, [img.transpose(1, 2, 0), img[:, ::2, ::2].transpose(1, 2, 0)]


def ngff_meta(version: str, scales: list[float], unit: str) -> dict[str, Any]:
    """NGFF attributes of a (c, y, x) image with datasets s0, s1... and three named channels."""
    axes = [{"name": "c", "type": "channel"}] + [{"name": n, "type": "space", "unit": unit} for n in "yx"]
    datasets = [{"path": f"s{i}", "coordinateTransformations": [{"type": "scale", "scale": [1.0, s, s]}]}
                for i, s in enumerate(scales)]  # fmt: skip
    ms: dict[str, Any] = {"axes": axes, "datasets": datasets, "name": "img"}
    omero = {"channels": [{"label": n, "color": "FFFFFF"} for n in ("DAPI", "FITC", "Cy5")]}
    if version == "0.4":
        return {"multiscales": [{"version": "0.4", **ms}], "omero": omero}
    return {"ome": {"version": "0.5", "multiscales": [ms], "omero": omero}}


@pytest.fixture(params=["0.4", "0.5"])
def ome_zarr(request: pytest.FixtureRequest, tmp_path: Path) -> Source:
    """A 3-channel uint16 OME-Zarr, three levels: 0.4 on Zarr v2, 0.5 on Zarr v3 with
    ``dimension_names`` and attributes under ``ome``. Level 2 is 51 px wide from 101 (odd sizes)."""
    version: str = request.param
    img = _rng().integers(0, 65536, (3, 90, 101), dtype=np.uint16)
    levels = [img, img[:, ::2, ::2], img[:, ::4, ::4]]
    path = tmp_path / f"img{version}.ome.zarr"
    group = zarr.open_group(path, mode="w", zarr_format=2 if version == "0.4" else 3)
    for i, data in enumerate(levels):
        kw: dict[str, Any] = {} if version == "0.4" else {"dimension_names": ["c", "y", "x"]}
        group.create_array(f"s{i}", data=data, chunks=(1, 32, 32), **kw)
    group.attrs.update(ngff_meta(version, [0.25, 0.5, 1.0], "micrometer"))
    return path, [lv.transpose(1, 2, 0) for lv in levels]


@contextmanager
def local_dask_cluster(folder: Path, workers: int = 2) -> Iterator[Path]:
    """A `dask scheduler` and ``workers`` `dask worker` processes (2 threads each) on 127.0.0.1, logging
    into ``folder``; yields the scheduler file, and stops them all on exit."""
    sf = folder / "scheduler.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    common = ["--scheduler-file", str(sf), "--no-dashboard"]
    with (folder / "cluster.log").open("w") as log:
        procs = [subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
                                   "--port", "0", *common], stdout=log, stderr=log, env=env)]
        try:
            deadline = time.monotonic() + 60
            while not sf.exists() and time.monotonic() < deadline:
                time.sleep(0.1)
            procs += [subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_worker", "--host", "127.0.0.1",
                                        "--nthreads", "2", "--nworkers", "1", *common], stdout=log, stderr=log,
                                       env=env) for _ in range(workers)]
            from distributed import Client

            with Client(scheduler_file=str(sf), timeout="60s") as c:
                c.wait_for_workers(workers, timeout=60)
            yield sf
        finally:
            for proc in reversed(procs):
                proc.terminate()
            for proc in procs:
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
