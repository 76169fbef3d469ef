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
from prefect.context import FlowRunContext, TaskRunContext
from prefect.futures import as_completed
from pydantic import SecretStr

from ...destinations.duckdb import DuckDBDestination
from ...errors import FatalRunError, FredflowError, UsageError
from ...fetch import FetchContext, RunJob, fetch_batch
from ...options import Mode, RunOptions
from ...progress import Progress
from ...ratelimit.budget import schedule_for
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


@dataclasses.dataclass(frozen=True, slots=True)
class Handoff:
    """A run the CLI already planned, and is already fetching in-process (a
    :class:`~fredflow.runners.prefect.headstart.HeadStart`) under the run lock, paced by the
    TokenService at ``quota_url``: the flow takes the batches left from it and merges."""

    plan: RunPlan
    head: Any  # HeadStart (not imported here: this module is pickled by value for Dask)
    quota_url: str
    cluster: Any = None  # a Future of the address of the LocalCluster the runner started meanwhile (--runner dask)


#: Set by PrefectRunner.execute around the in-process flow call (the CLI's path); None in deployment runs.
handoff_var: contextvars.ContextVar[Handoff | None] = contextvars.ContextVar("fredflow_handoff", default=None)


def _current_handoff() -> Handoff | None:
    return handoff_var.get()  # a function: a ContextVar cannot be pickled (see _current_progress)


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


BATCH_RETRIES = 2


def _where() -> str:
    """Where this task runs: the Dask worker's name and address, or the thread's name."""
    try:
        from distributed import get_worker

        worker = get_worker()
        return f"dask worker {worker.name} ({worker.address})"
    except (ImportError, ValueError):
        import threading

        return f"thread {threading.current_thread().name}"


def _log_retry(task, task_run, state) -> bool:  # noqa: ANN001 - Prefect's retry_condition_fn signature
    """Every retry of a batch gets a log line saying why (Prefect's own is INFO, and says only 'Retry 1/2')."""
    with contextlib.suppress(Exception):
        get_run_logger().warning("%s attempt %d of %d failed, Prefect retries it: %s", task_run.name,
                                 task_run.run_count, BATCH_RETRIES + 1, state.message)
    return True


@task(name="fetch-batch", task_run_name="batch-{batch.index}", cache_policy=NO_CACHE,
      retries=BATCH_RETRIES, retry_delay_seconds=2, retry_jitter_factor=0.5, retry_condition_fn=_log_retry)
async def fetch_batch_task(batch: Batch, job: RunJob, concurrency: int) -> BatchManifest | HandedBack | FatalBatch:
    """One batch on the worker's own event loop, with its own session; its requests are paced by
    send times leased from the run's TokenService (``job.quota_url``), so the rate holds run-wide."""
    logger = get_run_logger()
    run_count = TaskRunContext.get().task_run.run_count if TaskRunContext.get() else 1
    logger.info("batch %d: %d series on %s%s", batch.index, len(batch.series_ids), _where(),
                f" (attempt {run_count} of {BATCH_RETRIES + 1})" if run_count > 1 else "")
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
             handback: bool = False, handoff: Handoff | None = None) -> list[BatchManifest]:
    """``fetch_batch_task.map(batches)`` on ``task_runner``; manifests in batch order.

    One :class:`~fredflow.ratelimit.service.TokenService` in this process paces every task
    (the run's rate holds across threads, processes and machines); the run's
    concurrency is split over the ``slots`` tasks that run at once. With ``handoff``, the
    TokenService is the head start's, and the batches are the ones it had not taken when the
    task runner was ready (a Dask cluster starts while the head start sends).
    """
    settings = plan.settings
    concurrency = max(1, math.ceil(settings.concurrency / slots))
    flow_context = FlowRunContext.get()
    manifests: list[BatchManifest] = []
    quota_service = contextlib.nullcontext(None) if handoff else \
        token_service_for(settings.rate, settings.burst, quota_host, settings.quota_address,
                          schedule=schedule_for(settings))
    with quota_service as quota, task_runner as active, flow_context.model_copy(update={"task_runner": active}):
        if handoff is not None:
            if type(active).__name__ == "DaskTaskRunner":
                active.client  # noqa: B018 - a DaskTaskRunner connects lazily: now, while the head start sends
            batches = handoff.head.hand_over()  # raises the head start's fatal error
            get_run_logger().info("%d batches fetched in the flow's process while Prefect started, %d more kept "
                                  "there while the first task runs start; %d left for the task runner",
                                  len(handoff.head.manifests), len(handoff.head.kept), len(batches))
            quota_url = handoff.quota_url
        else:
            batches, quota_url = list(plan.batches()), quota.url
        job = dataclasses.replace(plan.job, quota_url=quota_url, handback=handback)
        futures = fetch_batch_task.map(batches, job=unmapped(job), concurrency=unmapped(concurrency)) if batches else []
        try:
            for future in as_completed(futures):
                manifest = future.result()
                if isinstance(manifest, FatalBatch):
                    raise manifest.error
                manifest = land(plan.staging, manifest)  # handed-back bytes into the run folder, manifest last
                manifests.append(manifest)
                progress.batch_done(manifest)
            if handoff is not None:
                head_manifests = handoff.head.join()  # every batch of the head start (in flight at the hand-over too)
                manifests.extend(head_manifests)
                get_run_logger().info("%d batches taken by the head start in the flow's process, %d by task runs",
                                      len(head_manifests), len(futures))
        except BaseException:
            for future in futures:
                with contextlib.suppress(Exception):
                    future.cancel()
            raise
    return sorted(manifests, key=lambda m: m.batch_index)


# --------------------------------------------------------------------------- flows

MASKED = "**********"


def _deployment_defaults(name: str) -> dict[str, Any]:
    """The deployment's own value of the dict parameter ``name`` ({} outside a deployment run).

    Prefect merges a run's parameters with its deployment's at the top level only: a run given
    ``settings: {api_url: …}`` would lose the deployment's ``rate``. The flow merges them again,
    field by field.
    """
    with contextlib.suppress(Exception):
        from prefect.runtime import deployment

        if deployment.id:
            value = (deployment.parameters or {}).get(name)
            return dict(value) if isinstance(value, dict) else {}
    return {}


def _api_key(api_key: SecretStr | None, api_key_secret: str | None) -> tuple[str | None, str]:
    """The key and where it came from: the ``api_key`` parameter, the Prefect ``Secret`` block named by
    ``api_key_secret``, else None (``FRED_API_KEY`` in the environment of the process running the flow)."""
    if api_key is not None and api_key.get_secret_value() not in ("", MASKED):
        _mask_stored_key()
        return api_key.get_secret_value(), "the api_key parameter"
    if api_key_secret:
        from prefect.blocks.system import Secret

        try:
            value = Secret.load(api_key_secret).get()
        except ValueError as exc:
            raise UsageError(f"api_key_secret {api_key_secret!r}: no Prefect Secret block of that name "
                             f"(create it: Secret(value=...).save({api_key_secret!r})): {exc}") from None
        return str(value), f"the Prefect Secret block {api_key_secret!r}"
    return None, "FRED_API_KEY in the environment"


def _mask_stored_key() -> None:
    """A key given as a plain run parameter (``prefect deployment run --param api_key=…``) is stored by
    Prefect as sent; replace it with the mask in the flow run's stored parameters before anything else."""
    context = FlowRunContext.get()
    if context is None or context.flow_run is None:
        return
    stored = dict(context.flow_run.parameters or {})
    if stored.get("api_key") in (None, MASKED) or not isinstance(stored.get("api_key"), str):
        return
    from prefect.client.orchestration import get_client

    stored["api_key"] = MASKED
    with contextlib.suppress(Exception), get_client(sync_client=True) as client:
        client.update_flow_run(context.flow_run.id, parameters=stored)


def _settings(overrides: dict[str, Any] | None, api_key: SecretStr | None,
              api_key_secret: str | None = None) -> Settings:
    """Settings from the environment, then the deployment's ``settings``, then the run's, field by field;
    the key only from ``api_key`` (a secret parameter), a Secret block or ``FRED_API_KEY``, never from
    the plain ``settings`` dict."""
    values = {**_deployment_defaults("settings"), **(overrides or {})}
    values.pop("api_key", None)
    key, source = _api_key(api_key, api_key_secret)
    if key is not None:
        values["api_key"] = key
    with contextlib.suppress(Exception):
        get_run_logger().info("api key from %s", source)
    try:
        return Settings.from_env(**values)
    except ValueError as exc:  # pydantic: name the parameter
        first = exc.errors()[0] if hasattr(exc, "errors") else None
        where = "settings." + ".".join(str(p) for p in first["loc"]) if first else "settings"
        raise UsageError(f"{where}: {first['msg'] if first else exc}") from None


def _options_of(parameters: dict[str, Any]) -> RunOptions | None:
    options = parameters.get("options")
    if isinstance(options, dict):
        with contextlib.suppress(Exception):
            options = RunOptions.build(**options)
    return options if isinstance(options, RunOptions) else None


def _flow_run_name(default_mode: str | None = None) -> str:
    """``fred.duckdb · release 10 · incremental``: database, catalog and mode of the run."""
    from prefect.runtime import flow_run

    from .report import catalog_label

    options = _options_of(flow_run.parameters or {})
    if options is None:
        return f"fredflow {default_mode or 'run'}"
    mode = default_mode or str(options.mode)
    return f"{options.db.name} · {catalog_label(options)} · {mode}"


def _ingest_name() -> str:
    return _flow_run_name()


def _backfill_name() -> str:
    return _flow_run_name("backfill")


def _cluster_address(handoff: Handoff) -> str:
    """The address of the LocalCluster the CLI's runner started, waited for at most
    ``FREDFLOW_CLUSTER_START_TIMEOUT`` s: a wedged cluster process (a worker that never answers its warm-up)
    fails the run with one line instead of hanging it."""
    import concurrent.futures

    from .cluster import start_timeout

    timeout = start_timeout()
    try:
        return handoff.cluster.result(timeout=timeout)
    except concurrent.futures.TimeoutError:
        raise FredflowError(f"the Dask LocalCluster was not ready after {timeout:g} s "
                            "(FREDFLOW_CLUSTER_START_TIMEOUT)") from None


def _run(options: RunOptions, settings: dict[str, Any] | None, api_key: SecretStr | None,
         api_key_secret: str | None):  # noqa: ANN202 - a Prefect State
    """The flows' body: run the pipeline; report it as artifacts; end in Completed, ``Partial`` or Failed."""
    from prefect import tags
    from prefect.states import Completed

    from . import report

    run_settings = _settings(settings, api_key, api_key_secret)
    shape = runner_shape(options)
    handoff = _current_handoff()
    # the CLI's LocalCluster is still starting (in its own process): its task runner is made once it is up
    task_runner = task_runner_for(shape) if handoff is None or handoff.cluster is None else None
    seen: dict[str, Any] = {"plan": None, "manifests": []}

    def make_plan() -> RunPlan:
        seen["plan"] = plan_task(options, run_settings, shape.slots, shape.task_overhead)
        return seen["plan"]

    def fan_out(plan: RunPlan, progress: Progress) -> list[BatchManifest]:
        seen["manifests"] = _fan_out(plan, progress, task_runner=task_runner, slots=shape.slots,
                                     quota_host=reachable_host(shape.dask_address),
                                     handback=uses_handback(options.handback, shape.dask_address, plan.staging_root))
        return seen["manifests"]

    # Task tags (runner:…, mode:…) for deployment runs only: a tagged task looks up tag concurrency limits
    # through a process-wide service that keeps the first API it talked to, and an in-process run
    # (`fredflow ingest --runner dask`) gets a new temporary server each time.
    deployed = bool(getattr(FlowRunContext.get().flow_run, "deployment_id", None))
    run_tags = (f"runner:{shape.name}", f"mode:{options.mode}") if deployed else ()
    try:
        with tags(*run_tags):
            if handoff is None:
                summary = run_pipeline(DuckDBDestination(options.db).lock(), make_plan, fan_out,
                                       _current_progress(), merge=merge_task)
            else:
                # planned (and fetching) by the CLI's runner, which holds the run lock and the progress display
                seen["plan"] = handoff.plan
                if task_runner is None:  # wait for the cluster; the head start sends meanwhile
                    task_runner = task_runner_for(dataclasses.replace(shape, dask_address=_cluster_address(handoff)))
                seen["manifests"] = _fan_out(handoff.plan, _current_progress(), task_runner=task_runner,
                                             slots=shape.slots, quota_host="", handoff=handoff,
                                             handback=uses_handback(options.handback, shape.dask_address,
                                                                    handoff.plan.staging_root))
                summary = merge_task(handoff.plan, seen["manifests"])
    except BaseException as exc:
        with contextlib.suppress(Exception):
            report.publish_failure(options, seen["plan"], exc)
        raise
    manifests = [*(seen["plan"].done.values() if seen["plan"] else ()), *seen["manifests"]]
    with contextlib.suppress(Exception):
        report.publish(options, summary, run_settings, shape, manifests)
    get_run_logger().info("run %s %s: %d series, %d rows, %d failed", summary.run_id, summary.status,
                          summary.n_series, summary.n_rows, summary.n_failed)
    message = report.state_message(summary)
    result = summary.to_dict()
    if summary.n_failed:
        return Completed(name="Partial", message=message, data=result)
    return Completed(message=message, data=result)


@flow(name="fredflow-ingest", flow_run_name=_ingest_name, log_prints=False)
def ingest_flow(options: RunOptions, settings: dict[str, Any] | None = None,
                api_key: SecretStr | None = None, api_key_secret: str | None = None) -> dict[str, Any]:
    """Ingest a catalog into DuckDB: plan → ``fetch-batch.map`` on threads or Dask → one-transaction merge.

    ``options``: what to fetch and how to run it (mode, catalog, dates, runner shape;
    ``resume`` finishes an unfinished run by id). ``settings``: :class:`~fredflow.settings.Settings`
    fields to override (rate, concurrency, api_url, …), merged field by field over the deployment's.
    The api key: ``api_key_secret`` names a Prefect ``Secret`` block holding it; else ``FRED_API_KEY``
    in the environment of the process running the flow (the worker's); ``api_key`` takes the key
    itself (masked in the flow run's stored parameters as soon as the run starts).
    Returns the run summary as a dict; a run with failed series ends in the state ``Partial``
    (type Completed); each run publishes a ``…-summary`` markdown and a ``…-failures`` table artifact.
    """
    return _run(options, settings, api_key, api_key_secret)


@flow(name="fredflow-backfill", flow_run_name=_backfill_name, log_prints=False)
def backfill_flow(options: RunOptions, settings: dict[str, Any] | None = None,
                  api_key: SecretStr | None = None, api_key_secret: str | None = None) -> dict[str, Any]:
    """Backfill ``[options.start, options.end]``: every window × every series batch is one mapped task, all
    fanned out together and merged in ONE transaction; a crash is finished with ``fredflow resume RUN_ID``."""
    as_backfill = RunOptions.build(**{**options.model_dump(), "mode": Mode.BACKFILL})
    return _run(as_backfill, settings, api_key, api_key_secret)
