"""`export-geojson` of a label written into an image (`predict --into`): coordinates follow the image's
own pyramid (here x4 per level), with or without the slide the label was predicted from."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr

from slideseg.predict import PredictConfig, predict
from slideseg.tools.geojson import export_geojson
from tests.conftest import random_rgb


def _x4_image(path: Path, pixels: np.ndarray, mpp: float, levels: int) -> Path:
    """An OME-Zarr 0.4 image (c, y, x) whose pyramid steps by 4, as some scanners' files do."""
    root = zarr.open_group(path, mode="w", zarr_format=2)
    datasets = []
    for lv in range(levels):
        root.create_array(str(lv), data=np.ascontiguousarray(pixels.transpose(2, 0, 1)[:, :: 4**lv, :: 4**lv]),
                          chunks=(3, 64, 64))
        datasets.append({"path": str(lv), "coordinateTransformations": [
            {"type": "scale", "scale": [1.0, mpp * 4**lv, mpp * 4**lv]}]})
    root.attrs["multiscales"] = [{"version": "0.4", "name": "image", "axes": [
        {"name": "c", "type": "channel"}, {"name": "y", "type": "space", "unit": "micrometer"},
        {"name": "x", "type": "space", "unit": "micrometer"}], "datasets": datasets}]
    return path


def _extent(path: Path) -> tuple[float, float]:
    """Largest x and y of any vertex in a GeoJSON file."""
    xs, ys = [], []
    for f in json.loads(path.read_text())["features"]:
        g = f["geometry"]
        for rings in g["coordinates"] if g["type"] == "MultiPolygon" else [g["coordinates"]]:
            for ring in rings:
                a = np.asarray(ring)
                xs.append(a[:, 0].max())
                ys.append(a[:, 1].max())
    return max(xs), max(ys)


@pytest.mark.parametrize("slide_gone", [False, True])
def test_into_labels_map_each_level_by_the_images_own_scales(tmp_path: Path, model_05: Path, slide_gone: bool
                                                            ) -> None:
    pixels = random_rgb((256, 320))
    image = _x4_image(tmp_path / "image.ome.zarr", pixels, 0.25, 2)  # levels 256x320 and 64x80
    slide = _x4_image(tmp_path / "slide.ome.zarr", pixels, 0.25, 2)  # the same pixels, as a separate slide
    predict(slide, None, model_05, PredictConfig(device="cpu", tissue=False, into=str(image), name="n"))
    if slide_gone:
        shutil.rmtree(slide)
    label = image / "labels" / "n"
    level0 = export_geojson(label, tmp_path / "l0.geojson", level=0)
    level1 = export_geojson(label, tmp_path / "l1.geojson", level=1)
    assert (level0.scale.sx, level0.scale.assumed) == (1.0, False)
    meta = json.loads((tmp_path / "l1.geojson").read_text())["slideseg"]
    assert meta["scale_to_level0"] == [4.0, 4.0]  # the image's x4 step, not 2**level
    for out in (tmp_path / "l0.geojson", tmp_path / "l1.geojson"):
        x, y = _extent(out)
        assert 300 < x <= 320 and 236 < y <= 256  # within the image's level 0, covering most of it
    assert level1.features > 0
