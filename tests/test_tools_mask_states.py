"""The mask tools (`evaluate`, `export-geojson`, `preview`) on masks in every state predict leaves:
NGFF 0.4 and 0.5, complete and interrupted."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from slideseg.cli import app
from slideseg.errors import OutputFormatError
from slideseg.io.ngff import LabelClass
from slideseg.plan.tiles import grid_box
from slideseg.tools.evaluate import evaluate
from slideseg.tools.geojson import export_geojson
from slideseg.tools.preview import write_preview
from slideseg.write.mask import create_mask

CLASSES = (LabelClass(0, "background", (0, 0, 0, 0)), LabelClass(1, "nucleus", (230, 25, 75, 255)))


def _mask(path: Path, ngff: str, *, chunks_written: int | None = None) -> np.ndarray:
    ids = np.zeros((96, 80), np.uint8)
    ids[10:30, 10:40] = 1
    ids[50:90, 45:70] = 1
    writer = create_mask(path, ids.shape, 32, CLASSES, 0.5, {"source": {"path": "", "level": 0}}, ngff=ngff)
    cells = list(np.ndindex(*writer.grid))
    unit = writer.chunk
    for iy, ix in cells[: chunks_written if chunks_written is not None else len(cells)]:
        y0, y1, x0, x1 = grid_box(iy, ix, ids.shape, unit)
        writer.write_chunk(iy, ix, np.ascontiguousarray(ids[y0:y1, x0:x1]))
    if chunks_written is None:
        writer.finalize()
    return ids


@pytest.mark.parametrize("ngff", ["0.4", "0.5"])
def test_every_tool_reads_a_complete_mask(tmp_path: Path, ngff: str) -> None:
    ids = _mask(tmp_path / "m.zarr", ngff)
    truth = tmp_path / "truth.png"
    from PIL import Image

    Image.fromarray(ids).save(truth)
    result = evaluate(tmp_path / "m.zarr", truth)
    assert result.class_names[1] == "nucleus"  # read from the 0.4 and the 0.5 metadata alike
    assert result.iou[1] == 1.0
    gj = export_geojson(tmp_path / "m.zarr", tmp_path / "m.geojson")
    assert gj.features == 2
    assert json.loads((tmp_path / "m.geojson").read_text())["features"][0]["properties"]["classification"]["name"] == \
        "nucleus"
    pv = write_preview(tmp_path / "m.zarr", tmp_path / "m.png", size=64)
    assert pv.path.is_file()


def test_evaluate_refuses_an_interrupted_mask_and_says_how_far_it_got(tmp_path: Path) -> None:
    ids = _mask(tmp_path / "m.zarr", "0.4", chunks_written=2)  # of 3 x 3 chunks
    from PIL import Image

    Image.fromarray(ids).save(tmp_path / "truth.png")
    with pytest.raises(OutputFormatError, match=r"incomplete \(2 of 9 chunks\).*--resume"):
        evaluate(tmp_path / "m.zarr", tmp_path / "truth.png")
    run = CliRunner().invoke(app, ["evaluate", str(tmp_path / "m.zarr"), str(tmp_path / "truth.png")])
    assert run.exit_code == 2 and "2 of 9 chunks" in run.output and "Traceback" not in run.output


@pytest.mark.parametrize("tool", ["export-geojson", "preview"])
def test_geojson_and_preview_refuse_an_interrupted_mask(tmp_path: Path, tool: str) -> None:
    _mask(tmp_path / "m.zarr", "0.5", chunks_written=1)
    out = tmp_path / ("m.geojson" if tool == "export-geojson" else "m.png")
    run = CliRunner().invoke(app, [tool, str(tmp_path / "m.zarr"), "-o", str(out)])
    assert run.exit_code == 2 and "incomplete" in run.output and not out.exists()
