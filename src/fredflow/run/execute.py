"""The skeleton every runner shares: plan → fan the batches out → merge in one transaction → summary.

Guarantees: nothing of a run is visible in DuckDB before the merge commits; a fatal error (api key
refused, staging unwritable) commits nothing and removes the run's staging folder (unless an
earlier attempt staged it: a resume keeps it); a failed merge keeps every staged file for
``fredflow resume``; a crash leaves DuckDB exactly as it was.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from contextlib import AbstractContextManager
from typing import Any, Callable

from ..destinations.duckdb import RunRecord
from ..errors import EXIT_OK, EXIT_PARTIAL, FatalRunError
from ..progress import Progress
from ..sources.fred.client import RequestStats
from ..staging import BatchManifest
from ..testing.failpoints import checkpoint
from .plan import RunPlan

MIN_RATE_SPAN_S = 1.0  # a fetch phase shorter than this has no meaningful rate


@dataclass(slots=True)
class ActiveRun:
    """The run this process is running, for what the CLI says when a signal stops it:
    its id, its database, and whether its merge has already committed."""

    run_id: str | None = None
    db: str | None = None
    committed: bool = False


#: Set by :func:`run_pipeline` once the run is planned, and by :func:`finish_run` once it commits.
ACTIVE_RUN = ActiveRun()


@dataclass(slots=True)
class RunSummary:
    """What a run did; ``exit_code`` is the CLI's: 0 all ingested, 3 some series failed."""

    run_id: str
    status: str
    n_series: int
    n_failed: int
    n_rows: int
    seconds: float
    requests: int
    retries: int
    failed: list[str] = field(default_factory=list)
    throttled: int = 0
    achieved_rps: float = 0.0
    utilization: float = 0.0
    runner: str = "asyncio"
    db: str = ""
    mode: str = "full"
    n_catalog: int = 0
    n_unchanged: int = 0
    resumed_batches: int = 0
    n_revised: int = 0  # the run's revision log (table revisions): values changed, removed, added
    n_deleted: int = 0
    n_added: int = 0

    @property
    def exit_code(self) -> int:
        return EXIT_OK if self.n_failed == 0 else EXIT_PARTIAL

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id, "status": self.status, "n_series": self.n_series, "n_failed": self.n_failed,
            "n_rows": self.n_rows, "seconds": round(self.seconds, 3), "requests": self.requests,
            "retries": self.retries, "failed": self.failed, "throttled": self.throttled,
            "achieved_rps": round(self.achieved_rps, 3), "utilization": round(self.utilization, 4),
            "runner": self.runner, "db": self.db, "mode": self.mode, "n_catalog": self.n_catalog,
            "n_unchanged": self.n_unchanged, "resumed_batches": self.resumed_batches,
            "n_revised": self.n_revised, "n_deleted": self.n_deleted, "n_added": self.n_added,
        }


def finish_run(plan: RunPlan, manifests: list[BatchManifest]) -> RunSummary:
    """Merge every staged file of the run and its run record in ONE transaction, then drop the staging folder."""
    fetched_now = manifests
    manifests = sorted([*plan.done.values(), *manifests], key=lambda m: m.batch_index)
    summary = summarize(plan.run_id, manifests, plan.catalog_stats, time.perf_counter() - plan.clock,
                        plan.runner, str(plan.db), rate=plan.settings.rate, rate_from=fetched_now)
    summary.mode, summary.n_catalog, summary.n_unchanged = plan.mode, plan.n_catalog, plan.n_unchanged
    summary.resumed_batches = len(plan.done)
    record = RunRecord(
        run_id=plan.run_id, started_at=plan.started_at, finished_at=datetime.now(timezone.utc),
        status=summary.status, runner=plan.runner, mode=plan.mode, n_series=summary.n_series,
        n_failed=summary.n_failed, n_rows=summary.n_rows, requests=summary.requests, retries=summary.retries,
        throttled=summary.throttled, seconds=summary.seconds, achieved_rps=summary.achieved_rps,
        utilization=summary.utilization, parameters=plan.parameters, n_catalog=plan.n_catalog,
        n_unchanged=plan.n_unchanged,
    )
    checkpoint("after-staging")
    counts = plan.destination.merge(record, manifests, plan.staging.catalog_files, state=plan.state,
                                    vintage_range=plan.vintage_range if plan.vintages else (None, None),
                                    slices=plan.replaced_slices(), vintage_starts=plan.vintage_starts(),
                                    vintages=plan.vintages, filesystem=plan.staging.fs)
    summary.n_revised, summary.n_deleted, summary.n_added = counts["n_revised"], counts["n_deleted"], counts["n_added"]
    ACTIVE_RUN.committed = True
    plan.staging.remove()
    return summary


FanOut = Callable[[RunPlan, Progress], list[BatchManifest]]
Merge = Callable[[RunPlan, list[BatchManifest]], RunSummary]


def run_pipeline(destination_lock: AbstractContextManager[None], make_plan: Callable[[], RunPlan], fan_out: FanOut,
                 progress: Progress, merge: Merge = finish_run) -> RunSummary:
    """Plan → fan the batches out → merge in one transaction, under the database's run lock.

    Runners differ only in ``fan_out`` (how :func:`fredflow.fetch.fetch_batch` is run over
    ``plan.batches()``) and, for Prefect, in wrapping ``make_plan`` and ``merge`` as tasks.
    ``destination_lock`` (:meth:`fredflow.destinations.duckdb.DuckDBDestination.lock`) is held from
    before planning (a second run, or a database held by another program, fails before any request,
    and the state an incremental plan reads cannot change under it) to the end of the merge, in the
    process that merges.
    """
    with destination_lock:  # one run at a time per database
        plan = make_plan()
        ACTIVE_RUN.run_id, ACTIVE_RUN.db, ACTIVE_RUN.committed = plan.run_id, str(plan.db), False
        try:
            # progress counts series × windows of the batches still to fetch
            pending_units = sum(len(b) for b in plan.batches())
            progress.start(pending_units, plan.n_pending)
            try:
                manifests = fan_out(plan, progress)
            except FatalRunError:
                # nothing worth keeping (key refused, staging unwritable) unless an earlier attempt staged it
                if not plan.resumed:
                    plan.staging.remove()
                raise
            finally:
                progress.close()
            # A merge that fails keeps every staged file: `fredflow resume` merges them later.
            return merge(plan, manifests)
        finally:
            plan.staging.release()


def summarize(run_id: str, manifests: list[BatchManifest], catalog_stats: RequestStats, seconds: float,
              runner: str, db: str, *, rate: float, rate_from: list[BatchManifest] | None = None) -> RunSummary:
    """Totals of a run. ``achieved_rps`` is measured over the fetch phase only (first to last
    request of the batches in ``rate_from``, default all: a resumed run measures its own attempt),
    so planning and merging do not dilute it; ``utilization`` = achieved ÷ rate. Both are 0 when
    the fetch phase lasted under :data:`MIN_RATE_SPAN_S` (too short to measure a rate)."""
    fetch_requests = sum(m.requests for m in manifests)
    timed = manifests if rate_from is None else rate_from
    firsts = [m.first_request_at for m in timed if m.first_request_at is not None]
    lasts = [m.last_request_at for m in timed if m.last_request_at is not None]
    span = max(lasts) - min(firsts) if firsts and lasts else 0.0
    timed_requests = sum(m.requests for m in timed)
    # n requests spread over a span fill n-1 intervals of the schedule; under a second, a burst
    # would read as a rate above --rate: too short to measure, reported as 0
    achieved = (timed_requests - 1) / span if span >= MIN_RATE_SPAN_S and timed_requests > 1 else 0.0
    # a series appears once per window in a backfill: count it once, failed if any window failed
    failed = list(dict.fromkeys(f.series_id for m in manifests for f in m.failures))
    fetched = {sid for m in manifests for sid in m.succeeded} | set(failed)
    return RunSummary(
        run_id=run_id,
        status="succeeded" if not failed else "partial",
        n_series=len(fetched),
        n_failed=len(failed),
        n_rows=sum(m.rows for m in manifests),
        seconds=seconds,
        requests=catalog_stats.requests + fetch_requests,
        retries=catalog_stats.retries + sum(m.retries for m in manifests),
        failed=failed,
        throttled=catalog_stats.throttled + sum(m.throttled for m in manifests),
        achieved_rps=achieved,
        utilization=achieved / rate if rate else 0.0,
        runner=runner,
        db=db,
    )
