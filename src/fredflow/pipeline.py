"""The Python API under the CLI: :func:`ingest` runs catalog → batches → fetch/stage → merge.

Reading top to bottom is the path the data takes::

    resolve catalog (ids)  →  iter_batches (generator)  →  runner runs fetch_batch per batch
        (aiohttp + limiter → parse → staged Parquet + manifest)  →  merge_run (one DuckDB transaction)

Guarantees: nothing of a run is visible in DuckDB before the merge commits; a
fatal error (api key refused, unknown release) commits nothing and removes the
run's staging folder; a crash leaves DuckDB exactly as it was.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import math
import secrets
import time
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any, Awaitable, Callable, Iterator, TypeVar

from .batches import Batch, auto_batch_size, iter_batches
from .catalog import Catalog, CatalogSpec, resolve
from .checkpoints import checkpoint
from .errors import BadApiKey, FatalRunError, UsageError
from .fred import FredClient, RequestStats, new_session
from .limiter import AdaptiveLimiter
from .progress import NullProgress, Progress
from .settings import Settings, default_staging_root
from .stage import BatchManifest, RunStaging
from .runners import RunJob, make_runner
from .store import RunRecord, merge_run, run_lock

log = logging.getLogger("fredflow")
T = TypeVar("T")

EXIT_OK, EXIT_FATAL, EXIT_USAGE, EXIT_PARTIAL = 0, 1, 2, 3


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

    @property
    def exit_code(self) -> int:
        return EXIT_OK if self.n_failed == 0 else EXIT_PARTIAL

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id, "status": self.status, "n_series": self.n_series, "n_failed": self.n_failed,
            "n_rows": self.n_rows, "seconds": round(self.seconds, 3), "requests": self.requests,
            "retries": self.retries, "failed": self.failed, "throttled": self.throttled,
            "achieved_rps": round(self.achieved_rps, 3), "utilization": round(self.utilization, 4),
            "runner": self.runner, "db": self.db,
        }


def new_run_id() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(3)


def run_sync(make: Callable[[], Awaitable[T]]) -> T:
    """``asyncio.run`` that also works when called from a running loop (e.g. a notebook)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(make())
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(lambda: asyncio.run(make())).result()


async def _resolve_catalog(spec: CatalogSpec, settings: Settings, stats: RequestStats) -> Catalog:
    async with new_session(settings, 4) as session:
        client = FredClient(session, settings, AdaptiveLimiter(settings.rate, settings.burst), stats=stats)
        return await resolve(spec, client)


def check_dates(start: date | None, end: date | None) -> None:
    if start and end and start > end:
        raise UsageError(f"--start {start} is after --end {end}")


@dataclass(slots=True)
class RunPlan:
    """A run decided but not yet fetched: its id, its staging folder, its series and batch size.

    Built in the process that will merge (the CLI's, or the Prefect flow's);
    :meth:`batches` is the generator the runners fan out.
    """

    run_id: str
    db: Path
    staging: RunStaging
    settings: Settings
    runner: str
    mode: str
    series_ids: list[str]
    fetch_metadata: bool
    batch_size: int
    start: date | None
    end: date | None
    parameters: dict[str, Any]
    catalog_stats: RequestStats
    started_at: datetime = field(default_factory=lambda: datetime.now(timezone.utc))
    clock: float = field(default_factory=time.perf_counter)

    @property
    def n_batches(self) -> int:
        return math.ceil(len(self.series_ids) / self.batch_size) if self.series_ids else 0

    @property
    def job(self) -> RunJob:
        return RunJob(self.run_id, self.staging.path.parent, self.settings)

    def batches(self) -> Iterator[Batch]:
        return iter_batches(self.series_ids, self.batch_size, start=self.start, end=self.end,
                            fetch_metadata=self.fetch_metadata)


@dataclass(frozen=True, slots=True)
class RunRequest:
    """Everything a run was asked to do, as plain data: what :func:`ingest` and the flows receive."""

    db: Path
    catalog: CatalogSpec
    settings: Settings
    runner: str = "asyncio"
    runner_options: dict[str, Any] = field(default_factory=dict)
    batch_size: int | None = None
    start: date | None = None
    end: date | None = None
    staging_root: Path | None = None
    mode: str = "full"


def plan_run(request: RunRequest, *, slots: int) -> RunPlan:
    """Check the input, create the run's staging folder, expand the catalog into series ids.

    ``slots`` is how many batches the runner runs at once (it sizes ``auto`` batches).
    Raises :class:`UsageError` for bad input and :class:`FatalRunError` when the
    run cannot start (key missing or refused, unknown release); nothing is left behind then.
    """
    db, catalog, settings, runner = request.db, request.catalog, request.settings, request.runner
    start, end, batch_size, mode = request.start, request.end, request.batch_size, request.mode
    staging_root, runner_options = request.staging_root, request.runner_options
    check_dates(start, end)
    if batch_size is not None and batch_size < 1:
        raise UsageError("--batch-size must be a positive integer or 'auto'")
    if not settings.api_key.get_secret_value():
        raise BadApiKey("FRED api key not set: pass --api-key or set FRED_API_KEY "
                        "(get one at https://fred.stlouisfed.org/docs/api/api_key.html)")
    db_path = Path(db)
    run_id = new_run_id()
    parameters = {
        "catalog": catalog.describe(), "runner": runner, "runner_options": runner_options or {},
        "batch_size": batch_size or "auto", "start": start, "end": end, "mode": mode,
        "settings": settings.public_dict(),
    }
    staging = RunStaging(Path(staging_root) if staging_root else default_staging_root(db_path), run_id)
    try:
        staging.create({"run_id": run_id, "db": str(db_path), **parameters})
    except OSError as exc:
        raise FatalRunError(f"cannot create staging folder {staging.path}: {exc.strerror or exc}; "
                            "choose a writable one with --staging-dir") from None
    catalog_stats = RequestStats()
    try:
        resolved = run_sync(lambda: _resolve_catalog(catalog, settings, catalog_stats))
        if resolved.metadata is not None:
            staging.write_catalog(resolved.metadata)
    except BaseException:
        staging.remove()
        raise
    size = batch_size or auto_batch_size(
        len(resolved.series_ids), slots=slots, rate=settings.rate, runner=runner,
        requests_per_series=1.0 if resolved.metadata is not None else 2.0,
    )
    plan = RunPlan(
        run_id=run_id, db=db_path, staging=staging, settings=settings, runner=runner, mode=mode,
        series_ids=resolved.series_ids, fetch_metadata=resolved.metadata is None, batch_size=size,
        start=start, end=end, parameters=parameters, catalog_stats=catalog_stats,
    )
    log.info("run %s: %d series in %d batches of up to %d, runner %s",
             run_id, len(plan.series_ids), plan.n_batches, size, runner)
    return plan


def finish_run(plan: RunPlan, manifests: list[BatchManifest]) -> RunSummary:
    """Merge every staged file of the run and its run record in ONE transaction, then drop the staging folder."""
    summary = summarize(plan.run_id, manifests, plan.catalog_stats, time.perf_counter() - plan.clock,
                        plan.runner, str(plan.db), rate=plan.settings.rate)
    record = RunRecord(
        run_id=plan.run_id, started_at=plan.started_at, finished_at=datetime.now(timezone.utc),
        status=summary.status, runner=plan.runner, mode=plan.mode, n_series=summary.n_series,
        n_failed=summary.n_failed, n_rows=summary.n_rows, requests=summary.requests, retries=summary.retries,
        throttled=summary.throttled, seconds=summary.seconds, achieved_rps=summary.achieved_rps,
        utilization=summary.utilization, parameters=plan.parameters,
    )
    checkpoint("after-staging")
    merge_run(plan.db, record, manifests, plan.staging.catalog_files)
    plan.staging.remove()
    return summary


def abandon_run(plan: RunPlan) -> None:
    """A fatal error: nothing is merged, nothing of the run is kept."""
    plan.staging.remove()


FanOut = Callable[[RunPlan, Progress], list[BatchManifest]]
Merge = Callable[[RunPlan, list[BatchManifest]], RunSummary]


def run_pipeline(make_plan: Callable[[], RunPlan], fan_out: FanOut, progress: Progress,
                 merge: Merge = finish_run) -> RunSummary:
    """The skeleton every runner shares: plan → fan the batches out → merge in one transaction.

    Runners differ only in ``fan_out`` (how :func:`fredflow.fetch.fetch_batch`
    is run over ``plan.batches()``) and, for Prefect, in wrapping ``merge`` as a task.
    The database's run lock (:func:`fredflow.store.run_lock`) is held from the
    fan-out to the end of the merge, in the process that merges.
    """
    plan = make_plan()
    try:
        with run_lock(plan.db):  # one run at a time per database: a second one fails here, before fetching
            progress.start(len(plan.series_ids), plan.n_batches)
            try:
                manifests = fan_out(plan, progress)
            finally:
                progress.close()
            return merge(plan, manifests)
    except FatalRunError:
        abandon_run(plan)
        raise


def ingest(
    db: str | Path,
    catalog: CatalogSpec,
    *,
    settings: Settings | None = None,
    runner: str = "asyncio",
    runner_options: dict[str, Any] | None = None,
    batch_size: int | None = None,
    start: date | None = None,
    end: date | None = None,
    staging_root: str | Path | None = None,
    progress: Progress | None = None,
    mode: str = "full",
) -> RunSummary:
    """Ingest a catalog of series into the DuckDB file ``db`` and return the run's summary.

    ``runner`` is ``asyncio`` (this process, one event loop), ``thread`` or
    ``dask`` (the Prefect flow ``fredflow-ingest`` fanning batches out with
    ``task.map``; ``runner_options``: ``workers``, ``threads_per_worker``,
    ``dask_address``). Every runner plans with :func:`plan_run`, runs
    :func:`fredflow.fetch.fetch_batch` per batch and merges with :func:`finish_run`.
    """
    request = RunRequest(
        db=Path(db), catalog=catalog, settings=settings or Settings.from_env(), runner=runner,
        runner_options=dict(runner_options or {}), batch_size=batch_size, start=start, end=end,
        staging_root=Path(staging_root) if staging_root else None, mode=mode,
    )
    check_dates(start, end)
    worker = make_runner(runner, **request.runner_options)
    return worker.execute(request, progress or NullProgress())


def summarize(run_id: str, manifests: list[BatchManifest], catalog_stats: RequestStats, seconds: float,
              runner: str, db: str, *, rate: float) -> RunSummary:
    """Totals of a run. ``achieved_rps`` is measured over the fetch phase only (first to last
    request of the batches), so planning and merging do not dilute it; ``utilization`` = achieved ÷ rate."""
    fetch_requests = sum(m.requests for m in manifests)
    firsts = [m.first_request_at for m in manifests if m.first_request_at is not None]
    lasts = [m.last_request_at for m in manifests if m.last_request_at is not None]
    span = max(lasts) - min(firsts) if firsts and lasts else 0.0
    # n requests spread over a span fill n-1 intervals of the schedule
    achieved = (fetch_requests - 1) / span if span > 0 and fetch_requests > 1 else 0.0
    failed = [f.series_id for m in manifests for f in m.failures]
    return RunSummary(
        run_id=run_id,
        status="succeeded" if not failed else "partial",
        n_series=sum(m.n_series for m in manifests),
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
