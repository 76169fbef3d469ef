"""``fredflow bench``: the benchmark harness (runners against the simulator, one process per run).

Entry point: :func:`main` (argparse; see ``fredflow bench --help``). Modules:
:mod:`~fredflow.bench.scenarios` (named workloads), :mod:`~fredflow.bench.harness`
(the loop), :mod:`~fredflow.bench.processes` (machine facts, the display, one measured
run as a subprocess), :mod:`~fredflow.bench.worker` (one measured run, its own process),
:mod:`~fredflow.bench.sequential` (the one-request-at-a-time baseline),
:mod:`~fredflow.bench.overhead` (Prefect per-task overhead),
:mod:`~fredflow.bench.results` (schema, medians, ratios, targets),
:mod:`~fredflow.bench.charts` and :mod:`~fredflow.bench.report`.

Importing this package imports neither Prefect, Dask nor matplotlib.
"""

from __future__ import annotations


def main(argv: list[str] | None = None) -> int:
    """``fredflow bench [SCENARIO ...] [options]``; returns the exit code (0: every run ok and verified)."""
    from .cli import main as _main

    return _main(argv)


__all__ = ["main"]
