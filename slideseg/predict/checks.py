"""What must hold before a run touches its output: no output path is an input, a resumed
output was made by the same computation from the same slide (:func:`resume_conflicts`), and what
``--objects`` will write after the mask can be written (:func:`check_objects_outputs`).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from slideseg.errors import ConfigError, OutputExistsError, OutputWriteError, SlideSegError
from slideseg.io.formats import slide_stem
from slideseg.predict.config import OUTPUT_FIELDS, PredictConfig
from slideseg.schedule.chunks import RegionReader
from slideseg.tools.objects import default_table
from slideseg.write.instances import instances_record


def check_resumable(output: Path, attrs: Mapping[str, Any], existing: Mapping[str, Any]) -> None:
    """Refuse to mix two different computations in one output."""
    why = resume_conflicts(existing["slideseg"], attrs)
    if why:
        raise ConfigError(f"cannot resume {output}: {'; '.join(why)}. Resume with the original settings, "
                          "or pass --overwrite to start again.")


def resume_conflicts(recorded: Mapping[str, Any], attrs: Mapping[str, Any]) -> list[str]:
    """Why a run whose record would be ``attrs`` cannot continue an output recorded as ``recorded``
    (both the ``slideseg`` attributes of a mask); empty when it can.

    The model (weights and config), every :data:`OUTPUT_FIELDS` option, the engine and device that
    ran, the batch size used and the slide must all be the same. A recorded option that a record
    lacks counts as None; a recorded predict config that cannot be read (a key no release knows)
    is a conflict too.
    """
    attrs = json.loads(json.dumps(attrs))  # compare as stored: tuples become lists
    why = []
    if recorded.get("weights_sha256") != attrs["weights_sha256"]:
        why.append("the model weights differ")
    if recorded.get("model_config") != attrs["model_config"]:
        why.append("the model config differs")
    why += _option_conflicts(recorded.get("predict_config") or {}, attrs["predict_config"])
    for k in ("engine", "device"):
        if recorded.get("engine", {}).get(k) != attrs["engine"].get(k):
            why.append(f"the {k} was {recorded.get('engine', {}).get(k)}, now {attrs['engine'].get(k)}")
    if recorded.get("batch_size") != attrs["batch_size"]:  # CPU results depend on which tiles share a batch
        why.append(f"tiles were run {recorded.get('batch_size')} per batch, now {attrs['batch_size']} (--batch-size)")
    old_src, new_src = recorded.get("source", {}), attrs["source"]
    if old_src.get("path") != new_src["path"]:
        why.append(f"it was made from {old_src.get('path')}")
    else:
        why += [f"the slide's {k.replace('_', ' ')} was {old_src.get(k)}, now {new_src.get(k)}"
                for k in ("level", "level_shape", "resample_factor", "channels") if old_src.get(k) != new_src.get(k)]
        why += _slide_changes(old_src.get("fingerprint"), new_src.get("fingerprint"))
    return why


def _slide_changes(old: Mapping[str, Any] | None, new: Mapping[str, Any] | None) -> list[str]:
    """How the slide file changed since the output was started (nothing to say for outputs whose
    record has no fingerprint: those of slideseg 0.1)."""
    if not old or not new or old == new:
        return []
    what = [w for k, w in (("size", "its size"), ("mtime_ns", "its modification time"),
                           ("sha256", "its content")) if old.get(k) != new.get(k)]
    return [f"the slide was changed since the output was started ({', '.join(what)} differ)"]


def _option_conflicts(recorded: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """The :data:`OUTPUT_FIELDS` whose values differ between two recorded predict configs."""
    try:
        old = PredictConfig.from_dict(recorded)
    except ConfigError as exc:
        return [f"its recorded predict options cannot be read ({exc})"]
    new = PredictConfig.from_dict(current)
    was = {k: getattr(old, k) if k in recorded else None for k in OUTPUT_FIELDS}
    return [f"{k} was {was[k]!r}, now {getattr(new, k)!r}" for k in OUTPUT_FIELDS if was[k] != getattr(new, k)]


def preview_path(output: Path, cfg: PredictConfig) -> Path:
    """Where ``--preview`` writes: ``mask.png`` beside ``mask.zarr`` (``IMAGE.NAME.png`` with --into)."""
    if cfg.into is not None:
        image = Path(cfg.into)
        return image.parent / f"{slide_stem(image)}.{cfg.name}.png"
    return output.parent / f"{slide_stem(output)}.png"


def check_paths(slide: Path, output: Path, cfg: PredictConfig, inputs: Sequence[Path] = ()) -> None:
    """Refuse a run that would write onto something it reads: the mask and, with ``--preview``, its
    PNG must not be (or be inside, or hold) the slide, the tissue mask, the model or any other input
    of the run (``inputs``: the other slides of a batch)."""
    src, dst = slide.resolve(), output.resolve()
    if src == dst or dst in src.parents or (src in dst.parents and cfg.into is None):
        raise ConfigError(f"the output {output} overlaps the input {slide}; choose another -o path.")
    read = [src, *(Path(p).resolve() for p in inputs)]
    if cfg.tissue_mask:
        read.append(Path(cfg.tissue_mask).resolve())
    for r in read[1:]:
        if dst == r or dst in r.parents:
            raise ConfigError(f"the output {output} would replace the input {r}; choose another -o path.")
    if cfg.preview:
        png = preview_path(output, cfg).resolve()
        if png in read or any(png in r.parents for r in read):
            raise ConfigError(f"--preview would write {png}, which is an input of this run; choose another -o "
                              f"name (e.g. -o {slide_stem(output)}-mask.zarr) or drop --preview.")


def check_objects_outputs(output: Path, cfg: PredictConfig) -> None:
    """With ``--objects``, refuse now what ``objects`` would refuse once the mask is written: an
    object table from another run where the table goes (``MASK.objects.parquet``) without
    ``--overwrite``, or an ``objects/`` inside the output that slideseg did not write.

    What ``--objects`` then does: with ``--overwrite`` it makes the objects again (the mask is
    replaced with its ``objects/``, and the table); otherwise the objects of a complete run are
    kept and an interrupted one is finished; a new output gets new objects.

    Raises
    ------
    OutputExistsError
        The table exists and there are no objects in the output it could belong to.
    OutputFormatError
        ``MASK/objects`` exists but is not slideseg's.
    ConfigError
        The table's name is a directory.
    """
    if not cfg.objects or (output.exists() and not (cfg.resume or cfg.overwrite)):
        return  # no objects, or predict itself refuses the existing output
    table = default_table(output, label=cfg.into is not None)
    if table.is_dir():
        raise ConfigError(f"--objects would write the object table {table}, which is a directory; move it away")
    if cfg.overwrite:
        return
    if output.is_dir() and instances_record(output) is not None:
        return  # objects of this mask, complete (kept) or interrupted (finished)
    if table.exists():
        fix = (f"move it away, or drop --objects and run `slideseg objects {output} --overwrite` after this run"
               if cfg.resume else "pass --overwrite to replace it, or move it away")
        raise OutputExistsError(f"--objects would write the object table {table}, which exists from another run; "
                                f"{fix}")


def slide_fingerprint(path: Path, reader: RegionReader) -> dict[str, Any]:
    """A cheap fingerprint of a slide's content, to tell a slide rewritten in place from the one an
    output was started from: the file's size and modification time (a Zarr directory's: its
    metadata files', leaving out ``labels/``, where ``--into`` writes), a hash of its first 64 KiB
    (its metadata), and a hash of 9 small regions
    read from ``reader`` (the level predict reads) at fixed places."""
    h = hashlib.sha256()
    if path.is_dir():
        files = sorted(p for name in _ZARR_METADATA for p in path.glob(f"**/{name}")
                       if p.is_file() and "labels" not in p.relative_to(path).parts)[:256]  # not our own labels
        size = sum(p.stat().st_size for p in files)
        mtime = max((p.stat().st_mtime_ns for p in files), default=path.stat().st_mtime_ns)
        for p in files:
            h.update(p.read_bytes()[:65536])
    else:
        st = path.stat()
        size, mtime = st.st_size, st.st_mtime_ns
        with path.open("rb") as f:
            h.update(f.read(65536))
    height, width = reader.shape[:2]
    e = min(32, height, width)
    for fy in (0.1, 0.5, 0.9):
        for fx in (0.1, 0.5, 0.9):
            y0, x0 = int(fy * (height - e)), int(fx * (width - e))
            h.update(np.ascontiguousarray(reader.read(y0, y0 + e, x0, x0 + e)).tobytes())
    return {"size": int(size), "mtime_ns": int(mtime), "sha256": h.hexdigest()}


_ZARR_METADATA = (".zattrs", ".zarray", ".zgroup", "zarr.json")


def check_writable(output: Path) -> None:
    """Refuse an output that cannot be written, before anything is computed: the nearest existing
    folder on its path must be a folder this process may write into."""
    here = output.absolute()
    while not here.exists() and here != here.parent:
        here = here.parent
    if here == output.absolute():  # the output itself exists: it is replaced or resumed in place
        here = here.parent if not here.is_dir() else here
    if not here.is_dir():
        raise OutputWriteError(f"cannot write {output}: {here} is a file, not a folder; choose another -o path")
    if not os.access(here, os.W_OK | os.X_OK):
        raise OutputWriteError(f"cannot write {output}: {here} is not writable (read-only, or no permission); "
                               "choose another -o path")


@contextmanager
def write_errors(output: Path) -> Iterator[None]:
    """Turn an operating-system error while the output is written into one line that says what to do
    (a full disk: free space and resume, nothing on disk is lost)."""
    try:
        yield
    except SlideSegError:
        raise
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise OutputWriteError(f"the disk is full while writing {output}; free space, then run the same command "
                                   "with --resume: the chunks already written are kept") from exc
        raise OutputWriteError(f"cannot write {output}: {exc.strerror or exc}; check the path, its free space and "
                               "its permissions, then run again with --resume") from exc
