"""The ``fredflow-ingest`` and ``fredflow-backfill`` flows: the run skeleton with each stage a Prefect task::

    plan-run (flow process)  →  fetch-batch.map(batches)  (async, on the task runner)  →  merge-run (flow process)

* The flows take the typed :class:`~fredflow.options.RunOptions` (a form in the Prefect UI), the
  public :class:`~fredflow.settings.Settings` fields to override (``settings``), and the api key as
  a secret parameter (or ``FRED_API_KEY`` in the environment of the process running the flow).
* The mapped task creates its aiohttp session and limiter inside itself: every Dask task runs
  on its own event loop, and neither can cross loops or processes. It returns a small
  :class:`~fredflow.staging.BatchManifest`, never rows.
* The flow picks its task runner from ``options.runner`` (so one deployment can be pointed at
  threads or Dask).

No ``from __future__ import annotations`` here: ``flow.serve`` pickles the flow function by value
and Prefect resolves its annotations in another process, where postponed names cannot be found.
"""

import contextlib
import contextvars
import dataclasses
import logging
import math
from typing import Any

from prefect import flow, get_run_logger, task, unmapped
from prefect.cache_policies import NO_CACHE
from prefect.context import FlowRunContext
from prefect.futures import as_completed
from pydantic import SecretStr

from ...destinations.duckdb import DuckDBDestination
from ...errors import FatalRunError
from ...fetch import FetchContext, RunJob, fetch_batch
from ...options import Mode, RunOptions
from ...progress import Progress
from ...ratelimit.service import reachable_host
from ...run.batches import Batch
from ...run.execute import RunSummary, finish_run, run_pipeline
from ...run.plan import RunPlan, plan_run
from ...settings import Settings
from ...staging import BatchManifest
from ...testing.failpoints import fail_once
from .handback import HandedBack, fetch_handed_back, land, uses_handback
from .reachability import token_service_for
from .task_runners import runner_shape, task_runner_for

log = logging.getLogger("fredflow")

# Set by PrefectRunner.execute for a flow called in-process (the CLI's progress bar);
# a flow started by a deployment reports through Prefect's run logger instead.
progress_var: contextvars.ContextVar[Progress | None] = contextvars.ContextVar("fredflow_progress", default=None)


# --------------------------------------------------------------------------- tasks


@dataclasses.dataclass(frozen=True, slots=True)
class FatalBatch:
    """A batch stopped by a fatal error (api key refused, staging unwritable), handed back as a value.

    Raised inside the task, Prefect would retry it: a retry condition cannot tell, because an async
    task's failed state only yields its exception through a coroutine. Returned, the flow raises
    it at once (:func:`_fan_out`) and the run stops; task retries stay for batches that failed as
    a whole by accident.
    """

    batch_index: int
    error: FatalRunError


@task(name="plan-run", cache_policy=NO_CACHE)
def plan_task(options: RunOptions, settings: Settings, slots: int, task_overhead: float) -> RunPlan:
    return plan_run(options, settings, slots=slots, task_overhead=task_overhead)


@task(name="fetch-batch", task_run_name="batch-{batch.index}", cache_policy=NO_CACHE,
      retries=2, retry_delay_seconds=2, retry_jitter_factor=0.5)
async def fetch_batch_task(batch: Batch, job: RunJob, concurrency: int) -> BatchManifest | HandedBack | FatalBatch:
    """One batch on the worker's own event loop, with its own session; its requests are paced by
    send times leased from the run's TokenService (``job.quota_url``), so the rate holds run-wide."""
    fail_once("fetch-batch-task")
    ctx = FetchContext.for_task(job.settings, job.quota_url, concurrency=concurrency)
    try:
        if job.handback:
            return await fetch_handed_back(batch, job, ctx)
        return await fetch_batch(batch, job.staging(), ctx)
    except FatalRunError as exc:
        return FatalBatch(batch.index, exc)
    finally:
        await ctx.aclose()


@task(name="merge-run", cache_policy=NO_CACHE)
def merge_task(plan: RunPlan, manifests: list[BatchManifest]) -> RunSummary:
    """All staged files of the run, in ONE DuckDB transaction, in the flow's process."""
    return finish_run(plan, manifests)


# --------------------------------------------------------------------------- fan-out


def _current_progress() -> Progress:
    # A function, not an inline ``progress_var.get()`` in the flow: Dask pickles the flow
    # function by value with the globals it names, and a ContextVar cannot be pickled.
    return progress_var.get() or _RunLoggerProgress()


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


def _fan_out(plan: RunPlan, progress: Progress, *, task_runner, slots: int, quota_host: str,
             handback: bool = False) -> list[BatchManifest]:
    """``fetch_batch_task.map(batches)`` on ``task_runner``; manifests in batch order.

    One :class:`~fredflow.ratelimit.service.TokenService` in this process paces every task
    (the run's rate holds across threads, processes and machines); the run's
    concurrency is split over the ``slots`` tasks that run at once.
    """
    settings = plan.settings
    concurrency = max(1, math.ceil(settings.concurrency / slots))
    flow_context = FlowRunContext.get()
    manifests: list[BatchManifest] = []
    with token_service_for(settings.rate, settings.burst, quota_host, settings.quota_address) as quota, \
            task_runner as active, flow_context.model_copy(update={"task_runner": active}):
        job = dataclasses.replace(plan.job, quota_url=quota.url, handback=handback)
        futures = fetch_batch_task.map(plan.batches(), job=unmapped(job), concurrency=unmapped(concurrency))
        try:
            for future in as_completed(futures):
                manifest = future.result()
                if isinstance(manifest, FatalBatch):
                    raise manifest.error
                manifest = land(plan.staging, manifest)  # handed-back bytes into the run folder, manifest last
                manifests.append(manifest)
                progress.batch_done(manifest)
        except BaseException:
            for future in futures:
                with contextlib.suppress(Exception):
                    future.cancel()
            raise
    return sorted(manifests, key=lambda m: m.batch_index)


# --------------------------------------------------------------------------- flows


def _settings(overrides: dict[str, Any] | None, api_key: SecretStr | None) -> Settings:
    """Settings from the environment, then ``overrides`` field by field; the key only from ``api_key``
    (a secret parameter) or ``FRED_API_KEY``, never from the plain ``settings`` dict."""
    values = dict(overrides or {})
    values.pop("api_key", None)
    if api_key is not None and api_key.get_secret_value() not in ("", "**********"):
        values["api_key"] = api_key.get_secret_value()
    return Settings.from_env(**values)


@flow(name="fredflow-ingest", flow_run_name="ingest-{options.mode}-{options.runner}", log_prints=False)
def ingest_flow(options: RunOptions, settings: dict[str, Any] | None = None,
                api_key: SecretStr | None = None) -> dict[str, Any]:
    """Ingest a catalog into DuckDB: plan → ``fetch-batch.map`` on threads or Dask → one-transaction merge.

    ``options``: what to fetch and how to run it (mode, catalog, dates, runner shape;
    ``resume`` finishes an unfinished run by id). ``settings``: :class:`~fredflow.settings.Settings`
    fields to override (rate, concurrency, api_url, …). The api key comes from ``api_key`` (a
    secret, shown masked by Prefect) or the ``FRED_API_KEY`` environment variable of the process
    running the flow. Returns the run summary as a dict.
    """
    run_settings = _settings(settings, api_key)
    shape = runner_shape(options)
    task_runner = task_runner_for(shape)
    summary = run_pipeline(
        DuckDBDestination(options.db).lock(),
        lambda: plan_task(options, run_settings, shape.slots, shape.task_overhead),
        lambda plan, progress: _fan_out(plan, progress, task_runner=task_runner, slots=shape.slots,
                                        quota_host=reachable_host(shape.dask_address),
                                        handback=uses_handback(options.handback, shape.dask_address,
                                                               plan.staging_root)),
        _current_progress(),
        merge=merge_task,
    )
    get_run_logger().info("run %s %s: %d series, %d rows, %d failed", summary.run_id, summary.status,
                          summary.n_series, summary.n_rows, summary.n_failed)
    return summary.to_dict()


@flow(name="fredflow-backfill", flow_run_name="backfill-{options.start}-{options.end}", log_prints=False)
def backfill_flow(options: RunOptions, settings: dict[str, Any] | None = None,
                  api_key: SecretStr | None = None) -> dict[str, Any]:
    """Backfill ``[options.start, options.end]``: every window × every series batch is one mapped task, all
    fanned out together and merged in ONE transaction; a crash is finished with ``fredflow resume RUN_ID``."""
    as_backfill = RunOptions.build(**{**options.model_dump(), "mode": Mode.BACKFILL})
    return ingest_flow.fn(options=as_backfill, settings=settings, api_key=api_key)
