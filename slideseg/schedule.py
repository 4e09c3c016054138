"""Scheduling: one Dask task per output chunk reads its haloed window, runs its tiles through the
engine and writes exactly that chunk. No chunk is ever written by two tasks.

Tasks are fed to the Dask scheduler a bounded number at a time, so memory does not grow with the
slide. A task carries only a small picklable :class:`JobSpec`; each worker process opens the
slide, the output and the model once (cached per process, preloaded by a worker plugin). Inside a
process, one consumer thread per engine runs inference (:class:`Batcher`), filling batches with
tiles from several chunks, while the other threads read, decode, post-process and compress.
"""

from __future__ import annotations

import queue
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from itertools import islice
from typing import Any, Protocol

import numpy as np

from slideseg.engines.base import Engine
from slideseg.model import UNetConfig
from slideseg.plan import Box, ChunkPlan, MirrorMode, Plan, mirror_index


class RegionReader(Protocol):
    """What the scheduler needs of a slide: its (Y, X, C) shape and in-bounds region reads."""

    @property
    def shape(self) -> tuple[int, int, int]: ...

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray: ...


class Inferrer(Protocol):
    """An engine, or a :class:`Batcher` in front of one."""

    config: UNetConfig

    def infer(self, batch: np.ndarray) -> np.ndarray: ...


# ------------------------------------------------------------------------------- one chunk (pure-ish)


def read_window(slide: RegionReader, window: Box, mode: MirrorMode) -> np.ndarray:
    """The pixels of ``window`` (Y, X, C), mirrored where it leaves the slide; one slide read."""
    h, w = slide.shape[:2]
    iy = mirror_index(np.arange(window.y0, window.y1), h, mode)
    ix = mirror_index(np.arange(window.x0, window.x1), w, mode)
    y0, y1, x0, x1 = int(iy.min()), int(iy.max()) + 1, int(ix.min()), int(ix.max()) + 1
    region = slide.read(y0, y1, x0, x1)
    if window == Box(y0, y1, x0, x1):  # entirely inside the slide: no mirroring needed
        return region
    return region[np.ix_(iy - y0, ix - x0)]


def infer_chunk(slide: RegionReader, engine: Inferrer, chunk: ChunkPlan, mode: MirrorMode,
                batch_size: int) -> np.ndarray:
    """Float32 logits (K, h, w) of one chunk, assembled from its tiles."""
    window = read_window(slide, chunk.window, mode)  # (Y, X, C)
    h, w = chunk.box.shape
    out = np.empty((engine.config.classes, h, w), np.float32)
    for group in _batched(chunk.tiles, batch_size):
        batch = np.stack([window[t.read.relative_to(chunk.window)] for t in group])  # (N, T, T, C)
        logits = engine.infer(batch.transpose(0, 3, 1, 2))  # (N, K, t, t)
        margin = (group[0].read.shape[0] - logits.shape[-1]) // 2  # where the network output starts
        for tile, tile_logits in zip(group, logits, strict=True):
            origin = tile.read.shrink(margin)  # the box the network output covers
            out[(slice(None), *tile.write.relative_to(chunk.box))] = tile_logits[
                (slice(None), *tile.write.relative_to(origin))
            ]
    return out


def softmax(logits: np.ndarray, axis: int = 0) -> np.ndarray:
    """Numerically stable softmax over ``axis`` (float32)."""
    z = logits - logits.max(axis=axis, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=axis, keepdims=True)
    return z


def to_uint8_probabilities(probs: np.ndarray) -> np.ndarray:
    """Probabilities in [0, 1] as uint8 0..255 (round to nearest)."""
    return np.rint(probs * 255.0).astype(np.uint8)


# ------------------------------------------------------------------------------------ batching


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


# ------------------------------------------------------------------------- tasks and their state


@dataclass(frozen=True)
class EngineKey:
    """What identifies a loaded engine in a worker process."""

    model_path: str
    name: str = "auto"
    device: str = "auto"
    threads: int | None = None
    precision: str = "fp32"
    compile: bool = False
    max_batch: int | None = None
    """Largest batch the engine will see (sizes ONNX exports and TensorRT profiles)."""


@dataclass(frozen=True)
class JobSpec:
    """Everything a chunk task needs, small and picklable: a worker reopens the rest."""

    slide_path: str
    level: int
    series: int
    output: str
    plan: Plan
    engine: EngineKey
    mirror: MirrorMode
    probabilities: bool
    batch_size: int
    factor: float = 1.0
    """Slide-level pixels per output pixel (resampling to the model's pixel size)."""
    channels: tuple[int, ...] | None = None
    merge_batches: bool = False
    """Fill batches with tiles of several chunks (on GPUs). Off, every batch holds the same tiles in
    every run: CPU kernels can give last-bit differences for a tile in batches of different
    composition, and a resumed run must be bitwise identical to an uninterrupted one."""


_LOCK = threading.Lock()
_ENGINES: dict[EngineKey, Batcher] = {}
_JOBS: OrderedDict[JobSpec, tuple[Any, Any]] = OrderedDict()
_MAX_OPEN_JOBS = 4


def engine_for(key: EngineKey) -> Batcher:
    """The engine of ``key`` in this process, loaded on first use."""
    with _LOCK:
        if key not in _ENGINES:
            from slideseg.engines import load_engine

            engine = load_engine(key.model_path, key.name, device=key.device, threads=key.threads,
                                 precision=key.precision, compile=key.compile, max_batch=key.max_batch)
            _ENGINES[key] = Batcher(engine)
        return _ENGINES[key]


def _job_state(spec: JobSpec) -> tuple[Any, Any]:
    """(slide, mask writer) of ``spec`` in this process, opened on first use."""
    with _LOCK:
        if spec in _JOBS:
            _JOBS.move_to_end(spec)
            return _JOBS[spec]
        from slideseg.io import open_slide
        from slideseg.resample import ResampledSlide
        from slideseg.write import open_mask_writer

        kw = {"channels": spec.channels} if spec.channels is not None else {}
        slide = open_slide(spec.slide_path, level=spec.level, series=spec.series, **kw)
        state = (ResampledSlide(slide, spec.factor) if spec.factor != 1.0 else slide, open_mask_writer(spec.output))
        _JOBS[spec] = state
        while len(_JOBS) > _MAX_OPEN_JOBS:
            _, (old_slide, _) = _JOBS.popitem(last=False)
            getattr(old_slide, "slide", old_slide).close()
        return state


def run_chunk(spec: JobSpec, iy: int, ix: int) -> int:
    """The Dask task: read, infer and write chunk ``(iy, ix)``; return its output pixel count."""
    slide, writer = _job_state(spec)
    engine = engine_for(spec.engine)
    chunk = spec.plan.chunk(iy, ix)
    capped = _Capped(engine, spec.batch_size if spec.merge_batches else None)
    logits = infer_chunk(slide, capped, chunk, spec.mirror, spec.batch_size)
    ids = logits.argmax(axis=0).astype(np.uint8)
    probs = to_uint8_probabilities(softmax(logits)) if spec.probabilities else None
    writer.write_chunk(iy, ix, ids, probs)
    return chunk.box.area


def preload_plugin(key: EngineKey) -> Any:
    """A worker plugin that loads the engine once per worker as it joins (idempotent)."""
    from distributed.diagnostics.plugin import WorkerPlugin

    class _Preload(WorkerPlugin):
        name = f"slideseg-engine-{abs(hash(key)):x}"

        def setup(self, worker: Any) -> None:
            engine_for(key)

    return _Preload()


def feed(client: Any, spec: JobSpec, indices: Iterable[tuple[int, int]], *, max_in_flight: int,
         on_done: Callable[[int], None] | None = None, resources: dict[str, float] | None = None) -> None:
    """Submit ``run_chunk`` for each chunk index, keeping at most ``max_in_flight`` tasks queued.

    The first task error cancels the rest and is raised here.
    """
    from distributed import as_completed

    it = iter(indices)
    pending = as_completed()
    for iy, ix in islice(it, max_in_flight):
        pending.add(client.submit(run_chunk, spec, iy, ix, pure=False, resources=resources))
    try:
        for fut in pending:
            pixels = fut.result()
            if on_done is not None:
                on_done(pixels)
            nxt = next(it, None)
            if nxt is not None:
                pending.add(client.submit(run_chunk, spec, *nxt, pure=False, resources=resources))
    except BaseException:
        client.cancel(list(pending.futures))
        raise


def _batched(items: tuple, n: int) -> Iterator[tuple]:
    it = iter(items)
    while group := tuple(islice(it, n)):
        yield group
