"""Training benchmarks on synthetic fluorescence-like nuclei that touch (no real data is used):

1. **Loss**: the paper's weighted cross-entropy vs plain cross-entropy at equal budget over several
   seeds: merge rate of touching nuclei, object F1, panoptic quality (PQ) and foreground IoU of a
   held-out image (``evaluate``'s scores), as mean ± sample standard deviation.
2. **Throughput**: training output pixels/s of ``slideseg train`` against a bare PyTorch loop
   (the same network, tile, batch, optimiser and loss, on tensors already in memory) in the same
   run: the pipeline efficiency. Loading, elastic deformation and weight maps run in background
   threads and should overlap with compute.

Data: one synthetic field of nuclei (``slideseg.tools.synth``, ``touching`` so that pairs press
together; tissue everywhere), rendered as a single-channel uint16 fluorescence-like image (bright
nuclei, dimmer at their borders and at the seams between touching nuclei, blurred, with noise). Its
top rows train (slideseg holds a 64-px band of their columns out for validation), the rest is the held-out test.

    .venv/bin/python benchmarks/bench_train.py loss [--seeds 0 1 2] [--minutes 2 | --steps 150 | --steps default]
        [--losses weighted ce] [--w0 10] [--sigma 5] [--separation-width 2]
    .venv/bin/python benchmarks/bench_train.py throughput [--steps 30]

Each prints one JSON line per run and a JSON summary; record them in benchmarks/RESULTS.md with
the command, machine and date.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
import torch
from scipy import ndimage

from slideseg.predict import PredictConfig, predict
from slideseg.tools.evaluate import evaluate
from slideseg.tools.synth import SynthConfig, render_labels, touching_fraction
from slideseg.train.data import load_training_data
from slideseg.train.loop import TrainConfig, train
from slideseg.train.loss import separation_borders

DATA = SynthConfig(size=(512, 512), seed=7, tissue_fraction=1.0, touching=0.3)
TRAIN_ROWS = 320
"""Rows [0, 320) train (and validate), rows [320, 512) are the held-out test image."""


# ------------------------------------------------------------------------------------------- data


def fluorescence(instances: np.ndarray, seed: int) -> np.ndarray:
    """A uint16 fluorescence-like image of ``instances`` (H, W): per-nucleus brightness in
    [0.5, 1], falling to 55 % over 3 px towards the background and the seams between touching
    nuclei, a dim background, Gaussian blur (sigma 1 px) and noise."""
    rng = np.random.default_rng(seed)
    ids = np.unique(instances)
    brightness = np.zeros(int(ids.max()) + 1, np.float64)
    brightness[ids] = rng.uniform(0.5, 1.0, ids.size)
    brightness[0] = 0.0
    inner = (instances > 0) & ~separation_borders(instances, width=2)  # the data stays as it was
    profile = 0.55 + 0.45 * np.clip(ndimage.distance_transform_edt(inner) / 3.0, 0.0, 1.0)
    signal = np.where(instances > 0, brightness[instances] * profile, 0.04)
    signal = ndimage.gaussian_filter(signal, 1.0)
    image = 600 + 20000 * signal + rng.normal(0, 400, signal.shape)
    return np.clip(image, 0, 65535).astype(np.uint16)


def write_data(out: Path, cfg: SynthConfig = DATA, train_rows: int = TRAIN_ROWS) -> tuple[Path, Path]:
    """``out/train/field.tif`` (+ ``field_mask.tif``) and ``out/test/field.tif`` (+ mask)."""
    h, w = cfg.size
    instances = render_labels(cfg, 0, h, 0, w)
    image = fluorescence(instances, cfg.seed)
    for sub, rows in (("train", slice(0, train_rows)), ("test", slice(train_rows, h))):
        (out / sub).mkdir(parents=True, exist_ok=True)
        tifffile.imwrite(out / sub / "field.tif", image[rows], metadata={"axes": "YX"},
                         resolution=(1e4 / cfg.mpp, 1e4 / cfg.mpp), resolutionunit="CENTIMETER")
        tifffile.imwrite(out / sub / "field_mask.tif", instances[rows].astype(np.uint32))
    return out / "train", out / "test"


def data_summary(test_dir: Path, separation_width: int = 2) -> dict[str, Any]:
    """Nuclei and the fraction that touch another, of the held-out test image, and the foreground
    IoU against it of a model that draws exactly the training target (separation borders of
    ``separation_width`` px as background): the best a separating model can score."""
    inst = tifffile.imread(test_dir / "field_mask.tif")
    truth = inst > 0
    target = truth & ~separation_borders(inst, separation_width)
    return {"test_nuclei": int(np.unique(inst).size - 1), "test_touching_fraction": round(touching_fraction(inst), 3),
            "target_iou": round(float(target.sum() / truth.sum()), 4)}


# ---------------------------------------------------------------------------------------- scoring


def score(model: Path, test_dir: Path, work: Path) -> dict[str, float]:
    """Segment the held-out image with ``predict`` and score it with ``evaluate``."""
    mask = work / f"{model.stem}.zarr"
    predict(test_dir / "field.tif", mask, model, PredictConfig(device="cpu", overwrite=True))
    r = evaluate(mask, test_dir / "field_mask.tif", gt_kind="instances")
    return {"foreground_iou": round(r.foreground_iou, 4), "object_f1": round(r.objects["f1"], 4),
            "merge_rate": round(r.merges["merge_rate"], 4), "touching_pairs": r.merges["touching_pairs"],
            "pq": round(r.instances["pq"], 4)}


def machine() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        cpu = platform.processor() or "unknown CPU"
    load = f", load average {os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else ""
    return f"{platform.machine()} {cpu}, {os.cpu_count()} cores{load}, torch {torch.__version__}"


def mean_sd(values: list[float]) -> str:
    values = [v for v in values if v == v]
    if not values:
        return "-"
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} ± {spread:.3f}"


# -------------------------------------------------------------------------------- 1. weighted vs ce

DEFAULT_BUDGET = "default"
"""``--steps default``: the budget ``slideseg train`` picks itself (no --steps/--epochs/--max-time)."""


def steps_option(text: str) -> int | str:
    """``--steps``: a positive number of steps, or ``default`` (the recipe's data-sized budget)."""
    if text == DEFAULT_BUDGET:
        return text
    try:
        steps = int(text)
    except ValueError:
        steps = 0
    if steps < 1:
        raise argparse.ArgumentTypeError(f"expected a positive number of steps or 'default', found {text!r}")
    return steps


def budget_options(steps: int | str | None, minutes: float) -> dict[str, Any]:
    """TrainConfig's budget fields for ``--steps``/``--minutes``: none for the recipe's default."""
    if steps == DEFAULT_BUDGET:
        return {}
    return {"steps": steps} if steps else {"max_time": minutes}


def train_and_score(train_dir: Path, test_dir: Path, work: Path, name: str, cfg: TrainConfig,
                    arch: dict[str, Any]) -> dict[str, Any]:
    data = load_training_data(images=train_dir, masks=train_dir)
    model = work / f"{name}.safetensors"
    try:
        result = train(data, model, cfg, arch=arch, overwrite=True)
    finally:
        data.close()
    best = result.best or {}
    return {"run": name, "steps": result.steps, "train_s": round(result.seconds, 1),
            "tiles_per_s": result.history[-1]["tiles_per_s"] if result.history else None,
            "best_epoch": best.get("epoch"), "epochs": len(result.history), **score(model, test_dir, work)}


def bench_loss(args: argparse.Namespace) -> None:
    train_dir, test_dir = write_data(args.out / "data")
    arch = {"depth": args.depth, "width": args.width}
    rows = []
    target = {"w0": args.w0, "sigma": args.sigma, "separation_width": args.separation_width,
              "border_on_objects": args.border_on_objects}
    for seed in args.seeds:
        for loss in args.losses:
            cfg = TrainConfig(loss=loss, seed=seed, threads=args.threads, **target,
                              **budget_options(args.steps, args.minutes))
            row = {"loss": loss, "seed": seed, **train_and_score(train_dir, test_dir, args.out, f"{loss}-{seed}",
                                                                  cfg, arch)}
            print(json.dumps(row), flush=True)
            rows.append(row)
    budget = ("the recipe's default" if args.steps == DEFAULT_BUDGET else f"{args.steps} steps" if args.steps
              else f"{args.minutes} min")
    summary: dict[str, Any] = {"bench": "train loss", "budget": budget, "depth": args.depth, "width": args.width,
                               "seeds": args.seeds, "threads": args.threads, **target,
                               **data_summary(test_dir, args.separation_width), "machine": machine(),
                               "date": time.strftime("%Y-%m-%d")}
    for loss in args.losses:
        sub = [r for r in rows if r["loss"] == loss]
        summary[loss] = {k: mean_sd([r[k] for r in sub])
                         for k in ("merge_rate", "object_f1", "pq", "foreground_iou", "steps")}
    print(json.dumps(summary, indent=2, ensure_ascii=False))


# ------------------------------------------------------------------------------------ 2. throughput


def bare_loop(arch: dict[str, Any], tile: int, batch: int, steps: int, lr: float, threads: int | None) -> float:
    """Output px/s of the same network, loss and optimiser on random tensors already in memory."""
    from slideseg.model.config import UNetConfig
    from slideseg.model.unet import build_unet
    from slideseg.train.loss import weighted_cross_entropy

    if threads:
        torch.set_num_threads(threads)
    mcfg = UNetConfig(in_channels=1, **arch)
    net = build_unet(mcfg, seed=0).train()
    out = mcfg.geometry.usable_output(tile)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 1, tile, tile, generator=g)  # (N, 1, T, T)
    y = (torch.rand(batch, out, out, generator=g) > 0.5).long()  # (N, t, t)
    w = torch.rand(batch, out, out, generator=g) + 0.5  # (N, t, t)

    def step() -> None:
        logits = net(x)  # (N, 2, h, w)
        m = (logits.shape[-1] - out) // 2
        loss = weighted_cross_entropy(logits[..., m : m + out, m : m + out], y, w)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(3):  # warm-up
        step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * batch * out * out / (time.perf_counter() - t0)


def slideseg_loop(train_dir: Path, work: Path, arch: dict[str, Any], steps: int, threads: int | None
                  ) -> dict[str, Any]:
    """Output px/s of ``slideseg train`` over its steps after the first 3 (time between step events,
    validation excluded), the fraction of its time it waited for tiles, and its tile and batch."""
    from slideseg.model.files import read_model_config

    data = load_training_data(images=train_dir, masks=train_dir)
    stamps: list[float] = []
    cfg = TrainConfig(steps=steps + 3, threads=threads, holdout=0.0)

    def on_event(e: Any) -> None:
        if e.kind == "step":
            stamps.append(time.perf_counter())

    try:
        result = train(data, work / "throughput.safetensors", cfg, arch=arch, overwrite=True, on_event=on_event)
    finally:
        data.close()
    mcfg, meta = read_model_config(result.last)
    tile, batch = int(meta["tile"]), int(meta["train_config"]["batch_size"])
    out = mcfg.geometry.usable_output(tile)
    return {"tile": tile, "batch": batch, "px_s": (len(stamps) - 3) * batch * out * out / (stamps[-1] - stamps[2]),
            "data_wait": result.history[-1]["data_wait"]}


def bench_throughput(args: argparse.Namespace) -> None:
    from slideseg.model.config import UNetConfig
    from slideseg.train.loop import train_tile

    train_dir, _ = write_data(args.out / "data")
    arch = {"depth": args.depth, "width": args.width}
    tile, batch = train_tile(UNetConfig(in_channels=1, **arch), TrainConfig()), TrainConfig().resolved().batch_size
    assert batch is not None
    rows = []
    for repeat in range(args.repeat):  # alternate the order, so that a drifting load favours neither
        if repeat % 2:
            bare = bare_loop(arch, tile, batch, args.steps, 0.003, args.threads)
        ours = slideseg_loop(train_dir, args.out, arch, args.steps, args.threads)
        if not repeat % 2:
            bare = bare_loop(arch, tile, batch, args.steps, 0.003, args.threads)
        assert (ours["tile"], ours["batch"]) == (tile, batch)
        row = {"repeat": repeat, "tile": tile, "batch": batch, "slideseg_px_s": round(ours["px_s"]),
               "bare_px_s": round(bare), "efficiency": round(ours["px_s"] / bare, 3),
               "slideseg_data_wait": ours["data_wait"]}
        print(json.dumps(row), flush=True)
        rows.append(row)
    print(json.dumps({"bench": "train throughput", "steps": args.steps, "depth": args.depth, "width": args.width,
                      "threads": args.threads, "efficiency": mean_sd([r["efficiency"] for r in rows]),
                      "data_wait": mean_sd([r["slideseg_data_wait"] for r in rows]),
                      "machine": machine(), "date": time.strftime("%Y-%m-%d")}, indent=2, ensure_ascii=False))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["loss", "throughput"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--minutes", type=float, default=2.0, help="Training time per run (loss).")
    ap.add_argument("--steps", type=steps_option, default=None, help="loss: steps per run instead of --minutes, or "
                    "'default': the budget slideseg train picks for the data; throughput: timed steps (default 30).")
    ap.add_argument("--losses", nargs="+", choices=["weighted", "ce"], default=["weighted", "ce"],
                    help="loss: the arms to train (the target options below apply to both).")
    ap.add_argument("--w0", type=float, default=TrainConfig.w0, help="loss: weight of the border term.")
    ap.add_argument("--sigma", type=float, default=TrainConfig.sigma, help="loss: width of the border term, px.")
    ap.add_argument("--separation-width", type=int, choices=[1, 2], default=TrainConfig.separation_width,
                    help="loss: width of the separation borders in the target, px.")
    ap.add_argument("--border-on-objects", action="store_true", help="loss: the border term on object pixels too.")
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=2, help="throughput: repetitions.")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/out/train"))
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.what == "loss":
        bench_loss(args)
    else:
        if args.steps == DEFAULT_BUDGET:
            ap.error("throughput: --steps takes a number of timed steps, not 'default'")
        args.steps = args.steps or 30
        bench_throughput(args)


if __name__ == "__main__":
    main()
