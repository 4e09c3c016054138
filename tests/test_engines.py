"""The engine contract, run by every engine (skipped per engine when its backend is absent), the
CUDA out-of-memory fallback, precision rules, and `auto` selection."""

from __future__ import annotations

import importlib.util
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from slideseg.engines.base import Engine
from slideseg.engines.cache import ENV_DIR, choice_key, read_choice
from slideseg.engines.registry import build_engine, load_engine, make_engine
from slideseg.engines.selection import (
    CPU_SWITCH_MARGIN,
    Backends,
    choose,
    measure_fastest,
    require,
)
from slideseg.engines.torch_engine import TorchEngine, run_halving_on_oom
from slideseg.errors import ConfigError
from slideseg.model.config import UNetConfig
from slideseg.model.files import LoadedModel, save_model
from slideseg.model.unet import build_unet
from slideseg.predict import PredictConfig, predict
from slideseg.tools.synth import SynthConfig, write_synthetic_slide
from tests.conftest import random_rgb

HAS_ORT = importlib.util.find_spec("onnxruntime") is not None
HAS_CUDA = torch.cuda.is_available()
HAS_TRT = HAS_CUDA and importlib.util.find_spec("tensorrt") is not None
TILE = 124  # depth 3 valid: 124 -> 36 px


@pytest.fixture(scope="module", autouse=True)
def engines_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Exports, plans and cached choices go to a temporary folder, never the repository's engines/."""
    folder = tmp_path_factory.mktemp("engines")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(ENV_DIR, str(folder))
        yield folder


def tiny_model(seed: int = 0, **kw: object) -> LoadedModel:
    cfg = UNetConfig(**{"depth": 3, "width": 4, "classes": 3, **kw})  # type: ignore[arg-type]
    return LoadedModel(build_unet(cfg, seed=seed).eval(), cfg, f"{seed:064x}")


def raw_batch(n: int, tile: int = TILE, dtype: type = np.uint8, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    hi = 4096 if dtype == np.uint16 else 256
    return rng.integers(0, hi, (n, 3, tile, tile)).astype(dtype)


def reference_logits(model: LoadedModel, batch: np.ndarray) -> np.ndarray:
    """The PyTorch CPU engine on a copy of the network: the reference every engine is compared with."""
    net = build_unet(model.config)
    net.load_state_dict({k: v.cpu() for k, v in model.net.state_dict().items()})
    return TorchEngine(LoadedModel(net.eval(), model.config, model.weights_sha256), device="cpu").infer(batch)


# --------------------------------------------------------------------------------------------
# The contract
# --------------------------------------------------------------------------------------------


class EngineContract:
    """Every engine runs these tests; a subclass says how to build its engine (``make``)."""

    atol = 1e-4  # parity with the PyTorch CPU engine, fp32

    @classmethod
    def make(cls, model: LoadedModel) -> Engine:
        raise NotImplementedError

    @pytest.fixture(scope="class")
    @classmethod
    def model(cls) -> LoadedModel:
        return tiny_model(seed=3)

    @pytest.fixture(scope="class")
    @classmethod
    def engine(cls, model: LoadedModel) -> Engine:
        return cls.make(model)

    @pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
    def test_shapes_and_dtypes(self, engine: Engine, dtype: type) -> None:
        logits = engine.infer(raw_batch(2, dtype=dtype))
        assert logits.shape == (2, 3, 36, 36) and logits.dtype == np.float32
        assert np.isfinite(logits).all()

    def test_parity_with_torch_cpu(self, engine: Engine, model: LoadedModel) -> None:
        batch = raw_batch(3)
        np.testing.assert_allclose(engine.infer(batch), reference_logits(model, batch), atol=self.atol, rtol=0)

    def test_batch_of_one_equals_batch_of_many(self, engine: Engine) -> None:
        batch = raw_batch(4, seed=1)
        many = engine.infer(batch)
        ones = np.concatenate([engine.infer(batch[i : i + 1]) for i in range(4)])
        np.testing.assert_allclose(ones, many, atol=1e-4, rtol=0)  # kernels may differ with N (~1e-5)

    def test_deterministic(self, engine: Engine) -> None:
        batch = raw_batch(2, seed=2)
        np.testing.assert_array_equal(engine.infer(batch), engine.infer(batch))

    def test_thread_safe(self, engine: Engine) -> None:
        batches = [raw_batch(2, seed=s) for s in range(4)]
        want = [engine.infer(b) for b in batches]
        got: dict[int, np.ndarray] = {}

        def run(i: int) -> None:
            got[i] = engine.infer(batches[i])

        threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for i in range(4):
            np.testing.assert_allclose(got[i], want[i], atol=1e-6, rtol=0)

    @pytest.mark.parametrize(("shape", "match"), [
        ((1, 1, TILE, TILE), r"expected a batch of shape \(N, 3, T, T\)"),  # wrong channel count
        ((1, 3, 120, 120), "Tile 120 px is not valid"),                     # not a valid tile
        ((1, 3, TILE, 100), r"expected a batch of shape"),                  # not square
    ])
    def test_rejects_bad_batches(self, engine: Engine, shape: tuple[int, ...], match: str) -> None:
        with pytest.raises(ConfigError, match=match):
            engine.infer(np.zeros(shape, np.uint8))

    def test_describe_names_the_engine(self, engine: Engine) -> None:
        assert engine.describe()["engine"] == engine.name


class TestTorchEngine(EngineContract):
    atol = 0.0  # it is the reference

    @classmethod
    def make(cls, model: LoadedModel) -> Engine:
        return make_engine("torch", model, device="cpu")


@pytest.mark.skipif(not HAS_ORT, reason="onnxruntime is not installed")
class TestOnnxRuntimeEngine(EngineContract):
    """A .safetensors model through ONNX Runtime: exported per tile size on first use."""

    @classmethod
    def make(cls, model: LoadedModel) -> Engine:
        return make_engine("onnxruntime", model, device="cpu", max_batch=4)


@pytest.mark.skipif(not HAS_ORT, reason="onnxruntime is not installed")
class TestOnnxRuntimeEngineOnAnExportedFile(EngineContract):
    """`--model FILE.onnx`: a slideseg export loaded as a model file."""

    @classmethod
    def make(cls, model: LoadedModel) -> Engine:
        from slideseg.engines.onnx import export_onnx

        return load_engine(export_onnx(model, TILE, max_batch=4), "onnxruntime", device="cpu")


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
class TestTorchCudaEngine(EngineContract):
    @classmethod
    def make(cls, model: LoadedModel) -> Engine:
        return make_engine("torch", model, device="cuda")


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_TRT, reason="needs TensorRT and a CUDA GPU")
class TestTensorRTEngine(EngineContract):
    @classmethod
    def make(cls, model: LoadedModel) -> Engine:
        return make_engine("tensorrt", model, device="cuda", max_batch=4)


# --------------------------------------------------------------------------------------------
# ONNX Runtime and PyTorch agree through predict
# --------------------------------------------------------------------------------------------


@pytest.mark.skipif(not HAS_ORT, reason="onnxruntime is not installed")
def test_onnxruntime_and_torch_give_the_same_mask_through_predict(tmp_path: Path) -> None:
    cfg = UNetConfig(depth=3, width=4, classes=3)
    save_model(tmp_path / "m.safetensors", build_unet(cfg, seed=5), cfg, {"trained": False})
    slide = tmp_path / "s.ome.tif"
    write_synthetic_slide(slide, SynthConfig(size=(200, 260), seed=4, tile=64))
    probs, ids = {}, {}
    for name in ("torch", "onnxruntime"):
        pcfg = PredictConfig(tile=124, chunk=96, batch_size=3, probabilities=True, device="cpu", engine=name)
        result = predict(slide, tmp_path / f"{name}.zarr", tmp_path / "m.safetensors", pcfg)
        assert result.engine["engine"] == name
        root = zarr.open_group(tmp_path / f"{name}.zarr", mode="r")
        ids[name], probs[name] = root["0"][:], root["probabilities/0"][:]
    assert (probs["torch"].sum(axis=0) > 0).mean() > 0.5  # most chunks ran (not skipped as background)
    assert (ids["torch"] == ids["onnxruntime"]).all()
    # uint8 probabilities: equal up to a rounding flip where p*255 sits on a .5 boundary
    assert np.abs(probs["torch"].astype(int) - probs["onnxruntime"].astype(int)).max() <= 1


@pytest.mark.skipif(not HAS_ORT, reason="onnxruntime is not installed")
def test_onnxruntime_probabilities_match_torch_within_1e4(tmp_path: Path) -> None:
    """The same comparison on float probabilities (the predict output above is quantised to uint8)."""
    from slideseg.plan.tiles import make_plan
    from slideseg.schedule.chunks import infer_chunk, softmax
    from tests.conftest import ArraySlide

    model = tiny_model(seed=5)
    image = random_rgb((150, 170), seed=9)
    g = model.config.geometry
    plan = make_plan(image.shape[:2], tile=TILE, context=g.context, alignment=g.alignment, chunk=64)
    out = {}
    for name in ("torch", "onnxruntime"):
        engine = make_engine(name, model, device="cpu")
        out[name] = np.concatenate([softmax(infer_chunk(ArraySlide(image), engine, c, "reflect", 4)).ravel()
                                    for c in plan])
    np.testing.assert_allclose(out["onnxruntime"], out["torch"], atol=1e-4, rtol=0)


# --------------------------------------------------------------------------------------------
# Precision and the CUDA out-of-memory fallback
# --------------------------------------------------------------------------------------------


def test_cpu_bf16_runs_under_autocast_and_stays_close() -> None:
    model = tiny_model(seed=1)
    batch = raw_batch(2)
    ref = reference_logits(model, batch)
    got = make_engine("torch", model, device="cpu", precision="bf16").infer(batch)
    assert got.dtype == np.float32
    assert np.abs(got - ref).max() < 0.05 * np.abs(ref).max()  # bf16 keeps ~3 significant digits
    assert np.abs(got - ref).max() > 0  # and it did compute in bf16


def test_cpu_fp16_is_refused_with_a_reason() -> None:
    with pytest.raises(ConfigError, match="fp16 is emulated on the CPU"):
        make_engine("torch", tiny_model(), device="cpu", precision="fp16")


def test_compile_applies_to_torch_only() -> None:
    with pytest.raises(ConfigError, match="--compile applies to the torch engine"):
        make_engine("onnxruntime", tiny_model(), device="cpu", compile=True)


class FakeOOM(RuntimeError):
    pass


def test_out_of_memory_halves_the_batch_and_carries_on() -> None:
    batch = np.arange(7)[:, None]
    calls: list[int] = []
    halved: list[int] = []

    def run(part: np.ndarray) -> np.ndarray:
        calls.append(len(part))
        if len(part) > 3:  # the "GPU" holds 3 tiles
            raise FakeOOM("CUDA out of memory")
        return part * 10

    out, limit = run_halving_on_oom(batch, run, 8, lambda e: isinstance(e, FakeOOM),
                                    lambda n, e: halved.append(n))
    np.testing.assert_array_equal(out, batch * 10)  # every tile, in order
    assert calls == [7, 3, 3, 1] and halved == [3] and limit == 3  # the limit sticks for the next call


def test_out_of_memory_on_one_tile_and_other_errors_are_raised() -> None:
    def oom(part: np.ndarray) -> np.ndarray:
        raise FakeOOM("CUDA out of memory")

    with pytest.raises(FakeOOM):
        run_halving_on_oom(np.zeros((1, 1)), oom, 1, lambda e: isinstance(e, FakeOOM), lambda n, e: None)

    def broken(part: np.ndarray) -> np.ndarray:
        raise ValueError("not memory")

    with pytest.raises(ValueError):
        run_halving_on_oom(np.zeros((4, 1)), broken, 4, lambda e: isinstance(e, FakeOOM), lambda n, e: None)


# --------------------------------------------------------------------------------------------
# Selection
# --------------------------------------------------------------------------------------------


def _never(cpu: tuple[str, ...]) -> tuple[str, str]:
    raise AssertionError("no CPU measurement expected")


@pytest.mark.parametrize(("backends", "candidates", "device", "want"), [
    # TensorRT importable and a GPU: TensorRT (the flags fake what is installed; nothing runs)
    (Backends(cuda=True, tensorrt=True, onnxruntime=True), ("tensorrt", "torch", "onnxruntime"), "auto", "tensorrt"),
    # a GPU without TensorRT: PyTorch on CUDA
    (Backends(cuda=True, tensorrt=False, onnxruntime=True), ("tensorrt", "torch", "onnxruntime"), "auto", "torch"),
    # an ONNX file on a GPU without TensorRT: ONNX Runtime
    (Backends(cuda=True, tensorrt=False, onnxruntime=True), ("tensorrt", "onnxruntime"), "cuda", "onnxruntime"),
    # --device cpu on a GPU machine: CPU engines only; ONNX Runtime absent: torch, no measurement
    (Backends(cuda=True, tensorrt=True, onnxruntime=False), ("tensorrt", "torch", "onnxruntime"), "cpu", "torch"),
    # a TorchScript model without a GPU: torch
    (Backends(cuda=False, tensorrt=False, onnxruntime=True), ("torch",), "auto", "torch"),
])
def test_auto_prefers_tensorrt_then_cuda_then_cpu(backends: Backends, candidates: tuple[str, ...], device: str,
                                                  want: str) -> None:
    name, reason = choose(candidates, backends, device, _never)
    assert name == want and reason


def test_auto_on_a_cpu_measures_when_both_cpu_engines_can_run(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SLIDESEG_CPU_ENGINE", raising=False)
    name, reason = choose(("tensorrt", "torch", "onnxruntime"), Backends(False, False, True), "auto",
                          lambda cpu: (cpu[-1], f"measured {cpu}"))
    assert name == "onnxruntime" and reason == "measured ('torch', 'onnxruntime')"


def test_the_cpu_engine_can_be_chosen_without_measuring(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLIDESEG_CPU_ENGINE", "onnxruntime")
    name, reason = choose(("torch", "onnxruntime"), Backends(False, False, True), "auto", _never)
    assert name == "onnxruntime" and "SLIDESEG_CPU_ENGINE" in reason
    monkeypatch.setenv("SLIDESEG_CPU_ENGINE", "torch")  # an ONNX file: only ONNX Runtime can run it
    assert choose(("onnxruntime",), Backends(False, False, True), "auto", _never)[0] == "onnxruntime"
    monkeypatch.setenv("SLIDESEG_CPU_ENGINE", "tflite")
    with pytest.raises(ConfigError, match="is not a CPU engine"):
        choose(("torch", "onnxruntime"), Backends(False, False, True), "auto", _never)


@pytest.mark.parametrize(("name", "backends", "device", "match"), [
    ("onnxruntime", Backends(False, False, False), "auto", r"pip install 'slideseg\[onnx\]'"),
    ("tensorrt", Backends(True, False, True), "auto", r"pip install 'slideseg\[gpu\]'"),
    ("tensorrt", Backends(False, False, True), "auto", "needs a CUDA GPU"),
    ("tensorrt", Backends(True, True, True), "cpu", "NVIDIA GPU only"),
    ("tflite", Backends(True, True, True), "auto", "unknown engine 'tflite'"),
])
def test_a_missing_engine_asked_for_by_name_is_an_error_with_the_hint(
        name: str, backends: Backends, device: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        require(name, backends, device)


class _Timed(Engine):
    name = "fake"

    def __init__(self, seconds: float, clock: list[float]) -> None:
        super().__init__(tiny_model().config, "x")
        self.seconds, self.clock = seconds, clock

    def infer(self, batch: np.ndarray) -> np.ndarray:
        self.clock[0] += self.seconds
        return batch


@pytest.mark.parametrize(("torch_s", "ort_s", "want"), [
    (1.0, 0.5, "onnxruntime"),                       # twice as fast: switch
    (1.0, 1.0 / (CPU_SWITCH_MARGIN * 0.99), "torch"),  # within the margin: keep the reference engine
    (0.5, 1.0, "torch"),
])
def test_cpu_measurement_picks_the_fastest_and_caches_it(torch_s: float, ort_s: float, want: str) -> None:
    clock = [0.0]
    made: list[str] = []

    def maker(name: str, s: float):  # type: ignore[no-untyped-def]
        return lambda: made.append(name) or _Timed(s, clock)

    engines = {"torch": maker("torch", torch_s), "onnxruntime": maker("onnxruntime", ort_s)}
    fields = {"case": [torch_s, ort_s]}
    name, reason = measure_fastest(engines, np.zeros(1), fields, timer=lambda: clock[0])
    assert name == want and "measured now" in reason and made == ["torch", "onnxruntime"]
    again, reason = measure_fastest(engines, np.zeros(1), fields, timer=lambda: clock[0])
    assert again == want and "cached" in reason and made == ["torch", "onnxruntime"]  # not measured again
    assert read_choice(choice_key(fields))["engine"] == want  # type: ignore[index]


@pytest.mark.skipif(not HAS_ORT, reason="onnxruntime is not installed")
def test_auto_on_this_cpu_says_which_engine_and_why(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SLIDESEG_CPU_ENGINE", raising=False)
    model = tiny_model(seed=7)
    engine = make_engine("auto", model, device="cpu")
    d = engine.describe()
    assert d["engine"] in ("torch", "onnxruntime") and "fastest on this CPU" in d["reason"]
    again = make_engine("auto", model, device="cpu")
    assert again.name == engine.name and "cached" in again.describe()["reason"]


def test_auto_with_bf16_on_a_cpu_runs_torch_without_measuring() -> None:
    engine = build_engine("auto", ("tensorrt", "torch", "onnxruntime"), model=tiny_model(), device="cpu",
                          precision="bf16")
    assert engine.name == "torch" and engine.describe()["precision"] == "bf16"
