"""The measured seam error: for a same-padded network it is what predict actually gets, it falls to
zero once the halo covers the receptive field, and a valid-convolution U-Net tiles exactly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import zarr

from slideseg.engines.registry import load_engine
from slideseg.engines.torch_engine import TorchEngine
from slideseg.predict import PredictConfig, predict
from slideseg.schedule.chunks import softmax
from slideseg.tools.seam import measure_seam_error
from tests.conftest import SAME_HALO, random_rgb, tiny_model, write_tiff


def same_padded_whole_image(net: torch.nn.Module, image: np.ndarray, halo: int) -> np.ndarray:
    """Reference, written out independently: mirror-pad by the halo (and up to a multiple of 4),
    one forward pass, crop the region. (K, H, W)."""
    h, w = image.shape[:2]
    n = -(-(max(h, w) + 2 * halo) // 4) * 4
    padded = np.pad(image, ((halo, n - h - halo), (halo, n - w - halo), (0, 0)), mode="reflect")
    x = (torch.from_numpy(padded.transpose(2, 0, 1)[None].astype(np.float32)) - 127.5) / 127.5
    with torch.no_grad():
        logits = net(x)[0, :, halo : halo + h, halo : halo + w].numpy()
    return softmax(logits)


def test_same_padded_onnx_model_runs_through_predict_and_its_seam_error_is_what_predict_gets(
        tmp_path: Path, same_onnx: Path, same_net: torch.nn.Module) -> None:
    image = random_rgb((200, 232), seed=8)
    slide = write_tiff(tmp_path / "s.ome.tif", image)
    cfg = PredictConfig(tile=64, chunk=64, batch_size=4, probabilities=True, device="cpu", engine="onnxruntime")
    result = predict(slide, tmp_path / "mask.zarr", same_onnx, cfg)
    assert result.engine["engine"] == "onnxruntime" and result.plan["tile_output"] == 64 - 2 * SAME_HALO
    root = zarr.open_group(tmp_path / "mask.zarr", mode="r")
    ids, probs = root["0"][:], root["probabilities/0"][:].astype(np.float32) / 255
    assert root.attrs["image-label"]["properties"][1]["class"] == "a"  # names came from the sidecar

    whole = same_padded_whole_image(same_net, image, SAME_HALO)
    actual_max = float(np.abs(probs - whole).max())
    actual_changed = float((ids != whole.argmax(0)).mean())

    engine = load_engine(same_onnx, "onnxruntime", device="cpu")
    reported = measure_seam_error(engine, image, halo=SAME_HALO, tile=64, chunk=64)
    assert reported.halo == SAME_HALO and reported.region == (200, 232)
    assert reported.max_abs > 1e-3  # same padding does not tile exactly: the measurement sees it
    assert abs(reported.max_abs - actual_max) <= 0.5 / 255 + 1e-4  # predict stores uint8 probabilities
    assert abs(reported.changed_ids - actual_changed) < 1e-3


def test_seam_error_falls_to_zero_once_the_halo_covers_the_receptive_field(same_onnx: Path) -> None:
    engine = load_engine(same_onnx, "onnxruntime", device="cpu")
    image = random_rgb((128, 128), seed=1)
    errors = {h: measure_seam_error(engine, image, halo=h, chunk=64).max_abs for h in (0, 8, 32)}
    assert errors[0] > errors[8] > 1e-3 and errors[32] < 1e-5


def test_valid_models_tile_exactly() -> None:
    engine = TorchEngine(tiny_model(), device="cpu")
    err = measure_seam_error(engine, random_rgb((150, 170), seed=3), chunk=64)
    assert err.halo == 0 and err.max_abs < 1e-5 and err.changed_ids == 0
