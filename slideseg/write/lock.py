"""One run per output: a lock file beside the output names the process that writes it.

``mask.zarr.lock`` holds the host, the process id and the start time of the run that holds it. A
second run on the same output is refused with the holder's name. A lock left by a run that died
(``kill -9``, a node lost) is stale: on the same host the process is gone, and slideseg takes it
over; on another host slideseg cannot tell, so it refuses and says how to remove the lock once the
other run is known to be over.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from slideseg.errors import OutputLockedError

LOCK_SUFFIX = ".lock"


def lock_path(output: str | os.PathLike[str]) -> Path:
    """The lock file of ``output``: ``mask.zarr.lock`` beside ``mask.zarr``."""
    p = Path(output)
    return p.with_name(p.name + LOCK_SUFFIX)


@contextmanager
def output_lock(output: str | os.PathLike[str], lock: Path | None = None) -> Iterator[Path]:
    """Hold the lock of ``output`` for the duration of the block (created, then removed).

    ``lock`` is the lock file (default :func:`lock_path`); its folder must exist.

    Raises
    ------
    OutputLockedError
        Another live run holds the lock, or a run on another host does (or did).
    """
    path = lock if lock is not None else lock_path(output)
    holder = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            other = read_lock(path)
            if not _stale(other):
                raise OutputLockedError(_held_message(output, path, other)) from None
            path.unlink(missing_ok=True)  # its process is gone: take the output over
            continue
        with os.fdopen(fd, "w") as f:
            json.dump(holder, f)
        break
    else:  # pragma: no cover - another run took the stale lock between our two tries
        raise OutputLockedError(_held_message(output, path, read_lock(path)))
    try:
        yield path
    finally:
        if read_lock(path) == holder:
            path.unlink(missing_ok=True)


def read_lock(path: Path) -> dict[str, Any]:
    """What a lock file says of its holder ({} if it cannot be read)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _stale(holder: dict[str, Any]) -> bool:
    """A lock whose process is known to be gone: same host, no such process. A lock that cannot be
    read (a run killed while writing it) is stale too."""
    if not holder:
        return True
    if holder.get("host") != socket.gethostname():
        return False
    pid = holder.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, owned by someone else
        return False
    return False


def _held_message(output: str | os.PathLike[str], path: Path, holder: dict[str, Any]) -> str:
    who = f"process {holder.get('pid')} on {holder.get('host')}, started {holder.get('started')}"
    return (f"{output} is being written by another slideseg run ({who}); wait for it to finish, or, if that "
            f"run is over (a job killed on another node), remove {path} and run again with --resume.")
