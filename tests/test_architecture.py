"""The shape of the package: the import contracts hold, and the light commands never import torch.

The contracts (``[tool.importlinter]`` in pyproject.toml) fix the layering of the pipeline stages
(cli > predict | train > tools > schedule > write > engines > model > io > plan > config > errors)
and keep torch and the engine and cluster backends out of the torch-free modules, counting imports
inside functions. The CLI checks run the real commands in fresh interpreters, because what a command
imports is decided at run time: a lazy import in a command or a library function counts there.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr

from slideseg.io.ngff import LabelClass
from slideseg.tools.synth import SynthConfig, write_synthetic_slide
from slideseg.write.mask import create_mask

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "onnx", "onnxruntime", "tensorrt", "distributed", "dask_jobqueue")
"""Packages a light command must not load (torch is the one that costs seconds)."""

# Runs the CLI as `slideseg ARGS...` would, then prints its exit code and the heavy packages and
# slideseg modules it loaded, as one JSON line.
RUN_CLI = """
import json, sys
from slideseg.cli import main
try:
    main()
    code = 0
except SystemExit as exc:
    code = exc.code if isinstance(exc.code, int) else 1
loaded = sorted(sys.modules)
print(json.dumps({"exit": code, "heavy": sorted({m.split(".")[0] for m in loaded} & set(__HEAVY__)),
                  "slideseg": [m for m in loaded if m.startswith("slideseg")]}))
""".replace("__HEAVY__", repr(HEAVY))


def test_import_contracts_hold() -> None:
    """`lint-imports`: the layering and the torch-free modules (its report is the failure message)."""
    run = subprocess.run(
        [sys.executable, "-c", "from importlinter.cli import lint_imports_command; lint_imports_command()",
         "--no-cache", "--no-logo"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert "Contracts:" in run.stdout, run.stdout + run.stderr  # the contracts were read and checked
    assert run.returncode == 0, run.stdout + run.stderr


def _imports_in_functions(tree: ast.Module) -> list[tuple[str, int, str]]:
    """(function, line, module) of each import statement inside a function; relative imports
    are reported as ``.module``."""
    found = []
    for func in ast.walk(tree):
        if isinstance(func, ast.FunctionDef | ast.AsyncFunctionDef):
            for node in ast.walk(func):
                if isinstance(node, ast.Import):
                    found += [(func.name, node.lineno, alias.name) for alias in node.names]
                elif isinstance(node, ast.ImportFrom):
                    found.append((func.name, node.lineno, "." * node.level + (node.module or "")))
    return found


def test_library_imports_slideseg_only_at_module_level() -> None:
    """Outside the CLI, slideseg modules import one another at the top of the file, never in a
    function: the import graph (and the layering it is checked against) is what a reader sees."""
    library = [p for p in sorted((ROOT / "slideseg").rglob("*.py"))
               if p.parent.name != "cli" and p.name != "__main__.py"]
    late = [f"{path.relative_to(ROOT)}:{line} in {func}(): import {module}"
            for path in library
            for func, line, module in _imports_in_functions(ast.parse(path.read_text(encoding="utf-8")))
            if module.startswith(".") or module.split(".")[0] == "slideseg"]
    assert len(library) > 40  # the walk saw the package
    assert late == [], "slideseg imported inside functions:\n" + "\n".join(late)


def test_imports_in_functions_are_found() -> None:
    tree = ast.parse("import os\ndef f():\n    import torch\n    def g():\n        from . import x\n")
    assert ("f", 3, "torch") in _imports_in_functions(tree) and ("g", 5, ".") in _imports_in_functions(tree)
    assert all(module != "os" for _, _, module in _imports_in_functions(tree))  # module level is not reported


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny slide with its truth, and a mask of the slide's nuclei that records the slide."""
    root = tmp_path_factory.mktemp("light")
    slide = root / "s.ome.tif"
    write_synthetic_slide(slide, SynthConfig(size=(96, 128), seed=2, tile=64))
    classes = np.asarray(zarr.open_array(root / "s.truth.zarr" / "classes", mode="r")[:]).astype(np.uint8)
    assert classes.any()  # the mask has regions to trace and draw
    chunk = 64
    writer = create_mask(root / "m.zarr", classes.shape, chunk,
                         [LabelClass(0, "background", (0, 0, 0, 0)), LabelClass(1, "nucleus", (255, 0, 0, 255))],
                         0.5, {"source": {"path": str(slide), "level": 0}})
    for iy in range(writer.grid[0]):
        for ix in range(writer.grid[1]):
            writer.write_chunk(iy, ix, np.ascontiguousarray(classes[iy * chunk:(iy + 1) * chunk,
                                                                    ix * chunk:(ix + 1) * chunk]))
    writer.finalize()
    return root


@pytest.mark.parametrize("args", [
    ["--help"],
    ["info", "m.zarr"],
    ["info", "s.ome.tif"],
    ["info", str(ROOT / "slideseg" / "weights" / "default.safetensors")],  # the model's config, not its network
    ["export-geojson", "m.zarr", "-o", "x.geojson", "--overwrite"],
    ["preview", "m.zarr", "-o", "x.png", "--overwrite"],
    ["evaluate", "m.zarr", "s.truth.zarr"],
], ids=["help", "info-mask", "info-slide", "info-model", "export-geojson", "preview", "evaluate"])
def test_light_commands_do_not_import_torch(files: Path, args: list[str]) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    run = subprocess.run([sys.executable, "-c", RUN_CLI, *args], cwd=files, env=env,
                         capture_output=True, text=True, timeout=120)
    assert run.stdout.strip(), run.stderr
    report = json.loads(run.stdout.strip().splitlines()[-1])
    assert report["exit"] == 0, run.stdout + run.stderr  # the command did its work, not stopped early
    assert report["heavy"] == [], (
        f"`slideseg {' '.join(args)}` loaded {report['heavy']}; slideseg modules loaded: {report['slideseg']}. "
        "Find the chain with `python -X importtime -m slideseg ...`.")
