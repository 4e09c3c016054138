"""The training budget means what it says: a time limit alone trains until it is up, --steps stops
there, the default rule gives thousands of tiles on tiny data; validation is held out when none is
given and steers (metrics, best checkpoint, patience); a resumed epoch keeps its earlier losses;
synthetic nuclei can be packed so that they touch."""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path

import numpy as np
import pytest

from slideseg.errors import ConfigError
from slideseg.tools.synth import SynthConfig, render_labels, render_region, touching_fraction
from slideseg.train.data import TrainingData
from slideseg.train.loop import TrainConfig, companion_paths, train
from slideseg.train.recipe import MAX_TILES, MIN_EPOCH_TILES, MIN_TILES, plan_budget
from slideseg.train.validation import hold_out, improves
from tests.conftest import array_item

TINY = {"depth": 2, "width": 4}
QUICK = TrainConfig(tile=92, batch_size=2, optimizer="adam", lr=0.003, warmup_steps=0, threads=1, workers=1,
                    val_tiles=4, tiles_per_epoch=8)
"""A depth-2 U-Net on 92-px tiles (52 px of output): milliseconds a step."""


def nuclei(shape: tuple[int, int] = (96, 128), seed: int = 3) -> TrainingData:
    """One small RGB image of synthetic nuclei with its instance mask, held in memory, no validation."""
    rgb, inst, _ = render_region(SynthConfig(size=shape, seed=seed), 0, shape[0], 0, shape[1])
    return TrainingData([array_item(rgb, inst.astype(np.int64))], [], "instances", {})


@pytest.fixture(autouse=True, scope="module")
def _warm(tmp_path_factory: pytest.TempPathFactory) -> None:
    """One step first: the first optimiser of a process imports torch's compiler stack (seconds),
    which would eat the time budgets below."""
    train(nuclei(), tmp_path_factory.mktemp("warm") / "w.safetensors", dataclasses.replace(QUICK, steps=1),
          arch=TINY)


def rows(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


def test_max_time_alone_trains_until_the_time_is_up(tmp_path: Path) -> None:
    limit_s = 3.0
    result = train(nuclei(), tmp_path / "m.safetensors", dataclasses.replace(QUICK, max_time=limit_s / 60),
                   arch=TINY)
    assert result.ended == "time" and result.stopped is None
    assert 0.8 * limit_s <= result.seconds <= limit_s + 3.0  # until the limit: not far short of it, nor far past
    assert result.steps > 10 and result.budget.startswith("--max-time")
    assert result.history[-1]["lr"] < 0.2 * 0.003  # the cosine schedule spans the time: near 0 at the end
    assert result.history[-1]["step"] == result.steps  # the last steps are validated too


def test_steps_stop_the_run_there(tmp_path: Path) -> None:
    result = train(nuclei(), tmp_path / "m.safetensors", dataclasses.replace(QUICK, steps=7, max_time=1.0),
                   arch=TINY)
    assert result.steps == 7 and result.ended == "budget" and result.stopped is None
    assert result.budget == "--steps 7 (stops after 1 min; --resume continues)"


def test_default_budget_gives_thousands_of_tiles_on_tiny_data(tmp_path: Path) -> None:
    tiny = plan_budget([(96, 128)], output=260, batch_size=2)
    assert tiny.steps is not None and tiny.steps * 2 >= MIN_TILES >= 2000
    assert tiny.steps_per_epoch * 2 >= MIN_EPOCH_TILES >= 200  # an epoch is not the 1 tile that covers the image
    assert tiny.rule.startswith(f"default: {MIN_TILES} tiles")
    medium = plan_budget([(2048, 2048)] * 4, output=260, batch_size=2)  # 4 x 64 tiles cover it: 50 passes
    assert medium.steps is not None and medium.steps * 2 == 50 * 4 * 64
    huge = plan_budget([(50_000, 50_000)], output=388, batch_size=1)
    assert huge.steps == MAX_TILES and huge.steps_per_epoch == 2048
    assert plan_budget([(96, 128)], 260, 2, max_time=2.0).steps is None
    assert plan_budget([(96, 128)], 260, 8, epochs=3, tiles_per_epoch=40).steps == 15
    # the loop uses the rule: a run without a budget says so (stopped after its first step)
    result = train(nuclei(), tmp_path / "m.safetensors", dataclasses.replace(QUICK, tiles_per_epoch=None),
                   arch=TINY, stop=lambda step: True)
    assert result.budget.startswith(f"default: {MIN_TILES} tiles") and result.stopped == "requested"


def test_holdout_happens_and_validation_reaches_metrics(tmp_path: Path) -> None:
    out = tmp_path / "m.safetensors"
    result = train(nuclei(), out, dataclasses.replace(QUICK, steps=8), arch=TINY)
    assert "held out for validation" in result.validation
    table = rows(companion_paths(out)["metrics"])
    assert [r["step"] for r in table] == ["4", "8"]
    for r in table:
        assert 0 <= float(r["val_iou"]) <= 1 and 0 <= float(r["val_f1"]) <= 1
        assert r["val_merge_rate"] == "nan" or 0 <= float(r["val_merge_rate"]) <= 1
    assert result.best is not None and result.best["epoch"] in (1, 2)


def test_hold_out_bands_and_whole_images() -> None:
    item = nuclei((96, 128)).train[0]
    split = hold_out([item], 0.1, seed=0)
    (tr,), (va,) = split.train, split.val
    assert tr.shape == (96, 96) and va.shape == (96, 32)  # the longer side; at least 64 px or a quarter
    assert np.array_equal(va.image.read(0, 96, 0, 32), item.image.read(0, 96, 96, 128))
    many = [nuclei((64, 64), seed=s).train[0] for s in range(10)]
    split = hold_out(many, 0.2, seed=0)
    assert len(split.val) == 2 and len(split.train) == 8 and {id(i) for i in split.val} <= {id(i) for i in many}
    assert hold_out([nuclei((20, 20)).train[0]], 0.1, seed=0).val == []  # too small to split
    assert hold_out([item], 0.0, seed=0).val == []


def test_patience_stops_on_a_plateau(tmp_path: Path) -> None:
    frozen = dataclasses.replace(QUICK, optimizer="sgd", lr=1e-12, momentum=0.0, steps=40, tiles_per_epoch=2,
                                 patience=2)  # the weights cannot change: validation stays the same
    result = train(nuclei(), tmp_path / "m.safetensors", frozen, arch=TINY)
    assert result.ended == "patience" and len(result.history) == 3 and result.steps == 3
    assert result.best is not None and result.best["epoch"] == 1
    with pytest.raises(ConfigError, match="--patience needs validation data"):
        train(nuclei(), tmp_path / "n.safetensors", dataclasses.replace(frozen, holdout=0.0), arch=TINY)


def test_best_checkpoint_prefers_object_f1_then_loss() -> None:
    best = {"f1": 0.80, "loss": 0.30}
    assert improves({"val_f1": 0.85, "val_loss": 0.50}, best)  # clearly better objects, worse loss
    assert improves({"val_f1": 0.80, "val_loss": 0.20}, best)  # same objects, lower loss
    assert not improves({"val_f1": 0.70, "val_loss": 0.10}, best)  # fewer objects right, whatever the loss
    assert not improves({"val_f1": float("nan"), "val_loss": 0.40}, best)


def test_resume_keeps_the_losses_of_the_interrupted_epoch(tmp_path: Path) -> None:
    cfg = dataclasses.replace(QUICK, steps=6, batch_size=1, tiles_per_epoch=3)
    train(nuclei(), tmp_path / "a.safetensors", cfg, arch=TINY)
    train(nuclei(), tmp_path / "b.safetensors", cfg, arch=TINY, stop=lambda step: step == 2)
    train(nuclei(), tmp_path / "b.safetensors", cfg, arch=TINY, resume=True)
    whole, resumed = rows(tmp_path / "a.metrics.csv"), rows(tmp_path / "b.metrics.csv")
    assert [r["step"] for r in resumed] == ["3", "6"]
    for a, b in zip(whole, resumed, strict=True):  # epoch 1: steps 1-2 before the stop, 3 after it
        assert a["train_loss"] == b["train_loss"] and a["val_loss"] == b["val_loss"]


def test_synth_packs_touching_nuclei() -> None:
    def partner_fraction(inst: np.ndarray, n_x: int) -> float:
        """Nuclei touching the nucleus of the other cell of their pair (cells 2k, 2k+1 of a row)."""
        ids = np.unique(inst)[1:]
        col = (ids - 1) % n_x
        partner = np.where(col % 2 == 0, ids + 1, ids - 1)
        a, b = inst[:, 1:], inst[:, :-1]
        touch = {(int(p), int(q)) for p, q in zip(a[a != b], b[a != b], strict=True) if p and q}
        return float(np.mean([(int(i), int(j)) in touch or (int(j), int(i)) in touch for i, j in zip(ids, partner,
                                                                                                  strict=True)]))

    size = (320, 320)
    loose = render_labels(SynthConfig(size=size, seed=5, tissue_fraction=1.0), 0, 320, 0, 320)
    packed = render_labels(SynthConfig(size=size, seed=5, tissue_fraction=1.0, touching=0.3), 0, 320, 0, 320)
    assert touching_fraction(packed) >= 0.3
    assert partner_fraction(packed, 16) >= partner_fraction(loose, 16) + 0.15  # pairs pressed together
    with pytest.raises(ConfigError, match="touching must be a fraction"):
        SynthConfig(size=size, touching=1.0)
