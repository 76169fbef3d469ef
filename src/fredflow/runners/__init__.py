"""Runners: thin adapters that run the same :func:`fredflow.fetch.fetch_batch` over many batches.

Every runner executes :func:`fredflow.pipeline.run_pipeline` (plan → fan out →
merge) and supplies only the fan-out; none of them parses, stages, merges or
talks to FRED itself. ``asyncio`` imports neither Prefect nor Dask.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from ..errors import UsageError
from ..progress import Progress
from ..settings import Settings

if TYPE_CHECKING:
    from ..pipeline import RunRequest, RunSummary

RUNNER_NAMES = ("asyncio", "thread", "dask")


@dataclass(frozen=True, slots=True)
class RunJob:
    """What every batch of a run needs to know: where to stage and how to talk to FRED."""

    run_id: str
    staging_root: Path
    settings: Settings
    quota_url: str | None = None  # the run's TokenService, when batches run in other threads/processes


class Runner(Protocol):
    name: str

    @property
    def slots(self) -> int:
        """How many batches run at once (sizes batches)."""

    def execute(self, request: "RunRequest", progress: Progress) -> "RunSummary":
        """Plan, run every batch, merge; return the summary. Raise the first fatal error."""


def make_runner(name: str, **options) -> Runner:
    if name == "asyncio":
        from .asyncio_runner import AsyncioRunner

        if options:
            raise UsageError(f"runner options {sorted(options)} do not apply to the asyncio runner")
        return AsyncioRunner()
    if name in ("thread", "dask"):
        try:
            from .prefect_runner import make_prefect_runner
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise UsageError(f"--runner {name} needs prefect and prefect-dask installed ({exc})") from None
        return make_prefect_runner(name, **options)
    raise UsageError(f"unknown runner {name!r}; choose one of {', '.join(RUNNER_NAMES)}")
