"""`slideseg info`: the table of a mask shows what its record holds and skips what it cannot read;
a record whose fields have the wrong types (a number where an object belongs) is never a crash."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from slideseg.cli import app
from slideseg.cli.info import _summary
from slideseg.io.ngff import LabelClass
from slideseg.tools.describe import describe
from tests.conftest import write_mask

runner = CliRunner()
CLASSES = (LabelClass(0, "background", (0, 0, 0, 0)), LabelClass(1, "tumour", (255, 0, 0, 255)))
RECORD = {"model_config": {"depth": 3, "width": 8, "padding": "reflect"}, "model_metadata": {"trained": True},
          "weights_sha256": "ab" * 32, "engine": {"name": "torch", "device": "cpu"}, "version": "1.2.3"}
WRONG = [5, 1.5, True, "text", [1, 2], None, {"unexpected": [1]}]
"""Values of every JSON type, most of them the wrong one for a given field."""


@pytest.fixture
def mask(tmp_path: Path) -> Path:
    path = write_mask(tmp_path / "m.zarr", np.eye(40, 60, dtype=np.uint8), CLASSES, chunk=16,
                      source={"path": "s.svs", "level": 0})
    _edit_record(path, RECORD)
    return path


def _edit_record(mask: Path, fields: dict[str, Any]) -> None:
    attrs = json.loads((mask / ".zattrs").read_text())
    attrs["slideseg"].update(fields)
    (mask / ".zattrs").write_text(json.dumps(attrs))


def test_the_table_of_a_good_mask(mask: Path) -> None:
    rows = _summary(describe(mask))
    assert rows["status"] == "complete" and rows["levels"] == "40x60" and rows["classes"] == "0 background, 1 tumour"
    assert rows["model"].startswith("U-Net depth 3, width 8, reflect padding, weights sha256 abababababab")
    assert rows["engine"] == "name=torch, device=cpu" and rows["source"] == "s.svs (level 0)"
    assert rows["made by"] == "slideseg 1.2.3"


@pytest.mark.parametrize("key", ["model_config", "model_metadata", "engine", "version", "weights_sha256"])
@pytest.mark.parametrize("value", WRONG)
def test_record_fields_of_any_type_give_a_table(mask: Path, key: str, value: Any) -> None:
    # was: AttributeError / TypeError in _summary (e.g. model_config: 5 -> 5.get)
    _edit_record(mask, {key: value})
    d = describe(mask)
    rows = _summary(d)
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in rows.items())
    assert {"status", "levels", "mpp", "classes", "probabilities"} <= rows.keys()
    if key == "model_config" and not (isinstance(value, dict) and value):
        assert "model" not in rows
    result = runner.invoke(app, ["info", str(mask)])
    assert result.exit_code == 0, result.output
    assert "40x60" in result.output


@pytest.mark.parametrize("field", ["chunks_done", "chunks_total", "mpp", "levels", "classes", "probabilities",
                                   "complete"])
@pytest.mark.parametrize("value", WRONG)
def test_summary_of_a_described_mask_with_any_field_type(mask: Path, field: str, value: Any) -> None:
    d = {**describe(mask), field: value}
    assert all(isinstance(v, str) for v in _summary(d).values())


def test_a_level_that_is_not_there_is_shown_as_missing(mask: Path) -> None:
    d = describe(mask)
    d["levels"] = [*d["levels"], {"path": "1", "shape": None, "chunks": None, "scale": [1.0, 1.0]}]
    assert _summary(d)["levels"] == "40x60, missing"


def test_the_objects_of_a_mask_are_shown(mask: Path) -> None:
    from slideseg.tools.objects import objects

    assert "objects" not in _summary(describe(mask))
    result = objects(mask)
    d = describe(mask)
    assert d["objects"]["objects"] == result.objects and d["objects"]["complete"] is True
    assert _summary(d)["objects"].startswith(f"{result.objects} (instance image objects/, table ")
    r = runner.invoke(app, ["info", str(mask)])
    assert r.exit_code == 0 and f"{result.objects} (instance image" in r.stdout


@pytest.mark.parametrize("value", [*WRONG, {"objects": "7", "complete": True}, {"objects": 7}])
def test_an_objects_entry_of_any_type_is_never_a_crash(mask: Path, value: Any) -> None:
    row = _summary({**describe(mask), "objects": value}).get("objects")
    assert row is None if not isinstance(value, dict) else row.startswith("interrupted")


def test_an_objects_folder_slideseg_did_not_write_is_reported(mask: Path) -> None:
    (mask / "objects").mkdir()
    assert "not an instance image slideseg wrote" in _summary(describe(mask))["objects"]
