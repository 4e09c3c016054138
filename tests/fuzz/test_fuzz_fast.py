"""The fast subset of the input fuzzer, run with the test suite: a few hundred seeded mutants of
every input format through ``info``, ``predict``, ``train``, ``evaluate``, ``export-geojson`` and
``preview``, each in a child process with a time and memory limit.

No case may crash, hang or blow the memory limit anywhere: the readers of ``slideseg/io`` (with
``slideseg/plan/tiles.py`` and ``slideseg/train/data.py``), and the mask readers that every mask
command goes through (``slideseg/write/mask_meta.py``, used by ``info``, ``evaluate``,
``export-geojson`` and ``preview``). A failure in the readers is named by its own test;
:func:`test_no_case_fails_anywhere` lists any failure, wherever it is.
``benchmarks/fuzz_inputs.py`` runs the same fuzzer for as long as wanted.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fuzz.child import GIB, CaseSpec, Limits, RunResult
from tests.fuzz.runner import (
    CLEAN,
    CRASH,
    FAILURES,
    HANG,
    MEMORY,
    NOISY,
    RESULT,
    Summary,
    classify,
    fuzz,
    owner,
    run_cases,
)
from tests.fuzz.seeds import SEED_NAMES, build_seeds

CASES = 200
MASTER_SEED = 0


@pytest.fixture(scope="module")
def summary(tmp_path_factory: pytest.TempPathFactory) -> Summary:
    folder: Path = tmp_path_factory.mktemp("fuzz")
    result, _ = fuzz(folder, CASES, MASTER_SEED, workers=2, limits=Limits(45.0, 4 * GIB),
                     predict_fraction=0.15, tissue_fraction=0.3, train_weight=0.4)
    print("\n" + result.table())  # shown with -s, or in the report of a failing test
    return result


def test_every_seed_reads_before_it_is_mutated(summary: Summary) -> None:
    assert len(summary.pristine) >= len(SEED_NAMES)
    assert {k: v for k, v in summary.pristine.items() if v != RESULT} == {}


def test_every_format_and_command_is_exercised(summary: Summary) -> None:
    assert summary.cases == CASES
    assert set(summary.by_format) == set(SEED_NAMES)
    assert {"info", "predict", "train", "evaluate", "export-geojson", "preview"} <= set(summary.by_command)
    # mutants that still read and mutants that are refused: the fuzzer is neither too gentle nor too rough
    assert summary.outcomes[RESULT] > 0.1 * summary.runs
    assert summary.outcomes[CLEAN] > 0.1 * summary.runs


def test_the_readers_never_crash_hang_or_blow_the_memory(summary: Summary) -> None:
    ours = {key: len(hits) for key, hits in summary.buckets.items() if owner(key) == "reader"}
    assert not ours, f"failures in the reading boundary: {ours}\n{summary.table()}"


def test_hangs_and_memory_blow_ups_anywhere(summary: Summary) -> None:
    grave = {key: len(hits) for key, hits in summary.buckets.items() if not key.startswith(("crash", "noisy"))}
    assert not grave, f"hangs or memory blow-ups: {grave}\n{summary.table()}"


def test_no_case_fails_anywhere(summary: Summary) -> None:
    failing = {key: len(hits) for key, hits in summary.buckets.items()}
    assert summary.failures == 0, f"{failing}\n{summary.table()}"
    assert all(outcome not in FAILURES for outcome, n in summary.outcomes.items() if n)


def test_the_limits_are_enforced(tmp_path: Path) -> None:
    """A case killed at its time limit is a hang, one that runs out of address space a memory
    blow-up: the fuzzer would see them if the readers had them."""
    seeds = [s for s in build_seeds(tmp_path / "seeds") if s.name == "ome-tiff"]
    specs = [CaseSpec(0, "ome-tiff", ("info",), limits=(0.05, 4 * GIB), pristine=True),
             CaseSpec(1, "ome-tiff", ("info",), limits=(20.0, 2**20), pristine=True)]
    hang, memory = run_cases(seeds, specs, tmp_path / "cases", master=MASTER_SEED, workers=1)
    assert [classify(r)[0] for r in hang.runs] == [HANG]
    assert [classify(r)[0] for r in memory.runs] == [MEMORY]


@pytest.mark.parametrize(("run", "expected"), [
    (RunResult("info", 0, 0.1, 90.0), (RESULT, None)),
    (RunResult("info", 2, 0.1, 90.0, stderr="note: x\nslideseg: a.tif is not an image\n"), (CLEAN, None)),
    (RunResult("predict", 2, 0.1, 90.0, stderr="12:00:01 - distributed.worker - ERROR - Compute Failed\n"
                                              "slideseg: bad\n"),
     (NOISY, "predict: distributed.worker - ERROR - Compute Failed")),
    (RunResult("info", None, 20.0, 90.0, timed_out=True, stderr='File "/w/slideseg/io/slide.py", line 3 in read\n'),
     (HANG, "info at slideseg/io/slide.py:read")),
    (RunResult("info", 1, 0.1, 90.0, crash={"type": "KeyError", "mro": ["KeyError"], "frames": [
        ["/w/slideseg/cli/info.py", 1, "info"], ["/w/slideseg/io/ngff.py", 9, "label_classes"],
        ["/v/site-packages/zarr/core.py", 5, "get"]]}), (CRASH, "KeyError at slideseg/io/ngff.py:label_classes "
                                                              "(from zarr.core)")),
    (RunResult("info", 1, 0.1, 90.0, crash={"type": "MemoryError", "mro": ["MemoryError"], "frames": []}),
     (MEMORY, "MemoryError at outside slideseg")),
    (RunResult("info", None, 0.1, 90.0, signal=9), (CRASH, "signal 9 in info: ")),
])
def test_classify(run: RunResult, expected: tuple[str, str | None]) -> None:
    assert classify(run) == expected


def test_owner() -> None:
    assert owner("crash: KeyError at slideseg/io/ngff.py:label_classes (from zarr)") == "reader"
    assert owner("hang: predict at slideseg/plan/tiles.py:redundancy") == "reader"
    assert owner("crash: ValueError at slideseg/write/mask_meta.py:describe_mask (from zarr)") == "reader"
    assert owner("crash: ValueError at slideseg/write/mask.py:finalize (from zarr)") == "elsewhere"
