"""Crash-safe resume: a run killed with SIGKILL part-way and resumed gives byte-identical output;
a resumed run must keep every option that changes the output, and only those."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr

from slideseg.errors import ConfigError, OutputExistsError
from slideseg.model.config import UNetConfig
from slideseg.model.files import save_model
from slideseg.model.unet import build_unet
from slideseg.predict import OUTPUT_FIELDS, PredictConfig, predict
from slideseg.write.mask import describe_mask
from tests.conftest import chunk_files, random_rgb, save_tiny_model, write_ome_zarr_image, write_tiff


def forget_chunk(mask: Path, iy: int, ix: int) -> None:
    """Make ``mask`` look like a run killed before chunk (iy, ix) was written."""
    group = zarr.open_group(mask, mode="r+")
    group["chunks_done"][iy, ix] = 0  # type: ignore[index]
    group.attrs["slideseg"] = {**group.attrs["slideseg"], "complete": False}  # type: ignore[dict-item]


@pytest.fixture
def slide_and_model(tmp_path: Path) -> tuple[Path, Path]:
    cfg = UNetConfig(depth=3, width=8, classes=3)
    save_model(tmp_path / "m.safetensors", build_unet(cfg, seed=2), cfg)
    img = random_rgb((600, 1100), seed=4)  # wider than 1024: the mask has a pyramid level 1
    img[:, :300] = 242  # glass: these chunks are skipped as background
    return write_tiff(tmp_path / "s.ome.tif", img), tmp_path / "m.safetensors"


def test_killed_run_resumes_to_identical_output(tmp_path: Path, slide_and_model: tuple[Path, Path]) -> None:
    slide, model = slide_and_model
    reference = tmp_path / "reference.zarr"
    cfg = PredictConfig(chunk=64, probabilities=True, device="cpu")
    predict(slide, reference, model, cfg)

    out = tmp_path / "killed.zarr"
    cmd = [sys.executable, "-m", "slideseg", "predict", str(slide), "-o", str(out), "--model", str(model),
           "--chunk", "64", "--probabilities", "--device", "cpu", "--no-progress"]
    log = (tmp_path / "log.txt").open("w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=log, env={**os.environ, "OMP_NUM_THREADS": "1"})
    done_dir = out / "chunks_done"
    deadline = time.monotonic() + 120
    total = 10 * 18
    while time.monotonic() < deadline and proc.poll() is None:
        files = done_dir.rglob("*") if done_dir.exists() else iter(())
        n = sum(1 for f in files if f.is_file() and not f.name.startswith("."))
        if n >= total // 3:
            break
        time.sleep(0.05)
    assert proc.poll() is None, f"predict ended before it could be killed: {(tmp_path / 'log.txt').read_text()}"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    log.close()

    state = describe_mask(out)
    assert state["complete"] is False and 0 < state["chunks_done"] < total
    with pytest.raises(OutputExistsError, match="--resume"):
        predict(slide, out, model, cfg)
    result = predict(slide, out, model, PredictConfig(chunk=64, probabilities=True, device="cpu", resume=True))
    assert result.chunks_already_done == state["chunks_done"]
    assert result.chunks_run + result.chunks_skipped == total - state["chunks_done"]

    assert describe_mask(out)["complete"] is True
    a, b = zarr.open_group(reference, mode="r"), zarr.open_group(out, mode="r")
    for key in ("0", "probabilities/0"):
        np.testing.assert_array_equal(a[key][:], b[key][:])  # type: ignore[index]
    stored = chunk_files(reference)
    assert any(k.startswith("1/") for k in stored) and any(k.startswith("probabilities/0/") for k in stored)
    assert stored == chunk_files(out)  # byte for byte on disk, pyramid included


def test_resume_refuses_a_different_model_or_config(tmp_path: Path, slide_and_model: tuple[Path, Path]) -> None:
    slide, model = slide_and_model
    out = tmp_path / "mask.zarr"
    predict(slide, out, model, PredictConfig(chunk=256, device="cpu"))
    other = tmp_path / "other.safetensors"
    cfg = UNetConfig(depth=3, width=8, classes=3)
    save_model(other, build_unet(cfg, seed=99), cfg)
    with pytest.raises(ConfigError, match=r"cannot resume .* the model weights differ"):
        predict(slide, out, other, PredictConfig(chunk=256, device="cpu", resume=True))
    with pytest.raises(ConfigError, match="chunk was 256, now 128"):
        predict(slide, out, model, PredictConfig(chunk=128, device="cpu", resume=True))


def test_resuming_a_complete_output_runs_nothing(tmp_path: Path, slide_and_model: tuple[Path, Path]) -> None:
    slide, model = slide_and_model
    out = tmp_path / "mask.zarr"
    predict(slide, out, model, PredictConfig(chunk=512, device="cpu"))
    before = chunk_files(out)
    again = predict(slide, out, model, PredictConfig(chunk=512, device="cpu", resume=True))
    assert again.chunks_run == 0 and again.chunks_skipped == 0
    assert chunk_files(out) == before


def test_info_says_how_far_a_run_got(tmp_path: Path, slide_and_model: tuple[Path, Path]) -> None:
    from typer.testing import CliRunner

    from slideseg.cli import app

    slide, model = slide_and_model
    out = tmp_path / "mask.zarr"
    predict(slide, out, model, PredictConfig(chunk=256, device="cpu"))
    forget_chunk(out, 0, 1)  # as if the run had died before this chunk
    r = CliRunner().invoke(app, ["info", str(out)])
    assert r.exit_code == 0 and "14 of 15 chunks done" in r.stdout and "--resume" in r.stdout


# --------------------------------------------------------- which options a resumed run must keep

FIRST = PredictConfig(chunk=32, device="cpu", engine="torch", tissue=False)
"""The run that is interrupted: a 96 x 128 slide in 3 x 4 chunks of 32 px."""

Change = dict[str, Any] | Callable[[dict[str, Any]], dict[str, Any]]
CHANGES: dict[str, tuple[Change, bool]] = {
    # field: (what the --resume run changes, or a function of the first run's record; refused?)
    "tile": ({"tile": 76}, True),  # another valid tile: other rounding at tile seams
    "batch_size": (lambda record: {"batch_size": record["batch_size"]}, False),  # the default's value, spelled out
    "chunk": ({"chunk": 16}, True),
    "ngff": ({"ngff": "0.5"}, True),
    "shard": ({"ngff": "0.5", "shard": 64}, True),  # a shard needs NGFF 0.5
    "level": ({"level": 0}, True),  # the level auto picked, but asked for
    "mpp": ({"mpp": 0.5}, True),  # the file's own pixel size, but stated
    "channels": ({"channels": "0,1,2"}, True),  # all channels, but listed
    "series": ({"series": 0}, True),
    "device": ({"device": "auto"}, False),  # the CPU again on a machine without CUDA
    "engine": ({"engine": "auto"}, False),  # auto picks torch again (SLIDESEG_CPU_ENGINE=torch)
    "precision": ({"precision": "bf16"}, True),
    "compile": ({"compile": True}, True),
    "probabilities": ({"probabilities": True}, True),
    "tissue": ({"tissue": True}, True),
    "tissue_mask": ({"tissue_mask": "tissue.png"}, True),  # refused before the mask is read
    "preview": ({"preview": True}, False),
    "objects": ({"objects": True}, False),  # objects follow the mask; the mask itself is the same
    "into": ({"into": "image.zarr"}, True),  # the same mask, now reached as the label of an image
    "name": ({"name": "cells"}, True),
    "overwrite": ({"overwrite": True, "resume": False}, False),  # starts again instead of resuming
    "resume": ({}, False),  # the resumed run itself: only resume differs from the first run
    "threads": ({"threads": 1}, False),
    "norm": ({"norm": "slide"}, True),  # the slide's statistics instead of the model's constants
    "norm_level": ({"norm_level": 1}, True),
}


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(slide, model, mask): a run of FIRST that stopped before chunk (1, 2)."""
    root = tmp_path_factory.mktemp("interrupted")
    slide = write_tiff(root / "s.ome.tif", random_rgb((96, 128), seed=5))
    model = save_tiny_model(root / "m.safetensors")
    mask = root / "mask.zarr"
    predict(slide, mask, model, FIRST)
    forget_chunk(mask, 1, 2)
    return slide, model, mask


def test_every_option_is_classified() -> None:
    assert set(CHANGES) == {f.name for f in fields(PredictConfig)}
    assert set(OUTPUT_FIELDS) == {name for name, (_, refused) in CHANGES.items() if refused}


# torch.compile's first import warns about torch's own deprecated modules
_COMPILE_WARNS = pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")


@pytest.mark.parametrize("name", [pytest.param(f.name, marks=[_COMPILE_WARNS] if f.name == "compile" else [])
                                  for f in fields(PredictConfig)])
def test_resume_refuses_exactly_the_options_that_change_the_output(
        name: str, interrupted: tuple[Path, Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    slide, model, first = interrupted
    change, refused = CHANGES[name]
    if name == "device":
        import torch

        if torch.cuda.is_available():
            pytest.skip("--device auto picks the GPU here")
    monkeypatch.setenv("SLIDESEG_CPU_ENGINE", "torch")
    monkeypatch.chdir(tmp_path)  # relative paths (tissue.png, image.zarr) land here
    values = change(describe_mask(first)["slideseg"]) if callable(change) else change
    out: Path | None
    if name == "into":  # no -o: the output is image.zarr/labels/segmentation
        image = write_ome_zarr_image(tmp_path / "image.zarr", random_rgb((96, 128)), mpp=0.5, levels=1)
        out, target = None, image / "labels" / "segmentation"
    else:
        out = target = tmp_path / "mask.zarr"
    shutil.copytree(first, target)
    cfg = replace(FIRST, **{"resume": True, **values})
    if refused:
        with pytest.raises(ConfigError, match=rf"cannot resume .*\b{name} was .*Resume with the original settings"):
            predict(slide, out, model, cfg)
        assert describe_mask(target)["chunks_done"] == 11  # nothing was run
    else:
        result = predict(slide, out, model, cfg)
        assert describe_mask(target)["complete"] is True
        assert result.chunks_already_done == (0 if name == "overwrite" else 11)
