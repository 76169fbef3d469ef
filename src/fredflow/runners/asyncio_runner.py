"""The ``asyncio`` runner: every batch on one event loop in this process.

One aiohttp session, one :class:`~fredflow.limiter.AdaptiveLimiter` and one
semaphore of ``concurrency`` requests are shared by all batches, so ``rate``
and ``concurrency`` hold for the whole run. Batches are pulled from the
generator only as slots free up: a few are in memory at a time.
"""

from __future__ import annotations

import asyncio
import math
from typing import Iterator

from ..batches import Batch
from ..fetch import FetchContext, fetch_batch
from ..fred import new_session
from ..progress import Progress
from ..stage import BatchManifest, RunStaging
from . import RunJob


class AsyncioRunner:
    name = "asyncio"

    @property
    def slots(self) -> int:
        return 4

    def execute(self, request, progress: Progress):
        from ..pipeline import plan_run, run_pipeline

        return run_pipeline(request.db, lambda: plan_run(request, slots=self.slots), self.fan_out, progress)

    def fan_out(self, plan, progress: Progress) -> list[BatchManifest]:
        from ..pipeline import run_sync

        return run_sync(lambda: self._run(plan.batches(), plan.job, progress))

    async def _run(self, batches: Iterator[Batch], job: RunJob, progress: Progress) -> list[BatchManifest]:
        settings = job.settings
        staging = RunStaging(job.staging_root, job.run_id)
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
        return sorted(manifests, key=lambda m: m.batch_index)

    @staticmethod
    async def _collect(pending, manifests, progress):
        done, still_pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            manifest = task.result()  # a fatal error surfaces here and cancels the rest
            manifests.append(manifest)
            progress.batch_done(manifest)
        return still_pending
