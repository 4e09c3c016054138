"""The PyTorch engine: CPU precision rules and the CUDA out-of-memory fallback."""

from __future__ import annotations

import numpy as np
import pytest

from slideseg.engines.registry import make_engine
from slideseg.engines.torch_engine import run_halving_on_oom
from slideseg.errors import ConfigError
from tests.conftest import raw_batch, reference_logits, tiny_model


def test_cpu_bf16_runs_under_autocast_and_stays_close() -> None:
    model = tiny_model(seed=1)
    batch = raw_batch(2)
    ref = reference_logits(model, batch)
    got = make_engine("torch", model, device="cpu", precision="bf16").infer(batch)
    assert got.dtype == np.float32
    assert np.abs(got - ref).max() < 0.05 * np.abs(ref).max()  # bf16 keeps ~3 significant digits
    assert np.abs(got - ref).max() > 0  # and it did compute in bf16


def test_cpu_fp16_is_refused_with_a_reason() -> None:
    with pytest.raises(ConfigError, match="fp16 is emulated on the CPU"):
        make_engine("torch", tiny_model(), device="cpu", precision="fp16")


class FakeOOM(RuntimeError):
    pass


def test_out_of_memory_halves_the_batch_and_carries_on() -> None:
    batch = np.arange(7)[:, None]
    calls: list[int] = []
    halved: list[int] = []

    def run(part: np.ndarray) -> np.ndarray:
        calls.append(len(part))
        if len(part) > 3:  # the "GPU" holds 3 tiles
            raise FakeOOM("CUDA out of memory")
        return part * 10

    out, limit = run_halving_on_oom(batch, run, 8, lambda e: isinstance(e, FakeOOM),
                                    lambda n, e: halved.append(n))
    np.testing.assert_array_equal(out, batch * 10)  # every tile, in order
    assert calls == [7, 3, 3, 1] and halved == [3] and limit == 3  # the limit sticks for the next call


def test_out_of_memory_on_one_tile_and_other_errors_are_raised() -> None:
    def oom(part: np.ndarray) -> np.ndarray:
        raise FakeOOM("CUDA out of memory")

    with pytest.raises(FakeOOM, match="CUDA out of memory"):
        run_halving_on_oom(np.zeros((1, 1)), oom, 1, lambda e: isinstance(e, FakeOOM), lambda n, e: None)

    def broken(part: np.ndarray) -> np.ndarray:
        raise ValueError("not memory")

    halved: list[int] = []
    with pytest.raises(ValueError, match="not memory"):
        run_halving_on_oom(np.zeros((4, 1)), broken, 4, lambda e: isinstance(e, FakeOOM),
                           lambda n, e: halved.append(n))
    assert halved == []  # an error that is not out-of-memory is not retried on smaller batches
