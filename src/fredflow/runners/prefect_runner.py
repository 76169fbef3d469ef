"""Prefect orchestration: the ``fredflow-ingest`` / ``fredflow-backfill`` flows and the ``thread``/``dask`` runners.

Prefect and Dask are imported here and nowhere else. The flow is the same
skeleton as every runner (:func:`fredflow.pipeline.run_pipeline`), with each
stage a Prefect task::

    plan-run (flow process)  →  fetch-batch.map(batches)  (async, on the task runner)  →  merge-run (flow process)

* The mapped task creates its aiohttp session and limiter inside itself: every
  Dask task runs on its own event loop, and neither can cross loops or processes.
  It returns a small :class:`~fredflow.stage.BatchManifest`, never rows.
* The flow picks its task runner from its ``runner`` parameter (so one
  deployment can be pointed at threads or Dask): ``thread`` is Prefect's
  ``ThreadPoolTaskRunner``; ``dask`` is prefect-dask's ``DaskTaskRunner`` over a
  ``LocalCluster`` with worker *processes*, or over an existing cluster
  (``dask_address``).
* Prefect API: with ``PREFECT_API_URL`` set, runs go to that server. Without
  it, :func:`prefect_api` starts a temporary local server for the run (a
  subprocess, Prefect's own ``SubprocessASGIServer``) and puts its URL in the
  settings context, which prefect-dask ships with every task, so Dask worker
  processes report to it instead of trying (and failing) to start their own.
"""

from __future__ import annotations

import os

# Process-wide Prefect/Dask knobs: read when prefect is imported, inherited by
# LocalCluster worker processes. setdefault: the user's environment wins.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "error")

import asyncio  # noqa: E402
import contextlib  # noqa: E402
import dataclasses  # noqa: E402
import contextvars  # noqa: E402
import logging  # noqa: E402
import math  # noqa: E402
from datetime import date  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Iterator  # noqa: E402

from prefect import flow, get_run_logger, task, unmapped  # noqa: E402
from prefect.cache_policies import NO_CACHE  # noqa: E402
from prefect.context import FlowRunContext  # noqa: E402
from prefect.futures import as_completed  # noqa: E402
from prefect.settings import PREFECT_API_URL, temporary_settings  # noqa: E402
from prefect.task_runners import ThreadPoolTaskRunner  # noqa: E402
from pydantic import SecretStr  # noqa: E402

from ..batches import Batch  # noqa: E402
from ..catalog import CatalogSpec  # noqa: E402
from ..checkpoints import fail_once  # noqa: E402
from ..errors import FatalRunError, UsageError  # noqa: E402
from ..fetch import FetchContext, fetch_batch  # noqa: E402
from ..pipeline import RunPlan, RunRequest, RunSummary, finish_run, plan_run, run_pipeline  # noqa: E402
from ..progress import Progress  # noqa: E402
from ..quota import TokenService, reachable_host  # noqa: E402
from ..settings import Settings  # noqa: E402
from ..stage import BatchManifest, RunStaging  # noqa: E402
from . import RunJob  # noqa: E402

log = logging.getLogger("fredflow")

# Set by PrefectRunner.execute for a flow called in-process (the CLI's progress bar);
# a flow started by a deployment reports through Prefect's run logger instead.
_progress: contextvars.ContextVar[Progress | None] = contextvars.ContextVar("fredflow_progress", default=None)


# --------------------------------------------------------------------------- the Prefect API for a run


@contextlib.contextmanager
def prefect_api() -> Iterator[str]:
    """Yield a Prefect API URL that other processes (Dask workers) can reach.

    ``PREFECT_API_URL`` set: use it. Otherwise start a local server for the
    duration of the block and stop it after. Its database is fredflow's own
    file under ``PREFECT_HOME`` (``fredflow-runs.db``): kept between runs, so
    start-up skips the migrations (~6 s instead of ~12 s here) and the history
    stays, without contending with other Prefect servers for ``prefect.db``.
    """
    url = PREFECT_API_URL.value()
    if url:
        yield url
        return
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import PREFECT_HOME, PREFECT_SERVER_DATABASE_CONNECTION_URL

    home = Path(PREFECT_HOME.value()).expanduser()
    home.mkdir(parents=True, exist_ok=True)
    database = f"sqlite+aiosqlite:///{home / 'fredflow-runs.db'}"
    # the server subprocess inherits the current settings: it opens this database
    with temporary_settings({PREFECT_SERVER_DATABASE_CONNECTION_URL: database}):
        server = SubprocessASGIServer()
        server.start()
        try:
            with temporary_settings({PREFECT_API_URL: server.api_url}):
                yield server.api_url
                _flush_prefect_services()
        finally:
            server.stop()


def _flush_prefect_services() -> None:
    """Ship queued logs and events before a temporary server goes away."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for service in (APILogWorker, EventsWorker):
        with contextlib.suppress(Exception):
            service.drain_all(timeout=5)


def _point_cluster_at_api(address: str, api_url: str) -> None:
    """Existing Dask workers: make sure they report to this run's Prefect API (see :class:`PrefectApiPlugin`)."""
    from distributed import Client

    with Client(address, timeout=15) as client:
        client.register_plugin(PrefectApiPlugin(api_url), name=PrefectApiPlugin.name)


try:
    from distributed.diagnostics.plugin import WorkerPlugin
except ImportError:  # pragma: no cover
    WorkerPlugin = object  # type: ignore[misc,assignment]


class PrefectApiPlugin(WorkerPlugin):
    """Point long-lived Dask workers at the current run's Prefect API.

    Task runs get the API URL through the settings context prefect-dask ships
    with each task, but a worker process caches its event and log shippers
    from the first server it ever talked to; drain them when the URL changes so
    the next task builds them against the right one.
    """

    name = "fredflow-prefect-api"

    def __init__(self, api_url: str) -> None:
        self.api_url = api_url

    async def setup(self, worker) -> None:  # noqa: ANN001 - dask's signature
        if getattr(worker, "_fredflow_prefect_api", None) == self.api_url:
            return
        worker._fredflow_prefect_api = self.api_url
        os.environ["PREFECT_API_URL"] = self.api_url
        from prefect.events.worker import EventsWorker
        from prefect.logging.handlers import APILogWorker

        for service in (EventsWorker, APILogWorker):
            pending = service.drain_all(timeout=3)
            if asyncio.iscoroutine(pending) or asyncio.isfuture(pending):
                await pending


# --------------------------------------------------------------------------- tasks


def _retry_unless_fatal(task, task_run, state) -> bool:  # noqa: ANN001 - Prefect's signature
    """Task retries are for batches that failed as a whole by accident, not for a refused api key."""
    try:
        state.result()
    except FatalRunError:
        return False
    except BaseException:
        return True
    return True


@task(name="plan-run", cache_policy=NO_CACHE)
def plan_task(request: RunRequest, slots: int) -> RunPlan:
    return plan_run(request, slots=slots)


@task(name="fetch-batch", task_run_name="batch-{batch.index}", cache_policy=NO_CACHE,
      retries=2, retry_delay_seconds=2, retry_jitter_factor=0.5, retry_condition_fn=_retry_unless_fatal)
async def fetch_batch_task(batch: Batch, job: RunJob, concurrency: int) -> BatchManifest:
    """One batch on the worker's own event loop, with its own session; its requests are paced by
    send times leased from the run's TokenService (``job.quota_url``), so the rate holds run-wide."""
    fail_once("fetch-batch-task")
    ctx = FetchContext.for_task(job.settings, job.quota_url, concurrency=concurrency)
    try:
        return await fetch_batch(batch, RunStaging(job.staging_root, job.run_id), ctx)
    finally:
        await ctx.aclose()


@task(name="merge-run", cache_policy=NO_CACHE)
def merge_task(plan: RunPlan, manifests: list[BatchManifest]) -> RunSummary:
    """All staged files of the run, in ONE DuckDB transaction, in the flow's process."""
    return finish_run(plan, manifests)


# --------------------------------------------------------------------------- task runners


def task_runner_for(runner: str, *, slots: int, workers: int, threads_per_worker: int,
                    dask_address: str | None):
    if runner == "thread":
        return ThreadPoolTaskRunner(max_workers=slots)
    if runner == "dask":
        from prefect_dask import DaskTaskRunner

        if dask_address:
            return DaskTaskRunner(address=dask_address)
        return DaskTaskRunner(
            cluster_class="distributed.LocalCluster",
            cluster_kwargs={"n_workers": workers, "threads_per_worker": threads_per_worker, "processes": True,
                            "dashboard_address": None},
        )
    raise UsageError(f"runner {runner!r} is not a Prefect runner (thread or dask)")


def _slots(runner: str, workers: int, threads_per_worker: int, thread_slots: int) -> int:
    return thread_slots if runner == "thread" else workers * threads_per_worker


def _current_progress() -> Progress:
    # A function, not an inline ``_progress.get()`` in the flow: Dask pickles the flow
    # function by value with the globals it names, and a ContextVar cannot be pickled.
    return _progress.get() or _RunLoggerProgress()


class _RunLoggerProgress:
    """Progress through Prefect's run logger (flows started by a deployment or `fredflow serve`)."""

    def __init__(self) -> None:
        self._done = self._rows = self._n = 0

    def start(self, n_series: int, n_batches: int) -> None:
        self._n = n_series
        get_run_logger().info("fetching %d series in %d batches", n_series, n_batches)

    def batch_done(self, manifest: BatchManifest) -> None:
        self._done += manifest.n_series
        self._rows += manifest.rows
        get_run_logger().info("batch %d done: %d/%d series, %d rows so far, %d failed in batch",
                              manifest.batch_index, self._done, self._n, self._rows, len(manifest.failures))

    def close(self) -> None:
        pass


def _fan_out(plan: RunPlan, progress: Progress, *, task_runner, slots: int, quota_host: str) -> list[BatchManifest]:
    """``fetch_batch_task.map(batches)`` on ``task_runner``; manifests in batch order.

    One :class:`~fredflow.quota.TokenService` in this process paces every task
    (the run's rate holds across threads, processes and machines); the run's
    concurrency is split over the ``slots`` tasks that run at once.
    """
    settings = plan.settings
    concurrency = max(1, math.ceil(settings.concurrency / slots))
    flow_context = FlowRunContext.get()
    manifests: list[BatchManifest] = []
    with TokenService(settings.rate, settings.burst, host=quota_host) as quota, \
            task_runner as active, flow_context.model_copy(update={"task_runner": active}):
        job = dataclasses.replace(plan.job, quota_url=quota.url)
        futures = fetch_batch_task.map(plan.batches(), job=unmapped(job), concurrency=unmapped(concurrency))
        try:
            for future in as_completed(futures):
                manifest = future.result()
                manifests.append(manifest)
                progress.batch_done(manifest)
        except BaseException:
            for future in futures:
                with contextlib.suppress(Exception):
                    future.cancel()
            raise
    return sorted(manifests, key=lambda m: m.batch_index)


# --------------------------------------------------------------------------- flows


def _request_from_parameters(db: str, series: list[str] | None, series_file: str | None, release: int | None,
                             category: int | None, runner: str, settings: dict[str, Any] | None,
                             api_key: SecretStr | None, runner_options: dict[str, Any],
                             **run: Any) -> RunRequest:
    overrides = dict(settings or {})
    overrides.pop("api_key", None)  # never accepted as a plain parameter
    if api_key is not None and api_key.get_secret_value() not in ("", "**********"):
        overrides["api_key"] = api_key.get_secret_value()
    catalog = None
    if not run.get("resume") or any(v is not None for v in (series, series_file, release, category)):
        catalog = CatalogSpec(series=tuple(series) if series else None,
                              series_file=Path(series_file) if series_file else None,
                              release=release, category=category)
    staging_dir = run.pop("staging_dir", None)
    return RunRequest(db=Path(db), catalog=catalog, settings=Settings.from_env(**overrides), runner=runner,
                      runner_options=runner_options, staging_root=Path(staging_dir) if staging_dir else None, **run)


@flow(name="fredflow-ingest", flow_run_name="ingest-{mode}-{runner}", log_prints=False)
def ingest_flow(
    db: str,
    series: list[str] | None = None,
    series_file: str | None = None,
    release: int | None = None,
    category: int | None = None,
    start: date | None = None,
    end: date | None = None,
    runner: str = "dask",
    batch_size: int | None = None,
    workers: int = 2,
    threads_per_worker: int = 4,
    thread_slots: int = 8,
    dask_address: str | None = None,
    staging_dir: str | None = None,
    mode: str = "incremental",
    window: str | None = None,
    revision_window: str = "2y",
    reset_state: bool = False,
    vintages: bool = False,
    realtime_start: date | None = None,
    realtime_end: date | None = None,
    resume: str | None = None,
    force: bool = False,
    settings: dict[str, Any] | None = None,
    api_key: SecretStr | None = None,
) -> dict[str, Any]:
    """Ingest a catalog into DuckDB: plan → ``fetch-batch.map`` on threads or Dask → one-transaction merge.

    ``mode`` is ``incremental`` by default (only series changed since the last
    run; the first run loads everything), ``full`` or ``backfill`` (``window``
    × series batches); ``resume`` finishes an unfinished run by id.
    ``settings`` holds :class:`~fredflow.settings.Settings` fields (rate,
    concurrency, api_url, …); the api key comes from ``api_key`` (a secret,
    shown masked by Prefect) or the ``FRED_API_KEY`` environment variable of
    the process running the flow. Returns the run summary as a dict.
    """
    runner_options = {"workers": workers, "threads_per_worker": threads_per_worker, "thread_slots": thread_slots,
                      "dask_address": dask_address}
    request = _request_from_parameters(
        db, series, series_file, release, category, runner, settings, api_key, runner_options,
        start=start, end=end, batch_size=batch_size, staging_dir=staging_dir, mode=mode, window=window,
        revision_window=revision_window, reset_state=reset_state, vintages=vintages,
        realtime_start=realtime_start, realtime_end=realtime_end, resume=resume, force=force,
    )
    slots = _slots(runner, workers, threads_per_worker, thread_slots)
    task_runner = task_runner_for(runner, slots=slots, workers=workers, threads_per_worker=threads_per_worker,
                                  dask_address=dask_address)
    summary = run_pipeline(
        request.db,
        lambda: plan_task(request, slots),
        lambda plan, progress: _fan_out(plan, progress, task_runner=task_runner, slots=slots,
                                        quota_host=reachable_host(dask_address)),
        _current_progress(),
        merge=merge_task,
    )
    get_run_logger().info("run %s %s: %d series, %d rows, %d failed", summary.run_id, summary.status,
                          summary.n_series, summary.n_rows, summary.n_failed)
    return summary.to_dict()


@flow(name="fredflow-backfill", flow_run_name="backfill-{start}-{end}", log_prints=False)
def backfill_flow(
    db: str,
    start: date,
    end: date | None = None,
    series: list[str] | None = None,
    series_file: str | None = None,
    release: int | None = None,
    category: int | None = None,
    window: str = "10y",
    window_years: int | None = None,
    runner: str = "dask",
    batch_size: int | None = None,
    workers: int = 2,
    threads_per_worker: int = 4,
    dask_address: str | None = None,
    staging_dir: str | None = None,
    vintages: bool = False,
    realtime_start: date | None = None,
    realtime_end: date | None = None,
    settings: dict[str, Any] | None = None,
    api_key: SecretStr | None = None,
) -> dict[str, Any]:
    """Backfill ``[start, end]``: every ``window`` × every series batch is one mapped task, all fanned out
    together and merged in ONE transaction; a crash is finished with ``fredflow resume RUN_ID``.
    ``window_years`` is the older spelling of ``window`` (``10`` = ``"10y"``), kept for existing deployments."""
    if window_years is not None:
        window = f"{window_years}y"
    return ingest_flow.fn(
        db=db, series=series, series_file=series_file, release=release, category=category,
        start=start, end=end, runner=runner, batch_size=batch_size, workers=workers,
        threads_per_worker=threads_per_worker, dask_address=dask_address, staging_dir=staging_dir,
        mode="backfill", window=window, vintages=vintages, realtime_start=realtime_start,
        realtime_end=realtime_end, settings=settings, api_key=api_key,
    )


# --------------------------------------------------------------------------- the runner adapter


class PrefectRunner:
    """``--runner thread|dask``: run the ``fredflow-ingest`` flow in this process."""

    def __init__(self, name: str, *, workers: int = 2, threads_per_worker: int = 4, thread_slots: int = 8,
                 dask_address: str | None = None) -> None:
        self.name = name
        self.workers, self.threads_per_worker = workers, threads_per_worker
        self.thread_slots, self.dask_address = thread_slots, dask_address

    @property
    def slots(self) -> int:
        return _slots(self.name, self.workers, self.threads_per_worker, self.thread_slots)

    def execute(self, request: RunRequest, progress: Progress) -> RunSummary:
        token = _progress.set(progress)
        try:
            with prefect_api() as api_url:
                if self.dask_address:
                    _point_cluster_at_api(self.dask_address, api_url)
                catalog = request.catalog
                result = ingest_flow(
                    db=str(request.db), series=list(catalog.series) if catalog and catalog.series else None,
                    series_file=str(catalog.series_file) if catalog and catalog.series_file else None,
                    release=catalog.release if catalog else None, category=catalog.category if catalog else None,
                    start=request.start, end=request.end, runner=self.name, batch_size=request.batch_size,
                    workers=self.workers, threads_per_worker=self.threads_per_worker,
                    thread_slots=self.thread_slots, dask_address=self.dask_address,
                    staging_dir=str(request.staging_root) if request.staging_root else None, mode=request.mode,
                    window=request.window, revision_window=request.revision_window,
                    reset_state=request.reset_state, vintages=request.vintages,
                    realtime_start=request.realtime_start, realtime_end=request.realtime_end,
                    resume=request.resume, force=request.force,
                    settings=request.settings.public_dict(), api_key=request.settings.api_key,
                )
        finally:
            _progress.reset(token)
        return RunSummary(**result)


def make_prefect_runner(name: str, **options: Any) -> PrefectRunner:
    return PrefectRunner(name, **{k: v for k, v in options.items() if v is not None})
