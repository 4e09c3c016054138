"""The files of a training run: the model files, the metrics CSV and the resume state.

Beside ``-o model.safetensors``:

- ``model.safetensors``: the best model by validation (the last without validation);
- ``model.last.safetensors``: the last model; ``model.resume.safetensors``: optimiser and counters
  for ``--resume`` (tensors and JSON, never unpickled); ``model.metrics.csv``: one row per epoch.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slideseg import __version__
from slideseg.errors import ConfigError, ModelFileError, OutputExistsError
from slideseg.model.config import UNetConfig
from slideseg.model.files import save_model
from slideseg.train.recipe import Budget


@dataclass
class RunState:
    """The counters of a run, saved in the resume state."""

    step: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, float] | None = None
    since_best: int = 0
    seconds: float = 0.0
    epoch_losses: list[float] = field(default_factory=list)
    """Losses of the steps of the unfinished epoch (a resumed run reports them in its row)."""
    epoch_seconds: float = 0.0
    """Training seconds of the unfinished epoch before this session."""

    def counters(self) -> dict[str, Any]:
        """The counters as JSON-able builtins (for :func:`write_resume`)."""
        return dataclasses.asdict(self)

    @classmethod
    def restore(cls, state: Mapping[str, Any]) -> RunState:
        """The counters of a resume state read by :func:`read_resume`."""
        return cls(int(state["step"]), list(state["history"]), state.get("best"), int(state.get("since_best", 0)),
                   float(state["seconds"]), list(state.get("epoch_losses", [])), float(state.get("epoch_seconds", 0)))


def check_resumable(run: RunState, budget: Budget) -> None:
    """Refuse to resume a run that has already spent the budget asked for."""
    if budget.steps is not None and run.step > budget.steps:
        raise ConfigError(f"the run to resume has done {run.step} steps, more than the {budget.steps} asked for; "
                          "ask for more --steps or --epochs.")
    if budget.steps is None and budget.seconds is not None and run.seconds >= budget.seconds:
        raise ConfigError(f"the run to resume has trained {run.seconds / 60:.1f} min, its whole --max-time of "
                          f"{budget.seconds / 60:g} min; give a larger --max-time to train longer.")


def companion_paths(output: Path) -> dict[str, Path]:
    """The files a run writes beside ``output``: last model, resume state, metrics CSV."""
    stem = output.name.removesuffix(".safetensors")
    return {"last": output.with_name(f"{stem}.last.safetensors"),
            "resume": output.with_name(f"{stem}.resume.safetensors"),
            "metrics": output.with_name(f"{stem}.metrics.csv")}


def check_outputs(output: Path, paths: Mapping[str, Path], resume: bool, overwrite: bool) -> None:
    """Refuse a model file name without ``.safetensors``, a resume without its files, and
    existing files unless ``overwrite``."""
    if output.suffix != ".safetensors":
        raise ConfigError(f"the model file must end in .safetensors, got {output}")
    if resume:
        missing = [p for p in (paths["last"], paths["resume"]) if not p.is_file()]
        if missing:
            raise ModelFileError(f"--resume needs {' and '.join(map(str, missing))} from an earlier run with "
                                 f"-o {output}; none found: start without --resume.")
        return
    existing = [p for p in (output, *paths.values()) if p.exists()]
    if existing and not overwrite:
        raise OutputExistsError(f"{', '.join(map(str, existing))} exist(s); pass --overwrite to replace, or "
                                "--resume to continue that run.")


def finite(value: Any) -> Any:
    """``value`` with NaN and infinities (in dicts and lists too) replaced by None, for JSON that
    other readers than Python's accept."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value


def save_checkpoint(net: Any, mcfg: UNetConfig, meta: Mapping[str, Any], output: Path, paths: Mapping[str, Path],
                    as_output: bool) -> str:
    """Write the last model (and ``output`` if ``as_output``); return the weights' hash."""
    meta = finite({**meta, "slideseg_version": __version__})
    digest = save_model(paths["last"], net, mcfg, meta)
    if as_output:
        save_model(output, net, mcfg, meta)
    return digest


def write_metrics(path: Path, history: list[dict[str, Any]]) -> None:
    """One CSV row per epoch, columns in order of first appearance (atomically replaced)."""
    columns = list(dict.fromkeys(k for row in history for k in row))
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, columns)
        writer.writeheader()
        writer.writerows(history)
    tmp.replace(path)


def write_resume(paths: Mapping[str, Path], optimizer: Any, scaler: Any, mcfg: UNetConfig,
                 counters: Mapping[str, Any], weights_sha256: str) -> None:
    """Optimiser tensors and run ``counters`` (step, history, best, seconds, the losses of the
    unfinished epoch, ...) next to the last model."""
    from safetensors.torch import save_file

    opt = optimizer.state_dict()
    tensors = {f"state.{i}.{name}": t.detach().cpu().contiguous()
               for i, s in opt["state"].items() for name, t in s.items()}
    meta = {**counters, "param_groups": opt["param_groups"], "model_config": mcfg.to_dict(),
            "weights_sha256": weights_sha256, "scaler": scaler.state_dict() if scaler is not None else None}
    tmp = paths["resume"].with_name(paths["resume"].name + ".tmp")
    save_file(tensors, str(tmp), metadata={"slideseg.resume": json.dumps(meta)})
    tmp.replace(paths["resume"])


def read_resume(paths: Mapping[str, Path]) -> dict[str, Any]:
    """The resume state beside the output, with its optimiser tensors under ``tensors``."""
    from safetensors import safe_open

    try:
        with safe_open(str(paths["resume"]), framework="pt") as f:
            meta = json.loads((f.metadata() or {})["slideseg.resume"])
            meta["tensors"] = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
    except Exception as exc:
        raise ModelFileError(f"{paths['resume']} is not a slideseg resume file ({exc}); "
                             "start without --resume.") from exc
    meta["last_path"] = paths["last"]
    best = meta.get("best")
    if isinstance(best, int | float):  # older resume files kept -(best validation loss)
        meta["best"] = {"f1": math.nan, "loss": -best, "epoch": math.nan}
    return meta


def restore_optimizer(state: Mapping[str, Any], optimizer: Any, scaler: Any) -> None:
    """Load the optimiser (and loss scaler) state of a resume file."""
    opt_state: dict[int, dict[str, Any]] = {}
    for key, t in state["tensors"].items():
        _, i, name = key.split(".", 2)
        opt_state.setdefault(int(i), {})[name] = t
    try:
        optimizer.load_state_dict({"state": opt_state, "param_groups": state["param_groups"]})
    except (ValueError, KeyError) as exc:
        raise ModelFileError(f"the resume state does not fit this optimiser ({exc}); resume with the same "
                             "--optimizer, or start anew.") from exc
    if scaler is not None and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])


__all__ = ["RunState", "check_outputs", "check_resumable", "companion_paths", "finite", "read_resume",
           "restore_optimizer", "save_checkpoint", "write_metrics", "write_resume"]
