"""Writing procedural synthetic slides (:mod:`slideseg.tools.synth_render`) as pyramidal OME-TIFFs with
their exact ground truth beside them; ``slideseg synth``.
"""

from __future__ import annotations

import itertools
import json
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import tifffile
from numpy.typing import NDArray

from slideseg import __version__
from slideseg.errors import ConfigError, OutputExistsError, OutputFormatError
from slideseg.io.formats import slide_stem
from slideseg.plan.tiles import grid_boxes, pyramid_shapes
from slideseg.tools.synth_render import (
    SynthConfig,
    measure_tissue_fraction,
    render_labels,
    render_region,
    touching_fraction,
)

if TYPE_CHECKING:
    import os

__all__ = ["SynthConfig", "SynthResult", "measure_tissue_fraction", "render_labels", "render_region",
           "touching_fraction", "truth_path_for", "write_synthetic_slide"]

TRUTH_CHUNK = 1024  # chunk edge of the ground-truth arrays
JPEG_QUALITY = 90
_ENCODE_BUFFER = 2**25  # bytes of tiles tifffile may hold for parallel JPEG encoding


@dataclass(frozen=True)
class SynthResult:
    """What :func:`write_synthetic_slide` wrote."""

    image_path: Path  # the pyramidal OME-TIFF
    truth_path: Path  # Zarr v3 group: level-0 `instances` (uint32) and `classes` (uint8)
    shape: tuple[int, int]  # (H, W) of level 0
    levels: int  # pyramid levels in the TIFF, level 0 included
    tissue_fraction: float  # measured on a 512 x 512 sampling of the tissue field
    nucleus_fraction: float  # exact fraction of level-0 pixels inside a nucleus



def truth_path_for(image_path: str | os.PathLike[str]) -> Path:
    """Ground-truth path beside an image: ``demo.ome.tif`` -> ``demo.truth.zarr``."""

    path = Path(image_path)
    return path.with_name(slide_stem(path) + ".truth.zarr")



# -------------------------------------------------------------------------------------- writing


def _prepare_outputs(image_path: Path, truth_path: Path, overwrite: bool) -> None:
    if image_path.suffix.lower() not in (".tif", ".tiff"):
        raise ConfigError(f"Synthetic slide path must end in .ome.tif or .tif, got {image_path}")
    existing = [p for p in (image_path, truth_path) if p.exists() or p.is_symlink()]
    if existing and not overwrite:
        raise OutputExistsError(f"{' and '.join(map(str, existing))} already exist(s); pass "
                                "--overwrite (overwrite=True) to replace")
    for p in existing:
        if not (_is_synthetic_slide(p) if p == image_path else _is_synthetic_truth(p)):
            raise OutputFormatError(f"{p} exists and was not written by `slideseg synth`; refusing to replace it even "
                                    "with --overwrite: remove it yourself or choose another path")
    for p in existing:
        if p.is_dir():
            shutil.rmtree(p)
        else:
            p.unlink()
    image_path.parent.mkdir(parents=True, exist_ok=True)


def _is_synthetic_slide(path: Path) -> bool:
    """A TIFF file whose software tag says ``slideseg synth`` wrote it."""
    if path.is_symlink() or not path.is_file():
        return False
    try:
        with tifffile.TiffFile(path) as tif:
            return tif.pages.first.software == "slideseg.synth"
    except Exception:  # any reader error: not ours, and never deleted
        return False


def _is_synthetic_truth(path: Path) -> bool:
    """A Zarr group whose attributes hold the ``slideseg_synth`` record of a synthetic truth."""
    if path.is_symlink() or not path.is_dir():
        return False
    for name in ("zarr.json", ".zattrs"):
        try:
            meta = json.loads((path / name).read_text())
        except (OSError, ValueError):
            continue
        attrs = meta.get("attributes", meta) if isinstance(meta, dict) else {}
        if isinstance(attrs, dict) and "slideseg_synth" in attrs:
            return True
    return False


def _write_image(path: Path, cfg: SynthConfig, shapes: list[tuple[int, int]],
                 step: Callable[[], None]) -> None:
    import tifffile

    t = cfg.tile
    per_cm = 1e4 / cfg.mpp  # pixels per centimetre at level 0
    raw_bytes = sum(h * w * 3 for h, w in shapes)
    with tifffile.TiffWriter(path, bigtiff=raw_bytes > 2**31, ome=True) as tif:
        for level, shape in enumerate(shapes):

            def tiles(level: int = level, shape: tuple[int, int] = shape
                      ) -> Iterator[NDArray[np.uint8]]:
                for box in grid_boxes(shape, t):  # row-major, as tifffile expects
                    rgb = render_region(cfg, *box, level)[0]  # (t, t, 3), smaller at the edges
                    step()
                    yield rgb

            scale = 2**level
            tif.write(
                tiles(), shape=(*shape, 3), dtype=np.uint8, tile=(t, t), photometric="rgb",
                compression="jpeg", compressionargs={"level": JPEG_QUALITY},
                resolution=(per_cm / scale, per_cm / scale), resolutionunit="CENTIMETER",
                software="slideseg.synth", buffersize=_ENCODE_BUFFER,
                subifds=len(shapes) - 1 if level == 0 else None,
                subfiletype=1 if level else None,
                metadata={"axes": "YXS", "PhysicalSizeX": cfg.mpp, "PhysicalSizeXUnit": "µm",
                          "PhysicalSizeY": cfg.mpp, "PhysicalSizeYUnit": "µm"}
                if level == 0 else None,
            )


def _write_truth(path: Path, cfg: SynthConfig, step: Callable[[], None]) -> float:
    """Write the level-0 truth chunk by chunk; return the exact nucleus fraction."""
    import zarr
    from zarr.codecs import ZstdCodec


    group = zarr.open_group(path, mode="w-", zarr_format=3)
    group.attrs.update({"slideseg_synth": cfg.to_dict(), "mpp": cfg.mpp,
                        "classes": {"0": "background", "1": "nucleus"},
                        "slideseg_version": __version__})
    arrays = {name: group.create_array(name, shape=cfg.size, dtype=dtype,
                                       chunks=(TRUTH_CHUNK, TRUTH_CHUNK), fill_value=0,
                                       compressors=ZstdCodec(level=3), dimension_names=("y", "x"))
              for name, dtype in (("instances", np.uint32), ("classes", np.uint8))}
    n_nucleus = 0
    for y0, y1, x0, x1 in grid_boxes(cfg.size, TRUTH_CHUNK):
        labels = render_labels(cfg, y0, y1, x0, x1)
        classes = (labels > 0).astype(np.uint8)
        arrays["instances"][y0:y1, x0:x1] = labels
        arrays["classes"][y0:y1, x0:x1] = classes
        n_nucleus += int(np.count_nonzero(classes))
        step()
    return n_nucleus / (cfg.size[0] * cfg.size[1])


def write_synthetic_slide(path: str | os.PathLike[str], cfg: SynthConfig, *,
                          overwrite: bool = False,
                          progress: Callable[[int, int], None] | None = None) -> SynthResult:
    """Write the slide as a tiled JPEG OME-TIFF pyramid and its ground truth beside it.

    Levels: 0, then x2 reductions in SubIFDs (:func:`pyramid_shapes`). Truth: a Zarr v3 group at
    :func:`truth_path_for` with level-0 ``instances`` (uint32) and ``classes`` (uint8) in
    1024 x 1024 chunks, the config in ``attrs['slideseg_synth']``. Written tile by tile.

    Parameters
    ----------
    path
        Output TIFF path, ending in ``.tif`` or ``.tiff``.
    overwrite
        Replace an existing TIFF and truth Zarr (both are removed first).
    progress
        Called as ``progress(done, total)`` after each TIFF tile (all levels) and truth chunk.

    Raises
    ------
    OutputExistsError
        If the TIFF or the truth Zarr exists and ``overwrite`` is False.
    ConfigError
        If ``path`` does not end in ``.tif`` or ``.tiff``.
    """
    image_path = Path(path)
    truth_path = truth_path_for(image_path)
    _prepare_outputs(image_path, truth_path, overwrite)
    shapes = pyramid_shapes(cfg.size)
    total = sum(len(grid_boxes(s, cfg.tile)) for s in shapes) + len(grid_boxes(cfg.size, TRUTH_CHUNK))
    done = itertools.count(1)

    def step() -> None:
        if progress is not None:
            progress(next(done), total)

    _write_image(image_path, cfg, shapes, step)
    nucleus_fraction = _write_truth(truth_path, cfg, step)
    return SynthResult(image_path=image_path, truth_path=truth_path, shape=cfg.size,
                       levels=len(shapes), tissue_fraction=measure_tissue_fraction(cfg),
                       nucleus_fraction=nucleus_fraction)


