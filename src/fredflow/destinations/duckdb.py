"""The DuckDB destination: schema, run lock, per-series state, the one-transaction merge, run records.

:class:`DuckDBDestination` owns the database file and its knobs (``memory_limit`` for the merge).
Guarantee of :meth:`DuckDBDestination.merge`: every staged file of a run, its series
metadata, its per-series state, its ``ingest_runs`` row and its
``ingest_failures`` rows become visible together in one transaction, or not at
all. Observations are upserted on ``(series_id, date)`` (vintages on
``(series_id, date, realtime_start)``): re-ingesting never duplicates a row,
and a revised value replaces the old one.

The upsert is a ``DELETE … USING`` of the staged keys followed by a plain
``INSERT``, on tables without a primary-key index. Measured on 20M rows a
backfill staged (``benchmarks/merge_strategies.py``): 1.33 s and 0.29 GiB
peak RSS, against 14.0 s and 2.04 GiB for ``INSERT … ON CONFLICT`` into a
primary key (the ART index must sit in memory). Keys stay unique because each
merge deletes every key it inserts and a run never stages a key twice (series
ids are de-duplicated, backfill windows are disjoint); ``tests/test_backfill.py``
and ``tests/test_incremental.py`` check ``count(*) = count(DISTINCT key)``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import signal
import time
from dataclasses import asdict, dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import duckdb
import pyarrow as pa

from ..errors import FatalRunError, Interrupted, StoreBusy
from ..staging import BatchManifest, LockHeld, PidLock
from ..state import SeriesState, StateUpdate
from ..testing.failpoints import checkpoint
from .staged_scan import staged

SCHEMA_SQL = """
CREATE TABLE IF NOT EXISTS observations (
    series_id      VARCHAR NOT NULL,  -- key: (series_id, date), kept unique by merge_run
    date           DATE    NOT NULL,
    value          DOUBLE,
    realtime_start DATE,
    realtime_end   DATE
);
CREATE TABLE IF NOT EXISTS vintages (
    series_id      VARCHAR NOT NULL,  -- key: (series_id, date, realtime_start)
    date           DATE    NOT NULL,
    realtime_start DATE    NOT NULL,
    realtime_end   DATE    NOT NULL,
    value          DOUBLE
);
CREATE TABLE IF NOT EXISTS series_state (
    series_id             VARCHAR PRIMARY KEY,
    last_updated          TIMESTAMPTZ,  -- FRED's last_updated when we last fetched the series
    last_observation_date DATE,         -- latest observation stored
    last_run_id           VARCHAR,      -- last run that fetched it successfully
    last_success_at       TIMESTAMPTZ,
    checked_through       TIMESTAMPTZ   -- FRED's clock: updates up to here are reflected (see changes.py)
);
CREATE TABLE IF NOT EXISTS vintage_state (
    series_id         VARCHAR PRIMARY KEY,
    last_updated      TIMESTAMPTZ,  -- FRED's last_updated when a vintage run last fetched the series
    last_vintage_date DATE,         -- newest vintage date stored in vintages: an incremental vintage run goes on from it
    last_run_id       VARCHAR,
    last_success_at   TIMESTAMPTZ,
    checked_through   TIMESTAMPTZ
);
CREATE TABLE IF NOT EXISTS series (
    series_id                 VARCHAR PRIMARY KEY,
    title                     VARCHAR,
    frequency                 VARCHAR,
    frequency_short           VARCHAR,
    units                     VARCHAR,
    units_short               VARCHAR,
    seasonal_adjustment       VARCHAR,
    seasonal_adjustment_short VARCHAR,
    last_updated              TIMESTAMPTZ,
    observation_start         DATE,
    observation_end           DATE,
    popularity                INTEGER,
    notes                     VARCHAR,
    fetched_at                TIMESTAMPTZ,
    last_run_id               VARCHAR
);
CREATE TABLE IF NOT EXISTS ingest_runs (
    run_id       VARCHAR PRIMARY KEY,
    started_at   TIMESTAMPTZ,
    finished_at  TIMESTAMPTZ,
    status       VARCHAR,
    runner       VARCHAR,
    mode         VARCHAR,
    n_series     INTEGER,
    n_failed     INTEGER,
    n_rows       BIGINT,
    requests     BIGINT,
    retries      BIGINT,
    throttled    BIGINT,
    seconds      DOUBLE,
    achieved_rps DOUBLE,
    utilization  DOUBLE,
    parameters   JSON,
    n_catalog    INTEGER,
    n_unchanged  INTEGER
);
CREATE TABLE IF NOT EXISTS revisions (
    run_id    VARCHAR NOT NULL,  -- the run whose merge made the change
    series_id VARCHAR NOT NULL,
    date      DATE    NOT NULL,
    old_value DOUBLE,            -- NULL: FRED's "." (or, for kind added, no row before)
    new_value DOUBLE,            -- NULL: FRED's "." (or, for kind deleted, no row now)
    kind      VARCHAR NOT NULL   -- revised | deleted | added
);
CREATE TABLE IF NOT EXISTS ingest_failures (
    run_id      VARCHAR,
    series_id   VARCHAR,
    http_status INTEGER,
    message     VARCHAR,
    attempts    INTEGER
);
"""

_SERIES_COLUMNS = (
    "title, frequency, frequency_short, units, units_short, seasonal_adjustment, "
    "seasonal_adjustment_short, last_updated, observation_start, observation_end, popularity, notes"
)


@dataclass(slots=True)
class RunRecord:
    """One row of ``ingest_runs``: the trace of a run. ``parameters`` never holds the api key."""

    run_id: str
    started_at: datetime
    finished_at: datetime
    status: str
    runner: str
    mode: str
    n_series: int
    n_failed: int
    n_rows: int
    requests: int
    retries: int
    throttled: int
    seconds: float
    achieved_rps: float
    utilization: float
    parameters: dict[str, Any]
    n_catalog: int = 0
    n_unchanged: int = 0
    n_revised: int = 0  # filled by the merge (the revision log of the run)
    n_deleted: int = 0
    n_added: int = 0


log = logging.getLogger("fredflow")


def _holder(exc: BaseException) -> str:
    """Who holds a DuckDB file, from DuckDB's lock error (it names the program and its pid)."""
    found = re.search(r"Conflicting lock is held in (\S+) \(PID (\d+)\)", str(exc))
    return f" ({Path(found.group(1)).name}, pid {found.group(2)})" if found else ""


#: What DuckDB says when the disk is full or the folder unwritable (the merge's one-line error).
_DISK_TROUBLE = re.compile(r"no space left|disk (is )?full|quota|permission denied|read-only file system|"
                           r"could not write|could not (open|create|truncate|sync)|out of memory", re.I)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def connect(db_path: str | Path, *, read_only: bool = False) -> duckdb.DuckDBPyConnection:
    """Open the database; a file locked by another process becomes :class:`StoreBusy` with a clear message,
    a path that is not a usable DuckDB file (a directory, a text file, unwritable) a one-line :class:`FatalRunError`."""
    db_path = Path(db_path)
    if db_path.is_dir():
        raise FatalRunError(f"--db {db_path} is a directory, not a DuckDB file")
    try:
        if not read_only:
            db_path.parent.mkdir(parents=True, exist_ok=True)
        return duckdb.connect(str(db_path), read_only=read_only)
    except duckdb.IOException as exc:
        if "lock" in str(exc).lower():
            raise StoreBusy(
                f"{db_path} is locked by another process{_holder(exc)} (another fredflow run, a notebook?); "
                "wait for it to finish and retry"
            ) from None
        raise FatalRunError(f"cannot open {db_path}: {_first_line(exc)}") from None
    except OSError as exc:
        raise FatalRunError(f"cannot open {db_path}: {exc.strerror or exc}") from None
    except duckdb.Error as exc:
        raise FatalRunError(f"cannot open {db_path} as a DuckDB database: {_first_line(exc)}") from None


def connect_for_merge(db_path: str | Path, *, timeout: float, run_id: str) -> duckdb.DuckDBPyConnection:
    """A read-write connection for the merge, waiting up to ``timeout`` s for DuckDB's write lock (another
    program holding the file: a notebook, a dashboard, the duckdb CLI). Says once who holds it; on timeout
    a :class:`StoreBusy` naming the run and the ``fredflow resume`` command (the staged batches are kept)."""
    deadline = time.monotonic() + timeout
    said = False
    while True:
        try:
            return connect(db_path)
        except StoreBusy as busy:
            if time.monotonic() >= deadline:
                raise StoreBusy(
                    f"{db_path} is still locked by another process after --lock-timeout {timeout:g}s "
                    f"({busy}); run {run_id} was not committed, its staged batches are kept: "
                    f"'fredflow resume {run_id} --db {db_path}' once the database is free"
                ) from None
            if not said:
                log.warning("waiting up to %gs for the write lock on %s: %s", timeout, db_path, busy)
                said = True
            time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))


@contextlib.contextmanager
def run_lock(db_path: str | Path) -> Iterator[None]:
    """Hold the database's run lock for a whole run, from plan to the end of the merge.

    The lock is a :class:`~fredflow.staging.PidLock` on ``<db>.lock`` beside the database
    (the file holds the pid of the run that holds it, and stays after the run).
    A second run on the same database fails at once with :class:`StoreBusy`,
    before it fetches anything, instead of finding DuckDB locked at merge time.
    The kernel drops the lock when the process dies, so a killed run never
    leaves it held. An existing database is also opened once, so a DuckDB file
    held by another program (a notebook, the duckdb CLI) fails the run now too.
    """
    db_path = Path(db_path)
    lock = PidLock(db_path.with_name(db_path.name + ".lock"))
    try:
        db_path.parent.mkdir(parents=True, exist_ok=True)
        lock.acquire()
    except LockHeld as held:
        raise StoreBusy(
            f"{db_path} is being written by another fredflow run" + (f" (pid {held.holder})" if held.holder else "")
            + "; wait for it to finish and retry, or ingest into another --db"
        ) from None
    except OSError as exc:
        raise FatalRunError(f"cannot create the run lock {lock.path}: {exc.strerror or exc}") from None
    try:
        if db_path.exists():
            check_database(db_path)
        yield
    finally:
        lock.release()


#: Columns of fredflow's tables, from :data:`SCHEMA_SQL` (columns added by later versions are optional).
_TABLE_COLUMNS = {
    table: [line.split()[0] for line in body.strip().splitlines() if line.strip() and not line.strip().startswith("--")]
    for table, body in re.findall(r"CREATE TABLE IF NOT EXISTS (\w+) \((.*?)\n\);", SCHEMA_SQL, re.S)
}


def check_database(db_path: str | Path) -> None:
    """Before a run fetches anything: ``db_path`` opens read-only as a DuckDB file (a writer holding it
    is :class:`StoreBusy`; a reader such as a notebook is fine: the merge waits for it), and its
    fredflow tables have fredflow's columns (:class:`FatalRunError` naming the mismatch: nothing is
    written to a file fredflow does not recognise). A file with only other tables is told so."""
    db_path = Path(db_path)
    if db_path.is_file() and not os.access(db_path, os.W_OK):
        raise FatalRunError(f"{db_path} is read-only: fredflow cannot merge into it")
    con = connect(db_path, read_only=True)
    try:
        rows = con.execute("SELECT table_name, column_name FROM information_schema.columns "
                           "WHERE table_schema = 'main' ORDER BY table_name, ordinal_position").fetchall()
    finally:
        con.close()
    found: dict[str, list[str]] = {}
    for table, column in rows:
        found.setdefault(table, []).append(column)
    ours = [t for t in _TABLE_COLUMNS if t in found]
    for table in ours:
        optional = {(t, c) for t, c, _ in _ADDED_COLUMNS}
        added_later = [c for t, c, _ in _ADDED_COLUMNS if t == table and c not in _TABLE_COLUMNS[table]]
        wanted = [c for c in _TABLE_COLUMNS[table] + added_later if (table, c) not in optional or c in found[table]]
        if found[table] != wanted:
            missing = [c for c in wanted if c not in found[table]]
            extra = [c for c in found[table] if c not in wanted]
            detail = "; ".join(filter(None, [f"missing {', '.join(missing)}" if missing else "",
                                             f"unexpected {', '.join(extra)}" if extra else "",
                                             "columns in another order" if not (missing or extra) else ""]))
            raise FatalRunError(
                f"{db_path} has a table {table} that is not fredflow's ({detail}): use another --db, "
                "or rename that table; nothing was written to the file")
    if found and not ours:
        log.info("%s holds no fredflow tables (only %s): fredflow will add its tables (%s) beside them",
                 db_path, ", ".join(sorted(found)), ", ".join(_TABLE_COLUMNS))


#: Columns added after a table's first version: databases from before them get them on the next merge.
_ADDED_COLUMNS = (("ingest_runs", "n_catalog", "INTEGER"), ("ingest_runs", "n_unchanged", "INTEGER"),
                  ("series_state", "checked_through", "TIMESTAMPTZ"), ("ingest_runs", "n_revised", "BIGINT"),
                  ("ingest_runs", "n_deleted", "BIGINT"), ("ingest_runs", "n_added", "BIGINT"))


def ensure_schema(con: duckdb.DuckDBPyConnection) -> None:
    con.execute(SCHEMA_SQL)
    for table, column, kind in _ADDED_COLUMNS:  # databases from before these
        con.execute(f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {column} {kind}")


@contextlib.contextmanager
def _reading(db_path: str | Path, table: str) -> Iterator[duckdb.DuckDBPyConnection | None]:
    """A read-only connection if the database exists and has ``table``, else None (a new database)."""
    db_path = Path(db_path)
    if not db_path.exists():
        yield None
        return
    con = connect(db_path, read_only=True)
    try:
        tables = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
        yield con if table in tables else None
    finally:
        con.close()


def read_state(db_path: str | Path) -> dict[str, SeriesState]:
    """Per-series state of the database (empty for a new database)."""
    with _reading(db_path, "series_state") as con:
        if con is None:
            return {}
        columns = {r[0] for r in con.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'series_state'").fetchall()}
        checked = "checked_through" if "checked_through" in columns else "NULL"
        rows = con.execute(
            f"SELECT series_id, last_updated, last_observation_date, {checked} FROM series_state").fetchall()
    return {sid: SeriesState(updated, last, through) for sid, updated, last, through in rows}


def read_vintage_state(db_path: str | Path) -> dict[str, SeriesState]:
    """Per-series state of whole-history vintage runs; ``last_observation_date`` holds the newest vintage date."""
    with _reading(db_path, "vintage_state") as con:
        if con is None:
            return {}
        rows = con.execute(
            "SELECT series_id, last_updated, last_vintage_date, checked_through FROM vintage_state").fetchall()
    return {sid: SeriesState(updated, last, through) for sid, updated, last, through in rows}


def newest_run_start(db_path: str | Path) -> datetime | None:
    """``started_at`` of the newest committed run (None for a new database)."""
    with _reading(db_path, "ingest_runs") as con:
        return con.execute("SELECT max(started_at) FROM ingest_runs").fetchall()[0][0] if con else None


def committed_run_ids(db_path: str | Path) -> set[str]:
    with _reading(db_path, "ingest_runs") as con:
        return {r[0] for r in con.execute("SELECT run_id FROM ingest_runs").fetchall()} if con else set()


def merge_run(db_path: str | Path, record: RunRecord, manifests: Iterable[BatchManifest],
              catalog_files: Iterable[str] = (), *, state: StateUpdate | None = StateUpdate(),
              vintage_range: tuple[date | None, date | None] = (None, None),
              slices: Sequence[tuple[str, date | None, date | None]] | None = None,
              vintage_starts: Sequence[tuple[str, date]] = (), vintages: bool = False,
              memory_limit: str | None = "512MB", lock_timeout: float = 0.0,
              filesystem: Any = None) -> dict[str, int]:
    """Merge every staged file of a run and record the run, in ONE transaction.

    ``state``: the run fetched its series through their latest observation, so
    ``series_state`` records what it saw (None: a bounded or vintage run, which
    must not mark series as up to date). ``vintage_range``: the observation
    dates the run's vintages cover; the stored history of each staged series
    in that range is replaced by the run's (a real-time range clips FRED's
    periods, so merging row by row would mix clipped and whole periods).
    ``memory_limit`` caps DuckDB for the merge: beyond it the upsert's join
    spills to disk, so the merge of a large backfill stays flat in memory.
    ``filesystem``: the staging's :mod:`pyarrow.fs` filesystem; object storage is read through Arrow
    (:mod:`~fredflow.destinations.staged_scan`), each list of staged files as one named table.

    ``slices``: ``(series_id, first, last)`` observation dates the run fetched
    whole (None: open). Each slice of a series that succeeded is *replaced*: its
    stored rows there are deleted and the staged ones inserted, so values FRED
    revised anywhere in it are updated and observations FRED no longer serves
    are removed. The differences are logged in ``revisions`` first (from a join
    of the rows about to be deleted with the staged ones; see :func:`_log_revisions`).
    Staged rows of other series (a series that failed in one window of a
    backfill, or ``slices`` None) are upserted by key as before.
    Returns ``{"n_revised", "n_deleted", "n_added"}``, also stored in the run's row.

    ``vintage_starts``: ``(series_id, L)`` of an incremental vintage run, L the newest vintage date
    stored. What FRED served from L on is stitched onto the stored history (:func:`_stitch_vintages`);
    the other vintage series replace their history in ``vintage_range``. For a vintage run ``state``
    goes to ``vintage_state`` (``vintages`` True: the newest vintage date stored per series).
    """
    manifests = list(manifests)
    observation_files = [f for m in manifests for f in m.observation_files]
    vintage_files = [f for m in manifests for f in m.vintage_files]
    series_files = list(catalog_files) + [f for m in manifests for f in m.series_files]
    failures = [f for m in manifests for f in m.failures]
    # a series counts as ingested only if no batch of it failed (a backfill has one per window)
    succeeded = sorted({sid for m in manifests for sid in m.succeeded} - {f.series_id for f in failures})

    con = connect_for_merge(db_path, timeout=lock_timeout, run_id=record.run_id)
    try:
        if memory_limit:
            con.execute(f"SET memory_limit = '{memory_limit}'")
        con.begin()
        try:
            ensure_schema(con)  # inside the transaction: a failed merge leaves no fredflow table behind
            staged_observations = staged(con, "_staged_observations", observation_files, filesystem)
            staged_vintages = staged(con, "_staged_vintages", vintage_files, filesystem)
            staged_series = staged(con, "_staged_series", series_files, filesystem)
            ok = set(succeeded)
            replaced = [(sid, lo, hi) for sid, lo, hi in (slices or ()) if sid in ok]
            if replaced:
                con.register("_slices", pa.table({
                    "series_id": pa.array([r[0] for r in replaced], pa.string()),
                    "lo": pa.array([r[1] for r in replaced], pa.date32()),
                    "hi": pa.array([r[2] for r in replaced], pa.date32())}))
                counts = _log_revisions(con, record.run_id, staged_observations)
                con.execute(f"DELETE FROM observations o USING _slices s WHERE {_IN_SLICE}")
                record.n_revised, record.n_deleted, record.n_added = (
                    counts["revised"], counts["deleted"], counts["added"])
            if observation_files:
                _upsert(con, "observations", ("series_id", "date"),
                        "series_id, date, value, realtime_start, realtime_end", staged_observations,
                        skip_sliced=bool(replaced))
            if vintage_files:
                first, last = vintage_range
                continued = [(sid, start) for sid, start in vintage_starts if sid in ok]
                con.register("_vstarts", pa.table({"series_id": pa.array([c[0] for c in continued], pa.string()),
                                                   "l": pa.array([c[1] for c in continued], pa.date32())}))
                con.execute(
                    f"""
                    DELETE FROM vintages WHERE series_id IN (SELECT DISTINCT series_id FROM {staged_vintages})
                    AND series_id NOT IN (SELECT series_id FROM _vstarts)
                    AND date >= coalesce($first, DATE '0001-01-01') AND date <= coalesce($last, DATE '9999-12-31')
                    """,
                    {"first": first, "last": last},
                )
                if continued:
                    _stitch_vintages(con, staged_vintages)
                con.execute("INSERT INTO vintages (series_id, date, realtime_start, realtime_end, value) "
                            f"SELECT series_id, date, realtime_start, realtime_end, value FROM {staged_vintages} "
                            "WHERE series_id NOT IN (SELECT series_id FROM _vstarts)")
            if series_files and succeeded:
                # A listing may carry series that failed later; store metadata of the ones ingested.
                con.execute(
                    f"""
                    INSERT INTO series
                    SELECT series_id, {_SERIES_COLUMNS}, now() AS fetched_at, $run_id AS last_run_id
                    FROM {staged_series}
                    WHERE series_id IN (SELECT unnest($succeeded))
                    QUALIFY row_number() OVER (PARTITION BY series_id) = 1
                    ON CONFLICT (series_id) DO UPDATE SET
                        {", ".join(f"{c} = excluded.{c}" for c in _SERIES_COLUMNS.split(", "))},
                        fetched_at = excluded.fetched_at, last_run_id = excluded.last_run_id
                    """,
                    {"succeeded": succeeded, "run_id": record.run_id},
                )
            if state is not None and vintages:
                _update_state(con, state, succeeded, record.run_id, "vintage_state")
            elif state is not None:
                _update_state(con, state, succeeded, record.run_id)
            row = asdict(record)
            row["parameters"] = json.dumps(record.parameters, default=str, sort_keys=True)
            con.execute(
                f"INSERT INTO ingest_runs ({', '.join(row)}) VALUES ({', '.join('$' + k for k in row)})", row
            )
            if failures:
                con.executemany(
                    "INSERT INTO ingest_failures VALUES (?, ?, ?, ?, ?)",
                    [(record.run_id, f.series_id, f.http_status, f.message, f.attempts) for f in failures],
                )
            checkpoint("merge-before-commit")
            con.commit()
        except BaseException as exc:
            with contextlib.suppress(duckdb.Error):  # a failed or interrupted statement may have ended it already
                con.rollback()
            if isinstance(exc, duckdb.InterruptException):  # SIGINT/SIGTERM during a query: exit as a signal
                raise Interrupted(Interrupted.last_signum or signal.SIGINT) from None
            if isinstance(exc, (duckdb.IOException, duckdb.OutOfMemoryException)) and _DISK_TROUBLE.search(str(exc)):
                reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise FatalRunError(
                    f"the merge into {db_path} failed and was rolled back ({reason}); the staged batches are "
                    f"kept: free space or fix the folder, then 'fredflow resume {record.run_id} --db {db_path}'"
                ) from None
            raise
    finally:
        con.close()
    return {"n_revised": record.n_revised, "n_deleted": record.n_deleted, "n_added": record.n_added}


_IN_SLICE = ("o.series_id = s.series_id AND o.date >= coalesce(s.lo, DATE '0001-01-01') "
             "AND o.date <= coalesce(s.hi, DATE '9999-12-31')")


def _log_revisions(con: duckdb.DuckDBPyConnection, run_id: str, staged_observations: str | None) -> dict[str, int]:
    """Append to ``revisions`` every difference between the stored rows of the replaced slices (the
    rows the merge is about to delete) and the staged ones, and count them by kind.

    ``revised``: the date is in both, the value differs (``"."`` counts as a value: NULL is
    distinct from a number); ``deleted``: stored, no longer served; ``added``: served, not stored
    before, for a series that had rows in its slice. A series' first load (nothing stored in its
    slice) is not logged row by row: it is the run's ``n_rows``, not a change.
    """
    staged = (f"(SELECT series_id, date, value FROM {staged_observations} WHERE series_id IN "
              "(SELECT series_id FROM _slices))" if staged_observations else
              "(SELECT NULL::VARCHAR AS series_id, NULL::DATE AS date, NULL::DOUBLE AS value WHERE false)")
    con.execute(
        f"""
        INSERT INTO revisions
        SELECT $run_id, coalesce(o.series_id, n.series_id), coalesce(o.date, n.date), o.value, n.value,
               CASE WHEN o.date IS NULL THEN 'added' WHEN n.date IS NULL THEN 'deleted' ELSE 'revised' END
        FROM (SELECT o.series_id, o.date, o.value FROM observations o JOIN _slices s ON {_IN_SLICE}) o
        FULL OUTER JOIN {staged} n ON o.series_id = n.series_id AND o.date = n.date
        WHERE n.date IS NULL OR (o.date IS NOT NULL AND o.value IS DISTINCT FROM n.value)
           OR (o.date IS NULL AND n.series_id IN (
                SELECT DISTINCT o.series_id FROM observations o JOIN _slices s ON {_IN_SLICE}))
        """,
        {"run_id": run_id},
    )
    rows = con.execute("SELECT kind, count(*) FROM revisions WHERE run_id = $run_id GROUP BY kind",
                       {"run_id": run_id}).fetchall()
    return {"revised": 0, "deleted": 0, "added": 0, **dict(rows)}


def _stitch_vintages(con: duckdb.DuckDBPyConnection, staged_vintages: str) -> None:
    """Stitch the vintages FRED served from L (``_vstarts``: each series' newest stored vintage date) onto
    the stored history. FRED clips every period to ``realtime_start`` = L, so a period that was open
    at L comes back starting on L: that row continues the stored one (same value, the same period),
    which takes its end (closed where a new vintage starts, or still open); every other served row
    starts on or after L and replaces the stored rows starting there."""
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE _served AS
        SELECT s.series_id, s.date, s.realtime_start, s.realtime_end, s.value, v.l
        FROM {staged_vintages} s JOIN _vstarts v USING (series_id)""")
    con.execute("""
        CREATE OR REPLACE TEMP TABLE _continued AS
        SELECT t.series_id, t.date, t.realtime_start, s.realtime_end
        FROM _served s JOIN vintages t ON t.series_id = s.series_id AND t.date = s.date
         AND s.realtime_start = s.l AND t.realtime_start < s.l AND t.realtime_end >= s.l""")
    con.execute("""
        UPDATE vintages t SET realtime_end = c.realtime_end FROM _continued c
        WHERE t.series_id = c.series_id AND t.date = c.date AND t.realtime_start = c.realtime_start""")
    con.execute("DELETE FROM vintages t USING _vstarts v WHERE t.series_id = v.series_id AND t.realtime_start >= v.l")
    con.execute("""
        INSERT INTO vintages (series_id, date, realtime_start, realtime_end, value)
        SELECT s.series_id, s.date, s.realtime_start, s.realtime_end, s.value FROM _served s
        WHERE NOT (s.realtime_start = s.l AND EXISTS (
            SELECT 1 FROM _continued c WHERE c.series_id = s.series_id AND c.date = s.date))""")
    con.execute("DROP TABLE _served")
    con.execute("DROP TABLE _continued")


#: Per-series state tables: the column holding the newest stored date, and where it comes from.
_STATE_TABLES = {
    "series_state": ("last_observation_date", "max(date)", "observations"),
    "vintage_state": ("last_vintage_date", "max(realtime_start)", "vintages"),
}


def _update_state(con: duckdb.DuckDBPyConnection, state: StateUpdate, succeeded: list[str], run_id: str,
                  table: str = "series_state") -> None:
    """Write ``table`` (``series_state`` or ``vintage_state``) for the series the run fetched, and move the
    ``checked_through`` of the ones it judged unchanged; ``state.reset`` forgets series first."""
    newest_column, newest, source = _STATE_TABLES[table]
    if state.reset:
        con.execute(f"DELETE FROM {table} WHERE series_id IN (SELECT unnest($ids))", {"ids": list(state.reset)})
    if succeeded:
        con.execute(
            f"""
            INSERT INTO {table}
            SELECT s.series_id, s.last_updated, n.newest, $run_id, now(), $checked
            FROM series s
            LEFT JOIN (SELECT series_id, {newest} AS newest FROM {source}
                       WHERE series_id IN (SELECT unnest($succeeded)) GROUP BY series_id) n USING (series_id)
            WHERE s.series_id IN (SELECT unnest($succeeded))
            ON CONFLICT (series_id) DO UPDATE SET
                last_updated = excluded.last_updated, {newest_column} = excluded.{newest_column},
                last_run_id = excluded.last_run_id, last_success_at = excluded.last_success_at,
                checked_through = excluded.checked_through
            """,
            {"succeeded": succeeded, "run_id": run_id, "checked": state.checked_through},
        )
    if state.unchanged and state.checked_through is not None:
        con.execute(f"UPDATE {table} SET checked_through = $checked WHERE series_id IN (SELECT unnest($ids))",
                    {"checked": state.checked_through, "ids": list(state.unchanged)})


def _upsert(con: duckdb.DuckDBPyConnection, table: str, key: tuple[str, ...], columns: str,
            staged_table: str, *, skip_sliced: bool = False) -> None:
    """Replace the rows of ``table`` whose ``key`` is in ``staged_table`` (see :func:`staged`), then insert
    the staged rows. ``skip_sliced``: series in ``_slices`` were deleted by slice already; their keys need no delete."""
    match = " AND ".join(f"t.{k} = s.{k}" for k in key)
    if skip_sliced:
        match += " AND s.series_id NOT IN (SELECT series_id FROM _slices)"
    con.execute(f"DELETE FROM {table} t USING {staged_table} s WHERE {match}")
    con.execute(f"INSERT INTO {table} ({columns}) SELECT {columns} FROM {staged_table}")


def read_revisions(db_path: str | Path, *, since: date | datetime | None = None, run_id: str | None = None,
                   series: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """The revision log, oldest run first then series and date: ``run_id``, ``run_finished_at``, ``series_id``,
    ``date``, ``old_value``, ``new_value``, ``kind``. ``since``: runs that finished at or after it;
    ``run_id``: that run only; ``series``: those series only."""
    with _reading(db_path, "revisions") as con:
        if con is None:
            return []
        where, params = ["true"], {}
        if since is not None:
            where.append("r.finished_at >= $since")
            params["since"] = since
        if run_id is not None:
            where.append("v.run_id = $run_id")
            params["run_id"] = run_id
        if series:
            where.append("v.series_id IN (SELECT unnest($series))")
            params["series"] = list(series)
        cursor = con.execute(
            f"""SELECT v.run_id, r.finished_at AS run_finished_at, v.series_id, v.date, v.old_value, v.new_value,
                       v.kind
                FROM revisions v LEFT JOIN ingest_runs r USING (run_id)
                WHERE {" AND ".join(where)} ORDER BY r.finished_at, v.run_id, v.series_id, v.date""", params)
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, values)) for values in cursor.fetchall()]


def recent_runs(db_path: str | Path, limit: int = 20) -> list[dict[str, Any]]:
    """The latest runs, newest first, as plain dicts."""
    with _reading(db_path, "ingest_runs") as con:
        if con is None:
            return []
        cursor = con.execute(
            "SELECT * EXCLUDE (parameters), parameters FROM ingest_runs ORDER BY started_at DESC LIMIT ?", [limit]
        )
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, values)) for values in cursor.fetchall()]


class DuckDBDestination:
    """One DuckDB file as a run's destination: everything a run reads from it or writes to it.

    ``memory_limit`` caps DuckDB during the merge: above it the upsert's hash join spills to
    ``<db>.tmp`` instead of growing (re-merging 20M rows: 0.57 GiB peak at 512MB, 1.57 GiB uncapped;
    ``benchmarks/merge_strategies.py``).
    """

    __slots__ = ("path", "memory_limit", "lock_timeout")

    def __init__(self, path: str | Path, *, memory_limit: str | None = "512MB", lock_timeout: float = 300.0) -> None:
        self.path = Path(path).absolute()
        self.memory_limit = memory_limit
        self.lock_timeout = lock_timeout

    def __repr__(self) -> str:
        return f"DuckDBDestination({str(self.path)!r})"

    def lock(self) -> contextlib.AbstractContextManager[None]:
        """The run lock (see :func:`run_lock`)."""
        return run_lock(self.path)

    def read_state(self) -> dict[str, SeriesState]:
        return read_state(self.path)

    def newest_run_start(self) -> datetime | None:
        return newest_run_start(self.path)

    def committed_run_ids(self) -> set[str]:
        return committed_run_ids(self.path)

    def recent_runs(self, limit: int = 20) -> list[dict[str, Any]]:
        return recent_runs(self.path, limit)

    def merge(self, record: RunRecord, manifests: Iterable[BatchManifest], catalog_files: Iterable[str] = (), *,
              state: StateUpdate | None = StateUpdate(),
              vintage_range: tuple[date | None, date | None] = (None, None),
              slices: Sequence[tuple[str, date | None, date | None]] | None = None,
              vintage_starts: Sequence[tuple[str, date]] = (), vintages: bool = False,
              filesystem: Any = None) -> dict[str, int]:
        """Every staged file of a run and its record, in ONE transaction (see :func:`merge_run`)."""
        return merge_run(self.path, record, manifests, catalog_files, state=state, vintage_range=vintage_range,
                         slices=slices, vintage_starts=vintage_starts, vintages=vintages,
                         memory_limit=self.memory_limit, lock_timeout=self.lock_timeout, filesystem=filesystem)

    def read_vintage_state(self) -> dict[str, SeriesState]:
        return read_vintage_state(self.path)

    def changes(self, **filters: Any) -> list[dict[str, Any]]:
        """Rows of the revision log (see :func:`read_revisions`)."""
        return read_revisions(self.path, **filters)
