"""Everything around TensorRT that can be checked without it: plan keys made from an ONNX file,
strong typing vs builder flags, and the error when TensorRT is absent.

TensorRT itself is not installable here, so nothing in this file builds or runs a plan. Whether the
engine works on a GPU is checked by ``TestTensorRTEngine`` in tests/test_engines_contract.py, which
runs only where TensorRT and a GPU are present; the plan cache is tested in
tests/test_engines_cache.py.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from slideseg.engines.tensorrt_engine import TRT_HINT, import_tensorrt, make_plan_key, typing_mode
from slideseg.errors import ConfigError


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
