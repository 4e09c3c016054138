"""The GPU check: one prepared run (at most 8 minutes, installs nothing) on a machine with an NVIDIA GPU.

    bash benchmarks/gpu_check.sh        # results in $OUT (if set) or benchmarks/out/

Sections, each with a time budget; whatever does not fit is reported as "not run", never guessed:

1. environment: GPU, capability, torch/CUDA versions, dense fp16 peak (from a table of known GPUs);
2. parity: the torch engine on CUDA vs on the CPU (fp32 with TF32 off: within 1e-4; fp16/bf16:
   error relative to the logit scale, and class-id agreement);
3. model-only output MP/s: depth-4 valid U-Net, base 16/32/64, tiles 572 and 1500, fp32/fp16/bf16,
   eager (all) and torch.compile (as many as the budget allows, base 64 first), input already on the
   GPU, timed with CUDA events after warm-up; FLOPs counted by torch's FlopCounterMode, so every row
   also gives achieved TFLOP/s and % of the dense fp16 peak;
4. the engine path (raw uint8 on the host -> logits on the host, pinned copies, two streams): one
   caller vs two concurrent callers, and the out-of-memory fallback (a batch that cannot fit);
5. end to end: `predict` on a synthetic slide vs the engine alone on the same tiles (pipeline
   efficiency = engine-only time / wall time), when predict's dependencies are importable.

Writes gpu_check.json (updated after every section, so a timeout keeps what was measured) and
gpu_check.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from slideseg.engines.torch_engine import TorchEngine
from slideseg.model.config import UNetConfig
from slideseg.model.files import LoadedModel
from slideseg.model.unet import build_unet

DENSE_FP16_PEAK = [  # (substring of the device name, dense fp16/bf16 tensor TFLOP/s)
    ("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.4), ("H200", 989.4), ("GH200", 989.4),
    ("A100", 312.0), ("L40S", 362.1), ("A10", 125.0), ("L4", 121.0), ("V100", 125.0),
]
DTYPES = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}


class Report:
    def __init__(self, out: Path, budget_s: float) -> None:
        self.out, self.t0, self.budget = out, time.perf_counter(), budget_s
        self.data: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M"), "sections": {}}

    def left(self) -> float:
        return self.budget - (time.perf_counter() - self.t0)

    def section(self, name: str, fn: Callable[[], Any]) -> None:
        t = time.perf_counter()
        try:
            self.data["sections"][name] = fn()
        except Exception as exc:
            self.data["sections"][name] = {"error": f"{type(exc).__name__}: {exc}",
                                           "traceback": traceback.format_exc()[-2000:]}
        self.data["sections"][name] = {"seconds": round(time.perf_counter() - t, 1), **_as_dict(
            self.data["sections"][name])}
        self.save()
        print(f"[gpu_check] {name} done ({time.perf_counter() - self.t0:.0f} s so far)", flush=True)

    def save(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "gpu_check.json").write_text(json.dumps(self.data, indent=2, default=str))
        (self.out / "gpu_check.md").write_text(markdown(self.data))


def _as_dict(x: Any) -> dict[str, Any]:
    return x if isinstance(x, dict) else {"result": x}


def model(width: int, seed: int = 0) -> LoadedModel:
    cfg = UNetConfig(depth=4, width=width)
    return LoadedModel(build_unet(cfg, seed=seed).eval(), cfg, "gpu-check")


def flops_per_output_px(width: int, tile: int) -> float:
    """FLOPs (2 per multiply-add) of one forward pass per output pixel, counted on the meta device."""
    from torch.utils.flop_counter import FlopCounterMode

    cfg = UNetConfig(depth=4, width=width)
    with torch.device("meta"):
        net = build_unet(cfg)
        x = torch.empty(1, 3, tile, tile)
    with FlopCounterMode(display=False) as counter:
        net(x)
    out = cfg.geometry.output_size(tile)
    return counter.get_total_flops() / out**2


def peak_tflops(name: str) -> float | None:
    for key, tflops in DENSE_FP16_PEAK:
        if key in name:
            return tflops
    return None


# --------------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------------


def environment() -> dict[str, Any]:
    props = torch.cuda.get_device_properties(0)
    return {"gpu": props.name, "capability": list(torch.cuda.get_device_capability(0)),
            "memory_gib": round(props.total_memory / 2**30, 1), "sms": props.multi_processor_count,
            "torch": torch.__version__, "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
            "python": platform.python_version(), "dense_fp16_peak_tflops": peak_tflops(props.name),
            "tensorrt": _version("tensorrt"), "onnxruntime": _version("onnxruntime")}


def _version(module: str) -> str | None:
    try:
        return str(__import__(module).__version__)
    except Exception:
        return None


def parity() -> dict[str, Any]:
    m = model(16, seed=1)
    batch = np.random.default_rng(0).integers(0, 256, (2, 3, 572, 572), dtype=np.uint8)
    cpu = TorchEngine(_copy(m), device="cpu").infer(batch)
    scale = float(np.abs(cpu).max())
    rows = {}
    for precision in ("fp32", "fp16", "bf16"):
        gpu = TorchEngine(_copy(m), device="cuda", precision=precision).infer(batch)
        diff = float(np.abs(gpu - cpu).max())
        rows[precision] = {"max_abs": diff, "relative_to_scale": diff / scale,
                           "class_ids_equal": float((gpu.argmax(1) == cpu.argmax(1)).mean())}
    rows["fp32_within_1e-4"] = rows["fp32"]["max_abs"] < 1e-4
    rows["logit_scale"] = scale
    return rows


def model_only(report: Report, compile_budget_s: float) -> dict[str, Any]:
    torch.backends.cudnn.benchmark = True
    conv = getattr(torch.backends.cudnn, "conv", None)
    if conv is not None and hasattr(conv, "fp32_precision"):
        conv.fp32_precision = "ieee"  # what the engine runs for fp32
    else:
        torch.backends.cudnn.allow_tf32 = False
    peak = peak_tflops(torch.cuda.get_device_name(0))
    rows: list[dict[str, Any]] = []
    configs = [(w, t, p) for w in (16, 32, 64) for t in (572, 1500) for p in ("fp32", "fp16", "bf16")]
    for width, tile, precision in configs:  # eager: all
        rows.append(_throughput(width, tile, precision, False, peak))
        report.data["sections"]["model_only_partial"] = rows
        report.save()
    deadline = time.perf_counter() + min(compile_budget_s, report.left() - 150)
    order = sorted(configs, key=lambda c: (-c[0], -c[1], ["fp16", "bf16", "fp32"].index(c[2])))
    for width, tile, precision in order:  # compiled: base 64 first, as long as the budget lasts
        if time.perf_counter() > deadline:
            rows.append({"width": width, "tile": tile, "precision": precision, "compiled": True,
                         "not_run": "time budget"})
            continue
        rows.append(_throughput(width, tile, precision, True, peak))
    report.data["sections"].pop("model_only_partial", None)
    return {"rows": rows}


def _throughput(width: int, tile: int, precision: str, compiled: bool, peak: float | None) -> dict[str, Any]:
    row: dict[str, Any] = {"width": width, "tile": tile, "precision": precision, "compiled": compiled}
    try:
        net: Any = build_unet(UNetConfig(depth=4, width=width), seed=0).eval().cuda()
        net = net.to(memory_format=torch.channels_last)
        if compiled:
            net = torch.compile(net, dynamic=False)
        n = 16 if tile < 1000 else 4
        out = tile - 184
        x = torch.randn(n, 3, tile, tile, device="cuda").contiguous(memory_format=torch.channels_last)
        dtype = DTYPES[precision]
        t_compile = time.perf_counter()

        def step() -> None:
            with torch.inference_mode():
                if dtype is None:
                    net(x)
                else:
                    with torch.autocast("cuda", dtype=dtype):
                        net(x)

        for _ in range(3):
            step()
        torch.cuda.synchronize()
        row["warmup_s"] = round(time.perf_counter() - t_compile, 1)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        iters, elapsed = 0, 0.0
        while elapsed < 1.5 and iters < 50:
            start.record()
            step()
            end.record()
            end.synchronize()
            elapsed += start.elapsed_time(end) / 1e3
            iters += 1
        mp_s = n * out * out * iters / elapsed / 1e6
        tflops = mp_s * 1e6 * flops_per_output_px(width, tile) / 1e12
        row.update({"batch": n, "output_mp_per_s": round(mp_s, 1), "tflops": round(tflops, 1),
                    "pct_of_fp16_peak": round(100 * tflops / peak, 1) if peak else None,
                    "peak_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 1)})
    except Exception as exc:
        row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
    finally:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    return row


def engine_path() -> dict[str, Any]:
    import threading

    m = model(64)
    result: dict[str, Any] = {}
    for precision in ("fp16", "bf16"):
        engine = TorchEngine(_copy(m), device="cuda", precision=precision)
        batch = np.random.default_rng(0).integers(0, 256, (4, 3, 1500, 1500), dtype=np.uint8)
        out_px = 4 * 1316**2
        for _ in range(3):
            engine.infer(batch)
        t0 = time.perf_counter()
        for _ in range(8):
            engine.infer(batch)
        one = 8 * out_px / (time.perf_counter() - t0) / 1e6

        def worker(engine: TorchEngine = engine, batch: np.ndarray = batch) -> None:
            for _ in range(4):
                engine.infer(batch)

        threads = [threading.Thread(target=worker) for _ in range(2)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        two = 8 * out_px / (time.perf_counter() - t0) / 1e6
        result[precision] = {"one_caller_mp_per_s": round(one, 1), "two_callers_mp_per_s": round(two, 1),
                             "overlap_gain": round(two / one, 3)}
    engine = TorchEngine(_copy(m), device="cuda", precision="fp32")
    huge = np.zeros((64, 3, 1500, 1500), np.uint8)  # about 6 GB of activations per tile in fp32
    try:
        logits = engine.infer(huge)
        result["oom_fallback"] = {"requested_batch": 64, "batch_limit_after": engine.batch_limit,
                                  "completed": logits.shape[0] == 64}
    except Exception as exc:
        result["oom_fallback"] = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"}
    torch.cuda.empty_cache()
    return result


def end_to_end(out: Path, size: int, width: int = 64, device: str = "cuda") -> dict[str, Any]:
    try:
        from slideseg.io.slide import open_slide, read_window
        from slideseg.model.files import save_model
        from slideseg.predict import PredictConfig, plan_for, predict
        from slideseg.tools.synth import SynthConfig, write_synthetic_slide
    except ImportError as exc:
        return {"not_run": f"predict's dependencies are not importable here ({exc})"}
    work = out / "e2e"
    work.mkdir(parents=True, exist_ok=True)
    slide = work / f"synth-{size}.ome.tif"
    t0 = time.perf_counter()
    if not slide.exists():
        write_synthetic_slide(slide, SynthConfig(size=(size, size), seed=0))
    synth_s = time.perf_counter() - t0
    cfg_m = UNetConfig(depth=4, width=width)
    model_path = work / f"unet-w{width}.safetensors"
    save_model(model_path, build_unet(cfg_m, seed=0), cfg_m, {"trained": False})
    result: dict[str, Any] = {"size": size, "width": width, "synth_s": round(synth_s, 1)}
    for precision in ("fp16", "bf16") if device == "cuda" else ("fp32",):
        cfg = PredictConfig(device=device, engine="torch", precision=precision, batch_size=4, overwrite=True)
        engine = TorchEngine(_loaded(model_path), device=device, precision=precision)
        with open_slide(slide) as s:
            plan = plan_for(s.shape[:2], cfg_m.geometry, cfg)
            tiles = []
            for chunk in plan:
                window = read_window(s, chunk.window, cfg_m.mirror)
                tiles += [window[t.read.relative_to(chunk.window)] for t in chunk.tiles]
        batches = [np.stack(tiles[i : i + 4]).transpose(0, 3, 1, 2) for i in range(0, len(tiles), 4)]
        engine.infer(batches[0])  # warm-up; infer returns host arrays, so the GPU is synchronised
        t0 = time.perf_counter()
        for b in batches:
            engine.infer(b)
        engine_s = time.perf_counter() - t0
        del engine, tiles, batches
        if device == "cuda":
            torch.cuda.empty_cache()
        t0 = time.perf_counter()
        res = predict(slide, work / f"mask-{precision}.zarr", model_path, cfg)
        wall = time.perf_counter() - t0
        result[precision] = {"tiles": plan.describe(), "engine_only_s": round(engine_s, 2), "wall_s": round(wall, 2),
                             "pipeline_efficiency": round(engine_s / wall, 3),
                             "output_mp_per_s": round(size * size / 1e6 / wall, 1),
                             "engine": res.engine}
    return result


def _copy(m: LoadedModel) -> LoadedModel:
    net = build_unet(m.config)
    net.load_state_dict({k: v.cpu() for k, v in m.net.state_dict().items()})
    return LoadedModel(net.eval(), m.config, m.weights_sha256)


def _loaded(path: Path) -> LoadedModel:
    from slideseg.model.files import load_model

    return load_model(path)


def markdown(data: dict[str, Any]) -> str:
    s = data["sections"]
    lines = [f"# slideseg GPU check, {data['date']}", ""]
    env = s.get("environment", {})
    lines.append(f"GPU: {env.get('gpu')} (sm {env.get('capability')}), torch {env.get('torch')}, CUDA "
                 f"{env.get('cuda')}, dense fp16 peak {env.get('dense_fp16_peak_tflops')} TFLOP/s")
    if "parity" in s:
        lines += ["", "## Parity (CUDA vs CPU, torch engine, base 16, tile 572)", "", "```",
                  json.dumps(s["parity"], indent=1, default=str), "```"]
    rows = s.get("model_only", {}).get("rows") or s.get("model_only_partial") or []
    if rows:
        lines += ["", "## Model-only throughput (depth-4 valid U-Net, input on the GPU)", "",
                  "| base | tile | precision | compiled | batch | output MP/s | TFLOP/s | % fp16 peak |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        for r in rows:
            note = r.get("error") or r.get("not_run")
            lines.append(f"| {r['width']} | {r['tile']} | {r['precision']} | {r['compiled']} | {r.get('batch', '')} | "
                         f"{r.get('output_mp_per_s', note or '')} | {r.get('tflops', '')} | "
                         f"{r.get('pct_of_fp16_peak', '')} |")
    for name in ("engine_path", "end_to_end"):
        if name in s:
            lines += ["", f"## {name.replace('_', ' ')}", "", "```", json.dumps(s[name], indent=1, default=str), "```"]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/out"))
    ap.add_argument("--budget", type=float, default=450.0, help="seconds for everything")
    ap.add_argument("--compile-budget", type=float, default=150.0)
    ap.add_argument("--slide", type=int, default=8192, help="edge of the synthetic slide, px")
    ap.add_argument("--e2e-width", type=int, default=64, help="base width of the end-to-end model")
    ap.add_argument("--cpu-dry-run", action="store_true",
                    help="run only the end-to-end section on the CPU (checks the script, measures nothing useful)")
    args = ap.parse_args()
    if args.cpu_dry_run:
        report = Report(args.out, args.budget)
        report.section("end_to_end", lambda: end_to_end(args.out, args.slide, args.e2e_width, "cpu"))
        print((args.out / "gpu_check.md").read_text())
        return
    if not torch.cuda.is_available():
        raise SystemExit("gpu_check: torch sees no CUDA device")
    report = Report(args.out, args.budget)
    report.section("environment", environment)
    report.section("parity", parity)
    report.section("model_only", lambda: model_only(report, args.compile_budget))
    if report.left() > 120:
        report.section("engine_path", engine_path)
    else:
        report.data["sections"]["engine_path"] = {"not_run": "time budget"}
    if report.left() > 90:
        report.section("end_to_end", lambda: end_to_end(args.out, args.slide, args.e2e_width))
    else:
        report.data["sections"]["end_to_end"] = {"not_run": "time budget"}
    report.save()
    print((args.out / "gpu_check.md").read_text())


if __name__ == "__main__":
    main()
