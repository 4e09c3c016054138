"""A failure inside a chunk task prints one line (exit 2); the libraries' own log lines, such as Dask's
"Compute Failed" with its traceback, appear only with `slideseg --debug`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import tifffile

from tests.conftest import save_tiny_model


def _corrupt_tiff(path: Path) -> Path:
    """A tiled JPEG TIFF whose header is sound but whose tile (2, 2) is damaged: a tile none of the
    reads made before the chunk tasks touches (the slide's fingerprint samples rows and columns near
    10 %, 50 % and 90 %), so the failure happens inside a task."""
    rng = np.random.default_rng(0)
    tifffile.imwrite(path, rng.integers(0, 255, (1024, 1024, 3), dtype=np.uint8), tile=(128, 128),
                     compression="jpeg", photometric="rgb")
    with tifffile.TiffFile(path) as tif:
        page = tif.pages.first
        offset, count = page.dataoffsets[2 * 8 + 2], page.databytecounts[2 * 8 + 2]
    data = bytearray(path.read_bytes())
    data[offset : offset + count] = bytes(b ^ 0xFF for b in data[offset : offset + count])
    path.write_bytes(bytes(data))
    return path


def _slideseg(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "slideseg", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=300)


def test_a_failing_task_prints_one_line_unless_debug(tmp_path: Path) -> None:
    tiny_model_file = save_tiny_model(tmp_path / "tiny.safetensors")
    slide = _corrupt_tiff(tmp_path / "bad.tif")
    args = ("predict", slide, "-o", tmp_path / "m.zarr", "--model", tiny_model_file, "--no-tissue", "--chunk", "256",
            "--mpp", "0.5", "--no-progress", "--device", "cpu")
    quiet = _slideseg(*args, cwd=tmp_path)
    assert quiet.returncode == 2
    lines = quiet.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("slideseg: ") and "bad.tif" in lines[0], quiet.stderr
    debug = _slideseg("--debug", *args, "--overwrite", cwd=tmp_path)
    assert debug.returncode != 0 and "Compute Failed" in debug.stderr and "Traceback" in debug.stderr
