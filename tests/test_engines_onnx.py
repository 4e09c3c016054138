"""ONNX export: what the file is (name, metadata, signature, precision), that ONNX Runtime agrees
with the network, that bf16 graphs are valid and compute what the bf16 network computes, and the
cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from slideseg.errors import ConfigError, OutputExistsError
from slideseg.model.files import LoadedModel
from tests.conftest import TILE, raw_batch, reference_logits, tiny_model

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxscript")
ort = pytest.importorskip("onnxruntime")

from slideseg.engines import onnx as ex  # noqa: E402  (needs onnx)
from slideseg.engines.onnxruntime_engine import verify_onnx  # noqa: E402


@pytest.fixture(scope="module")
def model() -> LoadedModel:
    return tiny_model(seed=11)


@pytest.fixture(scope="module")
def exports(model: LoadedModel, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One export per precision (exporting costs ~1-2 s each)."""
    folder = tmp_path_factory.mktemp("exports")
    return {p: ex.export_onnx(model, TILE, max_batch=4, precision=p, output=folder / f"{p}.onnx")
            for p in ("fp32", "fp16", "bf16")}


def test_export_lands_in_the_cache_named_by_what_it_is(model: LoadedModel, engines_dir: Path) -> None:
    path = ex.export_onnx(model, TILE, max_batch=4, precision="fp32")
    assert path == engines_dir / f"unet-{model.weights_sha256[:12]}-t{TILE}-b4-fp32.onnx"
    before = path.stat()
    assert ex.export_onnx(model, TILE, max_batch=4, precision="fp32") == path
    after = path.stat()  # reused: the file was not written again (a new export replaces it atomically)
    assert (after.st_ino, after.st_mtime_ns, after.st_size) == (before.st_ino, before.st_mtime_ns, before.st_size)


@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16"])
def test_signature_metadata_and_precision(exports: dict[str, Path], model: LoadedModel, precision: str) -> None:
    proto = onnx.load(str(exports[precision]))
    onnx.checker.check_model(proto, full_check=True)  # bf16 needs opset 22: valid, not just loadable
    (inp,), (out,) = proto.graph.input, proto.graph.output
    dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    assert inp.name == "pixels" and dims[1:] == [3, TILE, TILE] and isinstance(dims[0], str)  # dynamic batch
    assert inp.type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # raw pixels in fp32
    assert out.name == "logits" and out.type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # fp32 logits
    want = {"fp32": onnx.TensorProto.FLOAT, "fp16": onnx.TensorProto.FLOAT16, "bf16": onnx.TensorProto.BFLOAT16}
    conv_weights = {n.input[1] for n in proto.graph.node if n.op_type == "Conv"}
    kinds = {i.data_type for i in proto.graph.initializer if i.name in conv_weights}
    assert kinds == {want[precision]}  # the network itself computes in the export precision
    info = ex.read_onnx_info(exports[precision])
    assert info is not None and info.config == model.config and info.weights_sha256 == model.weights_sha256
    assert (info.tile, info.max_batch, info.precision, info.normalised_in_graph) == (TILE, 4, precision, True)


def test_fp32_export_agrees_with_torch_within_1e4(exports: dict[str, Path], model: LoadedModel) -> None:
    assert verify_onnx(exports["fp32"], model) < 1e-4
    session = ort.InferenceSession(str(exports["fp32"]), providers=["CPUExecutionProvider"])
    for n in (1, 3):  # dynamic batch
        batch = raw_batch(n, seed=n)
        got = session.run(None, {"pixels": batch.astype(np.float32)})[0]
        np.testing.assert_allclose(got, reference_logits(model, batch), atol=1e-4, rtol=0)


def test_fp16_export_runs_on_onnxruntime_close_to_fp32(exports: dict[str, Path], model: LoadedModel) -> None:
    batch = raw_batch(2)
    ref = reference_logits(model, batch)
    session = ort.InferenceSession(str(exports["fp16"]), providers=["CPUExecutionProvider"])
    got = session.run(None, {"pixels": batch.astype(np.float32)})[0]
    assert got.dtype == np.float32
    assert 0 < np.abs(got - ref).max() < 0.01 * np.abs(ref).max()


def test_bf16_export_computes_what_the_bf16_network_computes(exports: dict[str, Path], model: LoadedModel) -> None:
    """ONNX Runtime's CPU provider has no bf16 kernels, so the graph runs in onnx's reference
    evaluator and is compared with the exported module run by torch in bf16."""
    from onnx.reference import ReferenceEvaluator

    batch = raw_batch(1, seed=4)
    got = ReferenceEvaluator(onnx.load(str(exports["bf16"]))).run(None, {"pixels": batch.astype(np.float32)})[0]
    with torch.no_grad():
        want = ex.exportable_module(model, "bf16")(torch.from_numpy(batch.astype(np.float32))).numpy()
    ref = reference_logits(model, batch)
    scale = np.abs(ref).max()
    assert got.dtype == np.float32 and got.shape == ref.shape
    assert np.abs(got - want).max() < 0.02 * scale  # same bf16 computation (accumulation order differs)
    assert np.abs(got - ref).max() < 0.05 * scale   # and close to fp32


def test_export_never_changes_the_model(model: LoadedModel) -> None:
    before = {k: v.clone() for k, v in model.net.state_dict().items()}
    ex.exportable_module(model, "fp16")
    after = model.net.state_dict()
    assert all(after[k].dtype == torch.float32 and torch.equal(after[k], v) for k, v in before.items())


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    ({"tile": 120}, ConfigError, "Tile 120 px is not valid"),
    ({"tile": TILE, "max_batch": 0}, ConfigError, "--max-batch must be >= 1"),
    ({"tile": TILE, "precision": "fp8"}, ConfigError, "--precision must be one of"),
])
def test_bad_export_options(model: LoadedModel, kwargs: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        ex.export_onnx(model, **kwargs)


def test_an_existing_output_is_kept_without_overwrite(model: LoadedModel, tmp_path: Path) -> None:
    target = tmp_path / "m.onnx"
    target.write_text("mine")
    with pytest.raises(OutputExistsError, match="--overwrite"):
        ex.export_onnx(model, TILE, output=target)
    assert target.read_text() == "mine"
