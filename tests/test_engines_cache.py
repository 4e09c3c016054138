"""The engine artefact cache: TensorRT plan keys and file names (every field that makes a plan
unusable elsewhere changes the name), and load-or-build with hit, miss and rebuild of a stale plan.

The TensorRT calls are replaced by plain functions (``build``/``load``), so nothing here needs
TensorRT or a GPU."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from slideseg.engines.cache import EngineBuildError, PlanKey, load_or_build

KEY = PlanKey(onnx_sha256="3f" * 32, tensorrt_version="10.9.0.34", gpu_name="NVIDIA H100 80GB HBM3",
              compute_capability=(9, 0), input_name="pixels", shape_min=(1, 3, 572, 572),
              shape_opt=(8, 3, 572, 572), shape_max=(8, 3, 572, 572), precision="fp16", opt_level=3,
              workspace_bytes=4 << 30)


# --------------------------------------------------------------------------------------------
# Keys
# --------------------------------------------------------------------------------------------


def test_plan_name_says_what_the_plan_is() -> None:
    name = KEY.plan_filename()
    assert name.startswith("trt-3f3f3f3f3f3f-nvidia-h100-80gb-hbm3-sm90-trt10.9.0.34-t572-b8-fp16-o3-")
    assert name.endswith(".plan") and KEY.digest()[:10] in name


@pytest.mark.parametrize(("field", "value"), [
    ("onnx_sha256", "00" * 32),          # another export (weights, tile, precision...)
    ("tensorrt_version", "10.10.0.31"),  # plans load only on the TensorRT version that built them
    ("gpu_name", "NVIDIA A100-SXM4-80GB"),
    ("compute_capability", (8, 0)),      # ... and on the same GPU architecture
    ("shape_max", (16, 3, 572, 572)),    # another optimisation profile
    ("shape_min", (2, 3, 572, 572)),
    ("precision", "bf16"),
    ("opt_level", 5),
    ("workspace_bytes", 8 << 30),
])
def test_every_field_of_the_key_changes_the_plan_file(field: str, value: object) -> None:
    other = dataclasses.replace(KEY, **{field: value})
    assert other.digest() != KEY.digest() and other.plan_filename() != KEY.plan_filename()


def test_timing_cache_is_shared_per_tensorrt_version_and_gpu() -> None:
    same_gpu = dataclasses.replace(KEY, precision="bf16", shape_max=(4, 3, 1500, 1500), onnx_sha256="11" * 32)
    assert same_gpu.timing_cache_filename() == KEY.timing_cache_filename() == \
        "timing-trt10.9.0.34-nvidia-h100-80gb-hbm3-sm90.cache"
    assert dataclasses.replace(KEY, compute_capability=(8, 9)).timing_cache_filename() != KEY.timing_cache_filename()
    assert dataclasses.replace(KEY, tensorrt_version="11.0").timing_cache_filename() != KEY.timing_cache_filename()


# --------------------------------------------------------------------------------------------
# Cache hit / miss / rebuild (the TensorRT calls replaced by plain functions)
# --------------------------------------------------------------------------------------------


class Builder:
    """Stands in for build_plan: returns plan bytes and counts builds."""

    def __init__(self, payload: bytes = b"PLAN-v1") -> None:
        self.payload, self.calls = payload, 0

    def __call__(self) -> bytes:
        self.calls += 1
        return self.payload


def load_plan(data: bytes) -> str | None:
    """Stands in for Runtime.deserialize_cuda_engine, which returns None for a plan it cannot use."""
    return data.decode() if data.startswith(b"PLAN") else None


def test_miss_builds_writes_and_describes(tmp_path: Path) -> None:
    build = Builder()
    path = tmp_path / KEY.plan_filename()
    obj, status = load_or_build(path, build, load_plan, describe=KEY.to_dict())
    assert (obj, status, build.calls) == ("PLAN-v1", "miss", 1)
    assert path.read_bytes() == b"PLAN-v1"
    assert json.loads(path.with_name(path.name + ".json").read_text())["precision"] == "fp16"


def test_hit_loads_without_building(tmp_path: Path) -> None:
    path = tmp_path / "p.plan"
    path.write_bytes(b"PLAN-cached")
    build = Builder()
    assert load_or_build(path, build, load_plan) == ("PLAN-cached", "hit")
    assert build.calls == 0


@pytest.mark.parametrize("stale", [
    b"written by another TensorRT version",  # deserialize returns None
    b"",                                      # a truncated file
])
def test_a_plan_that_does_not_deserialise_is_rebuilt_and_replaced(tmp_path: Path, stale: bytes) -> None:
    path = tmp_path / "p.plan"
    path.write_bytes(stale)
    build = Builder(b"PLAN-new")
    assert load_or_build(path, build, load_plan) == ("PLAN-new", "rebuilt")
    assert build.calls == 1 and path.read_bytes() == b"PLAN-new"


def test_a_loader_that_raises_counts_as_stale(tmp_path: Path) -> None:
    path = tmp_path / "p.plan"
    path.write_bytes(b"PLAN-old")

    def explode(data: bytes) -> str:
        if data == b"PLAN-old":
            raise RuntimeError("Serialization assertion failed: magic tag mismatch")
        return data.decode()

    assert load_or_build(path, Builder(b"PLAN-new"), explode) == ("PLAN-new", "rebuilt")


def test_a_fresh_build_that_does_not_load_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(EngineBuildError, match="just built but does not load"):
        load_or_build(tmp_path / "p.plan", Builder(b"garbage"), load_plan)
