"""The ``slideseg`` command line: parse, build a config, call one library function, report.

One module per command group; each registers its commands on the shared Typer ``app``.
Known errors (:class:`~slideseg.errors.SlideSegError`) become one line on stderr and exit code 2;
``--debug`` shows the traceback instead.
"""

from __future__ import annotations

from slideseg.cli import export, info, models, objects, predict, synth, train, views  # noqa: F401  (registers the commands)
from slideseg.cli._app import app


def main() -> None:
    """Console entry point."""
    app(prog_name="slideseg")


__all__ = ["app", "main"]
