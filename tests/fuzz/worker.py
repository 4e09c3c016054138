"""The fuzz worker process: ``python -m tests.fuzz.worker``.

Reads one JSON line of setup (seeds, model, work folder, limits, master seed), imports everything
the commands need once, then answers each case line (a :class:`~tests.fuzz.child.CaseSpec`) with
one :class:`~tests.fuzz.child.CaseResult` line. Cases are run by forking, so this process stays
single-threaded and never touches Dask or torch itself.
"""

from __future__ import annotations

import json
import sys
import threading
from pathlib import Path


def _warm_up(commands: tuple[str, ...]) -> None:
    """Parse each command's options once (``--help``): Typer imports its option machinery on the
    first parse, and every forked case would pay for it again. Nothing that starts threads
    (Dask, Zarr's event loop, torch kernels) may run here: a forked child would inherit locks
    held by threads that do not exist in it."""
    import contextlib
    import io

    from slideseg.cli import app

    for command in commands:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):
            app([command, "--help"], prog_name="slideseg")


def main() -> None:
    setup = json.loads(sys.stdin.readline())
    import slideseg.cli
    import slideseg.predict
    import slideseg.tools.describe
    import slideseg.tools.evaluate
    import slideseg.tools.geojson
    import slideseg.tools.preview
    import slideseg.train.loop  # noqa: F401
    from tests.fuzz.child import COMMANDS, CaseSpec, Limits, run_case
    from tests.fuzz.seeds import Seed

    _warm_up(COMMANDS)

    seeds = {s["name"]: Seed(**{**s, "path": Path(s["path"]), "commands": tuple(s["commands"]),
                                 "predict_args": tuple(s["predict_args"])}) for s in setup["seeds"]}
    limits = Limits(setup["seconds"], setup["memory"])
    work, model, master = Path(setup["work"]), Path(setup["model"]), int(setup["master"])
    print("ready", flush=True)
    for line in sys.stdin:
        assert threading.active_count() == 1, "a thread in the worker would be inherited half-dead by each fork"
        d = json.loads(line)
        own = d.get("limits")
        spec = CaseSpec(**{**d, "commands": tuple(d["commands"]), "limits": None if own is None else tuple(own)})
        result = run_case(spec, seeds[spec.seed], master, work, model, limits)
        print(result.to_json(), flush=True)


if __name__ == "__main__":
    main()
