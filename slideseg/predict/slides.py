"""Several slides in one run, and the one entry point of ``slideseg predict``
(:func:`predict_slides`): one slide or a directory of outputs, decided from what ``-o`` holds.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from slideseg.errors import ConfigError, SlideSegError
from slideseg.io.formats import slide_stem
from slideseg.predict.config import PredictConfig, default_model
from slideseg.predict.run import (
    Observer,
    PredictResult,
    Quiet,
    absolute_paths,
    engine_key,
    predict,
    predict_one,
    wants_gpu,
)
from slideseg.schedule.cluster import ClusterConfig, dask_client


@dataclass(frozen=True)
class BatchItem:
    """The outcome for one slide of :func:`predict_many`."""

    slide: Path
    output: Path
    result: PredictResult | None = None
    skipped: str | None = None
    error: str | None = None


def predict_many(slides: Sequence[str | os.PathLike[str]], outdir: str | os.PathLike[str],
                 model_path: str | os.PathLike[str], cfg: PredictConfig = PredictConfig(),
                 cluster: ClusterConfig = ClusterConfig(), observer: Observer | None = None) -> list[BatchItem]:
    """Segment several slides into ``outdir/<name>.zarr`` on one cluster; one slide's error does not
    stop the others. An output that exists is resumed: skipped when it is complete and was made by
    the same model and options from the same slide, refused (that slide's error) when it was not."""
    if cfg.into is not None:
        raise ConfigError("--into writes the label of one image; run one slide at a time with --into.")
    out = Path(outdir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out} is a file; with several slides -o must be a directory.")
    out.mkdir(parents=True, exist_ok=True)
    targets = [(Path(s), out / (slide_stem(Path(s)) + ".zarr")) for s in slides]
    dupes = {t for _, t in targets if sum(t == u for _, u in targets) > 1}
    if dupes:
        raise ConfigError(f"several slides would write {sorted(map(str, dupes))[0]}; give them distinct names.")
    key = engine_key(model_path, cfg)
    cfg = absolute_paths(cfg)
    items = []
    with dask_client(cluster, gpu=wants_gpu(cfg)) as client:
        for slide, target in targets:
            # an existing output is resumed, complete or not: the same checks as one slide's --resume
            # (model, options, slide) decide whether it may be kept
            one = cfg if not target.exists() or cfg.overwrite else replace(cfg, resume=True)
            others = [s for s, _ in targets if s != slide]
            try:
                result = predict_one(client, slide, target, key, one, observer or Quiet(), inputs=others)
            except SlideSegError as exc:
                items.append(BatchItem(slide, target, error=str(exc)))
            else:
                skipped = "already complete" if result.already_complete else None
                items.append(BatchItem(slide, target, result=None if skipped else result, skipped=skipped))
    return items


def predict_slides(slides: Sequence[str | os.PathLike[str]], output: str | os.PathLike[str] | None,
                   model_path: str | os.PathLike[str] | None = None, cfg: PredictConfig = PredictConfig(),
                   cluster: ClusterConfig = ClusterConfig(), observer: Observer | None = None,
                   ) -> PredictResult | list[BatchItem]:
    """Segment ``slides`` as ``slideseg predict`` does: the one entry point of the command line.

    One slide with ``-o mask.zarr`` (or ``--into``) runs :func:`predict` and returns its result;
    several slides, or an ``output`` that names a directory (it ends in ``/``, or is an existing
    directory not named ``*.zarr``), run :func:`predict_many` and return one item per slide.
    ``model_path`` None is the bundled model (:data:`DEFAULT_MODEL`).

    Raises
    ------
    ConfigError
        No slide or no output given, ``--into`` with several slides, or any option
        :func:`predict` / :func:`predict_many` refuse; a single slide's errors propagate too.
    """
    if not slides:
        raise ConfigError("no slide given: pass one or more slide files (OME-TIFF, SVS, OME-Zarr...).")
    if output is None and cfg.into is None:
        raise ConfigError("no output given: pass -o mask.zarr (or -o DIR/ for several slides), or --into IMAGE")
    if cfg.into is not None and len(slides) > 1:
        raise ConfigError("--into writes the label of one image; run one slide at a time with --into.")
    model = default_model() if model_path is None else Path(model_path)
    if output is not None and _names_a_directory(os.fspath(output), len(slides)):
        return predict_many(slides, output, model, cfg, cluster, observer)
    return predict(slides[0], output, model, cfg, cluster, observer)


def _names_a_directory(output: str, n_slides: int) -> bool:
    """Whether ``-o output`` is a directory of masks rather than one mask, from what the path holds:
    a Zarr group there (a slideseg mask, complete, interrupted or foreign) is one output whatever its
    name; another existing directory holds outputs (unless it is named ``*.zarr``); a path that does
    not exist is a directory when it ends in ``/`` or there are several slides."""
    path = Path(output)
    if any((path / name).is_file() for name in (".zgroup", ".zattrs", "zarr.json")):
        if n_slides > 1:
            raise ConfigError(f"-o {output} is a Zarr group (a mask), not a directory of masks; with several slides "
                              "pass a directory, e.g. -o masks/")
        return False
    if path.is_dir():
        return n_slides > 1 or output.endswith("/") or path.suffix != ".zarr"
    return n_slides > 1 or output.endswith("/")
