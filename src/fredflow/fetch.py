"""Fetch one batch → staged files + manifest. The unit every runner runs.

Guarantee: when :func:`fetch_batch` returns, every series of the batch is
either staged (rows in the batch's Parquet files) or listed in
``manifest.failures`` with the HTTP status, FRED's message and the attempts
spent; the manifest is on disk. A :class:`~fredflow.errors.FatalRunError` (api
key refused) propagates at once and leaves no manifest for the batch.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass

import aiohttp

from .errors import FatalRunError, FredError
from .ratelimit.budget import schedule_for
from .ratelimit.local import Limiter
from .ratelimit.service import RemoteLimiter, ScheduleLimiter, local_schedule
from .run.batches import Batch
from .settings import Settings
from .sources.fred.client import FredClient, RequestStats, new_session
from .sources.fred.limits import VINTAGE_EARLIEST, VINTAGE_LATEST, VINTAGES_PER_REQUEST
from .staging import BatchManifest, RunStaging, SeriesFailure
from .testing.failpoints import fatal_at


@dataclass(frozen=True, slots=True)
class RunJob:
    """What every batch of a run needs to know: where to stage and how to talk to FRED.
    Small and picklable: the Prefect runners ship it with every mapped task."""

    run_id: str
    staging_root: str  # a local path or a URI (see fredflow.staging)
    settings: Settings
    quota_url: str | None = None  # the run's TokenService, when batches run in other threads/processes
    handback: bool = False  # stage on the worker and hand the bytes back (runners/prefect/handback.py)

    def staging(self) -> RunStaging:
        return RunStaging(self.staging_root, self.run_id)


@dataclass(slots=True)
class FetchContext:
    """What batches running on one event loop share: pacing, a connection pool, a cap on requests in flight.

    Runners that fan out to threads or processes build one per task (an
    aiohttp session and an aiolimiter belong to one event loop).
    """

    settings: Settings
    limiter: Limiter
    semaphore: asyncio.Semaphore
    session: aiohttp.ClientSession | None = None
    owns_schedule: bool = True  # closed with the context (the asyncio runner's), or the token service's

    @classmethod
    def local(cls, settings: Settings) -> "FetchContext":
        """Pacing for everything on this event loop: the run's whole rate and concurrency (the asyncio runner)."""
        return cls(
            settings=settings,
            limiter=ScheduleLimiter(schedule_for(settings)),  # the key's budget (see fredflow.ratelimit.budget)
            semaphore=asyncio.Semaphore(settings.concurrency),
        )

    @classmethod
    def for_task(cls, settings: Settings, quota_url: str, *, concurrency: int) -> "FetchContext":
        """Pacing for one task among many: send times leased from the run's TokenService -- its schedule
        itself when the service runs in this process (the head start, the thread runner), else over HTTP."""
        schedule = local_schedule(quota_url)
        limiter: Limiter = (RemoteLimiter(quota_url, settings.rate, settings.burst) if schedule is None
                            else ScheduleLimiter(schedule, smoother=True))
        return cls(settings=settings, limiter=limiter, semaphore=asyncio.Semaphore(concurrency),
                   owns_schedule=False)

    async def aclose(self) -> None:
        if isinstance(self.limiter, RemoteLimiter):
            await self.limiter.close()
        if isinstance(self.limiter, ScheduleLimiter) and self.owns_schedule:
            self.limiter.schedule.close()


_RUNNING: set[tuple[asyncio.AbstractEventLoop, asyncio.Task]] = set()
_RUNNING_LOCK = threading.Lock()


def cancel_running_batches() -> None:
    """Cancel every :func:`fetch_batch` running in this process, on whatever thread's event loop: on a
    signal, the Prefect thread runner's tasks stop now instead of fetching to the end of their batch."""
    with _RUNNING_LOCK:
        running = list(_RUNNING)
    for loop, task in running:
        if not loop.is_closed():
            loop.call_soon_threadsafe(task.cancel)


async def _fetch_series(client: FredClient, batch: Batch, position: int):
    series_id = batch.series_ids[position]
    meta = await client.series(series_id) if batch.fetch_metadata else None
    if batch.vintages:
        rows = await client.vintages(series_id, batch.realtime_start_of(position) or VINTAGE_EARLIEST,
                                     batch.realtime_end or VINTAGE_LATEST,
                                     observation_start=batch.start_of(position), observation_end=batch.end,
                                     max_vintage_dates=VINTAGES_PER_REQUEST)
    else:
        rows = await client.observations(series_id, batch.start_of(position), batch.end)
    return meta, rows


async def fetch_batch(batch: Batch, staging: RunStaging, ctx: FetchContext) -> BatchManifest:
    """Fetch every series of ``batch`` (bounded by ``ctx.semaphore``) and stage it."""
    fatal_at("fetch-batch", str(batch.index))
    current = (asyncio.get_running_loop(), asyncio.current_task())
    with _RUNNING_LOCK:
        _RUNNING.add(current)
    try:
        return await _fetch_batch(batch, staging, ctx)
    finally:
        with _RUNNING_LOCK:
            _RUNNING.discard(current)


async def _fetch_batch(batch: Batch, staging: RunStaging, ctx: FetchContext) -> BatchManifest:
    started = time.perf_counter()
    stats = RequestStats()
    manifest = BatchManifest(batch_index=batch.index, batch_key=batch.key)
    writer = staging.batch_writer(batch.index)
    own_session = ctx.session is None
    session = ctx.session or new_session(ctx.settings, ctx.settings.concurrency)
    try:
        client = FredClient(session, ctx.settings, ctx.limiter, stats=stats)

        async def one(position: int) -> None:
            series_id = batch.series_ids[position]
            async with ctx.semaphore:
                try:
                    meta, rows = await _fetch_series(client, batch, position)
                except FatalRunError:
                    raise
                except FredError as exc:
                    manifest.failures.append(
                        SeriesFailure(series_id, exc.http_status, exc.message, exc.attempts)
                    )
                    return
            # Staging happens outside the semaphore: the slot goes back to the network at once.
            if meta is not None:
                writer.add_series(meta)
            if batch.vintages:
                writer.add_vintages(series_id, rows)
            else:
                writer.add_observations(series_id, rows)
            manifest.succeeded.append(series_id)

        async with asyncio.TaskGroup() as group:
            for position in range(len(batch.series_ids)):
                group.create_task(one(position))
    except BaseExceptionGroup as group_error:  # surface the first fatal error itself
        raise group_error.exceptions[0] from None
    finally:
        if own_session:
            await session.close()
    manifest.requests, manifest.retries, manifest.throttled = stats.requests, stats.retries, stats.throttled
    manifest.first_request_at, manifest.last_request_at = stats.first_request_at, stats.last_request_at
    manifest.seconds = round(time.perf_counter() - started, 6)
    # Staged in completion order; store them in batch order so reruns are reproducible.
    order = {sid: i for i, sid in enumerate(batch.series_ids)}
    manifest.succeeded.sort(key=order.__getitem__)
    manifest.failures.sort(key=lambda f: order[f.series_id])
    return writer.finish(manifest)
