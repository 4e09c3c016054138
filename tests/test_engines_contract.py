"""The engine contract, run by every engine (skipped per engine when its backend is absent), and the
engines compared with one another: PyTorch on CUDA with PyTorch on the CPU, ONNX Runtime with
PyTorch on the CPU (logits, probabilities, and masks through predict)."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import zarr

from slideseg.engines.base import Engine
from slideseg.engines.onnx import export_onnx
from slideseg.engines.registry import load_engine, make_engine
from slideseg.errors import ConfigError
from slideseg.model.files import LoadedModel
from slideseg.plan.tiles import make_plan
from slideseg.predict import PredictConfig, predict
from slideseg.schedule.chunks import infer_chunk, softmax
from slideseg.tools.synth import SynthConfig, write_synthetic_slide
from tests.conftest import (
    HAS_CUDA,
    HAS_TRT,
    TILE,
    ArraySlide,
    needs_ort,
    random_rgb,
    raw_batch,
    reference_logits,
    save_tiny_model,
    tiny_model,
)

# --------------------------------------------------------------------------------------------
# The contract
# --------------------------------------------------------------------------------------------


class EngineContract:
    """Every engine runs these tests; a subclass names its engine and says how to build it (``make``)."""

    engine_name = ""
    atol = 1e-4  # parity with the network run by torch on the CPU in fp32

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

    def test_parity_with_the_network(self, engine: Engine, model: LoadedModel) -> None:
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
        ((1, 3, TILE, 120), "Tile 120 px is not valid"),                    # one edge not a valid tile
    ])
    def test_rejects_bad_batches(self, engine: Engine, shape: tuple[int, ...], match: str) -> None:
        with pytest.raises(ConfigError, match=match):
            engine.infer(np.zeros(shape, np.uint8))

    def test_describe_names_the_engine(self, engine: Engine) -> None:
        assert engine.name == self.engine_name and engine.describe()["engine"] == self.engine_name


class TestTorchEngine(EngineContract):
    engine_name = "torch"
    atol = 1e-5  # the same fp32 computation; only the memory layout (channels-last) differs

    @classmethod
    def make(cls, model: LoadedModel) -> Engine:
        return make_engine("torch", model, device="cpu")


@needs_ort
class TestOnnxRuntimeEngine(EngineContract):
    """A .safetensors model through ONNX Runtime: exported per tile size on first use."""

    engine_name = "onnxruntime"

    @classmethod
    def make(cls, model: LoadedModel) -> Engine:
        return make_engine("onnxruntime", model, device="cpu", max_batch=4)


@needs_ort
class TestOnnxRuntimeEngineOnAnExportedFile(EngineContract):
    """`--model FILE.onnx`: a slideseg export loaded as a model file."""

    engine_name = "onnxruntime"

    @classmethod
    def make(cls, model: LoadedModel) -> Engine:
        return load_engine(export_onnx(model, TILE, max_batch=4), "onnxruntime", device="cpu")


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
class TestTorchCudaEngine(EngineContract):
    engine_name = "torch"

    @classmethod
    def make(cls, model: LoadedModel) -> Engine:
        return make_engine("torch", model, device="cuda")


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_TRT, reason="needs TensorRT and a CUDA GPU")
class TestTensorRTEngine(EngineContract):
    engine_name = "tensorrt"

    @classmethod
    def make(cls, model: LoadedModel) -> Engine:
        return make_engine("tensorrt", model, device="cuda", max_batch=4)


# --------------------------------------------------------------------------------------------
# Engines compared with one another
# --------------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_torch_on_cuda_equals_torch_on_the_cpu_in_fp32(dtype: type) -> None:
    """fp32 on CUDA means IEEE fp32 (TF32 off): the GPU's logits are the CPU's up to summation order."""
    batch = raw_batch(5, tile=TILE + 16, dtype=dtype, seed=6)  # an odd batch, another tile size
    cuda = make_engine("torch", tiny_model(seed=4), device="cuda").infer(batch)
    cpu = make_engine("torch", tiny_model(seed=4), device="cpu").infer(batch)  # its own copy of the weights
    assert cuda.dtype == cpu.dtype == np.float32 and cuda.shape == cpu.shape == (5, 3, 52, 52)
    np.testing.assert_allclose(cuda, cpu, atol=1e-4, rtol=1e-4)  # uint16 tiles give logits ~20x larger
    assert (cuda.argmax(1) == cpu.argmax(1)).mean() > 0.999


@needs_ort
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_the_cpu_engines_give_the_same_logits(dtype: type) -> None:
    """PyTorch and ONNX Runtime on the CPU, both fed raw tiles: fp32 logits within 1e-4 (relative
    to the logits' size for uint16 tiles, whose logits are ~10x larger)."""
    model = tiny_model(seed=3)  # the contract's model: its ONNX export is in the session's cache
    batch = raw_batch(3, dtype=dtype, seed=8)
    torch_logits = make_engine("torch", model, device="cpu").infer(batch)
    ort_logits = make_engine("onnxruntime", model, device="cpu", max_batch=4).infer(batch)
    assert np.abs(torch_logits).max() > 0.1  # not a trivially small output
    np.testing.assert_allclose(ort_logits, torch_logits, atol=1e-4, rtol=1e-4)


@needs_ort
def test_onnxruntime_probabilities_match_torch_within_1e4() -> None:
    """Chunk by chunk through the tiler, on float probabilities (predict quantises them to uint8)."""
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


@needs_ort
def test_onnxruntime_and_torch_give_the_same_mask_through_predict(tmp_path: Path) -> None:
    model = save_tiny_model(tmp_path / "m.safetensors", seed=5, depth=3, classes=3)
    slide = tmp_path / "s.ome.tif"
    write_synthetic_slide(slide, SynthConfig(size=(200, 260), seed=4, tile=64))
    probs, ids = {}, {}
    for name in ("torch", "onnxruntime"):
        pcfg = PredictConfig(tile=124, chunk=96, batch_size=3, probabilities=True, device="cpu", engine=name)
        result = predict(slide, tmp_path / f"{name}.zarr", model, pcfg)
        assert result.engine["engine"] == name
        root = zarr.open_group(tmp_path / f"{name}.zarr", mode="r")
        ids[name], probs[name] = root["0"][:], root["probabilities/0"][:]
    assert (probs["torch"].sum(axis=0) > 0).mean() > 0.5  # most chunks ran (not skipped as background)
    assert (ids["torch"] == ids["onnxruntime"]).all()
    # uint8 probabilities: equal up to a rounding flip where p*255 sits on a .5 boundary
    assert np.abs(probs["torch"].astype(int) - probs["onnxruntime"].astype(int)).max() <= 1
