"""Outputs that cannot be written and outputs another run is writing: one line, exit 2, and what to do."""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from slideseg.errors import OutputLockedError, OutputWriteError
from slideseg.predict import PredictConfig, predict
from slideseg.write.lock import lock_path, output_lock
from slideseg.write.mask import MaskWriter
from tests.conftest import random_rgb, run_cli, write_tiff

CPU = PredictConfig(device="cpu", tissue=False, chunk=64)


@pytest.fixture
def slide(tmp_path: Path) -> Path:
    return write_tiff(tmp_path / "s.ome.tif", random_rgb((96, 128)))


def test_an_output_under_a_file_is_one_line(tmp_path: Path, slide: Path, model_file: Path) -> None:
    (tmp_path / "file.txt").write_text("not a folder")
    result = run_cli("predict", slide, "-o", tmp_path / "file.txt" / "m.zarr", "--model", model_file,
                     "--no-tissue", "--device", "cpu")
    assert result.exit_code == 2 and "is a file, not a folder" in result.output
    assert "Traceback" not in result.output


def test_an_output_where_nothing_can_be_made_is_one_line(tmp_path: Path, slide: Path, model_file: Path) -> None:
    result = run_cli("predict", slide, "-o", "/proc/slideseg-test/m.zarr", "--model", model_file, "--no-tissue",
                     "--device", "cpu")
    assert result.exit_code == 2 and "cannot write" in result.output and "Traceback" not in result.output


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_folder_is_refused_before_any_work(tmp_path: Path, slide: Path, model_file: Path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o555)
    with pytest.raises(OutputWriteError, match="not writable"):
        predict(slide, ro / "m.zarr", model_file, CPU)


def test_a_full_disk_says_how_to_resume(tmp_path: Path, slide: Path, model_file: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    def full(self: MaskWriter, *args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(MaskWriter, "write_chunk", full)
    with pytest.raises(OutputWriteError, match=r"disk is full.*--resume"):
        predict(slide, tmp_path / "m.zarr", model_file, CPU)
    assert not lock_path(tmp_path / "m.zarr").exists()  # the lock goes with the run


def test_a_second_run_on_the_same_output_is_refused(tmp_path: Path, slide: Path, model_file: Path) -> None:
    out = tmp_path / "m.zarr"
    with output_lock(out), pytest.raises(OutputLockedError, match=rf"process {os.getpid()} on"):
        predict(slide, out, model_file, dataclasses.replace(CPU, overwrite=True))
    assert not out.exists()
    predict(slide, out, model_file, CPU)  # once the other run is over


def test_a_lock_left_by_a_dead_run_is_taken_over(tmp_path: Path, slide: Path, model_file: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    out = tmp_path / "m.zarr"
    lock_path(out).write_text(json.dumps({"host": socket.gethostname(), "pid": int(dead.stdout), "started": "x"}))
    predict(slide, out, model_file, CPU)
    assert not lock_path(out).exists()


def test_a_lock_from_another_host_is_refused_with_how_to_remove_it(tmp_path: Path, slide: Path,
                                                                   model_file: Path) -> None:
    out = tmp_path / "m.zarr"
    lock_path(out).write_text(json.dumps({"host": "node-17", "pid": 4242, "started": "x"}))
    with pytest.raises(OutputLockedError, match=r"node-17.*remove .*m\.zarr\.lock"):
        predict(slide, out, model_file, CPU)
