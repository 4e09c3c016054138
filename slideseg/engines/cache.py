"""The artefact cache (``engines/``): where ONNX exports, TensorRT plans, timing caches and the
``auto`` engine choice live, and the keys that name them.

Pure file logic: no torch, no TensorRT. Everything here is derived from a model and a machine,
safe to delete, and rebuilt on demand. The folder is ``$SLIDESEG_ENGINES_DIR`` when set, else
``engines/`` in the working directory.

>>> onnx_filename("ab" * 32, tile=572, max_batch=8, precision="fp16")
'unet-abababababab-t572-b8-fp16.onnx'
>>> slug("NVIDIA H100 80GB HBM3")
'nvidia-h100-80gb-hbm3'
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

from slideseg.errors import SlideSegError

ENV_DIR = "SLIDESEG_ENGINES_DIR"
AUTO_CHOICES = "auto-choices.json"

log = logging.getLogger("slideseg.engines")
T = TypeVar("T")
CacheStatus = Literal["hit", "miss", "rebuilt"]


class EngineBuildError(SlideSegError, RuntimeError):
    """An engine artefact (an ONNX export, a TensorRT plan) could not be built."""


def cache_dir(create: bool = True) -> Path:
    """The artefact folder: ``$SLIDESEG_ENGINES_DIR`` or ``./engines``."""
    path = Path(os.environ.get(ENV_DIR) or "engines")
    if create:
        path.mkdir(parents=True, exist_ok=True)
    return path


def slug(text: str) -> str:
    """A file-name-safe lower-case form of ``text`` (GPU names, versions)."""
    return re.sub(r"[^a-z0-9.]+", "-", text.lower()).strip("-") or "unknown"




def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file and a rename, so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def onnx_filename(weights_sha256: str, *, tile: int, max_batch: int, precision: str) -> str:
    """Name of an ONNX export: what it is can be read off the name."""
    return f"unet-{weights_sha256[:12]}-t{tile}-b{max_batch}-{precision}.onnx"


# --------------------------------------------------------------------------------------------
# TensorRT plans
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PlanKey:
    """Everything a TensorRT plan depends on. A plan only loads on the same TensorRT version and
    GPU architecture, and it is built for fixed shapes, one precision and one optimisation level."""

    onnx_sha256: str
    tensorrt_version: str
    gpu_name: str
    compute_capability: tuple[int, int]
    input_name: str
    shape_min: tuple[int, ...]
    shape_opt: tuple[int, ...]
    shape_max: tuple[int, ...]
    precision: str
    opt_level: int
    workspace_bytes: int

    def digest(self) -> str:
        """SHA-256 of the key's canonical JSON."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def sm(self) -> str:
        return f"sm{self.compute_capability[0]}{self.compute_capability[1]}"

    def plan_filename(self) -> str:
        """e.g. ``trt-3f2a9c1b0d4e-nvidia-h100-sm90-trt10.9.0-t572-b8-fp16-o3-1a2b3c4d5e.plan``."""
        tile = self.shape_max[-1]
        return (f"trt-{self.onnx_sha256[:12]}-{slug(self.gpu_name)}-{self.sm}-trt{slug(self.tensorrt_version)}"
                f"-t{tile}-b{self.shape_max[0]}-{self.precision}-o{self.opt_level}-{self.digest()[:10]}.plan")

    def timing_cache_filename(self) -> str:
        """Timing caches are shared by all plans of one TensorRT version on one GPU architecture."""
        return f"timing-trt{slug(self.tensorrt_version)}-{slug(self.gpu_name)}-{self.sm}.cache"


def load_or_build(path: Path, build: Callable[[], bytes], load: Callable[[bytes], T | None],
                  describe: Mapping[str, Any] | None = None) -> tuple[T, CacheStatus]:
    """Load the artefact cached at ``path``, or build, cache and load it.

    ``load`` returns None (or raises) when the bytes cannot be used, e.g. a TensorRT plan written by
    another TensorRT version or for another GPU, or a truncated file: the artefact is then rebuilt
    and replaced. ``describe`` is written beside it as ``<path>.json`` so a person can tell what the
    file is. Returns the loaded object and whether the cache was a ``hit``, a ``miss`` or ``rebuilt``.
    """
    status: CacheStatus = "miss"
    if path.is_file():
        obj = _try_load(load, path.read_bytes(), path)
        if obj is not None:
            return obj, "hit"
        status = "rebuilt"
        log.warning("%s could not be loaded (another TensorRT version or GPU, or damaged); rebuilding it", path)
    data = build()
    atomic_write_bytes(path, data)
    if describe is not None:
        atomic_write_bytes(path.with_name(path.name + ".json"),
                           json.dumps(dict(describe), indent=2, sort_keys=True, default=str).encode())
    obj = _try_load(load, data, path)
    if obj is None:
        raise EngineBuildError(f"{path} was just built but does not load; the build is broken: "
                               "run with --debug and report the TensorRT log.")
    return obj, status


def _try_load(load: Callable[[bytes], T | None], data: bytes, path: Path) -> T | None:
    try:
        return load(data)
    except Exception as exc:  # a damaged or foreign artefact: rebuild rather than fail
        log.debug("loading %s failed: %s", path, exc)
        return None


# --------------------------------------------------------------------------------------------
# The `auto` engine choice on a CPU
# --------------------------------------------------------------------------------------------

_choices_lock = threading.Lock()


def choice_key(fields: Mapping[str, Any]) -> str:
    """Stable digest of what a measured engine choice depends on."""
    return hashlib.sha256(json.dumps(dict(fields), sort_keys=True, default=str).encode()).hexdigest()[:16]


def read_choice(key: str, folder: Path | None = None) -> dict[str, Any] | None:
    """The cached choice recorded under ``key``, or None."""
    path = (folder or cache_dir(create=False)) / AUTO_CHOICES
    try:
        record = json.loads(path.read_text()).get(key)
    except (OSError, ValueError, AttributeError):
        return None
    return record if isinstance(record, dict) and isinstance(record.get("engine"), str) else None


def write_choice(key: str, record: Mapping[str, Any], folder: Path | None = None) -> Path:
    """Record a measured choice under ``key`` (other keys are kept)."""
    path = (folder or cache_dir()) / AUTO_CHOICES
    with _choices_lock:
        try:
            choices = json.loads(path.read_text())
            if not isinstance(choices, dict):
                choices = {}
        except (OSError, ValueError):
            choices = {}
        choices[key] = dict(record)
        atomic_write_bytes(path, json.dumps(choices, indent=2, sort_keys=True, default=str).encode())
    return path
