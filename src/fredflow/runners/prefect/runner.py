"""``--runner thread|dask``: the ``fredflow-ingest`` flow run in this process, reporting to a Prefect API
every task can reach (:mod:`~fredflow.runners.prefect.api_server`)."""

from __future__ import annotations

from ...options import RunOptions
from ...progress import Progress
from ...redact import install_log_redaction
from ...run.execute import RunSummary
from ...settings import Settings
from .api_server import point_cluster_at_api, prefect_api
from .flows import ingest_flow, progress_var
from .task_runners import RunnerShape, TASK_OVERHEAD_SECONDS


class PrefectRunner:
    """The Prefect flow as a runner: ``execute`` calls ``ingest_flow`` in this process."""

    def __init__(self, name: str, *, workers: int | None = None, threads_per_worker: int | None = None,
                 thread_slots: int | None = None, dask_address: str | None = None) -> None:
        given = {k: v for k, v in dict(workers=workers, threads_per_worker=threads_per_worker,
                                       thread_slots=thread_slots, dask_address=dask_address).items() if v is not None}
        self.shape = RunnerShape(name, **given)
        self.name = name

    @property
    def slots(self) -> int:
        return self.shape.slots

    @property
    def task_overhead(self) -> float:
        return TASK_OVERHEAD_SECONDS[self.name]

    def execute(self, options: RunOptions, settings: Settings, progress: Progress) -> RunSummary:
        token = progress_var.set(progress)
        install_log_redaction()  # Prefect's console and API log handlers, now that Prefect has set them up
        try:
            with prefect_api() as api_url:
                if self.shape.dask_address:
                    _preflight(self.shape.dask_address, api_url, options, settings)
                    point_cluster_at_api(self.shape.dask_address, api_url)
                result = ingest_flow(options=options, settings=settings.public_dict(), api_key=settings.api_key)
        finally:
            progress_var.reset(token)
        return RunSummary(**result)


def _preflight(dask_address: str, api_url: str, options: RunOptions, settings: Settings) -> None:
    """Versions and reachability of an existing cluster, before planning (see :mod:`.preflight`)."""
    from ...settings import staging_root_for
    from .handback import uses_handback
    from .preflight import check_run

    root = staging_root_for(options.db, options.staging_dir)
    check_run(dask_address, api_url=api_url, settings=settings, staging_root=root,
              handback=uses_handback(options.handback, dask_address, root))
