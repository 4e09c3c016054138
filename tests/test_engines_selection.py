"""`--engine auto`: TensorRT, then PyTorch on CUDA, then the faster CPU engine (measured once and
cached); an engine asked for by name that cannot run is an error with the install hint."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from slideseg.engines.base import Engine
from slideseg.engines.cache import choice_key, read_choice
from slideseg.engines.registry import make_engine
from slideseg.engines.selection import CPU_SWITCH_MARGIN, Backends, choose, measure_fastest, require
from slideseg.errors import ConfigError
from tests.conftest import needs_ort, tiny_model


def _never(cpu: tuple[str, ...]) -> tuple[str, str]:
    raise AssertionError("no CPU measurement expected")


@pytest.mark.parametrize(("backends", "candidates", "device", "want"), [
    # TensorRT importable and a GPU: TensorRT (the flags fake what is installed; nothing runs)
    (Backends(cuda=True, tensorrt=True, onnxruntime=True), ("tensorrt", "torch", "onnxruntime"), "auto", "tensorrt"),
    # a GPU without TensorRT: PyTorch on CUDA
    (Backends(cuda=True, tensorrt=False, onnxruntime=True), ("tensorrt", "torch", "onnxruntime"), "auto", "torch"),
    # an ONNX file on a GPU without TensorRT: ONNX Runtime
    (Backends(cuda=True, tensorrt=False, onnxruntime=True), ("tensorrt", "onnxruntime"), "cuda", "onnxruntime"),
    # --device cpu on a GPU machine: CPU engines only; ONNX Runtime absent: torch, no measurement
    (Backends(cuda=True, tensorrt=True, onnxruntime=False), ("tensorrt", "torch", "onnxruntime"), "cpu", "torch"),
    # a TorchScript model without a GPU: torch
    (Backends(cuda=False, tensorrt=False, onnxruntime=True), ("torch",), "auto", "torch"),
])
def test_auto_prefers_tensorrt_then_cuda_then_cpu(backends: Backends, candidates: tuple[str, ...], device: str,
                                                  want: str) -> None:
    name, reason = choose(candidates, backends, device, _never)
    assert name == want and reason


def test_auto_on_a_cpu_measures_when_both_cpu_engines_can_run(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SLIDESEG_CPU_ENGINE", raising=False)
    name, reason = choose(("tensorrt", "torch", "onnxruntime"), Backends(False, False, True), "auto",
                          lambda cpu: (cpu[-1], f"measured {cpu}"))
    assert name == "onnxruntime" and reason == "measured ('torch', 'onnxruntime')"


def test_the_cpu_engine_can_be_chosen_without_measuring(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLIDESEG_CPU_ENGINE", "onnxruntime")
    name, reason = choose(("torch", "onnxruntime"), Backends(False, False, True), "auto", _never)
    assert name == "onnxruntime" and "SLIDESEG_CPU_ENGINE" in reason
    monkeypatch.setenv("SLIDESEG_CPU_ENGINE", "torch")  # an ONNX file: only ONNX Runtime can run it
    assert choose(("onnxruntime",), Backends(False, False, True), "auto", _never)[0] == "onnxruntime"
    monkeypatch.setenv("SLIDESEG_CPU_ENGINE", "tflite")
    with pytest.raises(ConfigError, match="is not a CPU engine"):
        choose(("torch", "onnxruntime"), Backends(False, False, True), "auto", _never)


@pytest.mark.parametrize(("name", "backends", "device", "match"), [
    ("onnxruntime", Backends(False, False, False), "auto", r"pip install 'slideseg\[onnx\]'"),
    ("tensorrt", Backends(True, False, True), "auto", r"pip install 'slideseg\[gpu\]'"),
    ("tensorrt", Backends(False, False, True), "auto", "needs a CUDA GPU"),
    ("tensorrt", Backends(True, True, True), "cpu", "NVIDIA GPU only"),
    ("tflite", Backends(True, True, True), "auto", "unknown engine 'tflite'"),
])
def test_a_missing_engine_asked_for_by_name_is_an_error_with_the_hint(
        name: str, backends: Backends, device: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        require(name, backends, device)


class _Timed(Engine):
    """An engine that advances a fake clock by ``seconds`` per call."""

    name = "fake"

    def __init__(self, seconds: float, clock: list[float]) -> None:
        super().__init__(tiny_model().config, "x")
        self.seconds, self.clock = seconds, clock

    def infer(self, batch: np.ndarray) -> np.ndarray:
        self.clock[0] += self.seconds
        return batch


@pytest.mark.parametrize(("torch_s", "ort_s", "want"), [
    (1.0, 0.5, "onnxruntime"),                       # twice as fast: switch
    (1.0, 1.0 / (CPU_SWITCH_MARGIN * 0.99), "torch"),  # within the margin: keep the reference engine
    (0.5, 1.0, "torch"),
])
def test_cpu_measurement_picks_the_fastest_and_caches_it(engines_dir: Path, torch_s: float, ort_s: float,
                                                         want: str) -> None:
    clock = [0.0]
    made: list[str] = []

    def maker(name: str, s: float):  # type: ignore[no-untyped-def]
        return lambda: made.append(name) or _Timed(s, clock)

    engines = {"torch": maker("torch", torch_s), "onnxruntime": maker("onnxruntime", ort_s)}
    fields = {"case": [torch_s, ort_s]}
    name, reason = measure_fastest(engines, np.zeros(1), fields, timer=lambda: clock[0])
    assert name == want and "measured now" in reason and made == ["torch", "onnxruntime"]
    again, reason = measure_fastest(engines, np.zeros(1), fields, timer=lambda: clock[0])
    assert again == want and "cached" in reason and made == ["torch", "onnxruntime"]  # not measured again
    assert read_choice(choice_key(fields))["engine"] == want  # type: ignore[index]
    assert list(engines_dir.iterdir())  # in this test's own cache


@needs_ort
def test_auto_on_this_cpu_says_which_engine_and_why(engines_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SLIDESEG_CPU_ENGINE", raising=False)
    model = tiny_model(seed=7)
    engine = make_engine("auto", model, device="cpu")
    d = engine.describe()
    assert d["engine"] in ("torch", "onnxruntime") and "fastest on this CPU" in d["reason"]
    assert "measured now" in d["reason"]
    again = make_engine("auto", model, device="cpu")
    assert again.name == engine.name and "cached" in again.describe()["reason"]
