"""Building engines by name: options that belong to one engine, and `auto` with a precision only
one CPU engine has."""

from __future__ import annotations

import pytest

from slideseg.engines.registry import build_engine, make_engine
from slideseg.errors import ConfigError
from tests.conftest import tiny_model


def test_compile_applies_to_torch_only() -> None:
    with pytest.raises(ConfigError, match="--compile applies to the torch engine"):
        make_engine("onnxruntime", tiny_model(), device="cpu", compile=True)


def test_auto_with_bf16_on_a_cpu_runs_torch_without_measuring(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SLIDESEG_CPU_ENGINE", raising=False)  # nothing chosen in advance
    engine = build_engine("auto", ("tensorrt", "torch", "onnxruntime"), model=tiny_model(), device="cpu",
                          precision="bf16")
    assert engine.name == "torch" and engine.describe()["precision"] == "bf16"
    assert "measured" not in engine.describe()["reason"]
