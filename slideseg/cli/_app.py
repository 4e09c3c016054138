"""The Typer app, the consoles and the error handling shared by every command.

Known errors (:class:`~slideseg.errors.SlideSegError`) become one line on stderr and exit code 2;
``--debug`` shows the traceback instead. Library defaults live in the config dataclasses: options
the user did not set are not passed on.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console

from slideseg.errors import SlideSegError

__all__ = ["app", "err", "out"]

app = typer.Typer(
    help="Exact, seamless U-Net segmentation of whole-slide images, streamed to OME-Zarr.\n\n"
    "Typical run: `slideseg synth demo.ome.tif --size 6000 8000`, "
    "`slideseg predict demo.ome.tif -o demo-mask.zarr` (the bundled nuclei model), "
    "`slideseg info demo-mask.zarr`, `slideseg evaluate demo-mask.zarr demo.truth.zarr`.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)
_state = {"debug": False}

F = TypeVar("F", bound=Callable[..., Any])


def _friendly_errors(fn: F) -> F:
    """Map known errors to one line and exit code 2 (tracebacks only with --debug)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except SlideSegError as exc:
            if _state["debug"]:
                raise
            err.print(f"[bold red]slideseg:[/] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            err.print("slideseg: interrupted")
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def _given(**options: Any) -> dict[str, Any]:
    """The options the user actually set (None means 'not given': the config's default applies)."""
    return {k: v for k, v in options.items() if v is not None}


@app.callback()
def _main(debug: Annotated[bool, typer.Option(
        "--debug", help="Show full tracebacks on errors, and the log messages of the libraries slideseg uses "
                        "(Dask, tifffile, Zarr).")] = False,
          ) -> None:
    _state["debug"] = debug
    _route_library_logs(debug)


_LIBRARY_LOGGERS = ("distributed", "tifffile", "zarr", "numcodecs", "tornado", "asyncio")
"""Libraries whose log messages (a task's traceback, warnings about a damaged file) repeat what
slideseg's one-line error says; they are shown only with ``--debug``."""


def _route_library_logs(debug: bool) -> None:
    """Without ``--debug`` the libraries' own log lines are silenced, so a failure prints one line; with
    it, they are shown, and slideseg's logger (which the cluster set-up also asks) speaks at DEBUG."""
    logging.getLogger("slideseg").setLevel(logging.DEBUG if debug else logging.WARNING)
    if debug:
        logging.basicConfig(level=logging.WARNING, format="%(name)s: %(levelname)s: %(message)s")
        return
    for name in _LIBRARY_LOGGERS:
        logging.getLogger(name).setLevel(logging.CRITICAL)
