"""Training: loss goes down, IoU is reached, checkpoints are predict's model files, runs are
reproducible and resumable, fluorescence works, bad input says what to do."""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path

import numpy as np
import pytest
import tifffile

from slideseg.errors import ConfigError, ModelFileError, OutputExistsError
from slideseg.model.config import UNetConfig
from slideseg.model.files import load_model, read_model_config, save_model
from slideseg.model.unet import build_unet
from slideseg.predict import PredictConfig, predict
from slideseg.tools.evaluate import evaluate
from slideseg.tools.synth import SynthConfig, render_region
from slideseg.train.data import Statistics, TrainingData, load_training_data
from slideseg.train.loop import TrainConfig, _target_spec, companion_paths, train

TINY = {"depth": 2, "width": 8}
FAST = TrainConfig(tile=132, optimizer="adam", lr=0.003, batch_size=1, tiles_per_epoch=40, threads=1, workers=1,
                   val_tiles=16)
"""A depth-2 U-Net on 132-px tiles (92 px of output), Adam: seconds on two cores."""


def synth_data(root: Path) -> TrainingData:
    tr, va = root / "train", root / "val"
    return load_training_data(images=tr, masks=tr, val_images=va, val_masks=va)


@pytest.fixture(scope="module")
def trained(data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    out = tmp_path_factory.mktemp("model") / "m.safetensors"
    data = synth_data(data_root)
    result = train(data, out, dataclasses.replace(FAST, steps=80), arch=TINY)
    data.close()
    return out, result


def test_training_reduces_the_loss_and_reaches_iou(trained: tuple[Path, object]) -> None:
    _, result = trained
    history = result.history  # type: ignore[attr-defined]
    assert len(history) == 2  # 80 steps of 40 tiles per epoch
    assert history[-1]["train_loss"] < 0.6 * history[0]["train_loss"]
    assert max(row["val_iou"] for row in history) >= 0.85  # stated: nuclei IoU >= 0.85 after 80 tiles


def test_checkpoints_are_predict_model_files(trained: tuple[Path, object]) -> None:
    out, result = trained
    paths = companion_paths(out)
    assert all(p.is_file() for p in (out, *paths.values()))
    cfg, meta = read_model_config(out)
    assert meta["trained"] is True and meta["seed"] == 0
    assert {"epochs", "steps", "loss", "val", "train_config", "class_weights", "statistics"} <= set(meta)
    assert TrainConfig.from_dict(meta["train_config"]).tile == 132
    best = min(result.history, key=lambda r: r["val_loss"])  # type: ignore[attr-defined]
    assert meta["val"]["val_iou"] == best["val_iou"] and meta["epochs"] == best["epoch"]
    assert cfg.norm_mean != UNetConfig().norm_mean  # learned from the data
    assert cfg.mpp == pytest.approx(0.5)  # the slides' pixel size
    _, last_meta = read_model_config(paths["last"])
    assert last_meta["steps"] == 80
    with paths["metrics"].open() as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert {"train_loss", "val_loss", "val_iou", "val_dice_1", "tiles_per_s", "lr"} <= set(rows[0])


def test_validation_iou_equals_predict_then_evaluate(trained: tuple[Path, object], data_root: Path,
                                                     tmp_path: Path) -> None:
    """Training's validation and predict share geometry and mirroring: the same IoU."""
    out, _ = trained
    _, meta = read_model_config(out)
    val = data_root / "val"
    predict(val / "val.ome.tif", tmp_path / "mask.zarr", out, PredictConfig(device="cpu", chunk=128))
    r = evaluate(tmp_path / "mask.zarr", val / "val.truth.zarr")
    assert r.foreground_iou == pytest.approx(meta["val"]["val_iou"], abs=1e-3)


def test_runs_are_reproducible_and_resume_exactly(data_root: Path, tmp_path: Path) -> None:
    cfg = dataclasses.replace(FAST, steps=6, tiles_per_epoch=2, val_tiles=2)

    def run(out: Path, **kw: object) -> str:
        data = synth_data(data_root)
        try:
            train(data, out, cfg, arch=TINY, **kw)  # type: ignore[arg-type]
        finally:
            data.close()
        return load_model(companion_paths(out)["last"]).weights_sha256

    a = run(tmp_path / "a.safetensors")
    assert run(tmp_path / "b.safetensors") == a
    partial = run(tmp_path / "c.safetensors", stop=lambda step: step == 3)
    assert partial != a
    assert read_model_config(companion_paths(tmp_path / "c.safetensors")["last"])[1]["stopped"] == "requested"
    assert run(tmp_path / "c.safetensors", resume=True) == a
    with (tmp_path / "c.metrics.csv").open() as f:
        assert [r["step"] for r in csv.DictReader(f)] == ["2", "4", "6"]


def test_max_time_stops_cleanly_and_saves(data_root: Path, tmp_path: Path) -> None:
    data = synth_data(data_root)
    cfg = dataclasses.replace(FAST, steps=50, max_time=1e-6)
    result = train(data, tmp_path / "m.safetensors", cfg, arch=TINY)
    data.close()
    assert result.stopped == "max_time" and result.steps == 1
    _, meta = read_model_config(tmp_path / "m.safetensors")
    assert meta["stopped"] == "max_time" and meta["steps"] == 1
    assert companion_paths(tmp_path / "m.safetensors")["resume"].is_file()


def test_large_slides_are_sampled_tile_by_tile(data_root: Path, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Slides above the in-memory limit: random tiles read from the files, weight maps per tile."""
    import slideseg.train.data

    monkeypatch.setattr(slideseg.train.data, "IN_MEMORY_MAX_PX", 64 * 64)
    data = synth_data(data_root)
    cfg = dataclasses.replace(FAST, steps=3, tiles_per_epoch=3, val_tiles=2,
                         balanced_sampling=True)
    result = train(data, tmp_path / "m.safetensors", cfg, arch=TINY)
    assert all(it.cache is None for it in (*data.train, *data.val))
    data.close()
    assert result.steps == 3 and result.history[-1]["val_loss"] > 0


def fluorescence(root: Path, name: str, size: tuple[int, int], seed: int) -> None:
    """Single-channel uint16: bright nuclei (instances from synth) on a dim, noisy background."""
    _, inst, _ = render_region(SynthConfig(size=size, seed=seed), 0, size[0], 0, size[1])
    r = np.random.default_rng(seed)
    img = 800 + r.normal(0, 120, size) + 22000 * (inst > 0) * r.uniform(0.6, 1.0, size)
    root.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(root / f"{name}.tif", np.clip(img, 0, 65535).astype(np.uint16), tile=(64, 64),
                     metadata={"axes": "YX"}, resolution=(2e4, 2e4), resolutionunit="CENTIMETER")  # 0.5 µm/px
    tifffile.imwrite(root / f"{name}_mask.tif", inst.astype(np.uint32))


def test_uint16_fluorescence_learns_its_normalisation(tmp_path: Path) -> None:
    fluorescence(tmp_path / "tr", "a", (384, 384), 5)
    fluorescence(tmp_path / "va", "b", (192, 256), 6)
    data = load_training_data(images=tmp_path / "tr", masks=tmp_path / "tr", val_images=tmp_path / "va",
                              val_masks=tmp_path / "va")
    result = train(data, tmp_path / "f.safetensors", dataclasses.replace(FAST, steps=100), arch=TINY)
    data.close()
    cfg, _ = read_model_config(tmp_path / "f.safetensors")
    assert cfg.in_channels == 1 and 2000 < cfg.norm_mean[0] < 8000 and cfg.norm_std[0] > 5000
    assert result.history[-1]["val_iou"] >= 0.85
    predict(tmp_path / "va" / "b.tif", tmp_path / "f.zarr", tmp_path / "f.safetensors", PredictConfig(device="cpu"))
    r = evaluate(tmp_path / "f.zarr", tmp_path / "va" / "b_mask.tif", gt_kind="instances")
    assert r.foreground_iou >= 0.85


def test_class_masks_train_a_multi_class_model(tmp_path: Path) -> None:
    r = np.random.default_rng(0)
    img = (r.uniform(0, 40, (96, 96, 3))).astype(np.uint8)
    cls = np.zeros((96, 96), np.uint8)
    cls[10:40, 10:40], cls[50:90, 45:80] = 1, 2
    img[cls == 1] += 120
    img[cls == 2, 2] += 200
    (tmp_path / "d").mkdir()
    tifffile.imwrite(tmp_path / "d" / "a.tif", img, photometric="rgb")
    tifffile.imwrite(tmp_path / "d" / "a_mask.tif", cls)
    data = load_training_data(images=tmp_path / "d", masks=tmp_path / "d", mask_kind="classes")
    result = train(data, tmp_path / "c.safetensors", dataclasses.replace(FAST, steps=4), arch=TINY)
    data.close()
    assert read_model_config(tmp_path / "c.safetensors")[0].classes == 3
    assert result.steps == 4 and result.history[-1]["step"] == 4


def test_bad_runs_are_clear_errors(data_root: Path, tmp_path: Path) -> None:
    cfg = dataclasses.replace(FAST, steps=2, tiles_per_epoch=2, val_tiles=1)
    data = synth_data(data_root)
    try:
        out = tmp_path / "m.safetensors"
        train(data, out, cfg, arch=TINY)
        with pytest.raises(OutputExistsError, match=r"--overwrite .* or --resume"):
            train(data, out, cfg, arch=TINY)
        with pytest.raises(ModelFileError, match=r"different architecture: depth 2 \(asked for 3\)"):
            train(data, out, cfg, arch={"depth": 3}, resume=True)
        other = tmp_path / "other.safetensors"
        save_model(other, build_unet(UNetConfig(depth=2, width=4)), UNetConfig(depth=2, width=4))
        with pytest.raises(ModelFileError, match="different architecture: width 8 \\(asked for 4\\)"):
            train(data, out, cfg, init=other, resume=True)
        with pytest.raises(ConfigError, match="either --init FILE or architecture options"):
            train(data, tmp_path / "n.safetensors", cfg, init=other, arch={"depth": 3})
        with pytest.raises(ModelFileError, match="--resume needs"):
            train(data, tmp_path / "never.safetensors", cfg, resume=True)
        three = tmp_path / "three.safetensors"
        save_model(three, build_unet(UNetConfig(depth=2, width=4, classes=3)), UNetConfig(depth=2, width=4, classes=3))
        with pytest.raises(ModelFileError, match="instance masks give 2 classes"):
            train(data, tmp_path / "x.safetensors", cfg, init=three)
        grey = tmp_path / "grey.safetensors"
        save_model(grey, build_unet(UNetConfig(depth=2, width=4, in_channels=1)), UNetConfig(depth=2, width=4,
                                                                                          in_channels=1))
        with pytest.raises(ModelFileError, match=r"takes 1 input channel.* have 3"):
            train(data, tmp_path / "y.safetensors", cfg, init=grey)
        with pytest.raises(ConfigError, match="Tile 130 px is not valid"):
            train(data, tmp_path / "z.safetensors", TrainConfig(tile=130), arch=TINY)
    finally:
        data.close()
    with pytest.raises(ConfigError, match="--batch-size must be >= 1"):
        TrainConfig(batch_size=0)


def test_target_options_reach_the_target_and_records_without_them_load() -> None:
    stats = Statistics((0.0,), (1.0,), (3, 1))
    data = TrainingData([], [], "instances", {})
    for width, on_objects in ((1, True), (2, False)):
        spec = _target_spec(data, UNetConfig(depth=2), stats,
                            TrainConfig(separation_width=width, border_on_objects=on_objects))
        assert (spec.separation_width, spec.border_on_objects) == (width, on_objects)
    with pytest.raises(ConfigError, match="--separation-width must be 1 or 2 px, got 3"):
        TrainConfig(separation_width=3)
    before = {k: v for k, v in TrainConfig().to_dict().items() if k not in ("separation_width", "border_on_objects")}
    assert TrainConfig.from_dict(before) == TrainConfig()  # older records: 2-px borders, background-only term


def test_init_from_new_model_learns_normalisation(data_root: Path, tmp_path: Path) -> None:
    init = tmp_path / "init.safetensors"
    mc = UNetConfig(depth=2, width=4)
    save_model(init, build_unet(mc, seed=1), mc, {"trained": False})
    data = synth_data(data_root)
    train(data, tmp_path / "m.safetensors", dataclasses.replace(FAST, steps=2, val_tiles=1), init=init)
    data.close()
    cfg, meta = read_model_config(tmp_path / "m.safetensors")
    assert cfg.width == 4 and cfg.norm_mean != mc.norm_mean and meta["init"]["path"] == str(init)
