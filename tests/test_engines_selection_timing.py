"""`--engine auto` on a CPU times every engine after a warm-up, in alternating rounds, by the median."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from slideseg.engines.selection import measure_fastest


class _Scripted:
    """An engine whose successive calls take the given seconds on a shared fake clock."""

    def __init__(self, seconds: list[float], clock: list[float], calls: list[str], name: str) -> None:
        self.seconds, self.clock, self.calls, self.name = list(seconds), clock, calls, name

    def infer(self, batch: np.ndarray) -> np.ndarray:
        self.calls.append(self.name)
        self.clock[0] += self.seconds.pop(0) if len(self.seconds) > 1 else self.seconds[0]
        return batch


def _measure(torch_calls: list[float], ort_calls: list[float]) -> tuple[str, list[str]]:
    clock, calls = [0.0], []  # type: ignore[var-annotated]
    engines = {"torch": lambda: _Scripted(torch_calls, clock, calls, "torch"),
               "onnxruntime": lambda: _Scripted(ort_calls, clock, calls, "onnxruntime")}
    name, _ = measure_fastest(engines, np.zeros(1), {"case": [torch_calls, ort_calls]}, timer=lambda: clock[0])
    return name, calls


def test_a_slow_first_call_is_warm_up_not_speed(engines_dir: Path) -> None:
    # torch's first call builds its kernels (0.444 s), then runs in 1 ms; ONNX Runtime takes 10 ms throughout
    name, _ = _measure([0.444, 0.001], [0.010])
    assert name == "torch"


def test_one_disturbed_call_does_not_decide(engines_dir: Path) -> None:
    # after two warm-up calls, ONNX Runtime is hit once by a busy moment (1 s); its median stays 2 ms < torch's 5 ms
    name, _ = _measure([0.005], [0.002, 0.002, 1.0, 0.002])
    assert name == "onnxruntime"


def test_engines_take_turns_after_their_warm_up(engines_dir: Path) -> None:
    _, calls = _measure([0.001], [0.001])
    assert calls[:4] == ["torch", "torch", "onnxruntime", "onnxruntime"]  # two warm-up calls each
    assert calls[4:] == ["torch", "onnxruntime"] * 5  # then one call each per round
