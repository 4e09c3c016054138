"""The background loader: results in order, from its own named threads, and errors raised to the
caller."""

from __future__ import annotations

import threading

import pytest

from slideseg.errors import TrainingDataError
from slideseg.train.loader import BackgroundLoader


def test_background_loader_keeps_order_and_raises() -> None:
    seen = set()
    lock = threading.Lock()

    def fn(i: int) -> int:
        with lock:
            seen.add(threading.current_thread().name)
        if i == 7:
            raise TrainingDataError("bad tile 7")
        return i * i

    with BackgroundLoader(fn, 2, 7, workers=3) as loader:
        assert list(loader) == [4, 9, 16, 25, 36]
    with BackgroundLoader(fn, 5, 10, workers=2) as loader, pytest.raises(TrainingDataError, match="bad tile 7"):
        list(loader)
    assert all(name.startswith("slideseg-data") for name in seen)
