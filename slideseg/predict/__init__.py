"""``slideseg predict``: slide → plan → tissue → Dask chunk tasks → OME-Zarr label image.

``config`` holds the options (:class:`PredictConfig`), ``run`` the pipeline for one slide
(:func:`predict`), ``slides`` several slides and the command's entry point (:func:`predict_slides`),
``checks`` what must hold before an output is touched (inputs never overwritten, resume only of the
same computation on the same slide). The names below are the public API.
"""

from __future__ import annotations

from slideseg.predict.checks import preview_path, resume_conflicts
from slideseg.predict.config import (
    CPU_BATCH_PIXELS,
    DEFAULT_MODEL,
    DEVICES,
    OUTPUT_FIELDS,
    PredictConfig,
    default_model,
)
from slideseg.predict.run import (
    Observer,
    PredictResult,
    default_batch_size,
    plan_for,
    predict,
    slide_normalisation,
)
from slideseg.predict.slides import BatchItem, predict_many, predict_slides

__all__ = [
    "CPU_BATCH_PIXELS",
    "DEFAULT_MODEL",
    "DEVICES",
    "OUTPUT_FIELDS",
    "BatchItem",
    "Observer",
    "PredictConfig",
    "PredictResult",
    "default_batch_size",
    "default_model",
    "plan_for",
    "predict",
    "predict_many",
    "predict_slides",
    "preview_path",
    "resume_conflicts",
    "slide_normalisation",
]
