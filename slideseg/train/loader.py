"""A small background prefetcher: ``fn(i)`` for a range of ``i``, in order, computed ahead by
worker threads (training tiles, validation tiles)."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Generic, TypeVar

T = TypeVar("T")


class BackgroundLoader(Generic[T]):
    """``fn(i)`` for ``i`` in ``range(start, stop)``, in order, computed ahead in worker threads."""

    def __init__(self, fn: Callable[[int], T], start: int, stop: int, workers: int = 2, prefetch: int = 4) -> None:
        self._fn, self._next, self._stop = fn, start, stop
        self._prefetch = max(1, prefetch)
        self._pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="slideseg-data")
        self._queue: deque[Future[T]] = deque()
        self._lock = threading.Lock()

    def _fill(self) -> None:
        while len(self._queue) < self._prefetch and self._next < self._stop:
            self._queue.append(self._pool.submit(self._fn, self._next))
            self._next += 1

    def __iter__(self) -> Iterator[T]:
        return self

    def __next__(self) -> T:
        with self._lock:
            self._fill()
            if not self._queue:
                raise StopIteration
            future = self._queue.popleft()
            self._fill()
        return future.result()

    def close(self) -> None:
        for f in self._queue:
            f.cancel()
        self._queue.clear()
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> BackgroundLoader[T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
