"""Scheduling: one Dask task per output chunk reads its haloed window, runs its tiles through the
engine and writes exactly that chunk. No chunk is ever written by two tasks.

Tasks are fed to the Dask scheduler a bounded number at a time, so memory does not grow with the
slide. A task carries only a small picklable :class:`JobSpec`; each worker process opens the
slide, the output and the model once (cached per process, preloaded by a worker plugin). Inside a
process, one consumer thread per engine runs inference (:class:`Batcher`), filling batches with
tiles from several chunks, while the other threads read, decode, post-process and compress.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from itertools import islice
from typing import Any

import numpy as np

from slideseg.engines.registry import load_engine
from slideseg.io.normalise import Op
from slideseg.io.resample import ResampledSlide
from slideseg.io.slide import open_slide
from slideseg.plan.tiles import MirrorMode, Plan
from slideseg.schedule.batcher import Batcher, _Capped
from slideseg.schedule.chunks import infer_chunk, softmax, to_uint8_probabilities
from slideseg.write.mask import open_mask_writer


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
    normalisation: tuple[Op, ...] | None = None
    """One slide's resolved pre-processing constants, used in place of the model's own (None: the model's)."""


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
            engine = load_engine(key.model_path, key.name, device=key.device, threads=key.threads,
                                 precision=key.precision, compile=key.compile, max_batch=key.max_batch,
                                 normalisation=key.normalisation)
            _ENGINES[key] = Batcher(engine)
        return _ENGINES[key]


def _job_state(spec: JobSpec) -> tuple[Any, Any]:
    """(slide, mask writer) of ``spec`` in this process, opened on first use."""
    with _LOCK:
        if spec in _JOBS:
            _JOBS.move_to_end(spec)
            return _JOBS[spec]

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
