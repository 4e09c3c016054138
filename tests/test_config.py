"""One convention for every config (slideseg/config.py), and outputs of release 0.1.0 still open."""

from __future__ import annotations

import dataclasses
import json
import shutil
import typing
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from typer.testing import CliRunner

from slideseg.cli import app
from slideseg.config import CHANGES_OUTPUT, Config, flagged
from slideseg.engines import base as engine_base
from slideseg.errors import ConfigError
from slideseg.io.ngff import NgffVersion
from slideseg.model.config import PRECISIONS, Precision, UNetConfig, read_model_config
from slideseg.plan.tiles import MirrorMode
from slideseg.predict import DEFAULT_MODEL, OUTPUT_FIELDS, PredictConfig, predict
from slideseg.schedule.cluster import ClusterConfig
from slideseg.tools.synth import SynthConfig
from slideseg.train.augment import AugmentConfig
from slideseg.train.loop import TrainConfig
from slideseg.write.mask import describe_mask, read_mask
from tests.conftest import chunk_files

RELEASE_0_1_0 = Path(__file__).parent / "fixtures" / "release-0.1.0"

# One of each config, every field away from its default where it can be (tuples included).
EXAMPLES: list[Config] = [
    UNetConfig(depth=2, width=4, in_channels=2, classes=3, mirror="symmetric", mpp=None,
               norm_mean=(1.0, 2.0), norm_std=(3.0,), class_names=("bg", "a", "b")),
    PredictConfig(tile=124, batch_size=3, chunk=256, ngff="0.5", shard=512, level=1, mpp=0.25, channels=(2, 0),
                  series=1, device="cuda:1", engine="onnxruntime", precision="bf16", compile=True,
                  probabilities=True, tissue=False, tissue_mask="t.png", preview=True, into="i.zarr", name="n",
                  resume=True, threads=3),
    TrainConfig(steps=5, tile=132, optimizer="adam", lr=0.01, loss="ce", augment=AugmentConfig(elastic=False),
                max_time=2.5, device="cpu", threads=1),
    AugmentConfig(flips=False, elastic_sigma=4.0, stain_jitter=0.05),
    SynthConfig(size=(300, 400), seed=3, nucleus_radius=(4, 8), cell=16, tile=128),
    ClusterConfig(cluster="slurm", jobs=2, gpus_per_job=1, queue="gpu"),
]


def _name(cfg: Config) -> str:
    return type(cfg).__name__


# ------------------------------------------------------------------------------- the convention


@pytest.mark.parametrize("cfg", EXAMPLES, ids=_name)
def test_a_config_round_trips_through_json(cfg: Config) -> None:
    stored = json.loads(json.dumps(cfg.to_dict()))
    assert stored == cfg.to_dict()  # to_dict is JSON already: lists, not tuples
    assert type(cfg).from_dict(stored) == cfg  # tuples (nested too) and nested configs come back


@pytest.mark.parametrize("cfg", EXAMPLES, ids=_name)
def test_unknown_keys_are_refused_by_name(cfg: Config) -> None:
    name = _name(cfg)
    with pytest.raises(ConfigError, match=rf"Unknown {name} keys \['colour'\]; known are \[.*'{_first_field(cfg)}'"):
        type(cfg).from_dict({**cfg.to_dict(), "colour": 1})


def _first_field(cfg: Config) -> str:
    return dataclasses.fields(typing.cast(Any, cfg))[0].name


@pytest.mark.parametrize("cfg", EXAMPLES, ids=_name)
def test_every_config_is_frozen_and_replace_validates(cfg: Config) -> None:
    first = _first_field(cfg)
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(cfg, first, None)
    assert dataclasses.replace(typing.cast(Any, cfg)) == cfg


@pytest.mark.parametrize(("cfg", "change", "match"), [
    (PredictConfig(), {"chunk": 8}, "--chunk must be >= 16"),  # too small a chunk
    (PredictConfig(), {"precision": "fp64"}, "--precision must be one of fp32, fp16, bf16"),
    (PredictConfig(), {"engine": "tflite"}, "unknown engine 'tflite'"),
    (PredictConfig(), {"shard": 4096}, "--shard needs --ngff 0.5"),  # a shard of an NGFF 0.4 output
    (UNetConfig(), {"mirror": "wrap"}, "mirror must be reflect|symmetric"),
    (TrainConfig(), {"optimizer": "lbfgs"}, "--optimizer must be sgd or adam"),
    (ClusterConfig(), {"cluster": "lsf"}, "--cluster must be slurm or pbs"),
])
def test_replace_runs_the_validation_again(cfg: Any, change: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        dataclasses.replace(cfg, **change)


def test_missing_fields_without_default_are_named() -> None:
    with pytest.raises(ConfigError, match=r"SynthConfig needs 'size' \(no default\)"):
        SynthConfig.from_dict({"seed": 1})


def test_values_of_the_wrong_kind_are_a_config_error() -> None:
    with pytest.raises(ConfigError, match="PredictConfig cannot be built"):
        PredictConfig.from_dict({"chunk": "big"})
    with pytest.raises(ConfigError, match="read from a mapping"):
        UNetConfig.from_dict([("depth", 2)])  # type: ignore[arg-type]


def test_nested_configs_are_rebuilt() -> None:
    cfg = TrainConfig.from_dict({"augment": {"elastic": False}})
    assert cfg.augment == AugmentConfig(elastic=False)
    with pytest.raises(ConfigError, match=r"Unknown AugmentConfig keys \['elastik'\]"):
        TrainConfig.from_dict({"augment": {"elastik": False}})


def test_retired_keys_are_listed_and_only_they_are_ignored() -> None:
    assert set(PredictConfig.RETIRED_KEYS) == {"workers"}
    assert all(why for why in PredictConfig.RETIRED_KEYS.values())  # each says why it went
    assert PredictConfig.from_dict({"chunk": 64, "workers": 2}) == PredictConfig(chunk=64)
    with pytest.raises(ConfigError, match=r"Unknown PredictConfig keys \['worker'\].*retired, ignored: \['workers'\]"):
        PredictConfig.from_dict({"chunk": 64, "worker": 2})
    with pytest.raises(ConfigError, match=r"Unknown UNetConfig keys \['workers'\]"):  # retired for predict only
        UNetConfig.from_dict({"workers": 2})


def test_the_resume_check_reads_the_flags() -> None:
    assert flagged(PredictConfig, CHANGES_OUTPUT) == OUTPUT_FIELDS
    assert set(OUTPUT_FIELDS) == {"tile", "chunk", "ngff", "shard", "into", "name", "level", "mpp", "channels",
                                  "series", "probabilities", "precision", "compile", "tissue", "tissue_mask",
                                  "norm", "norm_level"}


def test_choices_are_literal_types_defined_once() -> None:
    hints = typing.get_type_hints(PredictConfig)
    assert hints["precision"] is Precision and hints["ngff"] is NgffVersion
    assert hints["engine"] is engine_base.EngineName
    assert typing.get_type_hints(UNetConfig)["mirror"] is MirrorMode
    assert PRECISIONS == typing.get_args(Precision) == ("fp32", "fp16", "bf16")
    assert engine_base.PRECISIONS is PRECISIONS  # one tuple, imported where it is needed


# ------------------------------------------------------------------- outputs of release 0.1.0


def run(*args: str | Path) -> tuple[int, str, str]:
    r = CliRunner().invoke(app, [str(a) for a in args])
    return r.exit_code, r.stdout, r.stderr


def test_a_0_1_0_model_file_is_read() -> None:
    cfg, meta = read_model_config(RELEASE_0_1_0 / "model.safetensors")
    assert cfg == UNetConfig(depth=2, width=4)
    assert meta == {"trained": False, "seed": 0}


def test_the_bundled_model_records_a_readable_train_config() -> None:
    cfg, meta = read_model_config(DEFAULT_MODEL)
    train = TrainConfig.from_dict(meta["train_config"])
    assert train.tile == meta["tile"] and isinstance(train.augment, AugmentConfig)
    assert cfg.classes == 2


def test_a_0_1_0_mask_is_described_and_read() -> None:
    mask = RELEASE_0_1_0 / "mask.zarr"
    code, out, err = run("info", mask, "--json")
    assert code == 0, err
    info = json.loads(out)
    assert info["kind"] == "mask" and info["complete"] is True
    record = describe_mask(mask)["slideseg"]
    assert PredictConfig.from_dict(record["predict_config"]) == PredictConfig(
        chunk=64, device="cpu", engine="torch", tissue=False)
    assert UNetConfig.from_dict(record["model_config"]) == read_model_config(RELEASE_0_1_0 / "model.safetensors")[0]
    labels = np.asarray(read_mask(mask).levels[0][:])
    assert labels.shape == (96, 128) and set(np.unique(labels)) <= {0, 1}


@pytest.fixture
def old_mask(tmp_path: Path) -> Path:
    """A copy of the 0.1.0 mask whose record points at the slide beside it (as on the machine that made it)."""
    mask = shutil.copytree(RELEASE_0_1_0 / "mask.zarr", tmp_path / "mask.zarr")
    _edit_record(mask, lambda r: {**r, "source": {**r["source"], "path": str(RELEASE_0_1_0 / "slide.ome.tif")}})
    return mask


def _edit_record(mask: Path, edit: Any) -> None:
    group = zarr.open_group(mask, mode="r+")
    group.attrs["slideseg"] = edit(dict(group.attrs["slideseg"]))  # type: ignore[arg-type]


PREDICT_AS_0_1_0 = ("--model", RELEASE_0_1_0 / "model.safetensors", "--no-tissue", "--chunk", "64",
                    "--device", "cpu", "--engine", "torch", "--no-progress", "--resume")


def test_a_complete_0_1_0_mask_resumes_to_nothing(old_mask: Path) -> None:
    before = chunk_files(old_mask)
    code, out, err = run("predict", RELEASE_0_1_0 / "slide.ome.tif", "-o", old_mask, *PREDICT_AS_0_1_0)
    assert code == 0, err
    assert "0 run, 0 background (no tissue), 4 already done" in out
    assert chunk_files(old_mask) == before


def test_an_interrupted_0_1_0_mask_resumes(old_mask: Path) -> None:
    reference = np.asarray(read_mask(old_mask).levels[0][:])
    group = zarr.open_group(old_mask, mode="r+")
    group["chunks_done"][1, 0] = 0  # type: ignore[index]
    group["0"][64:, :64] = 0  # type: ignore[index]
    _edit_record(old_mask, lambda r: {**r, "complete": False})
    code, out, err = run("predict", RELEASE_0_1_0 / "slide.ome.tif", "-o", old_mask, *PREDICT_AS_0_1_0)
    assert code == 0, err
    assert "1 run, 0 background (no tissue), 3 already done" in out
    again = np.asarray(read_mask(old_mask).levels[0][:])
    np.testing.assert_array_equal(again[:64], reference[:64])  # the chunks it had are untouched
    # the chunk run again: as 0.1.0 computed it (a CPU or torch of another build may break a near-tie)
    assert np.mean(again[64:, :64] == reference[64:, :64]) > 0.99


def test_a_0_1_0_record_with_a_retired_key_resumes(old_mask: Path) -> None:
    _edit_record(old_mask, lambda r: {**r, "predict_config": {**r["predict_config"], "workers": 2}})
    result = predict(RELEASE_0_1_0 / "slide.ome.tif", old_mask, RELEASE_0_1_0 / "model.safetensors",
                     PredictConfig(chunk=64, device="cpu", engine="torch", tissue=False, resume=True))
    assert result.chunks_already_done == 4 and result.chunks_run == 0


def test_a_record_with_an_unknown_key_is_not_resumed(old_mask: Path) -> None:
    _edit_record(old_mask, lambda r: {**r, "predict_config": {**r["predict_config"], "halo": 8}})
    with pytest.raises(ConfigError, match=r"cannot resume .*recorded predict options cannot be read .*\['halo'\]"):
        predict(RELEASE_0_1_0 / "slide.ome.tif", old_mask, RELEASE_0_1_0 / "model.safetensors",
                PredictConfig(chunk=64, device="cpu", engine="torch", tissue=False, resume=True))
