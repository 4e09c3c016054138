"""A mask is created whole or not at all: a run killed while creating it leaves nothing at the output
path, and an output an older release left half made says how to start again."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import zarr

from slideseg.errors import OutputFormatError
from slideseg.io.ngff import LabelClass
from slideseg.predict import PredictConfig, predict
from slideseg.write import mask as mask_module
from slideseg.write.mask import create_mask, open_mask_writer
from tests.conftest import random_rgb, write_tiff

CLASSES = (LabelClass(0, "background", (0, 0, 0, 0)), LabelClass(1, "nucleus", (230, 25, 75, 255)))
CPU = PredictConfig(device="cpu", tissue=False, chunk=64)


def test_a_creation_killed_halfway_leaves_no_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = mask_module._create_level
    calls = []

    def dies_on_the_second_array(*args: object, **kwargs: object) -> object:
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # the run is stopped between two arrays
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(mask_module, "_create_level", dies_on_the_second_array)
    out = tmp_path / "m.zarr"
    with pytest.raises(KeyboardInterrupt):
        create_mask(out, (64, 64), 32, CLASSES, 0.5, {"source": {}})
    assert not out.exists()
    monkeypatch.setattr(mask_module, "_create_level", real)
    writer = create_mask(out, (64, 64), 32, CLASSES, 0.5, {"source": {}})  # the leftover is cleared
    assert writer.done().shape == (2, 2) and not (tmp_path / ".m.zarr.creating").exists()


def test_a_half_made_output_says_to_start_again(tmp_path: Path, model_file: Path) -> None:
    slide = write_tiff(tmp_path / "s.ome.tif", random_rgb((96, 128)))
    out = tmp_path / "m.zarr"
    predict(slide, out, model_file, CPU)
    attrs = dict(zarr.open_group(out, mode="r").attrs)
    zarr.open_group(out, mode="w", zarr_format=2, attributes=attrs)  # the group, without its arrays
    with pytest.raises(OutputFormatError, match=r"half created.*--overwrite"):
        open_mask_writer(out)
    with pytest.raises(OutputFormatError, match="half created"):
        predict(slide, out, model_file, dataclasses.replace(CPU, resume=True))
    again = predict(slide, out, model_file, dataclasses.replace(CPU, overwrite=True))
    assert again.chunks_run > 0
