"""`synth --overwrite` replaces only a synthetic slide and truth it wrote itself."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr

from slideseg.errors import OutputFormatError
from slideseg.tools.synth import SynthConfig, truth_path_for, write_synthetic_slide

CFG = SynthConfig(size=(96, 128), seed=1)


def test_overwrite_replaces_its_own_slide_and_truth(tmp_path: Path) -> None:
    slide = tmp_path / "s.ome.tif"
    write_synthetic_slide(slide, CFG)
    write_synthetic_slide(slide, SynthConfig(size=(64, 64), seed=2), overwrite=True)
    with tifffile.TiffFile(slide) as tif:
        assert tif.pages.first.shape[:2] == (64, 64)


@pytest.mark.parametrize("which", ["slide", "truth"])
def test_overwrite_refuses_what_synth_did_not_write(tmp_path: Path, which: str) -> None:
    slide = tmp_path / "s.ome.tif"
    truth = truth_path_for(slide)
    if which == "slide":
        tifffile.imwrite(slide, np.zeros((8, 8), np.uint8))  # somebody's own TIFF
    else:
        zarr.open_group(truth, mode="w", zarr_format=3).create_array("x", data=np.arange(4))  # a foreign Zarr
    with pytest.raises(OutputFormatError, match="was not written by `slideseg synth`"):
        write_synthetic_slide(slide, CFG, overwrite=True)
    assert (slide if which == "slide" else truth / "x").exists()
