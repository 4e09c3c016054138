"""One inference thread in front of an engine, batching tiles from the threads that read and write.
"""

from __future__ import annotations

import queue
import threading
from concurrent.futures import Future

import numpy as np

from slideseg.engines.base import Engine


class Batcher:
    """One inference consumer thread in front of an engine: callers from many threads block in
    :meth:`infer`; the consumer concatenates waiting requests into batches of up to ``max_batch``
    tiles (each request says its own limit; None: never merged). Merged batches change which
    tiles share a batch from run to run, which can change the last bits of a CPU result, so
    ``predict`` merges only on GPUs."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.config = engine.config
        self._requests: queue.Queue[tuple[np.ndarray, int, Future[np.ndarray]]] = queue.Queue()
        self._thread = threading.Thread(target=self._consume, name="slideseg-infer", daemon=True)
        self._thread.start()

    def infer(self, batch: np.ndarray, max_batch: int | None = None) -> np.ndarray:
        done: Future[np.ndarray] = Future()
        self._requests.put((batch, max_batch or len(batch), done))
        return done.result()

    def _consume(self) -> None:
        while True:
            first = self._requests.get()
            pending, n, cap = [first], len(first[0]), first[1]
            while n < cap:
                try:
                    req = self._requests.get_nowait()
                except queue.Empty:
                    break
                if n + len(req[0]) > min(cap, req[1]) or req[0].shape[1:] != first[0].shape[1:]:
                    self._run(pending)
                    first = req
                    pending, n, cap = [req], len(req[0]), req[1]
                    continue
                pending.append(req)
                n += len(req[0])
            self._run(pending)

    def _run(self, pending: list[tuple[np.ndarray, int, Future[np.ndarray]]]) -> None:
        try:
            batch = pending[0][0] if len(pending) == 1 else np.concatenate([b for b, _, _ in pending])
            logits = self.engine.infer(batch)
        except BaseException as exc:  # handed to every waiting caller
            for _, _, fut in pending:
                fut.set_exception(exc)
            return
        start = 0
        for b, _, fut in pending:
            fut.set_result(logits[start : start + len(b)])
            start += len(b)


class _Capped:
    """A :class:`Batcher` seen as an engine whose batches hold at most ``cap`` tiles (None: only
    the tiles of one call, never merged with others)."""

    def __init__(self, batcher: Batcher, cap: int | None) -> None:
        self.batcher, self.cap, self.config = batcher, cap, batcher.config

    def infer(self, batch: np.ndarray) -> np.ndarray:
        return self.batcher.infer(batch, self.cap)
