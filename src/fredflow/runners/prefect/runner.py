"""``--runner thread|dask``: the ``fredflow-ingest`` flow run in this process, reporting to a Prefect API
every task can reach (:mod:`~fredflow.runners.prefect.api_server`).

The fixed cost of a run is kept small by doing the slow parts at once: the temporary Prefect server is
launched before Prefect is imported here (:func:`~fredflow.runners.make_runner`), the run is planned
while it boots, and its first batches are fetched in this process (:mod:`~fredflow.runners.prefect.headstart`)
until the flow's task runner (Prefect's thread pool, or a Dask cluster, started meanwhile) takes the rest.
One :class:`~fredflow.ratelimit.service.TokenService` paces both, so the run's rate holds throughout.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
from typing import Iterator

from ...destinations.duckdb import DuckDBDestination
from ...options import RunOptions
from ...progress import Progress
from ...ratelimit.budget import schedule_for
from ...redact import install_log_redaction
from ...run.execute import RunSummary, run_pipeline
from ...run.plan import RunPlan, plan_run
from ...settings import Settings
from ...staging import BatchManifest
from .ephemeral import EphemeralServer
from .headstart import HeadStart
from .cluster import ClusterProcess
from .reachability import token_service_for
from .task_runners import RunnerShape, TASK_OVERHEAD_SECONDS

# Prefect itself (flows, api_server) is imported by _flow, once the head start is sending: ~3 s of imports


class PrefectRunner:
    """The Prefect flow as a runner: ``execute`` plans, starts sending, and calls ``ingest_flow`` in this process."""

    def __init__(self, name: str, *, workers: int | None = None, threads_per_worker: int | None = None,
                 thread_slots: int | None = None, dask_address: str | None = None,
                 server: EphemeralServer | None = None) -> None:
        given = {k: v for k, v in dict(workers=workers, threads_per_worker=threads_per_worker,
                                       thread_slots=thread_slots, dask_address=dask_address).items() if v is not None}
        self.shape = RunnerShape(name, **given)
        self.name = name
        self._server = server  # launched early by make_runner; stopped by the run that uses it

    @property
    def slots(self) -> int:
        return self.shape.slots

    @property
    def task_overhead(self) -> float:
        return TASK_OVERHEAD_SECONDS[self.name]

    def execute(self, options: RunOptions, settings: Settings, progress: Progress) -> RunSummary:
        server, self._server = self._server, None
        with contextlib.ExitStack() as owned:
            if server is not None:  # launched early by make_runner: stopped when the run ends, on every path
                owned.callback(server.stop)
            if self.shape.dask_address or not options.head_start:
                return self._plain(options, settings, progress, server)
            flow_result: dict = {}

            def fan_out(plan: RunPlan, progress: Progress) -> list[BatchManifest]:
                flow_result.update(self._flow(plan, progress, options, settings, server))
                return []

            # planned here while the server boots; the flow fans out the batches and merges (one transaction)
            return run_pipeline(DuckDBDestination(options.db).lock(),
                                lambda: plan_run(options, settings, slots=self.slots, task_overhead=self.task_overhead),
                                fan_out, progress, merge=lambda plan, manifests: RunSummary(**flow_result))

    def _plain(self, options: RunOptions, settings: Settings, progress: Progress,
               server: EphemeralServer | None) -> RunSummary:
        """The flow plans, fans out and merges; every batch is a task run. ``--dask-address`` always takes this
        path, the preflight first (versions, reachability: before any FRED request): the cluster is up
        already, and batches fetched in this process would bypass the staging the workers use."""
        from .api_server import point_cluster_at_api, prefect_api
        from .flows import ingest_flow

        with _flow_context(progress), prefect_api(server) as api_url:
            if self.shape.dask_address:
                _preflight(self.shape.dask_address, api_url, options, settings)
                point_cluster_at_api(self.shape.dask_address, api_url)
            result = ingest_flow(options=options, settings=settings.public_dict(), api_key=settings.api_key)
        return RunSummary(**result)

    def _flow(self, plan: RunPlan, progress: Progress, options: RunOptions, settings: Settings,
              server: EphemeralServer | None) -> dict:
        with token_service_for(settings.rate, settings.burst, "127.0.0.1", settings.quota_address,
                               schedule=schedule_for(settings)) as quota, \
                _local_cluster(self.shape) as cluster:
            head = HeadStart(plan, progress, quota.url).start()
            try:
                from .api_server import prefect_api
                from .flows import Handoff, handoff_var, ingest_flow

                handoff = handoff_var.set(Handoff(plan=plan, head=head, quota_url=quota.url, cluster=cluster))
                try:
                    with _flow_context(progress), prefect_api(server):
                        return ingest_flow(options=options, settings=settings.public_dict(), api_key=settings.api_key)
                finally:
                    handoff_var.reset(handoff)
            except BaseException:
                head.abort()
                raise


@contextlib.contextmanager
def _flow_context(progress: Progress) -> Iterator[None]:
    """What the flow run in this process needs around it: the run's progress display, and the key redacted
    from Prefect's console and API log handlers (set up by the Prefect import that precedes this)."""
    from .flows import progress_var

    token = progress_var.set(progress)
    install_log_redaction()
    try:
        yield
    finally:
        progress_var.reset(token)


def _preflight(dask_address: str, api_url: str, options: RunOptions, settings: Settings) -> None:
    """Versions and reachability of an existing cluster, before planning (see :mod:`.preflight`)."""
    from ...settings import staging_root_for
    from .handback import uses_handback
    from .preflight import check_run

    root = staging_root_for(options.db, options.staging_dir)
    check_run(dask_address, api_url=api_url, settings=settings, staging_root=root,
              handback=uses_handback(options.handback, dask_address, root))


@contextlib.contextmanager
def _local_cluster(shape: RunnerShape) -> Iterator[concurrent.futures.Future | None]:
    """``--runner dask`` without ``--dask-address``: a future of the address of its LocalCluster, a process
    started now (:mod:`~fredflow.runners.prefect.cluster`), stopped after the run, workers included."""
    if shape.name != "dask" or shape.dask_address:
        yield None
        return
    cluster = ClusterProcess(shape.workers, shape.threads_per_worker)
    try:
        yield cluster.address
    finally:
        cluster.stop()
