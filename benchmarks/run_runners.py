#!/usr/bin/env python
"""The default benchmark: every default scenario, every runner, k=2, interleaved; refreshes benchmarks/README.md.

    uv run python benchmarks/run_runners.py            # ~8 min on 2 cores (make bench)
    uv run python benchmarks/run_runners.py backfill   # one scenario (README not touched)
    uv run python benchmarks/run_runners.py -k 3       # more repetitions

Any ``fredflow bench`` option works here. Results go to benchmarks/results/
(runs/<session>/*.json, summary.json, summary.csv, charts/*.png); the generated
block of benchmarks/README.md is rewritten only by a run of every default
scenario (no scenario names, no --quick, no --runners).
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

from fredflow.bench import main
from fredflow.bench.cli import build_parser

HERE = Path(__file__).resolve().parent


def run(args: list[str]) -> int:
    given = build_parser().parse_args(args)
    complete = not (given.scenarios or given.quick or given.runners or given.readme)
    label = "uv run python benchmarks/run_runners.py" + (" " + shlex.join(args) if args else "")
    argv = ["--out", str(HERE / "results"), "--command-label", label]
    if complete:
        argv += ["--readme", str(HERE / "README.md")]
    return main(argv + args)


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
