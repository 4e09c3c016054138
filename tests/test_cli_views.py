"""`slideseg export-geojson` and `slideseg preview` as a user runs them: what they say they wrote,
the warning when the slide has moved, and one line with exit code 2 for an existing output."""

from __future__ import annotations

from pathlib import Path

import pytest

from slideseg.io.ngff import LabelClass
from slideseg.tools.synth import SynthConfig, write_synthetic_slide
from tests.conftest import random_mask, run_cli, write_mask

CLASSES = (LabelClass(0, "background", (0, 0, 0, 0)), LabelClass(1, "tumour", (230, 25, 75, 255)),
           LabelClass(2, "stroma", (60, 180, 75, 255)))


@pytest.fixture
def mask_path(tmp_path: Path) -> Path:
    """A mask with two levels (1100 rows) of tumour and stroma blobs."""
    return write_mask(tmp_path / "mask.zarr", random_mask(3, (1100, 300), 3, 6), CLASSES, chunk=256,
                      source={"path": str(tmp_path / "gone.tif"), "level": 0})


def test_export_geojson(tmp_path: Path, mask_path: Path) -> None:
    r = run_cli("export-geojson", mask_path, "-o", tmp_path / "m.geojson", "--level", "1", "--classes", "1,2",
                "--min-area", "100")
    assert r.exit_code == 0, r.stderr
    assert "wrote" in r.stdout and "tumour" in r.stdout and "level 1" in r.stdout
    r = run_cli("export-geojson", mask_path, "-o", tmp_path / "m.geojson")
    assert r.exit_code == 2 and "--overwrite" in r.stderr and "Traceback" not in r.stderr


def test_preview(tmp_path: Path, mask_path: Path) -> None:
    r = run_cli("preview", mask_path, "-o", tmp_path / "o.png", "--size", "128", "--alpha", "0.7")
    assert r.exit_code == 0, r.stderr
    assert "wrote" in r.stdout and "on white" in r.stdout and "gone.tif" in r.stderr
    slide = tmp_path / "s.ome.tif"
    write_synthetic_slide(slide, SynthConfig(size=(1100, 300), seed=3))
    r = run_cli("preview", mask_path, "-o", tmp_path / "o.png", "--slide", slide)
    assert r.exit_code == 2 and "--overwrite" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1  # one line
