"""The Python API: :func:`ingest`, :func:`backfill`, :func:`resume`, :func:`resumable_runs`.

Each builds one :class:`~fredflow.options.RunOptions` (checked: :class:`~fredflow.errors.UsageError`
for bad input) and hands it, with the :class:`~fredflow.settings.Settings`, to the runner it names.
Every runner plans with :func:`fredflow.run.plan.plan_run`, runs :func:`fredflow.fetch.fetch_batch`
per batch and merges with :func:`fredflow.run.execute.finish_run`, in one transaction.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Any

from .options import Mode, RunOptions
from .progress import NullProgress, Progress
from .run.execute import RunSummary
from .run.plan import ResumableRun, resumable_runs, stored_settings
from .runners import make_runner
from .settings import Settings
from .sources.fred.catalog import CatalogSpec


def ingest(db: str | Path, catalog: CatalogSpec | None = None, *, settings: Settings | None = None,
           progress: Progress | None = None, runner_options: dict[str, Any] | None = None,
           staging_root: str | Path | None = None, **options: Any) -> RunSummary:
    """Ingest a catalog of series into the DuckDB file ``db`` and return the run's summary.

    ``options`` are :class:`~fredflow.options.RunOptions` fields: ``mode`` (``full``,
    ``incremental``, ``backfill``), ``start``/``end``, ``window``, ``revision_window``,
    ``reset_state``, ``vintages``, ``realtime_start``/``realtime_end``, ``batch_size``,
    ``staging_dir``, ``runner`` (``asyncio``: this process, one event loop; ``thread`` or
    ``dask``: the Prefect flow ``fredflow-ingest`` fanning batches out with ``task.map``) and its
    shape (``workers``, ``threads_per_worker``, ``thread_slots``, ``dask_address``; also accepted
    as a ``runner_options`` dict), ``resume`` (finish an unfinished run instead; ``catalog`` may
    then be None) and ``force``. ``staging_root`` is the older name of ``staging_dir``.
    Works from inside a running event loop too (a notebook).
    """
    fields = {**(runner_options or {}), **options}
    if staging_root is not None:
        fields.setdefault("staging_dir", staging_root)
    run = RunOptions.build(db=db, catalog=catalog, **fields)
    return make_runner(run).execute(run, settings or Settings.from_env(), progress or NullProgress())


def backfill(db: str | Path, catalog: CatalogSpec, *, start: date, end: date | None = None, window: str | None = None,
             **options: Any) -> RunSummary:
    """``[start, end]`` × the catalog, merged in one transaction (see :func:`ingest`): one request page per
    100,000 rows of each series; with ``window`` (e.g. ``"10y"``) window × series batches instead."""
    return ingest(db, catalog, start=start, end=end, window=window, mode=Mode.BACKFILL, **options)


def resume(db: str | Path, run_id: str, *, settings: Settings | None = None, staging_root: str | Path | None = None,
           force: bool = False, **options: Any) -> RunSummary:
    """Finish run ``run_id``: fetch only the batches it has not staged, check the staged ones, merge.

    Without ``settings`` the run's own (api url, rate, …; stored without the key)
    are used, with the key from ``FRED_API_KEY``.
    """
    if settings is None:
        settings = Settings.from_env(**stored_settings(db, run_id, staging_root))
    return ingest(db, None, resume=run_id, settings=settings, staging_root=staging_root, force=force, **options)


__all__ = ["ResumableRun", "backfill", "ingest", "resumable_runs", "resume"]
