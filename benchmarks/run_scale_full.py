#!/usr/bin/env python
"""The scale scenario in full: N = 100 ... 10,000 series, asyncio, thread and dask (~10 min on 2 cores).

    uv run python benchmarks/run_scale_full.py [-k 2]

Writes a session under benchmarks/results/ like run_runners.py (charts/ and
summary.* are replaced by this session's); the README is not touched.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

from fredflow.bench import main

HERE = Path(__file__).resolve().parent

if __name__ == "__main__":
    args = sys.argv[1:]
    label = "uv run python benchmarks/run_scale_full.py" + (" " + shlex.join(args) if args else "")
    sys.exit(main(["scale", "--full", "--out", str(HERE / "results" / "scale-full"), "--command-label", label, *args]))
