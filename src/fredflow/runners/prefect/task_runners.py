"""The task runners of ``--runner thread|dask``: their shape (slots, per-task overhead) and construction.

``thread`` is Prefect's ``ThreadPoolTaskRunner``; ``dask`` is prefect-dask's ``DaskTaskRunner`` over a
``LocalCluster`` with worker *processes*, or over an existing cluster (``dask_address``).
"""

from __future__ import annotations

from dataclasses import dataclass

from ...errors import UsageError
from ...options import RunOptions

#: Seconds one mapped task costs beyond its work (measured on this project's 2-core machine):
#: it sizes batches (:func:`fredflow.run.batches.auto_batch_size`).
TASK_OVERHEAD_SECONDS = {"thread": 0.025, "dask": 0.065}


@dataclass(frozen=True, slots=True)
class RunnerShape:
    """How a Prefect runner runs batches: its name, LocalCluster shape or cluster address, and slots."""

    name: str
    workers: int = 2
    threads_per_worker: int = 4
    thread_slots: int = 8
    dask_address: str | None = None

    @property
    def slots(self) -> int:
        """Batches that run at once."""
        return self.thread_slots if self.name == "thread" else self.workers * self.threads_per_worker

    @property
    def task_overhead(self) -> float:
        return TASK_OVERHEAD_SECONDS[self.name]


def runner_shape(options: RunOptions) -> RunnerShape:
    return RunnerShape(str(options.runner), **options.runner_options())


def task_runner_for(shape: RunnerShape):  # noqa: ANN201 - a Prefect TaskRunner
    if shape.name == "thread":
        from prefect.task_runners import ThreadPoolTaskRunner

        return ThreadPoolTaskRunner(max_workers=shape.slots)
    if shape.name == "dask":
        from prefect_dask import DaskTaskRunner

        if shape.dask_address:
            return DaskTaskRunner(address=shape.dask_address)
        return DaskTaskRunner(
            cluster_class="distributed.LocalCluster",
            cluster_kwargs={"n_workers": shape.workers, "threads_per_worker": shape.threads_per_worker,
                            "processes": True, "dashboard_address": None},
        )
    raise UsageError(f"runner {shape.name!r} is not a Prefect runner (thread or dask)")
