"""Fuzz slideseg's inputs: seeded mutants of every input format, each run through the CLI in a
child process with a time and a memory limit, classified as result / clean error / crash / hang /
memory blow-up (see :mod:`tests.fuzz`).

    python benchmarks/fuzz_inputs.py --cases 20000 --seed 0
    python benchmarks/fuzz_inputs.py --cases 500 --seed 1 --json fuzz.json --keep-dir /tmp/fuzz

Prints the summary table (cases, outcomes overall, per format and per command, the distinct
failure buckets with one reproducing case each) and exits 1 if any case crashed, hung or blew
the memory limit. The folders of a few failing cases per bucket are kept for reproduction.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.fuzz.child import GIB, CaseResult, Limits
from tests.fuzz.runner import FAILURES, classify, fuzz


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=2000, help="mutants to run (default 2000)")
    parser.add_argument("--seed", type=int, default=0, help="master seed: the same seed gives the same cases")
    parser.add_argument("--workers", type=int, default=2, help="worker processes running cases (default 2)")
    parser.add_argument("--time-limit", type=float, default=20.0, help="seconds per command before a hang")
    parser.add_argument("--memory-gib", type=float, default=4.0, help="address space a command may add, GiB")
    parser.add_argument("--predict-fraction", type=float, default=0.35, help="slide cases that also run predict")
    parser.add_argument("--keep-dir", type=Path, help="work folder to keep (default: a temporary one)")
    parser.add_argument("--json", type=Path, help="write every failing case here")
    args = parser.parse_args(argv)

    folder = args.keep_dir or Path(tempfile.mkdtemp(prefix="slideseg-fuzz-"))
    limits = Limits(args.time_limit, int(args.memory_gib * GIB))
    done = [0]
    t0 = time.monotonic()

    def progress(case: CaseResult) -> None:
        done[0] += 1
        if done[0] % 200 == 0:
            rate = done[0] / (time.monotonic() - t0)
            print(f"  {done[0]}/{args.cases} cases, {rate:.1f}/s", file=sys.stderr, flush=True)

    summary, results = fuzz(folder, args.cases, args.seed, workers=args.workers, limits=limits,
                            on_result=progress, predict_fraction=args.predict_fraction)
    print(f"slideseg input fuzzer: --cases {args.cases} --seed {args.seed}, {args.workers} workers, "
          f"{args.time_limit:g} s / {args.memory_gib:g} GiB per command, {platform.processor() or platform.machine()}")
    print(summary.table())
    print(f"work folder: {folder}")
    if args.json:
        failing = [r for r in results if any(classify(run)[0] in FAILURES for run in r.runs)]
        args.json.write_text(json.dumps([json.loads(r.to_json()) for r in failing], indent=1))
    return 1 if summary.failures else 0


if __name__ == "__main__":
    sys.exit(main())
