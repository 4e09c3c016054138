"""Progress for long runs: a rich bar on a terminal, periodic plain log lines elsewhere."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

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
