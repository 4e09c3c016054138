"""Errors a user can cause, each with a message that says what was expected, what was found
and how to fix it. The CLI maps every :class:`SlideSegError` to a one-line message and exit
code 2; anything else is a bug and keeps its traceback."""

from __future__ import annotations


class SlideSegError(Exception):
    """Base class of all errors caused by input, options or files (not by bugs)."""


class SlideReadError(SlideSegError, OSError):
    """A slide or image could not be opened or read (missing, not an image, corrupt)."""


class ConfigError(SlideSegError, ValueError):
    """An option or configuration value is out of range or inconsistent."""


class ModelFileError(SlideSegError, ValueError):
    """A model file is missing, malformed, or does not fit the slide."""


class OutputExistsError(SlideSegError, FileExistsError):
    """The output already exists and ``--overwrite`` was not given."""


class OutputFormatError(SlideSegError, ValueError):
    """An existing output is not what slideseg expects (not a slideseg OME-Zarr, incomplete)."""


class TrainingDataError(SlideSegError, ValueError):
    """Training images or masks are missing, unmatched, of the wrong size or hold unexpected values."""


class OutputLockedError(SlideSegError, FileExistsError):
    """Another run is writing the same output (its lock file names it)."""


class OutputWriteError(SlideSegError, OSError):
    """An output cannot be written: its folder is a file, read-only or missing rights, or the disk is full."""
