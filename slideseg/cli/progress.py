"""Progress for long runs: a rich bar on a terminal, periodic plain log lines elsewhere."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

if TYPE_CHECKING:
    from slideseg.train.loop import TrainEvent


class _MegapixelsPerSecond(ProgressColumn):
    def render(self, task: Task) -> Text:
        elapsed = task.elapsed or 0.0
        mp = task.fields.get("pixels", 0) / 1e6
        if not task.fields.get("total_px"):
            return Text("")
        return Text(f"{mp / elapsed:6.2f} MP/s" if elapsed > 0 else "   -- MP/s", style="cyan")


ProgressStart = Callable[[int, int], Callable[[int], None]]
"""``start(n_units, n_pixels)`` returns the callback to call once per finished unit."""


@contextmanager
def chunk_progress(label: str, enabled: bool = True, console: Console | None = None,
                   interval: float = 10.0, unit: str = "chunks") -> Iterator[ProgressStart]:
    """Yield a ``start(n_units, n_pixels) -> on_unit(pixels)`` factory for one run.

    On a terminal this draws a bar with units done/total, megapixels/s (when ``n_pixels`` > 0) and
    the ETA; otherwise it
    prints one plain line every ``interval`` seconds (batch logs), and nothing when disabled.
    """
    console = console or Console(stderr=True)
    if not enabled:
        yield lambda n, px: (lambda pixels: None)
        return
    if console.is_terminal:
        columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn(unit), _MegapixelsPerSecond(), TimeElapsedColumn(), TextColumn("ETA"),
                   TimeRemainingColumn())
        with Progress(*columns, console=console) as bar:

            def start(n: int, total_px: int) -> Callable[[int], None]:
                task = bar.add_task(label, total=n, pixels=0, total_px=total_px)

                def on_chunk(pixels: int) -> None:
                    done_px = bar.tasks[task].fields["pixels"] + pixels
                    bar.update(task, advance=1, pixels=done_px)

                return on_chunk

            yield start
        return

    def start_plain(n: int, total_px: int) -> Callable[[int], None]:
        t0 = last = time.monotonic()
        done = [0, 0]

        def on_chunk(pixels: int) -> None:
            nonlocal last
            done[0] += 1
            done[1] += pixels
            now = time.monotonic()
            if now - last >= interval or done[0] == n:
                last = now
                elapsed = max(now - t0, 1e-9)
                eta = (n - done[0]) * elapsed / done[0]
                rate = f", {done[1] / 1e6 / elapsed:.2f} MP/s" if total_px else ""
                print(f"{label}: {done[0]}/{n} {unit}{rate}, ETA {eta:.0f} s", file=sys.stderr, flush=True)

        return on_chunk

    yield start_plain


class PredictProgress:
    """Progress of a ``predict`` run over one or more slides (an ``Observer`` for
    :func:`slideseg.predict.predict`): a rich display on a terminal with slides done, chunks done,
    megapixels/s, chunks skipped as background and the ETA; plain periodic lines otherwise."""

    def __init__(self, n_slides: int = 1, console: Console | None = None, enabled: bool = True,
                 interval: float = 10.0) -> None:
        self.console = console or Console(stderr=True)
        self.enabled = enabled
        self.interval = interval
        self.n_slides = n_slides
        self._bar: Progress | None = None
        self._slides_task: Any = None
        self._task: Any = None
        self._slide = 0
        self._plain: dict[str, Any] = {}

    def __enter__(self) -> PredictProgress:
        if self.enabled and self.console.is_terminal:
            columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                       _MegapixelsPerSecond(), TextColumn("{task.fields[skipped]}"), TimeElapsedColumn(),
                       TextColumn("ETA"), TimeRemainingColumn())
            self._bar = Progress(*columns, console=self.console)
            self._bar.__enter__()
            if self.n_slides > 1:
                self._slides_task = self._bar.add_task("slides", total=self.n_slides, pixels=0, total_px=0,
                                                       skipped="")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.__exit__(None, None, None)

    def slide_started(self, name: str, n_chunks: int, n_pixels: int) -> None:
        self._slide += 1
        if self._bar is not None:
            if self._task is not None:
                self._bar.remove_task(self._task)
                if self._slides_task is not None:
                    self._bar.advance(self._slides_task)
            self._task = self._bar.add_task(name, total=n_chunks, pixels=0, total_px=n_pixels, skipped="", n_skip=0)
        elif self.enabled:
            now = time.monotonic()
            self._plain = {"name": name, "n": n_chunks, "done": 0, "skip": 0, "px": 0, "t0": now, "last": now}
            print(f"predict {name} ({self._slide}/{self.n_slides}): {n_chunks} chunks to do",
                  file=sys.stderr, flush=True)

    def chunk_done(self, pixels: int, skipped: bool) -> None:
        if self._bar is not None and self._task is not None:
            task = self._bar.tasks[self._task]
            n_skip = task.fields["n_skip"] + skipped
            self._bar.update(self._task, advance=1, pixels=task.fields["pixels"] + (0 if skipped else pixels),
                             n_skip=n_skip, skipped=f"{n_skip} background" if n_skip else "")
            return
        if not self.enabled or not self._plain:
            return
        p = self._plain
        p["done"] += 1
        p["skip"] += skipped
        p["px"] += 0 if skipped else pixels
        now = time.monotonic()
        if now - p["last"] >= self.interval or p["done"] == p["n"]:
            p["last"] = now
            elapsed = max(now - p["t0"], 1e-9)
            eta = (p["n"] - p["done"]) * elapsed / p["done"]
            print(f"predict {p['name']}: {p['done']}/{p['n']} chunks ({p['skip']} background), "
                  f"{p['px'] / 1e6 / elapsed:.2f} MP/s, ETA {eta:.0f} s", file=sys.stderr, flush=True)


@contextmanager
def train_progress(enabled: bool = True, console: Console | None = None
                   ) -> Iterator[Callable[[TrainEvent], None] | None]:
    """Yield the ``on_event`` callback of a training run (None when disabled): a rich bar with the
    running loss and the last validation (IoU, object F1, merge rate) on a terminal; the budget
    and one plain line per epoch elsewhere. A run with a time budget counts seconds, not steps."""
    console = console or Console(stderr=True)
    if not enabled:
        yield None
        return
    if console.is_terminal:
        columns = (TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[unit]}"),
                   TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[val]}"), TimeElapsedColumn(),
                   TextColumn("ETA"), TimeRemainingColumn())
        with Progress(*columns, console=console) as bar:
            task = bar.add_task("train", total=None, loss="-", val="", unit="steps")

            def on_event(e: TrainEvent) -> None:
                timed = e.total is None and e.limit is not None
                done = round(e.elapsed) if timed else e.step
                if e.kind == "start":
                    _print_start(console, e)
                    bar.update(task, total=round(e.limit or 0) if timed else e.total, completed=done,
                               unit="s" if timed else "steps")
                elif e.kind == "step":
                    bar.update(task, completed=done, loss=f"{e.loss:.4f}")
                else:
                    bar.update(task, completed=done, val=_validation(e.row, digits=3))

            yield on_event
        return

    def on_epoch(e: TrainEvent) -> None:
        if e.kind == "start":
            _print_start(console, e)
        elif e.kind == "epoch":
            row = e.row
            where = (f"step {e.step}/{e.total}" if e.total is not None else
                     f"step {e.step} ({e.elapsed:.0f}/{e.limit or 0:.0f} s)")
            val = _validation(row, digits=4)
            console.print(f"train: epoch {row['epoch']}, {where}, loss {row['train_loss']:.4f}"
                          f"{', ' + val if val else ''}, {row['tiles_per_s']:.2f} tiles/s", highlight=False)

    yield on_epoch


def _print_start(console: Console, e: TrainEvent) -> None:
    if e.row.get("budget"):
        console.print(f"train: budget {e.row['budget']}", highlight=False, soft_wrap=True)
    if e.row.get("validation"):
        console.print(f"train: validation {e.row['validation']}", highlight=False, soft_wrap=True)


def _validation(row: Any, digits: int) -> str:
    """'val IoU 0.912, object F1 0.871, merge rate 0.105' of an epoch row (what it has of them)."""
    parts = [(label, row[key]) for key, label in (("val_iou", "val IoU"), ("val_f1", "object F1"),
                                                  ("val_merge_rate", "merge rate")) if key in row]
    return ", ".join(f"{label} {'-' if v != v else f'{v:.{digits}f}'}" for label, v in parts)
