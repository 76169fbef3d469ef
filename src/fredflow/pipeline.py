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
from typing import Any, Awaitable, Callable, TypeVar

from .batches import auto_batch_size, iter_batches
from .catalog import Catalog, CatalogSpec, resolve
from .checkpoints import checkpoint
from .errors import BadApiKey, FatalRunError, UsageError
from .fred import FredClient, RequestStats, new_session
from .limiter import AdaptiveLimiter
from .progress import NullProgress, Progress
from .runners import RunJob, make_runner
from .settings import Settings, default_staging_root
from .stage import BatchManifest, RunStaging
from .store import RunRecord, merge_run

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
            "achieved_rps": round(self.achieved_rps, 3), "runner": self.runner, "db": self.db,
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

    Raises :class:`UsageError` for bad input and :class:`FatalRunError` when the
    run cannot proceed (nothing is committed then).
    """
    settings = settings or Settings.from_env()
    progress = progress or NullProgress()
    check_dates(start, end)
    if batch_size is not None and batch_size < 1:
        raise UsageError("--batch-size must be a positive integer or 'auto'")
    if not settings.api_key.get_secret_value():
        raise BadApiKey("FRED api key not set: pass --api-key or set FRED_API_KEY "
                        "(get one at https://fred.stlouisfed.org/docs/api/api_key.html)")
    db_path = Path(db)
    worker = make_runner(runner, **(runner_options or {}))
    run_id = new_run_id()
    started_at = datetime.now(timezone.utc)
    clock = time.perf_counter()
    parameters = {
        "catalog": catalog.describe(), "runner": runner, "runner_options": runner_options or {},
        "batch_size": batch_size or "auto", "start": start, "end": end, "mode": mode,
        "settings": settings.public_dict(),
    }
    staging = RunStaging(Path(staging_root) if staging_root else default_staging_root(db_path), run_id)
    try:
        staging.create({"run_id": run_id, "db": str(db_path), **parameters})
    except OSError as exc:
        raise FatalRunError(f"cannot create staging folder {staging.path}: {exc.strerror or exc}") from None

    catalog_stats = RequestStats()
    try:
        resolved = run_sync(lambda: _resolve_catalog(catalog, settings, catalog_stats))
        if resolved.metadata is not None:
            staging.write_catalog(resolved.metadata)
        n_series = len(resolved.series_ids)
        size = batch_size or auto_batch_size(n_series, slots=worker.slots, rate=settings.rate, runner=runner,
                                             requests_per_series=1.0 if resolved.metadata is not None else 2.0)
        n_batches = math.ceil(n_series / size) if n_series else 0
        batches = iter_batches(resolved.series_ids, size, start=start, end=end,
                               fetch_metadata=resolved.metadata is None)
        log.info("run %s: %d series, %d batches of up to %d, runner %s", run_id, n_series, n_batches, size, runner)
        progress.start(n_series, n_batches)
        try:
            manifests = worker.run(batches, n_batches, RunJob(run_id, staging.path.parent, settings), progress)
        finally:
            progress.close()
    except FatalRunError:
        staging.remove()
        raise

    summary = summarize(run_id, manifests, catalog_stats, time.perf_counter() - clock, runner, str(db_path))
    record = RunRecord(
        run_id=run_id, started_at=started_at, finished_at=datetime.now(timezone.utc), status=summary.status,
        runner=runner, mode=mode, n_series=summary.n_series, n_failed=summary.n_failed, n_rows=summary.n_rows,
        requests=summary.requests, retries=summary.retries, throttled=summary.throttled,
        seconds=summary.seconds, achieved_rps=summary.achieved_rps, parameters=parameters,
    )
    checkpoint("after-staging")
    merge_run(db_path, record, manifests, staging.catalog_files)
    staging.remove()
    return summary


def summarize(run_id: str, manifests: list[BatchManifest], catalog_stats: RequestStats, seconds: float,
              runner: str, db: str) -> RunSummary:
    requests = catalog_stats.requests + sum(m.requests for m in manifests)
    failed = [f.series_id for m in manifests for f in m.failures]
    n_series = sum(m.n_series for m in manifests)
    return RunSummary(
        run_id=run_id,
        status="succeeded" if not failed else "partial",
        n_series=n_series,
        n_failed=len(failed),
        n_rows=sum(m.rows for m in manifests),
        seconds=seconds,
        requests=requests,
        retries=catalog_stats.retries + sum(m.retries for m in manifests),
        failed=failed,
        throttled=catalog_stats.throttled + sum(m.throttled for m in manifests),
        achieved_rps=requests / seconds if seconds > 0 else 0.0,
        runner=runner,
        db=db,
    )
