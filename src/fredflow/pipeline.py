"""The Python API under the CLI: :func:`ingest` runs catalog → batches → fetch/stage → merge.

Reading top to bottom is the path the data takes::

    resolve catalog (ids)  →  iter_batches (generator)  →  runner runs fetch_batch per batch
        (aiohttp + limiter → parse → staged Parquet + manifest)  →  merge_run (one DuckDB transaction)

Guarantees: nothing of a run is visible in DuckDB before the merge commits; a
fatal error (api key refused, unknown release) commits nothing and removes the
run's staging folder; a crash leaves DuckDB exactly as it was.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import math
import secrets
import time
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any, Awaitable, Callable, Iterator, TypeVar

import pyarrow as pa

from .batches import Batch, auto_batch_size, date_or_none, iso_or_none, iter_batches, parse_span, windows
from .catalog import Catalog, CatalogSpec, resolve, with_metadata
from .changes import Selection, current_watermark, select_changed
from .checkpoints import checkpoint
from .errors import BadApiKey, FatalRunError, UsageError
from .fred import FredClient, RequestStats, new_session
from .limiter import AdaptiveLimiter
from .progress import NullProgress, Progress
from .settings import Settings, staging_root_for
from .stage import BatchManifest, RunStaging
from .runners import RunJob, make_runner
from .store import (RunRecord, SeriesState, StateUpdate, committed_run_ids, merge_run, newest_run_start, read_state,
                    run_lock)

log = logging.getLogger("fredflow")
T = TypeVar("T")

EXIT_OK, EXIT_FATAL, EXIT_USAGE, EXIT_PARTIAL = 0, 1, 2, 3


@dataclass(slots=True)
class RunSummary:
    """What a run did; ``exit_code`` is the CLI's: 0 all ingested, 3 some series failed."""

    run_id: str
    status: str
    n_series: int
    n_failed: int
    n_rows: int
    seconds: float
    requests: int
    retries: int
    failed: list[str] = field(default_factory=list)
    throttled: int = 0
    achieved_rps: float = 0.0
    utilization: float = 0.0
    runner: str = "asyncio"
    db: str = ""
    mode: str = "full"
    n_catalog: int = 0
    n_unchanged: int = 0
    resumed_batches: int = 0

    @property
    def exit_code(self) -> int:
        return EXIT_OK if self.n_failed == 0 else EXIT_PARTIAL

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id, "status": self.status, "n_series": self.n_series, "n_failed": self.n_failed,
            "n_rows": self.n_rows, "seconds": round(self.seconds, 3), "requests": self.requests,
            "retries": self.retries, "failed": self.failed, "throttled": self.throttled,
            "achieved_rps": round(self.achieved_rps, 3), "utilization": round(self.utilization, 4),
            "runner": self.runner, "db": self.db, "mode": self.mode, "n_catalog": self.n_catalog,
            "n_unchanged": self.n_unchanged, "resumed_batches": self.resumed_batches,
        }


def new_run_id() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(3)


def run_sync(make: Callable[[], Awaitable[T]]) -> T:
    """``asyncio.run`` that also works when called from a running loop (e.g. a notebook)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(make())
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(lambda: asyncio.run(make())).result()


def check_dates(start: date | None, end: date | None, first: str = "--start", last: str = "--end") -> None:
    if start and end and start > end:
        raise UsageError(f"{first} {start} is after {last} {end}")


MODES = ("full", "incremental", "backfill")
PLAN_FORMAT = 1  # version of plan.json
MIN_RATE_SPAN_S = 1.0  # a fetch phase shorter than this has no meaningful rate


@dataclass(slots=True)
class SeriesGroup:
    """Series fetched alike: with or without their metadata, each from its own start (incremental)."""

    series_ids: list[str]
    fetch_metadata: bool
    starts: list[date | None] | None = None
    spans: list[tuple[date | None, date | None] | None] | None = None  # backfill: each series' observed range

    def to_dict(self) -> dict[str, Any]:
        spans = None
        if self.spans is not None:
            spans = [[iso_or_none(span[0]), iso_or_none(span[1])] if span else None for span in self.spans]
        return {"series_ids": self.series_ids, "fetch_metadata": self.fetch_metadata,
                "starts": [iso_or_none(d) for d in self.starts] if self.starts is not None else None, "spans": spans}

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> "SeriesGroup":
        starts, spans = doc.get("starts"), doc.get("spans")
        return cls(doc["series_ids"], doc["fetch_metadata"],
                   [date_or_none(d) for d in starts] if starts is not None else None,
                   [(date_or_none(span[0]), date_or_none(span[1])) if span else None for span in spans]
                   if spans is not None else None)


@dataclass(slots=True)
class RunPlan:
    """A run decided but not yet fetched: its id, its staging folder, its series, windows and batch size.

    Built in the process that will merge (the CLI's, or the Prefect flow's);
    :meth:`batches` is the generator the runners fan out. Its inputs are kept
    in the staging folder (``plan.json``), so ``fredflow resume`` regenerates
    the same batches and skips the ones already staged (``done``).
    """

    run_id: str
    db: Path
    staging: RunStaging
    settings: Settings
    runner: str
    mode: str
    groups: list[SeriesGroup]
    batch_size: int
    windows: list[tuple[date | None, date | None]]
    parameters: dict[str, Any]
    catalog_stats: RequestStats
    vintages: bool = False
    realtime_start: date | None = None
    realtime_end: date | None = None
    n_catalog: int = 0
    state: StateUpdate | None = None  # what the merge writes to series_state (None: bounded or vintage run)
    done: dict[int, BatchManifest] = field(default_factory=dict)  # staged by an earlier attempt (resume)
    resumed: bool = False
    started_at: datetime = field(default_factory=lambda: datetime.now(timezone.utc))
    clock: float = field(default_factory=time.perf_counter)

    @property
    def n_unchanged(self) -> int:
        return len(self.state.unchanged) if self.state else 0

    @property
    def vintage_range(self) -> tuple[date | None, date | None]:
        return self.windows[0][0], self.windows[-1][1]

    @property
    def series_ids(self) -> list[str]:
        return [sid for group in self.groups for sid in group.series_ids]

    @property
    def n_batches(self) -> int:
        return sum(1 for _ in self.all_batches())

    @property
    def n_pending(self) -> int:
        return self.n_batches - len(self.done)

    @property
    def job(self) -> RunJob:
        return RunJob(self.run_id, self.staging.path.parent, self.settings)

    def all_batches(self) -> Iterator[Batch]:
        index = 0
        for group in self.groups:
            for batch in iter_batches(group.series_ids, self.batch_size, windows=self.windows,
                                      fetch_metadata=group.fetch_metadata, starts=group.starts, spans=group.spans,
                                      first_index=index, vintages=self.vintages,
                                      realtime_start=self.realtime_start, realtime_end=self.realtime_end):
                index = batch.index + 1
                yield batch

    def batches(self) -> Iterator[Batch]:
        """The batches still to fetch, lazily (all of them, except on resume)."""
        return (batch for batch in self.all_batches() if batch.index not in self.done)

    def to_dict(self) -> dict[str, Any]:
        """What ``plan.json`` keeps: enough to regenerate every batch (no secrets)."""
        return {
            "run_id": self.run_id, "db": str(self.db), "runner": self.runner, "mode": self.mode,
            "groups": [g.to_dict() for g in self.groups], "batch_size": self.batch_size,
            "windows": [[iso_or_none(a), iso_or_none(b)] for a, b in self.windows],
            "vintages": self.vintages, "realtime_start": self.realtime_start, "realtime_end": self.realtime_end,
            "n_catalog": self.n_catalog, "parameters": self.parameters,
            "state": None if self.state is None else {
                "checked_through": self.state.checked_through, "unchanged": list(self.state.unchanged),
                "reset": list(self.state.reset)},
            "catalog_requests": self.catalog_stats.requests, "catalog_retries": self.catalog_stats.retries,
            "catalog_throttled": self.catalog_stats.throttled,
            "started_at": self.started_at.isoformat(), "n_batches": self.n_batches, "format": PLAN_FORMAT,
        }


@dataclass(frozen=True, slots=True)
class RunRequest:
    """Everything a run was asked to do, as plain data: what :func:`ingest` and the flows receive.

    ``mode``: ``full`` fetches every series; ``incremental`` only the series
    changed since the last run (:mod:`fredflow.changes`), each from its last
    observation minus ``revision_window``; ``backfill`` fetches ``[start, end]``
    in ``window`` slices (window × series batches). ``resume`` is the id of a
    run to finish instead of planning a new one.
    """

    db: Path
    catalog: CatalogSpec | None
    settings: Settings
    runner: str = "asyncio"
    runner_options: dict[str, Any] = field(default_factory=dict)
    batch_size: int | None = None
    start: date | None = None
    end: date | None = None
    staging_root: Path | None = None
    mode: str = "full"
    window: str | None = None
    revision_window: str = "2y"
    reset_state: bool = False
    vintages: bool = False
    realtime_start: date | None = None
    realtime_end: date | None = None
    resume: str | None = None
    force: bool = False


def _check_request(request: RunRequest) -> None:
    check_dates(request.start, request.end)
    check_dates(request.realtime_start, request.realtime_end, "--realtime-start", "--realtime-end")
    if request.mode not in MODES:
        raise UsageError(f"--mode {request.mode!r}: choose one of {', '.join(MODES)}")
    if request.batch_size is not None and request.batch_size < 1:
        raise UsageError("--batch-size must be a positive integer or 'auto'")
    if request.mode == "backfill" and request.start is None:
        raise UsageError("a backfill needs --start (and optionally --end, default: the latest observation)")
    if request.mode == "backfill" and request.end is None and request.start > date.today():
        raise UsageError(f"--start {request.start} is in the future; nothing to backfill")
    if request.reset_state and (request.end is not None or request.vintages):
        raise UsageError("--reset-state needs a run that stores state: without --end and without --vintages")
    if request.window is not None and request.mode != "backfill":
        raise UsageError("--window applies to backfills only ('fredflow backfill')")
    if request.vintages and request.mode == "incremental":
        raise UsageError("--vintages needs --mode full or a backfill, not incremental")
    if (request.realtime_start or request.realtime_end) and not request.vintages:
        raise UsageError("--realtime-start/--realtime-end need --vintages")
    parse_span(request.revision_window, "--revision-window")
    if request.window is not None:
        parse_span(request.window, "--window")
    if request.resume is None and request.catalog is None:
        raise UsageError("give exactly one of --series, --series-file, --release or --category")


def _require_key(settings: Settings) -> None:
    if not settings.api_key.get_secret_value():
        raise BadApiKey("FRED api key not set: pass --api-key or set FRED_API_KEY "
                        "(get one at https://fred.stlouisfed.org/docs/api/api_key.html)")


async def _select(request: RunRequest, stats: RequestStats, state: dict[str, SeriesState],
                  stamp: bool) -> tuple[Catalog, Selection | None, datetime | None]:
    """Resolve the catalog; for an incremental run, what changed; for a run that stores state, the
    newest update on FRED now (``checked_through``). One session, paced like the run."""
    async with new_session(request.settings, 4) as session:
        client = FredClient(session, request.settings, AdaptiveLimiter(request.settings.rate, request.settings.burst),
                            stats=stats)
        catalog = await resolve(request.catalog, client)
        if request.mode == "incremental":
            window = parse_span(request.revision_window, "--revision-window")
            selection = await select_changed(catalog, state, client, window)
            return catalog, selection, selection.checked_through
        # before anything else is read: an update published after this is newer, so the next run sees it
        checked_through = (await current_watermark(catalog, client)) if stamp else None
        if request.mode == "backfill":
            # a backfill needs each series' observed range to skip windows it does not reach
            catalog = await with_metadata(catalog, client)
        return catalog, None, checked_through


def _spans(series_ids: list[str], metadata: pa.Table) -> list[tuple[date | None, date | None] | None]:
    known = dict(zip(metadata.column("series_id").to_pylist(),
                     zip(metadata.column("observation_start").to_pylist(),
                         metadata.column("observation_end").to_pylist())))
    return [known.get(sid) for sid in series_ids]


def plan_run(request: RunRequest, *, slots: int) -> RunPlan:
    """Check the input, create the run's staging folder, expand the catalog into series groups and batches.

    ``slots`` is how many batches the runner runs at once (it sizes ``auto`` batches).
    Raises :class:`UsageError` for bad input and :class:`FatalRunError` when the
    run cannot start (key missing or refused, unknown release); nothing is left behind then.
    With ``request.resume`` the plan is read back from the run's staging folder instead.
    """
    _check_request(request)
    if request.resume is not None:
        return resume_plan(request)
    _require_key(request.settings)
    db_path, settings, mode = Path(request.db).absolute(), request.settings, request.mode
    run_id = new_run_id()
    parameters = {
        "catalog": request.catalog.describe(), "runner": request.runner,
        "runner_options": request.runner_options or {}, "batch_size": request.batch_size or "auto",
        "start": request.start, "end": request.end, "mode": mode, "window": request.window,
        "revision_window": request.revision_window if mode == "incremental" else None,
        "reset_state": request.reset_state, "vintages": request.vintages,
        "realtime_start": request.realtime_start, "realtime_end": request.realtime_end,
        "settings": settings.public_dict(),
    }
    staging = RunStaging(staging_root_for(db_path, request.staging_root), run_id)
    try:
        staging.create({"run_id": run_id, "db": str(db_path), **parameters})
        staging.hold()
    except OSError as exc:
        raise FatalRunError(f"cannot create staging folder {staging.path}: {exc.strerror or exc}; "
                            "choose a writable one with --staging-dir") from None
    catalog_stats = RequestStats()
    try:
        # state means "fetched through the latest observation": not after a bounded or vintage run
        stores_state = request.end is None and not request.vintages
        state = {} if request.reset_state or mode != "incremental" else read_state(db_path)
        resolved, selection, checked_through = run_sync(
            lambda: _select(request, catalog_stats, state, stamp=stores_state))
        listing = selection.metadata if selection is not None else resolved.metadata
        if listing is not None and listing.num_rows:
            staging.write_catalog(listing)
        explicit = resolved.metadata is None  # ids given: metadata comes per series (or from series/updates)
        if selection is None and mode == "backfill":
            groups = [SeriesGroup(resolved.series_ids, False, spans=_spans(resolved.series_ids, resolved.metadata))]
        elif selection is None:
            groups = [SeriesGroup(resolved.series_ids, fetch_metadata=explicit)]
        else:
            groups = [g for g in (SeriesGroup(selection.changed, False, selection.starts),
                                  SeriesGroup(selection.recheck, True, selection.recheck_starts),
                                  SeriesGroup(selection.new, fetch_metadata=explicit)) if g.series_ids]
        n_fetch = sum(len(g.series_ids) for g in groups)
        run_windows = (windows(request.start, request.end or date.today(), request.window or "10y")
                       if mode == "backfill" else [(request.start, request.end)])
        if mode == "backfill" and request.end is None:
            run_windows[-1] = (run_windows[-1][0], None)  # the last window is open: through the latest observation
        size = request.batch_size or auto_batch_size(
            n_fetch * len(run_windows), slots=slots, rate=settings.rate, runner=request.runner,
            requests_per_series=2.0 if explicit and mode != "incremental" else 1.0,
        )
        run_state = None
        if stores_state:
            run_state = StateUpdate(
                checked_through=checked_through,
                unchanged=tuple(selection.unchanged) if selection else (),
                reset=tuple(resolved.series_ids) if request.reset_state else (),
            )
        plan = RunPlan(
            run_id=run_id, db=db_path, staging=staging, settings=settings, runner=request.runner, mode=mode,
            groups=groups, batch_size=size, windows=run_windows, parameters=parameters,
            catalog_stats=catalog_stats, vintages=request.vintages, realtime_start=request.realtime_start,
            realtime_end=request.realtime_end, n_catalog=len(resolved.series_ids), state=run_state,
        )
        staging.write_plan(plan.to_dict())
    except BaseException:
        staging.remove()
        raise
    log.info("run %s (%s): %d of %d catalog series to fetch in %d batches of up to %d%s, runner %s",
             run_id, mode, n_fetch, plan.n_catalog, plan.n_batches, size,
             f" over {len(run_windows)} windows" if len(run_windows) > 1 else "", request.runner)
    return plan


def resume_plan(request: RunRequest) -> RunPlan:
    """The plan of an unfinished run, read back from its staging folder; staged batches are checked.

    A batch whose manifest matches the regenerated batch and whose files check
    out (every file readable to the end, row counts as recorded) is kept and
    not fetched again; any other is discarded and fetched again. Refuses a run
    that is still running, one already committed, and (unless ``force``) one
    older than a run committed since, whose merge would roll newer data back.
    """
    db_path, run_id = Path(request.db).absolute(), request.resume
    root = staging_root_for(db_path, request.staging_root)
    staging = RunStaging(root, run_id)
    try:
        doc = staging.read_plan()
    except ValueError as exc:
        raise UsageError(f"run {run_id}: {staging.path / 'plan.json'} is damaged ({exc}); it cannot be resumed, "
                         "start a new run") from None
    if doc is None:
        raise UsageError(f"no resumable run {run_id} under {root} (see 'fredflow runs --db {request.db}')")
    if doc.get("format") != PLAN_FORMAT:
        raise UsageError(f"run {run_id} was planned by another fredflow version; start a new run")
    if Path(doc["db"]).absolute() != db_path:
        raise UsageError(f"run {run_id} ingests into {doc['db']}, not {request.db}")
    if run_id in committed_run_ids(db_path):
        raise UsageError(f"run {run_id} is already committed in {request.db}; nothing to resume")
    started_at = datetime.fromisoformat(doc["started_at"])
    newer = newest_run_start(db_path)
    if newer is not None and newer > started_at and not request.force:
        raise UsageError(f"run {run_id} started {started_at:%Y-%m-%d %H:%M:%S}, before the last committed run "
                         f"({newer:%Y-%m-%d %H:%M:%S}): merging it now would roll newer data back. "
                         "Start a new run, or resume with --force")
    staging.hold()  # a run still running holds this: StoreBusy, nothing touched
    state_doc = doc["state"]
    plan = RunPlan(
        run_id=run_id, db=db_path, staging=staging, settings=request.settings, runner=request.runner,
        mode=doc["mode"], groups=[SeriesGroup.from_dict(g) for g in doc["groups"]], batch_size=doc["batch_size"],
        windows=[(date_or_none(a), date_or_none(b)) for a, b in doc["windows"]],
        parameters={**doc["parameters"], "resumed": True},
        catalog_stats=RequestStats(requests=doc["catalog_requests"], retries=doc["catalog_retries"],
                                   throttled=doc["catalog_throttled"]),
        vintages=doc["vintages"], realtime_start=date_or_none(doc["realtime_start"]),
        realtime_end=date_or_none(doc["realtime_end"]), n_catalog=doc["n_catalog"],
        state=None if state_doc is None else StateUpdate(
            checked_through=datetime.fromisoformat(state_doc["checked_through"]) if state_doc["checked_through"]
            else None, unchanged=tuple(state_doc["unchanged"]), reset=tuple(state_doc["reset"])),
        started_at=started_at, resumed=True,
    )
    expected = {batch.index: batch.key for batch in plan.all_batches()}
    for manifest in staging.manifests():
        problem = (manifest.check_files() if expected.get(manifest.batch_index) == manifest.batch_key
                   else "it does not match the run's plan")
        if problem:
            log.warning("run %s: staged batch %d is not usable (%s); fetching it again",
                        run_id, manifest.batch_index, problem)
            staging.discard_batch(manifest.batch_index)
        else:
            plan.done[manifest.batch_index] = manifest
    if plan.n_pending:
        _require_key(request.settings)
    log.info("resuming run %s: %d of %d batches already staged, %d to fetch",
             run_id, len(plan.done), plan.n_batches, plan.n_pending)
    return plan


def finish_run(plan: RunPlan, manifests: list[BatchManifest]) -> RunSummary:
    """Merge every staged file of the run and its run record in ONE transaction, then drop the staging folder."""
    fetched_now = manifests
    manifests = sorted([*plan.done.values(), *manifests], key=lambda m: m.batch_index)
    summary = summarize(plan.run_id, manifests, plan.catalog_stats, time.perf_counter() - plan.clock,
                        plan.runner, str(plan.db), rate=plan.settings.rate, rate_from=fetched_now)
    summary.mode, summary.n_catalog, summary.n_unchanged = plan.mode, plan.n_catalog, plan.n_unchanged
    summary.resumed_batches = len(plan.done)
    record = RunRecord(
        run_id=plan.run_id, started_at=plan.started_at, finished_at=datetime.now(timezone.utc),
        status=summary.status, runner=plan.runner, mode=plan.mode, n_series=summary.n_series,
        n_failed=summary.n_failed, n_rows=summary.n_rows, requests=summary.requests, retries=summary.retries,
        throttled=summary.throttled, seconds=summary.seconds, achieved_rps=summary.achieved_rps,
        utilization=summary.utilization, parameters=plan.parameters, n_catalog=plan.n_catalog,
        n_unchanged=plan.n_unchanged,
    )
    checkpoint("after-staging")
    merge_run(plan.db, record, manifests, plan.staging.catalog_files, state=plan.state,
              vintage_range=plan.vintage_range if plan.vintages else (None, None),
              memory_limit=plan.settings.merge_memory_limit)
    plan.staging.remove()
    return summary


def abandon_run(plan: RunPlan) -> None:
    """A fatal error: nothing is merged, nothing of the run is kept."""
    plan.staging.remove()


FanOut = Callable[[RunPlan, Progress], list[BatchManifest]]
Merge = Callable[[RunPlan, list[BatchManifest]], RunSummary]


def run_pipeline(db: Path, make_plan: Callable[[], RunPlan], fan_out: FanOut, progress: Progress,
                 merge: Merge = finish_run) -> RunSummary:
    """The skeleton every runner shares: plan → fan the batches out → merge in one transaction.

    Runners differ only in ``fan_out`` (how :func:`fredflow.fetch.fetch_batch`
    is run over ``plan.batches()``) and, for Prefect, in wrapping ``make_plan``
    and ``merge`` as tasks. The database's run lock
    (:func:`fredflow.store.run_lock`) is held from before planning (a second
    run, or a database held by another program, fails before any request, and
    the state an incremental plan reads cannot change under it) to the end of
    the merge, in the process that merges.
    """
    with run_lock(db):  # one run at a time per database
        plan = make_plan()
        try:
            # progress counts series × windows of the batches still to fetch
            pending_units = sum(len(b) for b in plan.batches())
            progress.start(pending_units, plan.n_pending)
            try:
                manifests = fan_out(plan, progress)
            except FatalRunError:
                # nothing worth keeping (key refused, staging unwritable) unless an earlier attempt staged it
                if not plan.resumed:
                    abandon_run(plan)
                raise
            finally:
                progress.close()
            # A merge that fails keeps every staged file: `fredflow resume` merges them later.
            return merge(plan, manifests)
        finally:
            plan.staging.release()


def ingest(
    db: str | Path,
    catalog: CatalogSpec | None,
    *,
    settings: Settings | None = None,
    runner: str = "asyncio",
    runner_options: dict[str, Any] | None = None,
    batch_size: int | None = None,
    start: date | None = None,
    end: date | None = None,
    staging_root: str | Path | None = None,
    progress: Progress | None = None,
    mode: str = "full",
    window: str | None = None,
    revision_window: str = "2y",
    reset_state: bool = False,
    vintages: bool = False,
    realtime_start: date | None = None,
    realtime_end: date | None = None,
    resume: str | None = None,
    force: bool = False,
) -> RunSummary:
    """Ingest a catalog of series into the DuckDB file ``db`` and return the run's summary.

    ``runner`` is ``asyncio`` (this process, one event loop), ``thread`` or
    ``dask`` (the Prefect flow ``fredflow-ingest`` fanning batches out with
    ``task.map``; ``runner_options``: ``workers``, ``threads_per_worker``,
    ``dask_address``). Every runner plans with :func:`plan_run`, runs
    :func:`fredflow.fetch.fetch_batch` per batch and merges with :func:`finish_run`.
    ``mode`` is ``full``, ``incremental`` or ``backfill`` (see :class:`RunRequest`);
    ``resume`` finishes an unfinished run instead (``catalog`` may then be None).
    """
    request = RunRequest(
        db=Path(db), catalog=catalog, settings=settings or Settings.from_env(), runner=runner,
        runner_options=dict(runner_options or {}), batch_size=batch_size, start=start, end=end,
        staging_root=Path(staging_root) if staging_root else None, mode=mode, window=window,
        revision_window=revision_window, reset_state=reset_state, vintages=vintages,
        realtime_start=realtime_start, realtime_end=realtime_end, resume=resume, force=force,
    )
    _check_request(request)
    worker = make_runner(runner, **request.runner_options)
    return worker.execute(request, progress or NullProgress())


def backfill(db: str | Path, catalog: CatalogSpec, *, start: date, end: date | None = None, window: str = "10y",
             **options: Any) -> RunSummary:
    """``[start, end]`` × the catalog as window × series batches, merged in one transaction (see :func:`ingest`)."""
    return ingest(db, catalog, start=start, end=end, window=window, mode="backfill", **options)


def resume(db: str | Path, run_id: str, *, settings: Settings | None = None, staging_root: str | Path | None = None,
           force: bool = False, **options: Any) -> RunSummary:
    """Finish run ``run_id``: fetch only the batches it has not staged, check the staged ones, merge.

    Without ``settings`` the run's own (api url, rate, …; stored without the key)
    are used, with the key from ``FRED_API_KEY``.
    """
    if settings is None:
        settings = Settings.from_env(**stored_settings(db, run_id, staging_root))
    return ingest(db, None, resume=run_id, settings=settings, staging_root=staging_root, force=force, **options)


def stored_settings(db: str | Path, run_id: str, staging_dir: str | Path | None = None) -> dict[str, Any]:
    """The public settings a run was started with (from its staging folder; no api key)."""
    root = staging_root_for(db, staging_dir)
    try:
        return dict(RunStaging(root, run_id).read_run_info().get("settings") or {})
    except (OSError, ValueError):
        raise UsageError(f"no resumable run {run_id} under {root} (see 'fredflow runs --db {db}')") from None


@dataclass(frozen=True, slots=True)
class ResumableRun:
    """A staging folder of a run that was never committed. ``status``: ``resumable``; ``running``
    (a live process holds it: leave it alone); ``damaged`` (its plan cannot be read)."""

    run_id: str
    started_at: str
    mode: str
    staged_batches: int
    n_batches: int
    staging: str
    status: str = "resumable"


def resumable_runs(db: str | Path, staging_dir: str | Path | None = None) -> list[ResumableRun]:
    """Runs with a staging folder beside ``db`` (or under ``staging_dir``) that were never committed."""
    db_path = Path(db)
    root = staging_root_for(db_path, staging_dir)
    if not root.is_dir():
        return []
    committed = committed_run_ids(db_path)
    out = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        if folder.name in committed or not (folder / "run.json").exists():
            continue
        staging = RunStaging(root, folder.name)
        staged = len(list(folder.glob("batch-*.manifest.json")))
        try:
            doc = staging.read_plan()
        except ValueError:
            doc, status = {}, "damaged"
        else:
            if doc is None:  # killed while planning: nothing was fetched
                doc, status = {}, "damaged"
            else:
                status = "running" if staging.is_held() else "resumable"
        out.append(ResumableRun(folder.name, doc.get("started_at", ""), doc.get("mode", ""), staged,
                                doc.get("n_batches", 0), str(folder), status))
    return out


def summarize(run_id: str, manifests: list[BatchManifest], catalog_stats: RequestStats, seconds: float,
              runner: str, db: str, *, rate: float, rate_from: list[BatchManifest] | None = None) -> RunSummary:
    """Totals of a run. ``achieved_rps`` is measured over the fetch phase only (first to last
    request of the batches in ``rate_from``, default all: a resumed run measures its own attempt),
    so planning and merging do not dilute it; ``utilization`` = achieved ÷ rate. Both are 0 when
    the fetch phase lasted under :data:`MIN_RATE_SPAN_S` (too short to measure a rate)."""
    fetch_requests = sum(m.requests for m in manifests)
    timed = manifests if rate_from is None else rate_from
    firsts = [m.first_request_at for m in timed if m.first_request_at is not None]
    lasts = [m.last_request_at for m in timed if m.last_request_at is not None]
    span = max(lasts) - min(firsts) if firsts and lasts else 0.0
    timed_requests = sum(m.requests for m in timed)
    # n requests spread over a span fill n-1 intervals of the schedule; under a second, a burst
    # would read as a rate above --rate: too short to measure, reported as 0
    achieved = (timed_requests - 1) / span if span >= MIN_RATE_SPAN_S and timed_requests > 1 else 0.0
    # a series appears once per window in a backfill: count it once, failed if any window failed
    failed = list(dict.fromkeys(f.series_id for m in manifests for f in m.failures))
    fetched = {sid for m in manifests for sid in m.succeeded} | set(failed)
    return RunSummary(
        run_id=run_id,
        status="succeeded" if not failed else "partial",
        n_series=len(fetched),
        n_failed=len(failed),
        n_rows=sum(m.rows for m in manifests),
        seconds=seconds,
        requests=catalog_stats.requests + fetch_requests,
        retries=catalog_stats.retries + sum(m.retries for m in manifests),
        failed=failed,
        throttled=catalog_stats.throttled + sum(m.throttled for m in manifests),
        achieved_rps=achieved,
        utilization=achieved / rate if rate else 0.0,
        runner=runner,
        db=db,
    )
