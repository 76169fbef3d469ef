"""Runners: thin adapters that run the same :func:`fredflow.fetch.fetch_batch` over many batches.

Every runner executes :func:`fredflow.run.execute.run_pipeline` (plan → fan out → merge) and
supplies only the fan-out; none of them parses, stages, merges or talks to FRED itself.
``asyncio`` imports neither Prefect nor Dask; ``thread`` and ``dask`` live in
:mod:`fredflow.runners.prefect`, the only place Prefect and Dask are imported.
"""

from __future__ import annotations

import contextlib
import os
from typing import Protocol

from ..errors import UsageError
from ..options import RunnerName, RunOptions
from ..progress import Progress
from ..run.execute import RunSummary
from ..settings import Settings


class Runner(Protocol):
    name: str

    @property
    def slots(self) -> int:
        """How many batches run at once (sizes batches)."""

    @property
    def task_overhead(self) -> float:
        """Seconds one batch costs the runner beyond its work (sizes batches)."""

    def execute(self, options: RunOptions, settings: Settings, progress: Progress) -> RunSummary:
        """Plan, run every batch, merge; return the summary. Raise the first fatal error."""


def make_runner(options: RunOptions) -> Runner:
    """The runner ``options.runner`` names, shaped by the runner fields of ``options``."""
    if options.runner == RunnerName.ASYNCIO:
        from .asyncio_runner import AsyncioRunner  # no Prefect or Dask in an asyncio run

        return AsyncioRunner()
    from ..destinations.duckdb import DuckDBDestination

    # a second run on this database, or a --db that is not a DuckDB file, fails now: before Prefect is
    # imported and its temporary server started (the flow takes the lock for real; this is the early answer)
    with DuckDBDestination(options.db).lock():
        pass
    server = None
    if not os.environ.get("PREFECT_API_URL"):
        # the temporary Prefect server boots (seconds of imports, in its own process) while this one imports
        # Prefect and plans the run; a PREFECT_API_URL from a Prefect profile stops it again (prefect_api)
        from .prefect.ephemeral import EphemeralServer

        with contextlib.suppress(OSError):
            server = EphemeralServer().launch()
    try:
        from .prefect.runner import PrefectRunner
    except ImportError as exc:  # pragma: no cover - depends on the install
        if server is not None:
            server.stop()
        raise UsageError(f"--runner {options.runner} needs prefect and prefect-dask installed ({exc})") from None
    return PrefectRunner(str(options.runner), **options.runner_options(), server=server)
