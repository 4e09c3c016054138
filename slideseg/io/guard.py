"""The reading boundary: what third-party readers raise about a bad file becomes a
:class:`~slideseg.errors.SlideReadError` that names the file and what was wrong.

tifffile, zarr, numcodecs, imagecodecs and the standard library's parsers raise whatever their
authors chose (``TypeError`` for a shape of the wrong type, ``ValueError`` for bad JSON,
``KeyError`` for an unknown codec, ``struct.error`` for a short IFD...). Every place where
slideseg reads a file wraps the reading in :func:`reading`, so the user sees one line, not a
traceback. Only exceptions raised *inside* third-party code are translated: an exception raised
by slideseg's own code is a bug and keeps its traceback, and running out of memory or threads is
not a statement about the file (the sizes it allocates are checked before reading).

>>> import json
>>> with reading("a.zarr/.zattrs", "parse {path}"):  # doctest: +ELLIPSIS
...     json.loads("{")
Traceback (most recent call last):
slideseg.errors.SlideReadError: could not parse a.zarr/.zattrs (JSONDecodeError: Expecting ...
"""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from slideseg.errors import SlideReadError, SlideSegError

__all__ = ["one_line", "reading"]
_PACKAGE = Path(__file__).resolve().parents[1]
_MESSAGE_CHARS = 240


def one_line(text: object, limit: int = _MESSAGE_CHARS) -> str:
    """``text`` as one printable line: whitespace collapsed, undecodable characters escaped,
    at most ``limit`` characters.

    >>> one_line("bad\\n  value \\udcff" + "x" * 300, 20)
    'bad value \\\\udcffx...'
    """
    flat = re.sub(r"\s+", " ", str(text)).strip()
    flat = flat.encode("utf-8", "backslashreplace").decode("utf-8")
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def _out_of_resources(exc: BaseException) -> bool:
    """Whether ``exc`` says the machine ran out of memory or threads (not a statement about the file)."""
    if isinstance(exc, OSError) and exc.errno == errno.ENOMEM:
        return True
    return isinstance(exc, RuntimeError) and "can't start new thread" in str(exc)


def _raised_by_third_party(exc: BaseException) -> bool:
    """Whether the innermost Python frame of ``exc`` is outside slideseg."""
    tb = exc.__traceback__
    if tb is None:
        return True
    while tb.tb_next is not None:
        tb = tb.tb_next
    try:
        Path(tb.tb_frame.f_code.co_filename).resolve().relative_to(_PACKAGE)
    except ValueError:
        return True
    return False


@contextmanager
def reading(path: str | os.PathLike[str], what: str = "read {path}", *, corrupt: str | None = None
            ) -> Iterator[None]:
    """Translate what third-party readers raise while reading ``path`` into ``SlideReadError``.

    ``what`` completes "could not ...", with ``{path}`` standing for the path: ``"open {path}"``,
    ``"read region y 0:512, x 0:512 of {path} level 0"``; or,
    for a file decoded in one go, ``corrupt`` names the format: "PATH is a corrupt PNG (...)".
    slideseg's own errors, ``MemoryError`` (and ``ENOMEM``, or no thread to start),
    ``KeyboardInterrupt`` and exceptions raised by slideseg's own code pass through unchanged.
    """
    try:
        yield
    except (SlideSegError, MemoryError):
        raise
    except Exception as e:
        if not _raised_by_third_party(e) or _out_of_resources(e):
            raise
        why = f"{type(e).__name__}: {one_line(e)}"
        if corrupt is not None:
            raise SlideReadError(f"{one_line(path)} is a corrupt {corrupt} ({why}): export it again") from e
        raise SlideReadError(
            f"could not {what.format(path=one_line(path))} ({why}); the file is corrupt, truncated, or its "
            f"metadata does not describe its data: copy or export it again"
        ) from e
