"""Everything around TensorRT that can be checked without it: plan cache keys and names, cache
hit / miss / rebuild, strong typing vs builder flags, and the error when TensorRT is absent.

TensorRT itself is not installable here, so nothing in this file builds or runs a plan: the
TensorRT calls sit behind small seams (``build``/``load`` callables) and the tests pass plain
functions there. Whether the engine works on a GPU is checked by ``TestTensorRTEngine`` in
tests/test_engines.py, which runs only where TensorRT and a GPU are present.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import pytest

from slideseg.engines.cache import EngineBuildError, PlanKey, load_or_build
from slideseg.engines.tensorrt_engine import TRT_HINT, import_tensorrt, make_plan_key, typing_mode
from slideseg.errors import ConfigError

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


def test_make_plan_key_hashes_the_onnx_file_and_profiles_batch_1_to_b(tmp_path: Path) -> None:
    onnx = tmp_path / "m.onnx"
    onnx.write_bytes(b"graph-1")
    key = make_plan_key(onnx, tensorrt_version="11.2.0", gpu=("NVIDIA H200", (9, 0)), input_name="pixels",
                        in_channels=3, tile=1500, max_batch=6, precision="bf16", opt_level=4, workspace_bytes=1 << 30)
    assert (key.shape_min, key.shape_opt, key.shape_max) == ((1, 3, 1500, 1500), (6, 3, 1500, 1500),
                                                             (6, 3, 1500, 1500))
    onnx.write_bytes(b"graph-2")  # a re-export with other weights: another plan
    again = make_plan_key(onnx, tensorrt_version="11.2.0", gpu=("NVIDIA H200", (9, 0)), input_name="pixels",
                          in_channels=3, tile=1500, max_batch=6, precision="bf16", opt_level=4,
                          workspace_bytes=1 << 30)
    assert again.onnx_sha256 != key.onnx_sha256 and again.plan_filename() != key.plan_filename()
    assert json.loads(json.dumps(key.to_dict()))["gpu_name"] == "NVIDIA H200"


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


# --------------------------------------------------------------------------------------------
# Strong typing vs builder precision flags
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("graph", "requested", "strong", "flags", "want"), [
    ("fp16", "fp16", True, {"FP16", "BF16"}, (True, None)),   # TensorRT 10: precision from the graph
    ("bf16", "bf16", True, set(), (True, None)),              # TensorRT 11: the same, no flags exist
    ("fp16", "fp32", True, set(), (True, None)),              # a half export run as it is
    (None, "fp32", True, set(), (True, None)),                # your own fp32 ONNX file
    (None, "fp16", True, {"FP16", "BF16"}, (False, "FP16")),  # fp32 graph + fp16: TRT 10's flag as fallback
    ("fp32", "bf16", True, {"FP16", "BF16"}, (False, "BF16")),
    ("fp16", "fp16", False, {"FP16"}, (False, "FP16")),       # no strong typing at all: flags
])
def test_typing_mode(graph: str | None, requested: str, strong: bool, flags: set[str],
                     want: tuple[bool, str | None]) -> None:
    assert typing_mode(graph, requested, strongly_typed_available=strong, builder_flags=flags) == want


def test_half_precision_from_an_fp32_graph_on_tensorrt_11_says_to_export_in_it() -> None:
    with pytest.raises(ConfigError, match=r"strongly typed.*export the model in fp16"):
        typing_mode("fp32", "fp16", strongly_typed_available=True, builder_flags=set())


# --------------------------------------------------------------------------------------------
# TensorRT absent
# --------------------------------------------------------------------------------------------


def test_without_tensorrt_the_engine_is_an_error_with_the_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # `import tensorrt` raises ImportError
    with pytest.raises(ConfigError, match=r"needs TensorRT: pip install 'slideseg\[gpu\]'"):
        import_tensorrt()
    assert "slideseg[gpu]" in TRT_HINT
