"""Reading bioimage.io packages: what is mapped (axes, size rule, halo, weights, each pre-processing
step, post-processing), what is refused (one line, exit 2), 0.4 packages, and that nothing reaches
the network. Every package is built here, from tiny networks; nothing is downloaded."""

from __future__ import annotations

import hashlib
import io
import json
import socket
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from slideseg.engines.registry import load_engine
from slideseg.errors import ModelFileError
from slideseg.io.normalise import ScaleRange, ZeroMeanUnitVariance
from slideseg.model.bioimageio import is_package, read_package
from slideseg.model.external import save_torchscript
from slideseg.tools.bioimageio import check_package
from tests.conftest import SAME_HALO, random_rgb, run_cli

pytest.importorskip("bioimageio.spec")

TILE = 48
"""Test tiles of the same-padded packages (depth 2: sizes 32 + 4n)."""

# --------------------------------------------------------------------------------------------
# Building packages
# --------------------------------------------------------------------------------------------


class Package:
    """A package being built: files by name, and the description (format 0.5) that refers to them."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}

    def file(self, name: str, data: bytes) -> dict[str, str]:
        self.files[name] = data
        return {"source": name, "sha256": hashlib.sha256(data).hexdigest()}

    def npy(self, name: str, array: np.ndarray) -> dict[str, str]:
        buf = io.BytesIO()
        np.save(buf, array)
        return self.file(name, buf.getvalue())

    def write(self, path: Path, description: dict[str, Any] | str) -> Path:
        """A .zip with ``rdf.yaml`` (JSON is YAML) and the files."""
        text = description if isinstance(description, str) else json.dumps(description)
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("rdf.yaml", text)
            for name, data in self.files.items():
                z.writestr(name, data)
        return path


def torchscript_bytes(net: torch.nn.Module, tmp: Path, size: int = TILE, example: torch.Tensor | None = None) -> bytes:
    """``net`` traced on ``example`` (default: one (1, 3, size, size) tile) and saved as TorchScript."""
    path = tmp / f"net-{id(net)}.pt"
    save_torchscript(net, torch.rand(1, 3, size, size) if example is None else example, path)
    return path.read_bytes()


def space(axis: str, size: Any, **more: Any) -> dict[str, Any]:
    return {"type": "space", "id": axis, "size": size, "unit": "micrometer", "scale": 0.5, **more}


def description(pkg: Package, *, weights: dict[str, Any], pre: list[dict[str, Any]] | None = None,
                post: list[dict[str, Any]] | None = None, in_axes: list[dict[str, Any]] | None = None,
                out_axes: list[dict[str, Any]] | None = None, test: tuple[np.ndarray, np.ndarray] | None = None,
                cite: list[dict[str, str]] | None = None) -> dict[str, Any]:
    """A same-padded 2-D model (sizes 32 + 4n, halo 8) unless told otherwise."""
    sizes = {"min": 32, "step": 4}
    ref = {"tensor_id": "raw", "offset": 0}
    inputs: dict[str, Any] = {
        "id": "raw", "axes": in_axes or [{"type": "batch"}, {"type": "channel", "channel_names": ["r", "g", "b"]},
                                         space("y", sizes), space("x", sizes)],
        "preprocessing": pre or []}
    outputs: dict[str, Any] = {
        "id": "out", "axes": out_axes or [{"type": "batch"}, {"type": "channel", "channel_names": ["bg", "a", "b"]},
                                          space("y", {**ref, "axis_id": "y"}, halo=SAME_HALO),
                                          space("x", {**ref, "axis_id": "x"}, halo=SAME_HALO)],
        "postprocessing": post or []}
    if test is not None:
        inputs["test_tensor"] = pkg.npy("test_input.npy", test[0])
        outputs["test_tensor"] = pkg.npy("test_output.npy", test[1])
    return {"format_version": "0.5.4", "type": "model", "name": "tiny test model", "description": "a test",
            "authors": [{"name": "Test Author"}], "license": "MIT",
            "cite": cite or [{"text": "U-Net", "doi": "10.1007/978-3-319-24574-4_28"}],
            "inputs": [inputs], "outputs": [outputs], "weights": weights}


@pytest.fixture(scope="module")
def same_ts(same_net: torch.nn.Module, tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """``same_net`` (depth 2, same padding, 3 classes) as TorchScript bytes."""
    return torchscript_bytes(same_net, tmp_path_factory.mktemp("ts"))


def ts_weights(pkg: Package, data: bytes) -> dict[str, Any]:
    return {"torchscript": {**pkg.file("weights.pt", data), "pytorch_version": "2.4"}}


# --------------------------------------------------------------------------------------------
# What is mapped
# --------------------------------------------------------------------------------------------


def test_a_same_padded_package_maps_onto_the_same_geometry_with_its_halo(tmp_path: Path, same_ts: bytes) -> None:
    pkg = Package()
    standardise = {"id": "fixed_zero_mean_unit_variance",
                   "kwargs": {"axis": "channel", "mean": [127.5] * 3, "std": [127.5] * 3}}
    path = pkg.write(tmp_path / "m.zip", description(pkg, weights=ts_weights(pkg, same_ts), pre=[standardise]))
    m = read_package(path)
    cfg = m.config
    assert (cfg.padding, cfg.depth, cfg.halo, cfg.in_channels, cfg.classes) == ("same", 2, SAME_HALO, 3, 3)
    assert cfg.class_names == ("bg", "a", "b") and cfg.mpp == 0.5 and m.min_tile == 32
    # one fixed linear step becomes the engine's own normalisation (on the device), not a numpy step
    assert m.preprocessing == () and cfg.norm_mean == (127.5,) * 3 and cfg.norm_std == (127.5,) * 3
    assert (m.input_axes, m.output_axes, sorted(m.weights)) == ("bcyx", "bcyx", ["torchscript"])


def test_the_package_runs_what_its_network_computes(tmp_path: Path, same_ts: bytes, same_net: torch.nn.Module) -> None:
    pkg = Package()
    path = pkg.write(tmp_path / "m.zip", description(pkg, weights=ts_weights(pkg, same_ts), pre=[
        {"id": "scale_linear", "kwargs": {"gain": 1 / 127.5, "offset": -1.0}}]))
    engine = load_engine(path, device="cpu")
    batch = np.random.default_rng(0).integers(0, 256, (2, 3, 64, 64), dtype=np.uint8)
    with torch.no_grad():
        want = same_net(torch.from_numpy(batch.astype(np.float32)) / 127.5 - 1.0).numpy()
    np.testing.assert_allclose(engine.infer(batch), want, atol=1e-5, rtol=0)
    assert engine.name == "torch" and engine.metadata["external"]["format"] == "bioimageio/torchscript"


def test_onnx_weights_with_another_axis_order_run_in_onnx_runtime(tmp_path: Path, same_onnx: Path,
                                                                  same_net: torch.nn.Module) -> None:
    """The user's ONNX file (input 'image' NCHW) in a package whose description lists axes as declared;
    slideseg puts its own (N, C, H, W) input and logits output around the graph."""
    pkg = Package()
    weights = {"onnx": {**pkg.file("w.onnx", same_onnx.read_bytes()), "opset_version": 18}}
    path = pkg.write(tmp_path / "m.zip", description(pkg, weights=weights, pre=[
        {"id": "fixed_zero_mean_unit_variance", "kwargs": {"mean": 127.5, "std": 127.5}}]))
    engine = load_engine(path, "onnxruntime", device="cpu")
    batch = np.random.default_rng(1).integers(0, 256, (2, 3, 64, 64), dtype=np.uint8)
    with torch.no_grad():
        want = same_net((torch.from_numpy(batch.astype(np.float32)) - 127.5) / 127.5).numpy()
    np.testing.assert_allclose(engine.infer(batch), want, atol=1e-4, rtol=0)


class _ChannelsLast(torch.nn.Module):
    """A network that takes (y, x, channel) without a batch axis and returns (channel, y, x)."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (H, W, C) -> (K, H, W)
        return self.net(x.permute(2, 0, 1)[None])[0]


def test_axes_in_another_order_and_without_batch_are_transposed(tmp_path: Path, same_net: torch.nn.Module) -> None:
    pkg = Package()
    data = torchscript_bytes(_ChannelsLast(same_net).eval(), tmp_path, example=torch.rand(TILE, TILE, 3))
    path = tmp_path / "m.zip"
    sizes = {"min": 32, "step": 4}
    in_axes = [space("y", sizes), space("x", sizes), {"type": "channel", "channel_names": ["r", "g", "b"]}]
    out_axes = [{"type": "channel", "channel_names": ["bg", "a", "b"]},
                space("y", {"tensor_id": "raw", "axis_id": "y", "offset": 0}, halo=8),
                space("x", {"tensor_id": "raw", "axis_id": "x", "offset": 0}, halo=8)]
    pkg.write(path, description(pkg, weights=ts_weights(pkg, data), in_axes=in_axes, out_axes=out_axes))
    m = read_package(path)
    assert (m.input_axes, m.output_axes, m.batch) == ("yxc", "cyx", 1)
    engine = load_engine(path, device="cpu")
    batch = np.random.default_rng(2).random((3, 3, 40, 40), np.float32)  # three tiles, one at a time
    with torch.no_grad():
        want = same_net(torch.from_numpy(batch)).numpy()
    np.testing.assert_allclose(engine.infer(batch), want, atol=1e-5, rtol=0)


def test_a_valid_convolution_package_is_recognised_by_its_size_offset(tmp_path: Path) -> None:
    from slideseg.model.config import UNetConfig
    from slideseg.model.unet import build_unet

    net = build_unet(UNetConfig(depth=2, width=4, classes=2), seed=0).eval()
    pkg = Package()
    sizes = {"min": 44, "step": 4}
    out_axes = [{"type": "batch"}, {"type": "channel", "channel_names": ["background", "nucleus"]},
                space("y", {"tensor_id": "raw", "axis_id": "y", "offset": -40}),
                space("x", {"tensor_id": "raw", "axis_id": "x", "offset": -40})]
    in_axes = [{"type": "batch"}, {"type": "channel", "channel_names": ["r", "g", "b"]}, space("y", sizes),
               space("x", sizes)]
    path = pkg.write(tmp_path / "v.zip", description(pkg, weights=ts_weights(pkg, torchscript_bytes(net, tmp_path, 48)),
                                                     in_axes=in_axes, out_axes=out_axes))
    cfg = read_package(path).config
    assert (cfg.padding, cfg.depth, cfg.geometry.context, cfg.halo) == ("valid", 2, 20, 0)
    engine = load_engine(path, device="cpu")
    assert engine.infer(np.zeros((1, 3, 48, 48), np.uint8)).shape == (1, 2, 8, 8)


# Each pre-processing step, checked against an implementation written here: the package's test
# output is what the network gives for the step applied in numpy, with the statistics of the whole
# test input (it stands for a slide). Statistics steps are computed over y and x.
def _zmuv(x: np.ndarray) -> np.ndarray:
    return (x - x.mean(axis=(0, 2, 3), keepdims=True)) / (x.std(axis=(0, 2, 3), keepdims=True) + 1e-6)


def _scale_range(x: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(x, [1.0, 99.5])
    return (x - lo) / (hi - lo + 1e-6)


def _clip_percentile(x: np.ndarray) -> np.ndarray:
    lo = np.percentile(x, 2.0, axis=(0, 2, 3), keepdims=True)
    hi = np.percentile(x, 98.0, axis=(0, 2, 3), keepdims=True)
    return np.clip(x, lo, hi) / 255


def _softmax(x: np.ndarray) -> np.ndarray:
    z = np.exp(x / 64 - (x / 64).max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


STEPS: dict[str, tuple[list[dict[str, Any]], Callable[[np.ndarray], np.ndarray]]] = {
    "scale_linear": ([{"id": "scale_linear", "kwargs": {"axis": "channel", "gain": [0.01, 0.02, 0.03],
                                                        "offset": [-1.0, 0.0, 1.0]}}],
                     lambda x: x * np.array([0.01, 0.02, 0.03]).reshape(1, 3, 1, 1) + np.array([-1.0, 0, 1]).reshape(
                         1, 3, 1, 1)),
    "zero_mean_unit_variance": ([{"id": "zero_mean_unit_variance", "kwargs": {"axes": ["batch", "y", "x"]}}],
                                _zmuv),
    "scale_range": ([{"id": "scale_range", "kwargs": {"min_percentile": 1.0, "max_percentile": 99.5}}],
                    _scale_range),
    "clip": ([{"id": "clip", "kwargs": {"min": 40.0, "max": 200.0}},
              {"id": "scale_linear", "kwargs": {"gain": 0.01}}], lambda x: np.clip(x, 40, 200) * 0.01),
    "clip_percentile": ([{"id": "clip", "kwargs": {"min_percentile": 2.0, "max_percentile": 98.0, "axes": ["y", "x"]}},
                         {"id": "scale_linear", "kwargs": {"gain": 1 / 255}}], _clip_percentile),
    "binarize": ([{"id": "binarize", "kwargs": {"threshold": 128.0}}], lambda x: (x > 128).astype(np.float64)),
    "sigmoid": ([{"id": "scale_linear", "kwargs": {"gain": 1 / 64, "offset": -2.0}}, {"id": "sigmoid"}],
                lambda x: 1 / (1 + np.exp(-(x / 64 - 2)))),
    "softmax": ([{"id": "scale_linear", "kwargs": {"gain": 1 / 64}}, {"id": "softmax"}], _softmax),
}


@pytest.mark.parametrize("step", sorted(STEPS))
def test_each_preprocessing_step_gives_what_the_package_expects(tmp_path: Path, same_ts: bytes,
                                                                same_net: torch.nn.Module, step: str) -> None:
    pre, reference = STEPS[step]
    x = random_rgb((TILE, TILE), seed=3).transpose(2, 0, 1)[None].astype(np.float32)  # (1, 3, T, T) raw
    with torch.no_grad():
        want = same_net(torch.from_numpy(reference(x.astype(np.float64)).astype(np.float32))).numpy()
    pkg = Package()
    path = pkg.write(tmp_path / "m.zip", description(pkg, weights=ts_weights(pkg, same_ts), pre=pre, test=(x, want)))
    result = check_package(path, "torch", device="cpu")
    assert result.passed and result.max_abs_diff < 1e-4, result
    stats_step = step in ("zero_mean_unit_variance", "scale_range", "clip_percentile")
    assert (result.statistics is not None) == stats_step  # the test input's statistics were used


def test_statistics_steps_need_the_slides_statistics(tmp_path: Path, same_ts: bytes) -> None:
    pkg = Package()
    rdf = description(pkg, weights=ts_weights(pkg, same_ts), pre=STEPS["scale_range"][0])
    path = pkg.write(tmp_path / "m.zip", rdf)
    m = read_package(path)
    assert m.preprocessing == (ScaleRange(1.0, 99.5, per_channel=False),)
    engine = load_engine(path, device="cpu")
    with pytest.raises(Exception, match="statistics of the whole slide"):  # never per tile
        engine.infer(np.zeros((1, 3, TILE, TILE), np.uint8))


class _OneChannel(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, 3, H, W) -> (N, 1, H, W): a foreground logit
        return (x[:, :1] - x[:, 1:2]) / 10


@pytest.mark.parametrize(("post", "threshold"), [
    ([{"id": "sigmoid"}], 0.5),  # a logit: class 1 where sigmoid > 0.5
    ([{"id": "sigmoid"}, {"id": "binarize", "kwargs": {"threshold": 0.8}}], 0.8),  # the package's own threshold
])
def test_one_channel_outputs_become_background_and_foreground(tmp_path: Path, post: list[dict[str, Any]],
                                                              threshold: float) -> None:
    pkg = Package()
    out_axes = [{"type": "batch"}, {"type": "channel", "channel_names": ["nucleus"]},
                space("y", {"tensor_id": "raw", "axis_id": "y", "offset": 0}),
                space("x", {"tensor_id": "raw", "axis_id": "x", "offset": 0})]
    weights = ts_weights(pkg, torchscript_bytes(_OneChannel(), tmp_path))
    path = pkg.write(tmp_path / "m.zip", description(pkg, weights=weights, post=post, out_axes=out_axes))
    assert read_package(path).config.class_names == ("background", "nucleus")
    batch = np.random.default_rng(4).integers(0, 256, (1, 3, 32, 32)).astype(np.float32)
    logits = load_engine(path, device="cpu").infer(batch)
    p = 1 / (1 + np.exp(-(batch[:, 0] - batch[:, 1]) / 10))
    decided = np.abs(p - threshold) > 1e-4
    np.testing.assert_array_equal(logits.argmax(axis=1)[decided], (p > threshold)[decided])


def test_a_04_package_is_converted_and_its_per_dataset_normalisation_kept(tmp_path: Path, same_ts: bytes) -> None:
    pkg = Package()
    weights = {"torchscript": {"source": "weights.pt", "sha256": pkg.file("weights.pt", same_ts)["sha256"]}}
    rdf = {"format_version": "0.4.10", "type": "model", "name": "old model", "description": "a 0.4 package",
           "authors": [{"name": "Test Author"}], "license": "MIT", "documentation": "README.md",
           "cite": [{"text": "U-Net", "doi": "10.1007/978-3-319-24574-4_28"}], "timestamp": "2022-01-01T00:00:00",
           "test_inputs": ["in.npy"], "test_outputs": ["out.npy"],
           "inputs": [{"name": "raw", "axes": "bcyx", "data_type": "float32", "data_range": [0, 255],
                       "shape": {"min": [1, 3, 32, 32], "step": [0, 0, 4, 4]},
                       "preprocessing": [{"name": "zero_mean_unit_variance",
                                          "kwargs": {"mode": "per_dataset", "axes": "xy"}}]}],
           "outputs": [{"name": "out", "axes": "bcyx", "data_type": "float32", "halo": [0, 0, 8, 8],
                        "shape": {"reference_tensor": "raw", "scale": [1, 1, 1, 1], "offset": [0, 0, 0, 0]}}],
           "weights": {"torchscript": {**weights["torchscript"], "pytorch_version": "1.10"}}}
    pkg.file("README.md", b"# old\n")
    pkg.npy("in.npy", np.zeros((1, 3, 32, 32), np.float32))
    pkg.npy("out.npy", np.zeros((1, 3, 32, 32), np.float32))
    m = read_package(pkg.write(tmp_path / "old.zip", rdf))
    assert m.format_version.startswith("0.5") and any("Conversion" in n for n in m.notes)  # the library's warning
    assert m.preprocessing == (ZeroMeanUnitVariance(per_channel=True),)  # per dataset: the slide is the dataset
    assert (m.config.padding, m.config.halo, m.min_tile) == ("same", 8, 32)


def test_an_unpacked_package_reads_from_its_rdf_yaml(tmp_path: Path, same_ts: bytes) -> None:
    pkg = Package()
    rdf = description(pkg, weights=ts_weights(pkg, same_ts))
    for name, data in pkg.files.items():
        (tmp_path / name).write_bytes(data)
    (tmp_path / "rdf.yaml").write_text(json.dumps(rdf))
    assert is_package(tmp_path / "rdf.yaml")
    assert read_package(tmp_path / "rdf.yaml").config.halo == SAME_HALO


def test_a_json_beside_the_package_overrides_its_halo_and_normalisation(tmp_path: Path, same_ts: bytes) -> None:
    pkg = Package()
    path = pkg.write(tmp_path / "m.zip", description(pkg, weights=ts_weights(pkg, same_ts)))
    (tmp_path / "m.zip.json").write_text(json.dumps({"halo": 16, "norm": "slide"}))
    m = read_package(path)
    assert m.config.halo == 16 and m.preprocessing == (ZeroMeanUnitVariance(per_channel=True),)


def test_reading_a_package_reaches_no_network(tmp_path: Path, same_ts: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    """URLs in the description (a citation, a git repository) are not followed: every socket is refused."""
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError(f"network access: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    pkg = Package()
    rdf = description(pkg, weights=ts_weights(pkg, same_ts), cite=[{"text": "a", "url": "https://example.org/paper"}])
    rdf["git_repo"] = "https://github.com/example/tiny"
    m = read_package(pkg.write(tmp_path / "m.zip", rdf))
    assert m.config.halo == SAME_HALO
    assert load_engine(m.path, device="cpu").infer(np.zeros((1, 3, 32, 32), np.uint8)).shape == (1, 3, 32, 32)


# --------------------------------------------------------------------------------------------
# What is refused: exit 2, one line
# --------------------------------------------------------------------------------------------


def _one_line(*args: str | Path) -> str:
    r = run_cli(*args)
    lines = r.stderr.strip().splitlines()
    assert r.exit_code == 2 and len(lines) == 1, (r.exit_code, r.stdout, r.stderr)
    return lines[0]


def _broken(tmp_path: Path, same_ts: bytes, change: Callable[[Package, dict[str, Any]], Any]) -> Path:
    pkg = Package()
    rdf = description(pkg, weights=ts_weights(pkg, same_ts))
    change(pkg, rdf)
    return pkg.write(tmp_path / "bad.zip", rdf)


def _z_axis(pkg: Package, rdf: dict[str, Any]) -> None:
    sizes = {"min": 32, "step": 4}
    rdf["inputs"][0]["axes"].append(space("z", sizes))
    rdf["outputs"][0]["axes"].append(space("z", {"tensor_id": "raw", "axis_id": "z", "offset": 0}))


def _state_dict_only(pkg: Package, rdf: dict[str, Any]) -> None:
    rdf["weights"] = {"pytorch_state_dict": {
        **pkg.file("weights.pth", b"not used"), "pytorch_version": "2.4",
        "architecture": {"callable": "UNet", "import_from": "somewhere.models"}}}


@pytest.mark.parametrize(("change", "match"), [
    # the weights file is not in the zip
    (lambda pkg, rdf: pkg.files.pop("weights.pt"), "cannot read weights.pt"),
    # only a state dict: its architecture's code would be needed
    (_state_dict_only, "pytorch_state_dict; slideseg reads TorchScript and ONNX"),
    # an axis type the format does not know
    (lambda pkg, rdf: rdf["inputs"][0]["axes"].append({"type": "wavelength", "id": "w", "size": 3}), "not a valid"),
    # a 3-D model
    (_z_axis, "3-D model"),
    # a file changed after packaging
    (lambda pkg, rdf: pkg.files.update({"weights.pt": b"changed"}), "SHA-256"),
], ids=["missing-weights", "state-dict-only", "unknown-axis", "z-axis", "changed-file"])
def test_malformed_packages_are_one_line_errors(tmp_path: Path, same_ts: bytes, change: Any, match: str) -> None:
    assert match in _one_line("info", "--check", _broken(tmp_path, same_ts, change), "--device", "cpu")


def test_predict_refuses_a_3d_package_before_any_work(tmp_path: Path, same_ts: bytes) -> None:
    from tests.conftest import write_tiff

    slide = write_tiff(tmp_path / "s.ome.tif", random_rgb((64, 64)))
    line = _one_line("predict", slide, "-o", tmp_path / "o.zarr", "--model", _broken(tmp_path, same_ts, _z_axis))
    assert "3-D model" in line and not (tmp_path / "o.zarr").exists()


def test_bad_yaml_is_a_one_line_error(tmp_path: Path) -> None:
    path = Package().write(tmp_path / "bad.zip", "name: [unclosed\n  type: model")
    assert "not a readable bioimage.io package" in _one_line("info", path)


def test_a_test_tensor_that_does_not_fit_is_a_one_line_error(tmp_path: Path, same_ts: bytes) -> None:
    x = np.zeros((1, 3, TILE, TILE), np.float32)
    pkg = Package()
    path = pkg.write(tmp_path / "m.zip", description(pkg, weights=ts_weights(pkg, same_ts), test=(x, x[:, :, :8])))
    assert "do not fit" in _one_line("info", "--check", path, "--device", "cpu")


def test_a_test_output_the_model_does_not_reproduce_fails_the_check(tmp_path: Path, same_ts: bytes) -> None:
    x = np.zeros((1, 3, TILE, TILE), np.float32)
    pkg = Package()
    path = pkg.write(tmp_path / "m.zip", description(pkg, weights=ts_weights(pkg, same_ts),
                                                     test=(x, np.full((1, 3, TILE, TILE), 5.0, np.float32))))
    assert "not reproduced" in _one_line("info", "--check", path, "--device", "cpu")


def test_unreadable_weights_formats_are_named(tmp_path: Path, same_ts: bytes) -> None:
    path = _broken(tmp_path, same_ts, _state_dict_only)
    with pytest.raises(ModelFileError, match=r"weights are pytorch_state_dict; slideseg reads TorchScript and ONNX"):
        read_package(path)


def test_info_shows_what_was_understood(tmp_path: Path, same_ts: bytes) -> None:
    pkg = Package()
    rdf = description(pkg, weights=ts_weights(pkg, same_ts), pre=STEPS["scale_range"][0])
    path = pkg.write(tmp_path / "m.zip", rdf)
    r = run_cli("info", path)
    assert r.exit_code == 0, r.stderr
    assert "same padding" in r.stdout and "halo 8" in r.stdout and "statistics of the" in r.stdout
    d = json.loads(run_cli("info", path, "--json").stdout)
    assert d["kind"] == "bioimageio" and d["slide_statistics"] and d["classes"] == ["bg", "a", "b"]
