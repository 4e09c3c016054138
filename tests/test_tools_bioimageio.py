"""Writing bioimage.io packages (`slideseg export --format bioimageio`), the round trip through
`predict`, the package's own check, slide-level normalisation (statistics once per slide, recorded,
the same constants in every tile), and the seam error of a same-padded package in `slideseg plan`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import zarr

from slideseg.engines.base import Preprocessed
from slideseg.engines.registry import load_engine
from slideseg.io.normalise import Standardise, array_statistics, statistics
from slideseg.model.bioimageio import load_description, read_package
from slideseg.model.config import UNetConfig
from slideseg.model.files import load_model, save_model
from slideseg.model.unet import build_unet
from slideseg.plan.tiles import plan_slide
from slideseg.predict import PredictConfig, predict
from slideseg.schedule.chunks import infer_chunk, softmax
from slideseg.tools.bioimageio import check_package
from slideseg.tools.seam import bound_to, plan_report, whole_image_logits
from tests.conftest import SAME_HALO, ArraySlide, random_rgb, run_cli, whole_image_probabilities, write_tiff
from tests.test_model_bioimageio import Package, description, space, torchscript_bytes, ts_weights

pytest.importorskip("bioimageio.spec")

ROOT = Path(__file__).resolve().parents[1]
VALID = UNetConfig(depth=2, width=4, classes=3, class_names=("background", "nucleus", "stroma"), mpp=0.5,
                   norm_mean=(120.0, 110.0, 130.0), norm_std=(60.0, 50.0, 70.0))
"""A valid-convolution slideseg model with per-channel normalisation (depth 2: tiles 4k+44, context 20)."""
CPU = {"device": "cpu", "engine": "torch", "tissue": False}


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(the .safetensors model, the package `slideseg export --format bioimageio` wrote of it)."""
    root = tmp_path_factory.mktemp("export")
    model = root / "nuclei.safetensors"
    save_model(model, build_unet(VALID, seed=4), VALID, {"trained": False})
    (root / "README.md").write_text("# Nuclei\n\n## Validation\n\nNone: a test model.\n")
    r = run_cli("export", model, "--format", "bioimageio", "-o", root / "nuclei.zip", "--name", "tiny nuclei",
                "--authors", "Ada Lovelace", "--authors", "Alan Turing", "--license", "MIT",
                "--cite", "A paper|10.1234/example", "--doc", root / "README.md")
    assert r.exit_code == 0, r.stderr
    assert r.stdout.count("passed") == (2 if _has_ort() else 1)  # its test tensors, in each CPU engine
    return model, root / "nuclei.zip"


def _has_ort() -> bool:
    import importlib.util

    return importlib.util.find_spec("onnxruntime") is not None


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


def test_the_package_validates_and_declares_the_models_geometry(exported: tuple[Path, Path]) -> None:
    model_path, package = exported
    descr = load_description(package)  # bioimageio.spec, offline
    assert str(descr.name) == "tiny nuclei" and [a.name for a in descr.authors] == ["Ada Lovelace", "Alan Turing"]
    assert descr.weights.torchscript is not None and descr.weights.onnx is not None
    assert descr.covers and descr.documentation is not None
    m = read_package(package)
    cfg = load_model(model_path).config
    for name in ("depth", "padding", "halo", "in_channels", "classes", "class_names", "class_colors", "mpp", "mirror",
                 "norm_mean", "norm_std"):
        assert getattr(m.config, name) == getattr(cfg, name), name
    assert m.preprocessing == () and m.min_tile == cfg.geometry.min_input
    assert m.size_rule == f"{cfg.geometry.min_input} + n*{cfg.geometry.alignment} px"


@pytest.mark.parametrize("engine", ["torch", "onnxruntime"])
def test_its_test_tensors_pass_its_check(exported: tuple[Path, Path], engine: str) -> None:
    if engine == "onnxruntime" and not _has_ort():
        pytest.skip("onnxruntime is not installed")
    result = check_package(exported[1], engine, device="cpu")
    assert result.passed and result.max_abs_diff < 1e-4 and result.engine["engine"] == engine
    r = run_cli("info", "--check", exported[1], "--engine", engine, "--device", "cpu")
    assert r.exit_code == 0 and "passed" in r.stdout, r.stderr


@pytest.mark.parametrize("engine", ["torch", "onnxruntime"])
def test_predict_with_the_package_equals_predict_with_its_model(exported: tuple[Path, Path], tmp_path: Path,
                                                                engine: str) -> None:
    if engine == "onnxruntime" and not _has_ort():
        pytest.skip("onnxruntime is not installed")
    model_path, package = exported
    image = random_rgb((150, 170), seed=9)
    slide = write_tiff(tmp_path / "s.ome.tif", image)
    cfg = PredictConfig(chunk=64, **{**CPU, "engine": engine})
    predict(slide, tmp_path / "a.zarr", model_path, PredictConfig(chunk=64, **CPU))
    predict(slide, tmp_path / "b.zarr", package, cfg)
    a, b = (np.asarray(zarr.open_group(tmp_path / n, mode="r")["0"][:]) for n in ("a.zarr", "b.zarr"))
    top2 = np.sort(whole_image_probabilities(load_model(model_path), image), axis=0)[-2:]
    decided = top2[1] - top2[0] > 1e-4
    assert decided.mean() > 0.9 and len(np.unique(a)) > 1  # the comparison has something to compare
    np.testing.assert_array_equal(a[decided], b[decided])


def test_export_refuses_what_it_cannot_write(exported: tuple[Path, Path], tmp_path: Path) -> None:
    model_path, package = exported
    r = run_cli("export", model_path, "--format", "bioimageio", "-o", package)
    assert r.exit_code == 2 and "--overwrite" in r.stderr
    r = run_cli("export", model_path, "--format", "bioimageio", "-o", tmp_path / "x.zip", "--cite", "no reference")
    assert r.exit_code == 2 and "TEXT|DOI" in r.stderr
    r = run_cli("export", model_path, "--format", "bioimageio", "-o", tmp_path / "x.tar")
    assert r.exit_code == 2 and ".zip" in r.stderr


def test_info_on_a_package_imports_no_torch(exported: tuple[Path, Path]) -> None:
    code = ("import sys; from slideseg.cli import main; sys.argv = ['slideseg', 'info', sys.argv[1]]\n"
            "try:\n    main()\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
            "print('TORCH' if 'torch' in sys.modules else 'NO TORCH')")
    run = subprocess.run([sys.executable, "-c", code, str(exported[1])], capture_output=True, text=True, cwd=ROOT,
                         timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip().endswith("NO TORCH") and "tiny nuclei" in run.stdout


# --------------------------------------------------------------------------------------------
# Slide-level normalisation
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_statistics_are_exact_and_count_tissue_only(dtype: type) -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 4000 if dtype == np.uint16 else 256, (70, 50, 2)).astype(dtype)
    tissue = np.zeros((7, 5), bool)
    tissue[2:6, 1:4] = True  # a coarse mask: each mask pixel is 10 x 10 image pixels
    stats = statistics(ArraySlide(image), [1.0, 50.0, 99.8], tissue=tissue, rows=16)
    inside = image[np.repeat(np.repeat(tissue, 10, 0), 10, 1)]  # (n, 2)
    np.testing.assert_allclose(stats.mean, inside.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(stats.std, inside.std(axis=0), rtol=1e-9)
    for p in (1.0, 50.0, 99.8):
        np.testing.assert_allclose(stats.percentiles[p], np.percentile(inside, p, axis=0), rtol=1e-12)
        assert stats.joint_percentiles[p] == pytest.approx(float(np.percentile(inside, p)))
    assert stats.tissue_only and stats.pixels == len(inside)


def test_float_statistics_merge_stripes_exactly() -> None:
    image = np.random.default_rng(1).normal(100.0, 7.0, (33, 20, 3)).astype(np.float32)
    stats = statistics(ArraySlide(image), [5.0], rows=4)
    np.testing.assert_allclose(stats.mean, image.reshape(-1, 3).mean(axis=0, dtype=np.float64), rtol=1e-10)
    np.testing.assert_allclose(stats.std, image.reshape(-1, 3).std(axis=0, dtype=np.float64), rtol=1e-8)
    assert stats.joint_std == pytest.approx(float(image.astype(np.float64).std()), rel=1e-8)
    np.testing.assert_allclose(stats.percentiles[5.0], np.percentile(image.reshape(-1, 3), 5.0, axis=0), rtol=1e-6)


@pytest.fixture(scope="module")
def scale_range_package(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.nn.Module]:
    """A valid-convolution network (depth 2) packaged with ``scale_range`` 1-99.5 % over all channels."""
    root = tmp_path_factory.mktemp("scale_range")
    net = build_unet(UNetConfig(depth=2, width=4, classes=3), seed=7).eval()
    pkg = Package()
    sizes = {"min": 44, "step": 4}
    ref = {"tensor_id": "raw", "offset": -40}
    rdf = description(pkg, weights=ts_weights(pkg, torchscript_bytes(net, root, 48)),
                      pre=[{"id": "scale_range", "kwargs": {"min_percentile": 1.0, "max_percentile": 99.5}}],
                      in_axes=[{"type": "batch"}, {"type": "channel", "channel_names": ["r", "g", "b"]},
                               space("y", sizes), space("x", sizes)],
                      out_axes=[{"type": "batch"}, {"type": "channel", "channel_names": ["bg", "a", "b"]},
                                space("y", {**ref, "axis_id": "y"}), space("x", {**ref, "axis_id": "x"})])
    return pkg.write(root / "sr.zip", rdf), net


def _whole_slide_ids(package: Path, image: np.ndarray, lo: float, hi: float) -> tuple[np.ndarray, np.ndarray]:
    """Class ids and top-two margins of one pass over the whole image, normalised with constants."""
    engine = load_engine(package, "torch", device="cpu")
    assert isinstance(engine, Preprocessed) and engine.needs_statistics
    bound = engine.bind((Standardise((lo,), (hi - lo + 1e-6,)),))
    p = softmax(whole_image_logits(bound, image, engine.config.geometry))
    top2 = np.sort(p, axis=0)[-2:]
    return p.argmax(axis=0), top2[1] - top2[0]


def test_slide_constants_make_tiles_agree_across_chunk_borders(scale_range_package: tuple[Path, Any],
                                                               tmp_path: Path) -> None:
    package, _ = scale_range_package
    image = random_rgb((120, 136), seed=5)
    image[:, 68:] = image[:, 68:] // 3  # a darker half: tiles there have other statistics than the slide
    slide = write_tiff(tmp_path / "s.ome.tif", image)
    predict(slide, tmp_path / "m.zarr", package, PredictConfig(chunk=32, **CPU))
    got = np.asarray(zarr.open_group(tmp_path / "m.zarr", mode="r")["0"][:])
    lo, hi = np.percentile(image, [1.0, 99.5])  # the whole slide's, over all channels
    want, margin = _whole_slide_ids(package, image, float(lo), float(hi))
    decided = margin > 1e-4
    assert decided.mean() > 0.5  # most pixels have a clear class: the comparison has something to compare
    np.testing.assert_array_equal(got[decided], want[decided])
    record = dict(zarr.open_group(tmp_path / "m.zarr", mode="r").attrs)["slideseg"]["normalisation"]
    assert record["level"] == 0 and record["statistics"]["joint_percentiles"]["1.0"] == pytest.approx(lo)
    assert record["statistics"]["joint_percentiles"]["99.5"] == pytest.approx(hi)

    # The control: each tile normalised with its own statistics gives another segmentation.
    engine = load_engine(package, "torch", device="cpu")

    class PerTile:
        config = engine.config

        def infer(self, batch: np.ndarray) -> np.ndarray:
            return np.concatenate([bound_to(engine, tile[None])[0].infer(tile[None]) for tile in batch])

    plan = plan_slide(image.shape[:2], engine.config.geometry, chunk=32)
    per_tile = np.zeros(image.shape[:2], np.int64)
    for chunk in plan:
        ids = infer_chunk(ArraySlide(image), PerTile(), chunk, engine.config.mirror, 4).argmax(axis=0)
        per_tile[chunk.box.y0 : chunk.box.y1, chunk.box.x0 : chunk.box.x1] = ids
    assert (per_tile[decided] != want[decided]).mean() > 0.01


def test_the_norm_level_and_tissue_are_recorded(scale_range_package: tuple[Path, Any], tmp_path: Path) -> None:
    package, _ = scale_range_package
    image = random_rgb((96, 128), seed=6)
    slide = tmp_path / "s.ome.tif"
    import tifffile

    with tifffile.TiffWriter(slide, ome=True) as tw:  # two levels: statistics from level 1
        tw.write(image, subifds=1, tile=(32, 32), photometric="rgb", metadata={"axes": "YXS", "PhysicalSizeX": 0.5})
        tw.write(image[::2, ::2], subfiletype=1, tile=(32, 32), photometric="rgb")
    mask = np.zeros((12, 16), np.uint8)
    mask[:, :8] = 255  # the left half is tissue
    write_tiff(tmp_path / "tissue.tif", mask)
    cfg = PredictConfig(chunk=48, norm_level=1, tissue_mask=str(tmp_path / "tissue.tif"), device="cpu", engine="torch")
    predict(slide, tmp_path / "m.zarr", package, cfg)
    record = dict(zarr.open_group(tmp_path / "m.zarr", mode="r").attrs)["slideseg"]["normalisation"]
    level1_tissue = image[::2, ::2][:, :32]
    assert record["level"] == 1 and record["level_shape"] == [48, 64] and record["statistics"]["tissue_only"]
    assert record["statistics"]["joint_percentiles"]["99.5"] == pytest.approx(np.percentile(level1_tissue, 99.5))
    again = run_cli("predict", slide, "-o", tmp_path / "m.zarr", "--model", package, "--chunk", "48", "--norm-level",
                    "0", "--tissue-mask", tmp_path / "tissue.tif", "--resume", "--device", "cpu", "--engine", "torch")
    assert again.exit_code == 2 and "norm_level was 1, now 0" in again.stderr  # a resumed run keeps the constants


def test_norm_slide_standardises_each_channel_with_the_slides_statistics(exported: tuple[Path, Path],
                                                                         tmp_path: Path) -> None:
    model_path, _ = exported
    image = random_rgb((100, 90), seed=8)
    slide = write_tiff(tmp_path / "s.ome.tif", image)
    r = run_cli("predict", slide, "-o", tmp_path / "m.zarr", "--model", model_path, "--norm", "slide", "--chunk", "48",
                "--no-tissue", "--device", "cpu", "--engine", "torch")
    assert r.exit_code == 0, r.stderr
    got = np.asarray(zarr.open_group(tmp_path / "m.zarr", mode="r")["0"][:])
    stats = array_statistics(image)
    model = load_model(model_path)
    slide_model = type(model)(model.net, UNetConfig.from_dict({**model.config.to_dict(), "norm_mean": stats.mean,
                                                              "norm_std": [s + 1e-6 for s in stats.std]}), "x")
    p = whole_image_probabilities(slide_model, image)  # the network on (x - slide mean) / slide std
    top2 = np.sort(p, axis=0)[-2:]
    decided = top2[1] - top2[0] > 1e-4
    np.testing.assert_array_equal(got[decided], p.argmax(axis=0)[decided])
    record = dict(zarr.open_group(tmp_path / "m.zarr", mode="r").attrs)["slideseg"]["normalisation"]
    np.testing.assert_allclose(record["statistics"]["mean"], stats.mean)


def test_a_sidecar_can_ask_for_slide_normalisation(tmp_path: Path, same_net: torch.nn.Module) -> None:
    path = tmp_path / "m.pt"
    path.write_bytes(torchscript_bytes(same_net, tmp_path))
    (tmp_path / "m.json").write_text(json.dumps({"padding": "same", "depth": 2, "halo": SAME_HALO, "classes": 3,
                                                  "norm": "slide"}))
    engine = load_engine(path, device="cpu")
    assert isinstance(engine, Preprocessed) and engine.needs_statistics
    batch = np.random.default_rng(3).integers(0, 256, (1, 3, 48, 48)).astype(np.float32)
    bound, stats = bound_to(engine, batch)
    assert stats is not None
    mean = np.asarray(stats["mean"], np.float32).reshape(1, 3, 1, 1)
    std = np.asarray(stats["std"], np.float32).reshape(1, 3, 1, 1) + 1e-6
    with torch.no_grad():
        want = same_net(torch.from_numpy((batch - mean) / std)).numpy()
    np.testing.assert_allclose(bound.infer(batch), want, atol=1e-4, rtol=0)


# --------------------------------------------------------------------------------------------
# The seam error of a same-padded package
# --------------------------------------------------------------------------------------------


def test_plan_reports_the_seam_error_of_a_same_padded_package_with_its_declared_halo(tmp_path: Path,
                                                                                     same_net: torch.nn.Module) -> None:
    pkg = Package()
    weights = ts_weights(pkg, torchscript_bytes(same_net, tmp_path))
    scale = {"id": "scale_linear", "kwargs": {"gain": 1 / 127.5, "offset": -1.0}}
    path = pkg.write(tmp_path / "same.zip", description(pkg, weights=weights, pre=[scale]))
    report = plan_report(path, region=128, device="cpu")
    assert report["padding"] == "same" and report["context"] == SAME_HALO
    rows = {r["halo"]: r for r in report["seam_error"]}
    assert SAME_HALO in rows and 0 in rows  # the declared halo is measured, beside the others
    assert rows[0]["max_abs"] > rows[SAME_HALO]["max_abs"] > 0  # a same-padded network does not tile exactly
    r = run_cli("plan", "--model", path, "--region", "128", "--halo", "0", "--halo", str(SAME_HALO), "--json",
                "--device", "cpu")
    assert r.exit_code == 0, r.stderr
    assert [row["halo"] for row in json.loads(r.stdout)["seam_error"]] == [0, SAME_HALO]
