"""The Prefect API a run reports to, reachable from every process that runs its tasks.

With ``PREFECT_API_URL`` set, runs go to that server. Without it, :func:`prefect_api` starts a
temporary local server for the run (a subprocess, :mod:`~fredflow.runners.prefect.ephemeral`) and puts
its URL in the settings context, which prefect-dask ships with every task, so Dask worker processes
report to it instead of trying (and failing) to start their own. Long-lived workers of an existing
cluster also get :class:`PrefectApiPlugin`, which resets their cached event and log shippers
whenever the server changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from typing import Iterator

from prefect.settings import PREFECT_API_URL, temporary_settings

from .ephemeral import EphemeralServer, startup_timeout, watch_parent  # noqa: F401 - watch_parent: re-exported

@contextlib.contextmanager
def prefect_api(server: EphemeralServer | None = None) -> Iterator[str]:
    """Yield a Prefect API URL that other processes (Dask workers) can reach.

    ``PREFECT_API_URL`` set (environment or profile): use it (and stop ``server`` at once if one was
    launched early: it is not needed). Otherwise use ``server``, a temporary local server launched early
    by :func:`~fredflow.runners.make_runner` and stopped by its owner (the runner's ``execute``), or
    launch one now and stop it after the block; wait until it answers. Its database is fredflow's own
    file under ``PREFECT_HOME`` (``fredflow-runs.db``): kept between runs, so start-up skips the
    migrations and the history stays.
    """
    url = PREFECT_API_URL.value()
    if url:
        if server is not None:
            server.stop()
        yield url
        return
    with contextlib.ExitStack() as owned:
        if server is None:
            server = EphemeralServer().launch()
            owned.callback(server.stop)
        server.wait_ready(startup_timeout())
        with temporary_settings({PREFECT_API_URL: server.api_url}):
            try:
                yield server.api_url
            finally:  # a failed or interrupted run too: nothing left to ship to a server that is gone
                _flush_prefect_services()


def _flush_prefect_services() -> None:
    """Ship queued logs and events before a temporary server goes away."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for service in (APILogWorker, EventsWorker):
        with contextlib.suppress(Exception):
            service.drain_all(timeout=5)


def point_cluster_at_api(address: str, api_url: str) -> None:
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
