"""Crash-safe resume: a run killed with SIGKILL part-way and resumed gives byte-identical output."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

from slideseg.errors import ConfigError, OutputExistsError
from slideseg.model.config import UNetConfig
from slideseg.model.files import save_model
from slideseg.model.unet import build_unet
from slideseg.predict import PredictConfig, predict
from slideseg.write.mask import describe_mask
from tests.conftest import random_rgb
from tests.test_predict import write_tiff


def chunk_files(root: Path) -> dict[str, bytes]:
    """Every stored chunk of the class ids and probabilities, by key, as bytes on disk."""
    out = {}
    for sub in ("0", "1", "probabilities/0", "probabilities/1"):
        base = root / sub
        for f in sorted(base.rglob("*")):
            if f.is_file() and not f.name.startswith(".") and ".partial" not in f.name:
                out[str(f.relative_to(root))] = f.read_bytes()
    return out


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
    files = chunk_files(reference)
    assert any(k.startswith("1/") for k in files) and any(k.startswith("probabilities/0/") for k in files)
    assert files == chunk_files(out)  # byte for byte on disk, pyramid included


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
    from slideseg.write.mask import open_mask_writer

    slide, model = slide_and_model
    out = tmp_path / "mask.zarr"
    predict(slide, out, model, PredictConfig(chunk=256, device="cpu"))
    writer = open_mask_writer(out)
    writer._done[0, 1] = 0  # as if the run had died before this chunk
    zarr.open_group(out, mode="r+").attrs["slideseg"] = {**describe_mask(out)["slideseg"], "complete": False}
    r = CliRunner().invoke(app, ["info", str(out)])
    assert r.exit_code == 0 and "14 of 15 chunks done" in r.stdout and "--resume" in r.stdout
