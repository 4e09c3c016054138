"""`slideseg predict` as a user runs it: where one slide's mask goes, what --into accepts, and the
bundled model used when no --model is given."""

from __future__ import annotations

from pathlib import Path

from slideseg.tools.evaluate import evaluate
from slideseg.tools.synth import SynthConfig, write_synthetic_slide
from tests.conftest import random_rgb, run_cli, write_ome_zarr_image, write_tiff


def test_into_refuses_several_slides(tmp_path: Path, model_05: Path) -> None:
    image = write_ome_zarr_image(tmp_path / "image.ome.zarr", random_rgb((64, 64)), 0.5, 1)
    r = run_cli("predict", image, image, "--into", image, "--model", model_05)
    assert r.exit_code == 2 and "one slide at a time" in r.stderr
    assert not (image / "labels").exists()


def test_output_directory_with_a_slash_for_one_slide(tmp_path: Path, model_05: Path) -> None:
    slide = write_tiff(tmp_path / "s.ome.tif", random_rgb((64, 64)))
    r = run_cli("predict", slide, "-o", f"{tmp_path / 'results'}/", "--model", model_05, "--no-progress")
    assert r.exit_code == 0, r.stderr
    assert (tmp_path / "results" / "s.zarr" / "0").is_dir()


def test_default_model_segments_a_held_out_slide(tmp_path: Path) -> None:
    """The bundled model (``make default-model``), through predict without --model: IoU >= 0.9."""
    slide = tmp_path / "held-out.ome.tif"
    write_synthetic_slide(slide, SynthConfig(size=(512, 768), seed=4242))  # seeds 101/202 trained it
    r = run_cli("predict", slide, "-o", tmp_path / "m.zarr", "--no-progress")
    assert r.exit_code == 0, r.stderr
    assert "untrained" not in r.stderr
    result = evaluate(tmp_path / "m.zarr", tmp_path / "held-out.truth.zarr")
    assert result.foreground_iou >= 0.9
