"""The options of one ``predict`` run (:class:`PredictConfig`), saved into every output; the fields
that change the output are flagged, and a resumed run must keep them (:data:`OUTPUT_FIELDS`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Literal, get_args

from slideseg.config import CHANGES_OUTPUT, Config, flagged, flags
from slideseg.engines.base import ENGINE_NAMES, EngineName
from slideseg.errors import ConfigError, ModelFileError
from slideseg.io.axes import parse_channels
from slideseg.io.ngff import NgffVersion, check_version
from slideseg.model.config import PRECISIONS, Precision

DEVICES = ("auto", "cpu", "cuda")


CPU_BATCH_PIXELS = 1.5e6
"""Default cap on input pixels per engine call on a CPU: a 1212-px tile of a base-16 U-Net
needs about 0.6 GB of activations, so this keeps inference under ~1 GB."""


DEFAULT_MODEL = Path(__file__).resolve().parent.parent / "weights" / "default.safetensors"
"""The bundled model, used when no model is given."""


Norm = Literal["model", "slide"]
"""Normalisation: the model's own ('model'), or the slide's statistics per channel ('slide')."""


NORMS: tuple[Norm, ...] = get_args(Norm)


_OUT = flags(CHANGES_OUTPUT)


@dataclass(frozen=True)
class PredictConfig(Config):
    """Options of one ``predict`` run; saved into every output.

    Fields flagged :data:`~slideseg.config.CHANGES_OUTPUT` change what is written, so a resumed
    run must keep them (:data:`OUTPUT_FIELDS`); the others say how or where it runs.
    """

    RETIRED_KEYS = MappingProxyType({
        "workers": "threads running chunk tasks, in records written before the cluster options existed; "
                   "now ClusterConfig.threads (--io-threads), which does not change the output",
    })

    tile: int | None = field(default=None, metadata=_OUT)
    """Network input tile edge in px; None picks the smallest tile whose output covers a chunk."""
    batch_size: int | None = None
    """Tiles per engine call, filled from several chunks when chunks have fewer tiles. None: 4 on
    a GPU; on a CPU as many as fit in 1.5 megapixels (at least 1), which bounds memory. (The
    number actually used is recorded and checked on resume.)"""
    chunk: int = field(default=1024, metadata=_OUT)
    """Output chunk edge in px (the Zarr chunk grid; one task per chunk, or per shard for 0.5)."""
    ngff: NgffVersion = field(default="0.4", metadata=_OUT)
    """Output format: '0.4' (Zarr v2; QuPath, napari, OMERO) or '0.5' (Zarr v3, sharded)."""
    shard: int | None = field(default=None, metadata=_OUT)
    """For NGFF 0.5: shard edge in px, a multiple of ``chunk`` (default 4 chunks); one task per shard."""
    level: int | None = field(default=None, metadata=_OUT)
    """Pyramid level of the slide to read; None picks the level closest to the model's pixel size
    (not coarser) and resamples it to exactly that size."""
    mpp: float | None = field(default=None, metadata=_OUT)
    """The slide's level-0 pixel size in µm, overriding (or standing in for) its metadata."""
    channels: tuple[int, ...] | None = field(default=None, metadata=_OUT)
    """Channels of the slide to feed the model, in order (None: all); "0,2" is accepted too."""
    series: int | None = field(default=None, metadata=_OUT)
    """Image series of a multi-series file (None: the main image; ambiguous files ask for one)."""
    device: str = "auto"
    """'auto' (CUDA if available), 'cpu' or 'cuda[:N]'. (The device that ran is checked on resume.)"""
    engine: EngineName = "auto"
    """Engine name ('auto' picks the best available). (The engine that ran is checked on resume.)"""
    precision: Precision = field(default="fp32", metadata=_OUT)
    """Arithmetic of the network: 'fp32', 'fp16' or 'bf16' (half precision on GPUs)."""
    compile: bool = field(default=False, metadata=_OUT)
    """Compile the network with torch.compile (PyTorch engine)."""
    probabilities: bool = field(default=False, metadata=_OUT)
    """Also write per-class probabilities (uint8, 0..255)."""
    tissue: bool = field(default=True, metadata=_OUT)
    """Run only chunks that hold tissue (detected on a thumbnail); the rest read as background."""
    tissue_mask: str | None = field(default=None, metadata=_OUT)
    """A low-resolution tissue mask to use instead of detection (non-zero = tissue)."""
    norm: Norm | None = field(default=None, metadata=_OUT)
    """None (or 'model'): the model's own normalisation, whose statistics steps (a bioimage.io
    package's ``scale_range``...) take the slide's statistics; 'slide': each channel to zero mean and
    unit variance with the slide's statistics, in place of the model's constants."""
    norm_level: int | None = field(default=None, metadata=_OUT)
    """Pyramid level the slide's normalisation statistics are computed from (tissue only, when tissue
    is detected or given). None: the finest level of at most 4 megapixels."""
    preview: bool = False
    """Also write a PNG thumbnail with the mask overlaid, beside the output (``mask.png``)."""
    objects: bool = False
    """Then run ``slideseg objects`` on the mask with its default options: the instance image
    ``MASK/objects`` and the object table ``MASK.objects.parquet`` (the mask itself is unchanged)."""
    into: str | None = field(default=None, metadata=_OUT)
    """Write the mask as a label of this existing OME-Zarr image (``INTO/labels/NAME``)."""
    name: str = field(default="segmentation", metadata=_OUT)
    """Name of the label with ``into``."""
    overwrite: bool = False
    """Replace an existing output."""
    resume: bool = False
    """Continue an interrupted run: run only the chunks the output does not have yet."""
    threads: int | None = None
    """Threads of the engine's CPU kernels (None: the library's default)."""

    def __post_init__(self) -> None:
        if self.batch_size is not None and self.batch_size < 1:
            raise ConfigError(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.chunk < 16:
            raise ConfigError(f"--chunk must be >= 16 px, got {self.chunk}")
        if (self.level is not None and self.level < 0) or (self.series is not None and self.series < 0):
            raise ConfigError(f"--level and --series must be >= 0, got {self.level} and {self.series}")
        if self.mpp is not None and not self.mpp > 0:
            raise ConfigError(f"--mpp must be > 0 µm, got {self.mpp}")
        object.__setattr__(self, "channels", parse_channels(self.channels))
        if self.norm not in (None, *NORMS):
            raise ConfigError(f"--norm must be one of {', '.join(NORMS)}, got {self.norm!r}")
        if self.norm == "model":  # the default, recorded as None so older outputs resume
            object.__setattr__(self, "norm", None)
        if self.norm_level is not None and self.norm_level < 0:
            raise ConfigError(f"--norm-level must be >= 0, got {self.norm_level}")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"--threads must be >= 1, got {self.threads}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"--precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if not (self.device in DEVICES or self.device.startswith("cuda:")):
            raise ConfigError(f"--device must be one of {', '.join(DEVICES)} or cuda:N, got {self.device!r}")
        if self.engine not in ENGINE_NAMES:
            raise ConfigError(f"unknown engine {self.engine!r}; choose one of {', '.join(ENGINE_NAMES)}")

        check_version(self.ngff)
        if self.shard is not None and (self.ngff != "0.5" or self.shard % self.chunk):
            raise ConfigError(f"--shard needs --ngff 0.5 and a multiple of --chunk ({self.chunk}); got {self.shard}")
        if self.overwrite and self.resume:
            raise ConfigError("--overwrite and --resume contradict each other; pick one.")


OUTPUT_FIELDS: tuple[str, ...] = flagged(PredictConfig, CHANGES_OUTPUT)
"""The PredictConfig fields that change the output (flagged in their metadata): a resumed run
must keep them."""


def default_model() -> Path:
    """The bundled model file, or a ModelFileError that says how to make one."""
    if DEFAULT_MODEL.is_file():
        return DEFAULT_MODEL
    raise ModelFileError("no --model given and no default model is bundled; create one with "
                         "`slideseg new-model -o unet.safetensors` and pass --model unet.safetensors.")
