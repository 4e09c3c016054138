"""Training data: image/mask pairs, manifests, targets and weight maps, random tiles.

Sources (see :func:`load_training_data`):

- ``images/`` + ``masks/`` directories, pairs matched by name (``a.tif`` ↔ ``a.png``,
  ``a_mask.tif``, ``a.truth.zarr``, ...); one directory may hold both when mask names carry a
  marker such as ``.truth`` or ``_mask`` (``slideseg synth`` writes ``X.ome.tif`` + ``X.truth.zarr``);
- a CSV manifest with columns ``image,mask`` and optionally ``split`` (``train``/``val``).

Images are anything :func:`slideseg.io.slide.open_slide` reads, or PNG. Masks are TIFF/PNG label
images, Zarr arrays, or Zarr groups with ``instances``/``classes`` arrays (synth truth). Small
images (up to :data:`IN_MEMORY_MAX_PX`) are held in memory with their weight map computed once;
large ones and whole slides are read tile by tile, their weight maps computed per tile.

Every sample is a pure function of ``(seed, index)``, so background threads may compute samples
in any order and a resumed run sees the same tiles as an uninterrupted one.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from slideseg.errors import ConfigError, TrainingDataError
from slideseg.io.formats import slide_stem
from slideseg.io.images import _close, open_image, open_mask
from slideseg.io.slide import read_window
from slideseg.plan.tiles import Box, mirror_index
from slideseg.train.loss import MaskKind, TargetSpec, make_target

MASK_KINDS = ("instances", "classes")
MAX_CLASSES = 255
"""Most classes a model has (ids 0..254: the mask is uint8)."""
IN_MEMORY_MAX_PX = 2048 * 2048
"""Images up to this many pixels are loaded whole and their weight maps cached."""
_SUFFIXES = (".ome.tiff", ".ome.tif", ".ome.zarr", ".tiff", ".tif", ".png", ".zarr")
_MASK_MARKERS = (".truth", ".mask", "_mask", "-mask", "_masks", ".labels", "_labels", "-labels", "_label")



# ---------------------------------------------------------------------------------------- pairs


@dataclass(frozen=True)
class Pair:
    """One training image and its mask."""

    image: Path
    mask: Path

    @property
    def name(self) -> str:
        return _key(self.image, markers=False)


def _key(path: Path, markers: bool) -> str:
    """File name without its image suffix (and without a mask marker if ``markers``)."""
    name = slide_stem(path)
    if markers:
        for m in _MASK_MARKERS:
            if name.lower().endswith(m):
                return name[: -len(m)]
    return name


def _has_marker(path: Path) -> bool:
    return _key(path, markers=True) != _key(path, markers=False)


def _candidates(folder: Path, what: str) -> list[Path]:
    if not folder.is_dir():
        raise TrainingDataError(f"{what} directory {folder} does not exist or is not a directory; check the path.")
    found = sorted(p for p in folder.iterdir()
                   if not p.name.startswith(".") and any(p.name.lower().endswith(s) for s in _SUFFIXES))
    if not found:
        raise TrainingDataError(f"no {what} in {folder}: expected .tif/.tiff/.ome.tif/.png files or .zarr "
                                "directories; check the path.")
    return found


def pair_directories(images: Path, masks: Path) -> list[Pair]:
    """Match images to masks by file name (suffixes and mask markers such as ``_mask`` ignored).

    Raises
    ------
    TrainingDataError
        A directory is missing or empty, an image has no mask, or two masks claim one image.
    """
    same = images.resolve() == masks.resolve()
    image_files = [p for p in _candidates(images, "images") if not (same and _has_marker(p))]
    mask_files = [p for p in _candidates(masks, "masks") if not same or _has_marker(p)]
    if same and not mask_files:
        raise TrainingDataError(f"{masks} is both the image and the mask directory but no file name has a mask "
                                f"marker ({', '.join(_MASK_MARKERS[:4])}, ...); name masks like X.truth.zarr or "
                                "X_mask.tif, or keep them in their own directory.")
    by_key: dict[str, Path] = {}
    for m in mask_files:
        k = _key(m, markers=True)
        if k in by_key:
            raise TrainingDataError(f"two masks match image name {k!r}: {by_key[k].name} and {m.name}; "
                                    "keep one mask per image.")
        by_key[k] = m
    missing = [p.name for p in image_files if _key(p, markers=False) not in by_key]
    if missing:
        raise TrainingDataError(f"{len(missing)} image(s) in {images} have no mask in {masks} "
                                f"({', '.join(missing[:5])}{', ...' if len(missing) > 5 else ''}); expected masks "
                                "named like the image (a.tif -> a.png, a_mask.tif or a.truth.zarr).")
    if not image_files:
        raise TrainingDataError(f"no images in {images} (only masks found); check --images.")
    return [Pair(p, by_key[_key(p, markers=False)]) for p in image_files]


def read_manifest(path: Path) -> tuple[list[Pair], list[Pair]]:
    """Pairs of a CSV manifest (columns ``image``, ``mask``, optional ``split`` = train|val), as
    (train, val). Relative paths are relative to the manifest's folder."""
    if not path.is_file():
        raise TrainingDataError(f"manifest {path} does not exist; check the path.")
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise TrainingDataError(f"manifest {path} has no rows; expected a header 'image,mask[,split]' and one "
                                "row per image.")
    if not {"image", "mask"} <= set(rows[0]):
        raise TrainingDataError(f"manifest {path} has columns {list(rows[0])}; expected 'image' and 'mask' "
                                "(and optionally 'split').")
    train: list[Pair] = []
    val: list[Pair] = []
    for n, row in enumerate(rows, start=2):
        pair = Pair(*(_relative(path.parent, row[c]) for c in ("image", "mask")))
        for p in (pair.image, pair.mask):
            if not p.exists():
                raise TrainingDataError(f"{path} line {n}: {p} does not exist; fix the path in the manifest.")
        split = (row.get("split") or "train").strip().lower()
        if split not in ("train", "val"):
            raise TrainingDataError(f"{path} line {n}: split is {split!r}; expected 'train' or 'val'.")
        (val if split == "val" else train).append(pair)
    return train, val


def _relative(base: Path, text: str | None) -> Path:
    p = Path((text or "").strip())
    return p if p.is_absolute() else base / p


# -------------------------------------------------------------------------------------- readers














class _Crop:
    """A view of a reader restricted to ``box`` (so a slide can be split into train and val)."""

    def __init__(self, reader: Any, box: Box) -> None:
        self._reader, self._box = reader, box
        self.dtype, self.mpp = getattr(reader, "dtype", None), getattr(reader, "mpp", None)

    @property
    def shape(self) -> tuple[int, int, int]:
        return (*self._box.shape, self._reader.shape[2])

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        b = self._box
        return self._reader.read(y0 + b.y0, y1 + b.y0, x0 + b.x0, x1 + b.x0)

    def close(self) -> None:
        _close(self._reader)


# ---------------------------------------------------------------------------------------- items


@dataclass
class Item:
    """One opened training image with its mask (and, once loaded, its cached target and weights)."""

    name: str
    image: Any
    mask: Any
    cache: dict[str, np.ndarray] | None = None
    class_counts: NDArray[np.int64] | None = None
    """Pixels per class id (instances: background, object) over the whole mask, once counted."""

    @property
    def shape(self) -> tuple[int, int]:
        return self.image.shape[0], self.image.shape[1]

    @property
    def channels(self) -> int:
        return int(self.image.shape[2])

    @property
    def in_memory(self) -> bool:
        return self.shape[0] * self.shape[1] <= IN_MEMORY_MAX_PX

    def crop(self, box: Box, suffix: str) -> Item:
        return Item(f"{self.name}{suffix}", _Crop(self.image, box), _Crop(self.mask, box))


def open_item(pair: Pair, kind: MaskKind) -> Item:
    """Open an image and its mask and check that they fit together."""
    image = open_image(pair.image)
    try:
        mask = open_mask(pair.mask, kind)
    except BaseException:
        _close(image)
        raise
    if image.shape[:2] != mask.shape[:2]:
        _close(image)
        mask.close()
        raise TrainingDataError(f"image {pair.image.name} is {image.shape[0]} x {image.shape[1]} px but its mask "
                                f"{pair.mask.name} is {mask.shape[0]} x {mask.shape[1]}; expected the same size: "
                                "re-export the mask at the image's resolution.")
    return Item(pair.name, image, mask)


@dataclass
class TrainingData:
    """Opened training and validation items."""

    train: list[Item]
    val: list[Item]
    kind: MaskKind
    description: dict[str, Any]

    @property
    def channels(self) -> int:
        return self.train[0].channels

    @property
    def dtype(self) -> np.dtype[Any]:
        return np.dtype(self.train[0].image.dtype)

    @property
    def mpp(self) -> float | None:
        """The training images' pixel size in µm if all know it and agree within 10 %, else None."""
        mpps = [getattr(it.image, "mpp", None) for it in self.train]
        first = mpps[0]
        if first is None or any(m is None or abs(m / first - 1) > 0.1 for m in mpps):
            return None
        return float(first)

    def close(self) -> None:
        _close_items([*self.train, *self.val])


def _close_items(items: Sequence[Item]) -> None:
    for item in items:
        _close(item.image)
        _close(item.mask)


def load_training_data(*, images: Path | None = None, masks: Path | None = None, manifest: Path | None = None,
                       val_images: Path | None = None, val_masks: Path | None = None,
                       val_fraction: float = 0.0, mask_kind: MaskKind = "instances",
                       seed: int = 0) -> TrainingData:
    """Find, pair, open and check the training (and validation) data.

    Validation comes from ``val_images``/``val_masks``, the manifest's ``split`` column, or a
    seeded ``val_fraction`` of the images (of the rows of a single image).
    """
    if mask_kind not in MASK_KINDS:
        raise ConfigError(f"--mask-kind must be instances or classes, got {mask_kind!r}")
    if (images is None) != (masks is None) or (images is None) == (manifest is None):
        raise ConfigError("give training data as --images DIR --masks DIR, or as --manifest CSV (not both).")
    if (val_images is None) != (val_masks is None):
        raise ConfigError("--val-images and --val-masks go together; give both or neither.")
    if not 0.0 <= val_fraction < 1.0:
        raise ConfigError(f"--val-fraction must be in [0, 1), got {val_fraction}")
    if manifest is not None:
        train_pairs, val_pairs = read_manifest(manifest)
        if not train_pairs:
            raise TrainingDataError(f"manifest {manifest} has no training rows (all are split=val).")
    else:
        assert images is not None and masks is not None
        train_pairs, val_pairs = pair_directories(images, masks), []
    if val_images is not None and val_masks is not None:
        val_pairs += pair_directories(val_images, val_masks)
    if val_pairs and val_fraction:
        raise ConfigError("validation data is given already; drop --val-fraction.")
    opened: list[Item] = []
    try:
        for p in (*train_pairs, *val_pairs):
            opened.append(open_item(p, mask_kind))
    except BaseException:
        _close_items(opened)
        raise
    train, val = opened[: len(train_pairs)], opened[len(train_pairs):]
    if val_fraction:
        train, val = _split(train, val_fraction, seed)
    channels = {(it.name, it.channels) for it in (*train, *val)}
    if len({c for _, c in channels}) > 1:
        _close_items(opened)
        raise TrainingDataError(f"images have different channel counts ({sorted(channels)[:4]}); expected the "
                                "same channels in every training and validation image.")
    try:
        check_class_ids([it for it in (*train, *val)], mask_kind)
    except BaseException:
        _close_items(opened)
        raise
    desc = {"mask_kind": mask_kind, "train": [it.name for it in train], "val": [it.name for it in val],
            "source": str(manifest) if manifest else f"{images} + {masks}", "val_fraction": val_fraction}
    return TrainingData(train, val, mask_kind, desc)


def _split(items: list[Item], fraction: float, seed: int) -> tuple[list[Item], list[Item]]:
    """Hold out a seeded ``fraction`` of the items, or of the rows of a single item."""
    if len(items) == 1:
        (it,) = items
        h, w = it.shape
        cut = round(h * (1 - fraction))
        if cut < 1 or cut >= h:
            raise ConfigError(f"--val-fraction {fraction} leaves no rows for training or validation of the "
                              f"{h}-row image {it.name}; choose a fraction between {1 / h:.3g} and {1 - 1 / h:.3g}.")
        return [it.crop(Box(0, cut, 0, w), "[train]")], [it.crop(Box(cut, h, 0, w), "[val]")]
    order = np.random.default_rng([seed, 7]).permutation(len(items))
    n_val = max(1, round(fraction * len(items)))
    val_idx = set(order[:n_val].tolist())
    return ([it for i, it in enumerate(items) if i not in val_idx], [it for i, it in enumerate(items) if i in val_idx])


# -------------------------------------------------------------------------------------- targets


def check_mask_values(mask: np.ndarray, kind: MaskKind, classes: int, name: str) -> np.ndarray:
    """The mask as int64, or a TrainingDataError naming the unexpected values and the fix."""
    if mask.dtype.kind == "b":
        mask = mask.astype(np.uint8)
    if mask.dtype.kind == "f":
        if not np.isfinite(mask).all() or (np.mod(mask, 1) != 0).any():
            raise TrainingDataError(f"mask {name} holds non-integer values; expected integer "
                                    f"{'instance ids' if kind == 'instances' else 'class ids'}: save it as an "
                                    "integer image.")
    elif mask.dtype.kind not in "iu":
        raise TrainingDataError(f"mask {name} has dtype {mask.dtype}; expected integer labels.")
    lo, hi = (int(mask.min()), int(mask.max())) if mask.size else (0, 0)
    if lo < 0:
        raise TrainingDataError(f"mask {name} holds negative values (min {lo}); expected labels >= 0 "
                                "(0 = background).")
    if kind == "classes" and hi >= classes:
        found = np.unique(mask)
        if hi == MAX_CLASSES and set(found.tolist()) <= {0, MAX_CLASSES}:
            hint = " (a binary mask saved as 0/255? divide it by 255)"
        elif hi >= MAX_CLASSES:
            hint = f"; a model has at most {MAX_CLASSES} classes: remap the ids to 0..N-1"
        else:
            hint = f"; pass --classes {hi + 1} or more"
        raise TrainingDataError(f"mask {name} holds class id {hi} (values {found[:8].tolist()}); expected ids "
                                f"0..{classes - 1} for a {classes}-class model{hint}, or --mask-kind instances "
                                "for instance labels.")
    return mask.astype(np.int64, copy=False)



# --------------------------------------------------------------------------------- class counts

COUNT_BLOCK = 2048
"""Masks are counted in blocks of at most this many rows and columns (4 Mpx)."""


def count_classes(item: Item, kind: MaskKind) -> NDArray[np.int64]:
    """Pixels per class id over the whole mask of ``item`` (instances: background, object),
    read block by block; cached on the item. Checks every value on the way (see
    :func:`check_mask_values`), so a bad value anywhere is found before training starts."""
    if item.class_counts is not None:
        return item.class_counts
    h, w = item.shape
    total = np.zeros(0, np.int64)
    for y0 in range(0, h, COUNT_BLOCK):
        for x0 in range(0, w, COUNT_BLOCK):
            block = np.asarray(item.mask.read(y0, min(h, y0 + COUNT_BLOCK), x0, min(w, x0 + COUNT_BLOCK)))
            labels = check_mask_values(block, kind, MAX_CLASSES + 1, item.name)  # ids > 255 raise before bincount
            counts = np.bincount((labels > 0).ravel() if kind == "instances" else labels.ravel())
            k = max(len(counts), len(total))
            total = np.pad(total, (0, k - len(total))) + np.pad(counts, (0, k - len(counts)))
    item.class_counts = total
    return total


def check_class_ids(items: Sequence[Item], kind: MaskKind) -> NDArray[np.int64]:
    """Count the classes of every item exactly and refuse class masks whose ids are not the
    consecutive ``0..N-1`` a model's outputs are: a 0/255 binary mask (it would make a
    256-class model) or sparse ids such as 0, 100, 200 (a 201-class model with 198 classes that
    never occur). Returns the summed counts.

    Raises
    ------
    TrainingDataError
        The message lists the values found and says how to fix the masks.
    """
    total = np.zeros(0, np.int64)
    for item in items:
        counts = count_classes(item, kind)
        k = max(len(counts), len(total))
        total = np.pad(total, (0, k - len(total))) + np.pad(counts, (0, k - len(counts)))
    if kind != "classes" or not total.size:
        return total
    present = np.flatnonzero(total).tolist()
    missing = len(total) - len(present)
    shown = ", ".join(map(str, present[:8])) + (", ..." if len(present) > 8 else "")
    if present and present[-1] == 255 and set(present) <= {0, 255}:
        raise TrainingDataError(f"the class masks hold only the values {shown}: a binary mask saved as 0/255 (it "
                                "would make a 256-class model); divide the masks by 255 so the classes are 0 and 1.")
    if missing > max(2, len(present)):
        mapping = ", ".join(f"{v} -> {i}" for i, v in enumerate(present[:6])) + (", ..." if len(present) > 6 else "")
        raise TrainingDataError(f"the class masks hold the values {shown}, not consecutive class ids: a model needs "
                                f"ids 0..N-1, so these would make a {len(total)}-class model in which {missing} "
                                f"classes never occur; remap the ids to 0..{len(present) - 1} ({mapping}).")
    if len(total) > MAX_CLASSES:
        raise TrainingDataError(f"the class masks hold {len(present)} class ids up to {len(total) - 1}; a model has "
                                f"at most {MAX_CLASSES} classes (ids 0..{MAX_CLASSES - 1}): merge classes so the ids "
                                f"fit.")
    return total


# ------------------------------------------------------------------------------------- sampling


@dataclass(frozen=True)
class TileGeometry:
    """Where a training tile reads and where its loss applies, in image pixels."""

    tile: int
    """Network input edge."""
    output: int
    """Edge of the window the loss covers (centred; ``tile - 2 * context``)."""
    alignment: int
    """Output origins are multiples of this (the pooling grid, as in predict)."""
    margin: int = 0
    """Extra px per side read for augmentation."""

    @property
    def context(self) -> int:
        return (self.tile - self.output) // 2

    def window(self, oy: int, ox: int) -> Box:
        """The read window of the tile whose loss window starts at (oy, ox)."""
        c = self.context + self.margin
        return Box(oy - c, oy - c + self.tile + 2 * self.margin, ox - c, ox - c + self.tile + 2 * self.margin)


def read_mirrored(reader: Any, window: Box, mode: str) -> np.ndarray:
    """``window`` of a reader (image (Y, X, C) or mask (Y, X)), mirrored beyond its borders."""

    return read_window(reader, window, mode)  # type: ignore[arg-type]


def inside(window: Box, shape: tuple[int, int]) -> NDArray[np.bool_]:
    """(Y, X) bool: which pixels of ``window`` lie inside an image of ``shape``."""
    ys = (np.arange(window.y0, window.y1) >= 0) & (np.arange(window.y0, window.y1) < shape[0])
    xs = (np.arange(window.x0, window.x1) >= 0) & (np.arange(window.x0, window.x1) < shape[1])
    return ys[:, None] & xs[None, :]


def load_cache(item: Item, spec: TargetSpec) -> None:
    """Read a small item whole and compute its target and weight map once (the paper's cache)."""
    if item.cache is not None:
        return
    h, w = item.shape
    image = np.asarray(item.image.read(0, h, 0, w))
    labels = check_mask_values(item.mask.read(0, h, 0, w), spec.kind, spec.classes, item.name)
    target, weight, truth = make_target(labels, spec)
    item.cache = {"image": image, "target": target, "weight": weight, "truth": truth}


def window_arrays(item: Item, window: Box, spec: TargetSpec, mode: str
                  ) -> tuple[np.ndarray, NDArray[np.uint8], NDArray[np.float32], NDArray[np.uint8]]:
    """Image (Y, X, C), target, weight (0 outside the image) and truth of one read window."""
    valid = inside(window, item.shape)
    if item.cache is not None:
        iy = mirror_index(np.arange(window.y0, window.y1), item.shape[0], mode)  # type: ignore[arg-type]
        ix = mirror_index(np.arange(window.x0, window.x1), item.shape[1], mode)  # type: ignore[arg-type]
        c = item.cache
        idx = np.ix_(iy, ix)
        return c["image"][idx], c["target"][idx], c["weight"][idx] * valid, c["truth"][idx]
    image = read_mirrored(item.image, window, mode)
    labels = check_mask_values(read_mirrored(item.mask, window, mode), spec.kind, spec.classes, item.name)
    target, weight, truth = make_target(labels, spec)
    return image, target, weight * valid, truth


def random_origin(item: Item, output: int, alignment: int, rng: np.random.Generator) -> tuple[int, int]:
    """A random loss-window origin on the pooling grid, the window overlapping the image."""
    return tuple(  # type: ignore[return-value]
        int(rng.integers(max(0, n - output) // alignment + 1)) * alignment for n in item.shape)


def item_weights(items: Sequence[Item]) -> NDArray[np.float64]:
    """Probability of drawing each item: proportional to its area."""
    area = np.array([it.shape[0] * it.shape[1] for it in items], np.float64)
    return area / area.sum()


def draw_origin(item: Item, geometry: TileGeometry, spec: TargetSpec, mirror: str, rng: np.random.Generator,
                class_balanced: bool) -> tuple[int, int]:
    """A random loss-window origin; class-balanced: one whose window holds >= 1 % of a random class
    (redrawn up to 16 times)."""
    out, align = geometry.output, geometry.alignment
    origin = random_origin(item, out, align, rng)
    if not class_balanced:
        return origin
    wanted = int(rng.integers(spec.classes))
    for _ in range(16):
        box = Box(origin[0], origin[0] + out, origin[1], origin[1] + out)
        if item.cache is not None:
            iy = mirror_index(np.arange(box.y0, box.y1), item.shape[0], mirror)  # type: ignore[arg-type]
            ix = mirror_index(np.arange(box.x0, box.x1), item.shape[1], mirror)  # type: ignore[arg-type]
            truth = item.cache["truth"][np.ix_(iy, ix)]
        else:
            labels = read_mirrored(item.mask, box, mirror)
            truth = labels > 0 if spec.kind == "instances" else labels
        if np.mean(truth == wanted) >= 0.01:
            return origin
        origin = random_origin(item, out, align, rng)
    return origin


@dataclass(frozen=True)
class Statistics:
    """What training learns from the data before it starts."""

    mean: tuple[float, ...]
    """Per-channel mean in raw units."""
    std: tuple[float, ...]
    """Per-channel standard deviation in raw units."""
    class_counts: tuple[int, ...]
    """Pixels per class id in the sampled masks."""


def estimate_statistics(items: Sequence[Item], kind: MaskKind, seed: int, windows: int = 8, size: int = 512
                        ) -> Statistics:
    """Per-channel mean/std (whole small images, ``windows`` random ``size``-px windows of large
    ones) and exact class frequencies (every mask counted block by block, :func:`count_classes`)."""
    rng = np.random.default_rng([seed, 2])
    total = check_class_ids(items, kind)
    s1 = s2 = None
    n = 0
    for item in items:
        h, w = item.shape
        boxes = [Box(0, h, 0, w)] if item.in_memory else [
            Box(y, y + min(size, h), x, x + min(size, w))
            for y, x in zip(rng.integers(0, max(1, h - size + 1), windows),
                            rng.integers(0, max(1, w - size + 1), windows), strict=True)]
        for b in boxes:
            px = np.asarray(item.image.read(b.y0, b.y1, b.x0, b.x1)).reshape(-1, item.channels).astype(np.float64)
            s1 = px.sum(0) if s1 is None else s1 + px.sum(0)
            s2 = (px * px).sum(0) if s2 is None else s2 + (px * px).sum(0)
            n += len(px)
    assert s1 is not None and s2 is not None
    mean = s1 / n
    std = np.sqrt(np.maximum(s2 / n - mean * mean, 0.0))
    std = np.where(std > 1e-6 * np.maximum(1.0, np.abs(mean)), std, 1.0)  # a constant channel: leave unscaled
    return Statistics(tuple(float(v) for v in mean), tuple(float(v) for v in std), tuple(int(v) for v in total))
