"""The fuzzer's starting inputs, each built in code in a few milliseconds: one small, valid file of
every format slideseg reads, label masks as ``predict`` writes them, and training pairs.

Every seed is a :class:`Seed`: where it is, which format family the mutators treat it as, and
which commands a mutant of it is run through (with the extra options each needs).

>>> sorted(SEED_NAMES)[:3]
['jpeg', 'mask-0.4', 'mask-0.5']
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
import zarr

from slideseg.io.ngff import LabelClass
from slideseg.tools.synth import SynthConfig, write_synthetic_slide
from slideseg.write.mask import create_mask

# Families: what the mutators know how to edit.
TIFF, ZARR, PNG, JPEG, MASK, PAIR = "tiff", "zarr", "png", "jpeg", "mask", "pair"


@dataclass(frozen=True)
class Seed:
    """One valid starting input."""

    name: str
    """Short name, also the format column of the summary table."""
    family: str
    """Which mutators apply: ``tiff``, ``zarr``, ``png``, ``jpeg``, ``mask`` or ``pair``."""
    path: Path
    """The file or directory (for a training pair: the folder holding ``images/`` and ``masks/``)."""
    commands: tuple[str, ...]
    """Commands a mutant runs through: ``info``, ``predict``, ``evaluate``, ``export-geojson``,
    ``preview``, ``train``."""
    predict_args: tuple[str, ...] = ()
    """Extra ``predict`` options, e.g. ``--channels 0,0,0`` to feed one channel to a 3-channel model."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Anything else a command needs (``gt``: the truth of a mask; ``kind``: the mask kind)."""


SLIDE_COMMANDS = ("info", "predict")
MPP = ("--mpp", "0.5")
"""What ``predict`` needs for an input without a pixel size (the tiny model expects 0.5 µm/px)."""
MASK_COMMANDS = ("info", "evaluate", "export-geojson", "preview")


def _gradient_rgb(h: int, w: int, seed: int = 0) -> np.ndarray:
    """An RGB image with tissue-like coloured blobs on white (JPEG keeps it close)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    img = np.full((h, w, 3), 235, np.float64)
    for _ in range(6):
        cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(10, max(h, w) / 4)
        inside = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
        img[inside] = rng.uniform(60, 220, 3)
    return (img + rng.normal(0, 4, img.shape)).clip(0, 255).astype(np.uint8)


def _synth_ome_tiff(folder: Path) -> Seed:
    """slideseg's own pyramidal JPEG OME-TIFF (two levels, SubIFDs); its truth Zarr is not used."""
    result = write_synthetic_slide(folder / "synth.ome.tif", SynthConfig(size=(1100, 700), seed=3, tile=128))
    return Seed("ome-tiff", TIFF, result.image_path, SLIDE_COMMANDS)


def write_svs(path: Path, img: np.ndarray, description: str) -> None:
    """An Aperio layout (``img`` 256 x 384 RGB): tiled JPEG baseline with ``description``, a stripped
    thumbnail, two tiled x2 levels, a label (subfiletype 1) and a macro (subfiletype 9)."""
    jpeg: dict[str, Any] = {"photometric": "rgb", "compression": "jpeg", "metadata": None}
    with tifffile.TiffWriter(path) as tw:
        tw.write(img, tile=(64, 64), description=description, **jpeg)
        tw.write(img[::8, ::8], description="Aperio Image Library v12.0.0 \n384x256 -> 48x32|AppMag = 20", **jpeg)
        for k in (2, 4):
            tw.write(img[::k, ::k], tile=(64, 64), description=f"Aperio Image Library v12.0.0 \n-> level {k}", **jpeg)
        tw.write(img[:40, :60], photometric="rgb", compression="lzw", subfiletype=1, metadata=None,
                 description="Aperio Image Library v12.0.0\nlabel 60x40")
        tw.write(img[:50, :100], subfiletype=9, description="Aperio Image Library v12.0.0\nmacro 100x50", **jpeg)


def _svs(folder: Path) -> Seed:
    """Aperio layout: tiled JPEG baseline, stripped thumbnail, two tiled levels, label, macro."""
    path = folder / "slide.svs"
    head = "Aperio Image Library v12.0.0 \n384x256 [0,100 384x256] (64x64) JPEG/RGB Q=70"
    write_svs(path, _gradient_rgb(256, 384, 1), f"{head}|AppMag = 20|MPP = 0.4990")
    return Seed("svs", TIFF, path, SLIDE_COMMANDS)


def _classic_to_ndpi(src: Path, dst: Path) -> None:
    """Rewrite a classic little-endian TIFF in NDPI's layout: an 8-byte first-IFD offset in the
    header, 8-byte next-IFD offsets, and 4 high bytes per tag after each IFD (all zero here)."""
    with tifffile.TiffFile(src) as tif:
        offsets = [page.offset for page in tif.pages]
    data = bytearray(src.read_bytes())
    if len(data) % 2:
        data += b"\0"
    ifds = [bytes(data[o: o + 2 + 12 * struct.unpack_from("<H", data, o)[0]]) for o in offsets]
    starts, pos = [], len(data)
    for ifd in ifds:
        starts.append(pos)
        pos += len(ifd) + 8 + 4 * ((len(ifd) - 2) // 12)
    for i, ifd in enumerate(ifds):
        following = starts[i + 1] if i + 1 < len(ifds) else 0
        data += ifd + struct.pack("<Q", following) + b"\0" * (4 * ((len(ifd) - 2) // 12))
    struct.pack_into("<Q", data, 4, starts[0])
    dst.write_bytes(bytes(data))


def _ndpi(folder: Path) -> Seed:
    """Hamamatsu layout: one page per level (x4), resolution in pixels per centimetre, tags
    65420/65421 (magnification, -1 on the macro), Make = Hamamatsu, NDPI's 64-bit offsets."""
    img = _gradient_rgb(256, 384, 2)
    classic = folder / "ndpi-classic.tif"
    res = 1e4 / 0.4545

    def tags(magnification: float) -> list[tuple[int, str, int, Any, bool]]:
        return [(271, "s", 0, "Hamamatsu", True), (272, "s", 0, "C13220", True),
                (65420, "I", 1, 1, True), (65421, "f", 1, magnification, True)]

    with tifffile.TiffWriter(classic) as tw:
        for k, mag in ((1, 20.0), (4, 5.0)):
            tw.write(img[::k, ::k], photometric="rgb", compression="zlib", tile=(32, 32), metadata=None,
                     resolution=(res / k, res / k), resolutionunit="CENTIMETER", extratags=tags(mag))
        tw.write(img[:60, :160], photometric="rgb", compression="zlib", metadata=None,
                 resolution=(1000.0, 1000.0), resolutionunit="CENTIMETER", extratags=tags(-1.0))
    path = folder / "slide.ndpi"
    _classic_to_ndpi(classic, path)
    classic.unlink()
    return Seed("ndpi", TIFF, path, SLIDE_COMMANDS)


def _plain_tiffs(folder: Path) -> list[Seed]:
    """Tiled uint8 RGB with resolution tags, tiled uint16 greyscale, striped RGB without metadata,
    and a 4-channel uint16 OME-TIFF with a SubIFD pyramid and channel names."""
    rgb = _gradient_rgb(200, 300, 3)
    t8 = folder / "tiled8.tif"
    tifffile.imwrite(t8, rgb, tile=(64, 64), photometric="rgb", compression="zlib", metadata=None,
                     resolution=(2e4, 2e4), resolutionunit="CENTIMETER")
    t16 = folder / "tiled16.tif"
    grey = (rgb[..., 0].astype(np.uint16) * 257)
    tifffile.imwrite(t16, grey, tile=(48, 48), photometric="minisblack", compression="zlib", metadata=None,
                     resolution=(50800.0, 50800.0), resolutionunit="INCH")
    strips = folder / "strips.tif"
    tifffile.imwrite(strips, rgb, photometric="rgb", rowsperstrip=32, metadata=None)
    fluo = folder / "fluo.ome.tif"
    stack = np.stack([rgb[..., 0], rgb[..., 1], rgb[..., 2], 255 - rgb[..., 0]]).astype(np.uint16) * 200
    meta = {"axes": "CYX", "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5, "PhysicalSizeXUnit": "µm",
            "Channel": {"Name": ["DAPI", "FITC", "TRITC", "Cy5"]}}
    with tifffile.TiffWriter(fluo, ome=True) as tw:
        tw.write(stack, subifds=1, tile=(64, 64), compression="zlib", metadata=meta)
        tw.write(stack[:, ::2, ::2], subfiletype=1, tile=(64, 64), compression="zlib")
    return [Seed("tiff-u8", TIFF, t8, SLIDE_COMMANDS),
            Seed("tiff-u16", TIFF, t16, SLIDE_COMMANDS, ("--channels", "0,0,0")),
            Seed("tiff-strips", TIFF, strips, SLIDE_COMMANDS, MPP),
            Seed("ome-tiff-fluo", TIFF, fluo, SLIDE_COMMANDS, ("--channels", "0,1,2"))]


def _ngff_attrs(version: str, scales: list[float]) -> dict[str, Any]:
    axes = [{"name": "c", "type": "channel"}] + [{"name": n, "type": "space", "unit": "micrometer"} for n in "yx"]
    datasets = [{"path": f"s{i}", "coordinateTransformations": [{"type": "scale", "scale": [1.0, s, s]}]}
                for i, s in enumerate(scales)]
    ms: dict[str, Any] = {"axes": axes, "datasets": datasets, "name": "image"}
    omero = {"channels": [{"label": n, "color": "FFFFFF"} for n in ("red", "green", "blue")]}
    if version == "0.4":
        return {"multiscales": [{"version": "0.4", **ms}], "omero": omero}
    return {"ome": {"version": "0.5", "multiscales": [ms], "omero": omero}}


def _zarrs(folder: Path) -> list[Seed]:
    """OME-Zarr 0.4 (Zarr v2) and 0.5 (Zarr v3, ``dimension_names``), three (c, y, x) levels,
    and a plain (Y, X, C) Zarr v2 array."""
    img = np.moveaxis(_gradient_rgb(180, 250, 4), 2, 0)  # (3, Y, X)
    seeds = []
    for version in ("0.4", "0.5"):
        path = folder / f"image-{version}.ome.zarr"
        group = zarr.open_group(path, mode="w", zarr_format=2 if version == "0.4" else 3)
        for i in range(3):
            kw: dict[str, Any] = {} if version == "0.4" else {"dimension_names": ["c", "y", "x"]}
            group.create_array(f"s{i}", data=img[:, :: 2**i, :: 2**i], chunks=(1, 64, 64), **kw)
        group.attrs.update(_ngff_attrs(version, [0.5, 1.0, 2.0]))
        seeds.append(Seed(f"ome-zarr-{version}", ZARR, path, SLIDE_COMMANDS))
    plain = folder / "plain.zarr"
    zarr.create_array(plain, data=np.moveaxis(img, 0, 2), chunks=(64, 64, 3), zarr_format=2)
    seeds.append(Seed("zarr", ZARR, plain, SLIDE_COMMANDS, MPP))
    return seeds


def _images(folder: Path) -> list[Seed]:
    """RGB PNG, RGBA PNG (alpha dropped), uint16 greyscale PNG, and a JPEG."""
    import imagecodecs

    rgb = _gradient_rgb(120, 160, 5)
    png = folder / "image.png"
    png.write_bytes(imagecodecs.png_encode(rgb))
    rgba = folder / "rgba.png"
    alpha = np.full((*rgb.shape[:2], 1), 255, np.uint8)
    alpha[:10] = 0
    rgba.write_bytes(imagecodecs.png_encode(np.concatenate([rgb, alpha], axis=2)))
    grey = folder / "grey16.png"
    grey.write_bytes(imagecodecs.png_encode(rgb[..., 1].astype(np.uint16) * 257))
    jpeg = folder / "image.jpg"
    jpeg.write_bytes(imagecodecs.jpeg8_encode(rgb, level=90))
    return [Seed("png", PNG, png, SLIDE_COMMANDS, MPP), Seed("png-rgba", PNG, rgba, SLIDE_COMMANDS, MPP),
            Seed("png-u16", PNG, grey, SLIDE_COMMANDS, ("--channels", "0,0,0", *MPP)),
            Seed("jpeg", JPEG, jpeg, SLIDE_COMMANDS, MPP)]


def _masks(folder: Path, slide: Path) -> list[Seed]:
    """Label masks as ``predict`` writes them (0.4 and 0.5, finalized, with a tissue mask), over
    ``slide`` (200 x 300 px, the size of the masks), each with a pristine copy as the ground
    truth that ``evaluate`` compares with."""
    seeds = []
    h, w = 200, 300
    yy, xx = np.mgrid[:h, :w]
    labels = (((yy // 25 + xx // 30) % 3) * ((yy - 100) ** 2 + (xx - 150) ** 2 < 90**2)).astype(np.uint8)
    classes = [LabelClass(0, "background", (0, 0, 0, 0)), LabelClass(1, "nucleus", (255, 0, 0, 255)),
               LabelClass(2, "stroma", (0, 200, 0, 255))]
    source = {"path": str(slide.resolve()), "series": 0, "level": 0, "level_shape": [h, w], "level_mpp": 0.5,
              "resample_factor": 1.0, "shape": [h, w], "mpp": 0.5, "channels": 3}
    for version in ("0.4", "0.5"):
        made = []
        for name in (f"mask-{version}.zarr", f"truth-{version}.zarr"):
            chunk = 64
            writer = create_mask(folder / name, (h, w), chunk, classes, 0.5, {"source": source}, ngff=version,
                                 probabilities=version == "0.4")
            unit = writer.chunk
            for iy in range(-(-h // unit)):
                for ix in range(-(-w // unit)):
                    block = labels[iy * unit:(iy + 1) * unit, ix * unit:(ix + 1) * unit]
                    probs = None
                    if version == "0.4":
                        probs = np.stack([(block == k).astype(np.uint8) * 255 for k in range(3)])
                    writer.write_chunk(iy, ix, block, probs)
            writer.write_tissue(np.ones((20, 30), bool), {"scale_yx": [10.0, 10.0], "method": "fuzz"})
            writer.finalize(num_workers=1)
            made.append(folder / name)
        seeds.append(Seed(f"mask-{version}", MASK, made[0], MASK_COMMANDS, extra={"gt": str(made[1])}))
    return seeds


def _pairs(folder: Path) -> list[Seed]:
    """Training pairs: an RGB PNG with a class-id PNG mask, and a uint8 TIFF with a TIFF mask."""
    import imagecodecs

    seeds = []
    for name, suffix in (("pair-png", ".png"), ("pair-tiff", ".tif")):
        root = folder / name
        (root / "images").mkdir(parents=True)
        (root / "masks").mkdir()
        img = _gradient_rgb(96, 112, 6)
        mask = (img[..., 0] < 150).astype(np.uint8) + (img[..., 2] < 100).astype(np.uint8)
        if suffix == ".png":
            (root / "images" / "a.png").write_bytes(imagecodecs.png_encode(img))
            (root / "masks" / "a.png").write_bytes(imagecodecs.png_encode(mask))
        else:
            tifffile.imwrite(root / "images" / "a.tif", img, photometric="rgb", tile=(32, 32), metadata=None)
            tifffile.imwrite(root / "masks" / "a.tif", mask, photometric="minisblack", metadata=None)
        seeds.append(Seed(name, PAIR, root, ("train",), extra={"kind": "classes", "suffix": suffix}))
    return seeds


SEED_NAMES = (
    "ome-tiff", "svs", "ndpi", "tiff-u8", "tiff-u16", "tiff-strips", "ome-tiff-fluo",
    "ome-zarr-0.4", "ome-zarr-0.5", "zarr", "png", "png-rgba", "png-u16", "jpeg", "mask-0.4", "mask-0.5",
    "pair-png", "pair-tiff",
)
"""Every seed :func:`build_seeds` makes, in its order."""


def build_seeds(folder: Path) -> list[Seed]:
    """Write every seed into ``folder`` (a few MB in all) and return them, in :data:`SEED_NAMES` order."""
    folder.mkdir(parents=True, exist_ok=True)
    tiffs = _plain_tiffs(folder)
    seeds = [_synth_ome_tiff(folder), _svs(folder), _ndpi(folder), *tiffs, *_zarrs(folder), *_images(folder),
             *_masks(folder, tiffs[0].path), *_pairs(folder)]
    assert tuple(s.name for s in seeds) == SEED_NAMES, [s.name for s in seeds]
    (folder / "seeds.json").write_text(json.dumps([s.name for s in seeds]))
    return seeds
