"""The batcher: one consumer thread per engine fills batches with tiles from several callers and
hands each caller its own results, or its error."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from slideseg.schedule.batcher import Batcher


class _CountingEngine:
    """Doubles its input; records the batch sizes it was called with."""

    def __init__(self) -> None:
        self.config = None
        self.calls: list[int] = []
        self.gate = threading.Event()

    def infer(self, batch: np.ndarray) -> np.ndarray:
        self.gate.wait(5)
        self.calls.append(len(batch))
        return batch.astype(np.float32) * 2


def test_batcher_fills_batches_from_several_callers() -> None:
    engine = _CountingEngine()
    batcher = Batcher(engine)  # type: ignore[arg-type]
    inputs = [np.full((1, 1, 2, 2), i, np.uint8) for i in range(6)]
    results: dict[int, np.ndarray] = {}
    threads = [threading.Thread(target=lambda i=i: results.__setitem__(i, batcher.infer(inputs[i], 4)))
               for i in range(6)]
    for t in threads:
        t.start()
    engine.gate.set()
    for t in threads:
        t.join(10)
    assert all(np.array_equal(results[i], inputs[i] * 2.0) for i in range(6))
    assert sum(engine.calls) == 6 and max(engine.calls) > 1 and max(engine.calls) <= 4


def test_batcher_passes_errors_to_the_caller() -> None:
    class Broken:
        config = None

        def infer(self, batch: np.ndarray) -> np.ndarray:
            raise MemoryError("too big")

    with pytest.raises(MemoryError, match="too big"):
        Batcher(Broken()).infer(np.zeros((1, 1, 2, 2)), 2)  # type: ignore[arg-type]
