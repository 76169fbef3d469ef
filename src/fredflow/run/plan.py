"""Planning a run: options → a :class:`RunPlan` (series groups, windows, batch size) kept in ``plan.json``.

Every mode is decided here: a full load, an incremental day (:mod:`fredflow.sources.fred.changes`),
a backfill's windows, vintages, and a resume (:func:`resume_plan` reads ``plan.json`` back and keeps
the batches already staged). They change which batches the generator yields, never how a runner
runs them, so every runner has them.

Guarantee: a plan that fails (bad input, key refused, unknown release) leaves nothing behind; a plan
that succeeds is on disk before any batch is fetched, so a killed run can be resumed.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import time
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import pyarrow as pa

from ..aio import run_sync
from ..destinations.duckdb import DuckDBDestination
from ..errors import BadApiKey, FatalRunError, UsageError
from ..fetch import RunJob
from ..options import Mode, RunOptions
from ..ratelimit.local import AdaptiveLimiter
from ..settings import Settings, staging_root_for
from ..sources.fred.catalog import Catalog, resolve, with_metadata
from ..sources.fred.changes import Selection, current_watermark, select_changed
from ..sources.fred.client import FredClient, RequestStats, new_session
from ..staging import BatchManifest, RunStaging, run_folders
from ..state import SeriesState, StateUpdate
from .batches import Batch, auto_batch_size, date_or_none, expected_pages, iso_or_none, iter_batches, windows

log = logging.getLogger("fredflow")

PLAN_FORMAT = 1  # version of plan.json (realtime_starts, when absent, reads as None)


def new_run_id() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(3)


@dataclass(slots=True)
class SeriesGroup:
    """Series fetched alike: with or without their metadata, each from its own start (incremental)."""

    series_ids: list[str]
    fetch_metadata: bool
    starts: list[date | None] | None = None
    spans: list[tuple[date | None, date | None] | None] | None = None  # backfill: each series' observed range
    realtime_starts: list[date | None] | None = None  # incremental vintages: each series' newest stored vintage

    def to_dict(self) -> dict[str, Any]:
        spans = None
        if self.spans is not None:
            spans = [[iso_or_none(span[0]), iso_or_none(span[1])] if span else None for span in self.spans]
        return {"series_ids": self.series_ids, "fetch_metadata": self.fetch_metadata,
                "starts": [iso_or_none(d) for d in self.starts] if self.starts is not None else None, "spans": spans,
                "realtime_starts": [iso_or_none(d) for d in self.realtime_starts]
                if self.realtime_starts is not None else None}

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> "SeriesGroup":
        starts, spans, realtime = doc.get("starts"), doc.get("spans"), doc.get("realtime_starts")
        return cls(doc["series_ids"], doc["fetch_metadata"],
                   [date_or_none(d) for d in starts] if starts is not None else None,
                   [(date_or_none(span[0]), date_or_none(span[1])) if span else None for span in spans]
                   if spans is not None else None,
                   [date_or_none(d) for d in realtime] if realtime is not None else None)


@dataclass(slots=True)
class RunPlan:
    """A run decided but not yet fetched: its id, its staging folder, its series, windows and batch size.

    Built in the process that will merge (the CLI's, or the Prefect flow's);
    :meth:`batches` is the generator the runners fan out. Its inputs are kept
    in the staging folder (``plan.json``), so ``fredflow resume`` regenerates
    the same batches and skips the ones already staged (``done``).
    """

    run_id: str
    destination: DuckDBDestination
    staging: RunStaging
    staging_root: str
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
    state: StateUpdate | None = None  # what the merge writes to series_state (vintage_state for a whole-history
    # vintage run; None: a bounded run)
    done: dict[int, BatchManifest] = field(default_factory=dict)  # staged by an earlier attempt (resume)
    resumed: bool = False
    started_at: datetime = field(default_factory=lambda: datetime.now(timezone.utc))
    clock: float = field(default_factory=time.perf_counter)

    @property
    def db(self) -> Path:
        return self.destination.path

    @property
    def n_unchanged(self) -> int:
        return len(self.state.unchanged) if self.state else 0

    @property
    def vintage_range(self) -> tuple[date | None, date | None]:
        return self.windows[0][0], self.windows[-1][1]

    @property
    def n_batches(self) -> int:
        return sum(1 for _ in self.all_batches())

    @property
    def n_pending(self) -> int:
        return self.n_batches - len(self.done)

    @property
    def job(self) -> RunJob:
        return RunJob(self.run_id, self.staging_root, self.settings)

    def replaced_slices(self) -> list[tuple[str, date | None, date | None]]:
        """``(series_id, first, last)`` of observation dates the run fetched whole for each series (None: open).

        The merge replaces exactly these slices of every series that succeeded: rows FRED no longer
        serves there are deleted, revised ones updated (a run with ``--start/--end`` replaces only that
        slice; an incremental run with ``--revision-window`` only from each series' own start)."""
        if self.vintages:
            return []
        first, last = self.windows[0][0], self.windows[-1][1]
        out = []
        for group in self.groups:
            for position, series_id in enumerate(group.series_ids):
                own = group.starts[position] if group.starts is not None else None
                start = max(own, first) if own and first else (own or first)
                out.append((series_id, start, last))
        return out

    def vintage_starts(self) -> list[tuple[str, date]]:
        """``(series_id, newest stored vintage date)`` of the series an incremental vintage run continues:
        the merge stitches what was fetched from that date onto the stored history."""
        return [(sid, start) for group in self.groups if group.realtime_starts is not None
                for sid, start in zip(group.series_ids, group.realtime_starts) if start is not None]

    def all_batches(self) -> Iterator[Batch]:
        index = 0
        for group in self.groups:
            for batch in iter_batches(group.series_ids, self.batch_size, windows=self.windows,
                                      fetch_metadata=group.fetch_metadata, starts=group.starts, spans=group.spans,
                                      first_index=index, vintages=self.vintages,
                                      realtime_start=self.realtime_start, realtime_end=self.realtime_end,
                                      realtime_starts=group.realtime_starts):
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


def require_key(settings: Settings) -> None:
    if not settings.api_key.get_secret_value():
        raise BadApiKey("FRED api key not set: pass --api-key or set FRED_API_KEY "
                        "(get one at https://fred.stlouisfed.org/docs/api/api_key.html)")


async def _select(options: RunOptions, settings: Settings, stats: RequestStats, state: dict[str, SeriesState],
                  stamp: bool) -> tuple[Catalog, Selection | None, datetime | None]:
    """Resolve the catalog; for an incremental run, what changed; for a run that stores state, the
    newest update on FRED now (``checked_through``). One session, paced like the run."""
    async with new_session(settings, 4) as session:
        client = FredClient(session, settings, AdaptiveLimiter(settings.rate, settings.burst), stats=stats)
        catalog = await resolve(options.catalog, client)
        if options.mode == Mode.INCREMENTAL:
            selection = await select_changed(catalog, state, client, options.revision_window)
            return catalog, selection, selection.checked_through
        # before anything else is read: an update published after this is newer, so the next run sees it
        checked_through = (await current_watermark(catalog, client)) if stamp else None
        if options.mode == Mode.BACKFILL and options.window is not None:
            # a windowed backfill needs each series' observed range to skip windows it does not reach
            catalog = await with_metadata(catalog, client)
        return catalog, None, checked_through


def _spans(series_ids: list[str], metadata: pa.Table) -> list[tuple[date | None, date | None] | None]:
    known = dict(zip(metadata.column("series_id").to_pylist(),
                     zip(metadata.column("observation_start").to_pylist(),
                         metadata.column("observation_end").to_pylist())))
    return [known.get(sid) for sid in series_ids]


def _groups(options: RunOptions, resolved: Catalog, selection: Selection | None,
            state: dict[str, SeriesState] | None = None) -> list[SeriesGroup]:
    explicit = resolved.metadata is None  # ids given: metadata comes per series (or from series/updates)
    if selection is None and options.mode == Mode.BACKFILL and options.window is not None:
        return [SeriesGroup(resolved.series_ids, False, spans=_spans(resolved.series_ids, resolved.metadata))]
    if selection is None:
        return [SeriesGroup(resolved.series_ids, fetch_metadata=explicit)]
    if options.vintages:  # each changed series from its newest stored vintage date (state: last_observation_date)
        def newest(ids: list[str]) -> list[date | None]:
            return [state[sid].last_observation_date if state and sid in state else None for sid in ids]

        return [g for g in (SeriesGroup(selection.changed, False, realtime_starts=newest(selection.changed)),
                            SeriesGroup(selection.recheck, True, realtime_starts=newest(selection.recheck)),
                            SeriesGroup(selection.new, fetch_metadata=explicit)) if g.series_ids]
    return [g for g in (SeriesGroup(selection.changed, False, selection.starts),
                        SeriesGroup(selection.recheck, True, selection.recheck_starts),
                        SeriesGroup(selection.new, fetch_metadata=explicit)) if g.series_ids]


def _planned_pages(groups: list[SeriesGroup], listing: pa.Table | None, options: RunOptions,
                   page_limit: int) -> int | None:
    """The observation requests the run should need, estimated from the listing's metadata (None: no
    metadata known before fetching, or a vintage run)."""
    if listing is None or options.vintages or not listing.num_rows:
        return None
    meta = {row["series_id"]: row for row in listing.select(
        ["series_id", "frequency", "frequency_short", "observation_start", "observation_end"]).to_pylist()}
    total = 0
    for group in groups:
        for position, sid in enumerate(group.series_ids):
            row = meta.get(sid)
            if row is None:
                total += 1
                continue
            own = group.starts[position] if group.starts is not None else None
            total += expected_pages(row["frequency"], row["frequency_short"], row["observation_start"],
                                    row["observation_end"], start=own or options.start, end=options.end,
                                    page_limit=page_limit)
    return total


def plan_run(options: RunOptions, settings: Settings, *, slots: int, task_overhead: float = 0.0) -> RunPlan:
    """Create the run's staging folder, expand the catalog into series groups and batches, write ``plan.json``.

    ``slots`` is how many batches the runner runs at once and ``task_overhead`` its cost per
    batch in seconds (they size ``auto`` batches). Raises :class:`UsageError` for bad input and
    :class:`FatalRunError` when the run cannot start (key missing or refused, unknown release);
    nothing is left behind then. With ``options.resume`` the plan is read back instead.
    """
    if options.resume is not None:
        return resume_plan(options, settings)
    require_key(settings)
    destination = DuckDBDestination(options.db, memory_limit=settings.merge_memory_limit,
                                    lock_timeout=settings.lock_timeout)
    mode, run_id = options.mode, new_run_id()
    parameters = options.parameters(settings.public_dict())
    root = staging_root_for(destination.path, options.staging_dir)
    staging = RunStaging(root, run_id)
    try:
        staging.create({"run_id": run_id, "db": str(destination.path), **parameters})
        staging.hold()
    except OSError as exc:
        raise FatalRunError(f"cannot create staging folder {staging.path}: {exc.strerror or exc}; "
                            "choose a writable one with --staging-dir") from None
    catalog_stats = RequestStats()
    try:
        # state means "fetched through the latest observation": not after a bounded or vintage run
        stores_state = options.stores_state or options.stores_vintage_state
        state = {} if options.reset_state or mode != Mode.INCREMENTAL else (
            destination.read_vintage_state() if options.vintages else destination.read_state())
        resolved, selection, checked_through = run_sync(
            lambda: _select(options, settings, catalog_stats, state, stamp=stores_state))
        listing = selection.metadata if selection is not None else resolved.metadata
        if listing is not None and listing.num_rows:
            staging.write_catalog(listing)
        groups = _groups(options, resolved, selection, state)
        n_fetch = sum(len(g.series_ids) for g in groups)
        run_windows: list[tuple[date | None, date | None]] = [(options.start, options.end)]
        if mode == Mode.BACKFILL and options.backfill_window is not None:
            # time windows only when asked for: without one a backfill is planned by request pages (each
            # series' whole range in one request per 100,000 rows, the fewest FRED allows)
            run_windows = list(windows(options.start, options.end or date.today(), options.backfill_window))
            if options.end is None:
                run_windows[-1] = (run_windows[-1][0], None)  # the last window is open: through the latest observation
        explicit = resolved.metadata is None
        pages = _planned_pages(groups, listing, options, settings.page_limit) if len(run_windows) == 1 else None
        per_series = (pages / n_fetch if pages and n_fetch else 1.0) + (1.0 if explicit and mode != Mode.INCREMENTAL
                                                                          else 0.0)
        size = options.batch_size or auto_batch_size(
            n_fetch * len(run_windows), slots=slots, rate=settings.rate, task_overhead=task_overhead,
            requests_per_series=per_series,
        )
        run_state = None
        if stores_state:
            run_state = StateUpdate(
                checked_through=checked_through,
                unchanged=tuple(selection.unchanged) if selection else (),
                reset=tuple(resolved.series_ids) if options.reset_state else (),
            )
        plan = RunPlan(
            run_id=run_id, destination=destination, staging=staging, staging_root=root, settings=settings,
            runner=str(options.runner), mode=str(mode), groups=groups, batch_size=size, windows=run_windows,
            parameters=parameters, catalog_stats=catalog_stats, vintages=options.vintages,
            realtime_start=options.realtime_start, realtime_end=options.realtime_end,
            n_catalog=len(resolved.series_ids), state=run_state,
        )
        staging.write_plan(plan.to_dict())
    except BaseException:
        staging.remove()
        raise
    log.info("run %s (%s): %d of %d catalog series to fetch in %d batches of up to %d%s%s, runner %s",
             run_id, mode, n_fetch, plan.n_catalog, plan.n_batches, size,
             f" over {len(run_windows)} windows" if len(run_windows) > 1 else "",
             f", about {pages} observation requests (one per 100,000 rows)" if pages else "", options.runner)
    return plan


def resume_plan(options: RunOptions, settings: Settings) -> RunPlan:
    """The plan of an unfinished run, read back from its staging folder; staged batches are checked.

    A batch whose manifest matches the regenerated batch and whose files check
    out (every file readable to the end, row counts as recorded) is kept and
    not fetched again; any other is discarded and fetched again. Refuses a run
    that is still running, one already committed, and (unless ``force``) one
    older than a run committed since, whose merge would roll newer data back.
    """
    destination = DuckDBDestination(options.db, memory_limit=settings.merge_memory_limit,
                                    lock_timeout=settings.lock_timeout)
    run_id = options.resume
    root = staging_root_for(destination.path, options.staging_dir)
    staging = RunStaging(root, run_id)
    try:
        doc = staging.read_plan()
    except ValueError as exc:
        raise UsageError(f"run {run_id}: {staging.file('plan.json')} is damaged ({exc}); it cannot be resumed, "
                         "start a new run") from None
    if doc is None:
        raise UsageError(f"no resumable run {run_id} under {root} (see 'fredflow runs --db {options.db}')")
    if doc.get("format") != PLAN_FORMAT:
        raise UsageError(f"run {run_id} was planned by another fredflow version; start a new run")
    if DuckDBDestination(doc["db"]).path != destination.path:
        raise UsageError(f"run {run_id} ingests into {doc['db']}, not {options.db}")
    if run_id in destination.committed_run_ids():
        raise UsageError(f"run {run_id} is already committed in {options.db}; nothing to resume")
    started_at = datetime.fromisoformat(doc["started_at"])
    newer = destination.newest_run_start()
    if newer is not None and newer > started_at and not options.force:
        raise UsageError(f"run {run_id} started {started_at:%Y-%m-%d %H:%M:%S}, before the last committed run "
                         f"({newer:%Y-%m-%d %H:%M:%S}): merging it now would roll newer data back. "
                         "Start a new run, or resume with --force")
    staging.hold()  # a run still running holds this: StoreBusy, nothing touched
    state_doc = doc["state"]
    plan = RunPlan(
        run_id=run_id, destination=destination, staging=staging, staging_root=root, settings=settings,
        runner=str(options.runner), mode=doc["mode"], groups=[SeriesGroup.from_dict(g) for g in doc["groups"]],
        batch_size=doc["batch_size"], windows=[(date_or_none(a), date_or_none(b)) for a, b in doc["windows"]],
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
        problem = (manifest.check_files(staging.fs) if expected.get(manifest.batch_index) == manifest.batch_key
                   else "it does not match the run's plan")
        if problem:
            log.warning("run %s: staged batch %d is not usable (%s); fetching it again",
                        run_id, manifest.batch_index, problem)
            staging.discard_batch(manifest.batch_index)
        else:
            plan.done[manifest.batch_index] = manifest
    if plan.n_pending:
        require_key(settings)
    log.info("resuming run %s: %d of %d batches already staged, %d to fetch",
             run_id, len(plan.done), plan.n_batches, plan.n_pending)
    return plan


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
    destination = DuckDBDestination(db)
    folders = run_folders(staging_root_for(destination.path, staging_dir))
    if not folders:
        return []
    committed = destination.committed_run_ids()
    out = []
    for staging in folders:
        if staging.run_id in committed or not staging.has("run.json"):
            continue
        with contextlib.suppress(OSError, ValueError):  # runs of another database sharing this staging dir
            other = staging.read_run_info().get("db")
            if other and DuckDBDestination(other).path != destination.path:
                continue
        staged = len(staging.manifest_names())
        try:
            doc = staging.read_plan()
        except ValueError:
            doc, status = {}, "damaged"
        else:
            if doc is None:  # killed while planning: nothing was fetched
                doc, status = {}, "damaged"
            else:
                status = "running" if staging.is_held() else "resumable"
        out.append(ResumableRun(staging.run_id, doc.get("started_at", ""), doc.get("mode", ""), staged,
                                doc.get("n_batches", 0), staging.path, status))
    return out
