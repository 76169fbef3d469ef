"""The ``asyncio`` runner: every batch on one event loop in this process.

One aiohttp session, one :class:`~fredflow.ratelimit.service.ScheduleLimiter` and one
semaphore of ``concurrency`` requests are shared by all batches, so ``rate``
and ``concurrency`` hold for the whole run. Batches are pulled from the
generator only as slots free up: a few are in memory at a time.
"""

from __future__ import annotations

import asyncio
import math
from typing import Iterator

from ..aio import run_sync
from ..destinations.duckdb import DuckDBDestination
from ..fetch import FetchContext, RunJob, fetch_batch
from ..options import RunOptions
from ..progress import Progress
from ..run.batches import Batch
from ..run.execute import RunSummary, run_pipeline
from ..run.plan import RunPlan, plan_run
from ..settings import Settings
from ..sources.fred.client import new_session
from ..staging import BatchManifest


class AsyncioRunner:
    name = "asyncio"
    slots = 4
    task_overhead = 0.0

    def execute(self, options: RunOptions, settings: Settings, progress: Progress) -> RunSummary:
        return run_pipeline(DuckDBDestination(options.db).lock(),
                            lambda: plan_run(options, settings, slots=self.slots, task_overhead=self.task_overhead),
                            self.fan_out, progress)

    def fan_out(self, plan: RunPlan, progress: Progress) -> list[BatchManifest]:
        return run_sync(lambda: self._run(plan.batches(), plan.job, progress))

    async def _run(self, batches: Iterator[Batch], job: RunJob, progress: Progress) -> list[BatchManifest]:
        settings = job.settings
        staging = job.staging()
        ctx = FetchContext.local(settings)
        manifests: list[BatchManifest] = []
        async with new_session(settings, settings.concurrency) as session:
            ctx.session = session
            pending: set[asyncio.Task[BatchManifest]] = set()
            limit = None
            try:
                for batch in batches:
                    if limit is None:
                        # enough series queued behind the semaphore to keep every request slot busy
                        limit = max(2, math.ceil(settings.concurrency / max(len(batch), 1)) + 1)
                    while len(pending) >= limit:
                        pending = await self._collect(pending, manifests, progress)
                    pending.add(asyncio.create_task(fetch_batch(batch, staging, ctx)))
                while pending:
                    pending = await self._collect(pending, manifests, progress)
            finally:
                for task in pending:
                    task.cancel()
                await asyncio.gather(*pending, return_exceptions=True)
                await ctx.aclose()
        return sorted(manifests, key=lambda m: m.batch_index)

    @staticmethod
    async def _collect(pending, manifests, progress):
        done, still_pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            manifest = task.result()  # a fatal error surfaces here and cancels the rest
            manifests.append(manifest)
            progress.batch_done(manifest)
        return still_pending
