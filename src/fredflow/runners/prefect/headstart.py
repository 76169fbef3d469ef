"""Sending before Prefect is up: the first batches of a ``--runner thread|dask`` run, fetched in this process.

A temporary Prefect server takes seconds to boot (and a Dask LocalCluster some more), while the run's
first request could go out as soon as it is planned. :class:`HeadStart` fetches batches from the plan
on its own event loop, in a thread of this process, paced by the run's
:class:`~fredflow.ratelimit.service.TokenService` (the same one the Prefect tasks lease from after, so
the run's rate holds across the hand-over) until :meth:`HeadStart.hand_over` is called: it returns the
batches left for the Prefect task runner, but for about two seconds' worth it keeps, so the server sees
no gap while the first task runs start; those and the ones in flight finish meanwhile
(:meth:`HeadStart.join`). Its
batches are staged exactly like a task's (a killed run resumes them), and their manifests join the
tasks' in the one-transaction merge. A fatal error (key refused, staging unwritable) stops it and is
raised by :meth:`hand_over` or :meth:`join`; a signal cancels it through :func:`fredflow.fetch.cancel_running_batches`.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Iterator

from ...fetch import FetchContext, fetch_batch
from ...progress import Progress
from ...run.batches import Batch
from ...run.plan import RunPlan
from ...sources.fred.client import new_session
from ...staging import BatchManifest

#: How often the head start's loop looks whether it should stop taking batches (seconds).
_POLL_S = 0.05
#: At the hand-over the head start keeps about this many seconds of requests at the run's rate (at most
#: twice its concurrency), so the server sees no gap while the first task runs start.
HANDOVER_OVERLAP_S = 2.0


class HeadStart:
    def __init__(self, plan: RunPlan, progress: Progress, quota_url: str) -> None:
        self.plan = plan
        self.progress = progress
        self.quota_url = quota_url
        self.manifests: list[BatchManifest] = []
        self.error: BaseException | None = None
        self._batches: Iterator[Batch] = iter(plan.batches())
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._main, name="fredflow-head-start", daemon=True)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending: set[asyncio.Task[BatchManifest]] = set()
        self._lock = threading.Lock()  # the batch iterator and the hand-over of progress reports
        self._handed = False
        self._late: list[BatchManifest] = []
        self.kept: list[int] = []  # the batches it kept at the hand-over, by index

    def start(self) -> "HeadStart":
        self._thread.start()
        return self

    def hand_over(self) -> list[Batch]:
        """The batches left, for the task runner, but for about ``HANDOVER_OVERLAP_S`` of requests more, which
        the head start keeps and fetches while the first task runs start (its in-flight ones go on too,
        :meth:`join`): without them the server saw a second with a few requests only at the hand-over (at
        20 req/s a Dask run's task runs took ~0.8 s to start sending, benchmarks/shared_key.py)."""
        with self._lock:
            self._handed = True
            if self.error is not None:
                raise self.error
            settings = self.plan.settings
            overlap = min(settings.rate * HANDOVER_OVERLAP_S, 2 * settings.concurrency)
            kept: list[Batch] = []
            requests = 0
            while requests < overlap and (batch := next(self._batches, None)) is not None:
                kept.append(batch)
                requests += len(batch)
            left = list(self._batches)
            self.kept = [batch.index for batch in kept]
            self._batches = iter(kept)  # the head start's loop takes these, then stops by itself
            return left

    def join(self) -> list[BatchManifest]:
        """Wait for the batches in flight; every manifest of the head start (the ones done after the hand-over
        reported to the progress display now, from this thread), or raise its error. Called after
        :meth:`hand_over`: the batches it kept are fetched to the end."""
        if self._thread.ident is not None:
            self._thread.join()
        with self._lock:
            late, self._late = self._late, []
        for manifest in late:
            self.progress.batch_done(manifest)
        if self.error is not None:
            raise self.error
        return list(self.manifests)

    def abort(self) -> None:
        """The run stops (an error or a signal in the main thread): cancel the batches in flight, wait for the thread."""
        self._stop.set()
        loop = self._loop
        if loop is not None and not loop.is_closed():
            def cancel() -> None:
                for task in self._pending:
                    task.cancel()
            try:
                loop.call_soon_threadsafe(cancel)
            except RuntimeError:  # the loop closed meanwhile
                pass
        if self._thread.ident is not None:
            self._thread.join()

    def _main(self) -> None:
        try:
            asyncio.run(self._run())
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread by hand_over
            self.error = exc
            self._stop.set()

    async def _run(self) -> None:
        settings = self.plan.settings
        staging = self.plan.job.staging()
        ctx = FetchContext.for_task(settings, self.quota_url, concurrency=settings.concurrency)
        self._loop = asyncio.get_running_loop()
        pending = self._pending
        try:
            async with new_session(settings, settings.concurrency) as session:
                ctx.session = session
                limit = None
                while True:
                    while not self._stop.is_set() and (limit is None or len(pending) < limit):
                        with self._lock:
                            batch = None if self._stop.is_set() else next(self._batches, None)
                        if batch is None:
                            self._stop.set()  # every batch taken (or handed over)
                            break
                        # enough series queued behind the semaphore to keep every request slot busy
                        limit = limit or max(2, -(-settings.concurrency // max(len(batch), 1)) + 1)
                        pending.add(asyncio.create_task(fetch_batch(batch, staging, ctx)))
                    if not pending:
                        if self._stop.is_set():
                            return
                        await asyncio.sleep(_POLL_S)
                        continue
                    done, _ = await asyncio.wait(pending, timeout=_POLL_S, return_when=asyncio.FIRST_COMPLETED)
                    pending.difference_update(done)
                    for task in done:
                        manifest = task.result()  # a fatal error: raised, the rest cancelled below
                        with self._lock:  # reported under the lock: once hand_over returns, only the main thread reports
                            self.manifests.append(manifest)
                            if self._handed:  # the main thread reports progress now: join() passes it on
                                self._late.append(manifest)
                            else:
                                self.progress.batch_done(manifest)
        finally:
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            await ctx.aclose()
