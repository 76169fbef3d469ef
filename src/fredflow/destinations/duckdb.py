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
from dataclasses import asdict, dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any, Iterable, Iterator

import duckdb

from ..errors import FatalRunError, StoreBusy
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


def connect(db_path: str | Path, *, read_only: bool = False) -> duckdb.DuckDBPyConnection:
    """Open the database; a file locked by another process becomes :class:`StoreBusy` with a clear message."""
    db_path = Path(db_path)
    try:
        if not read_only:
            db_path.parent.mkdir(parents=True, exist_ok=True)
        return duckdb.connect(str(db_path), read_only=read_only)
    except duckdb.IOException as exc:
        if "lock" in str(exc).lower():
            raise StoreBusy(
                f"{db_path} is locked by another process (another fredflow run?); wait for it to finish and retry"
            ) from None
        raise


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
            connect(db_path).close()
        yield
    finally:
        lock.release()


def ensure_schema(con: duckdb.DuckDBPyConnection) -> None:
    con.execute(SCHEMA_SQL)
    for table, column, kind in (("ingest_runs", "n_catalog", "INTEGER"), ("ingest_runs", "n_unchanged", "INTEGER"),
                                ("series_state", "checked_through", "TIMESTAMPTZ")):  # databases from before these
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
              memory_limit: str | None = "512MB", filesystem: Any = None) -> None:
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
    (:mod:`~fredflow.destinations.staged_scan`).
    """
    manifests = list(manifests)
    observation_files = [f for m in manifests for f in m.observation_files]
    vintage_files = [f for m in manifests for f in m.vintage_files]
    series_files = list(catalog_files) + [f for m in manifests for f in m.series_files]
    failures = [f for m in manifests for f in m.failures]
    # a series counts as ingested only if no batch of it failed (a backfill has one per window)
    succeeded = sorted({sid for m in manifests for sid in m.succeeded} - {f.series_id for f in failures})

    con = connect(db_path)
    try:
        if memory_limit:
            con.execute(f"SET memory_limit = '{memory_limit}'")
        ensure_schema(con)
        con.begin()
        try:
            if observation_files:
                _upsert(con, "observations", ("series_id", "date"),
                        "series_id, date, value, realtime_start, realtime_end", observation_files, filesystem)
            if vintage_files:
                first, last = vintage_range
                params: dict[str, Any] = {"first": first, "last": last}
                source = staged(con, vintage_files, filesystem, params)
                con.execute(
                    f"""
                    DELETE FROM vintages WHERE series_id IN (SELECT DISTINCT series_id FROM {source})
                    AND date >= coalesce($first, DATE '0001-01-01') AND date <= coalesce($last, DATE '9999-12-31')
                    """,
                    params,
                )
                params = {}
                source = staged(con, vintage_files, filesystem, params)
                con.execute("INSERT INTO vintages (series_id, date, realtime_start, realtime_end, value) "
                            f"SELECT series_id, date, realtime_start, realtime_end, value FROM {source}", params)
            if series_files and succeeded:
                # A listing may carry series that failed later; store metadata of the ones ingested.
                params = {"succeeded": succeeded, "run_id": record.run_id}
                source = staged(con, series_files, filesystem, params)
                con.execute(
                    f"""
                    INSERT INTO series
                    SELECT series_id, {_SERIES_COLUMNS}, now() AS fetched_at, $run_id AS last_run_id
                    FROM {source}
                    WHERE series_id IN (SELECT unnest($succeeded))
                    QUALIFY row_number() OVER (PARTITION BY series_id) = 1
                    ON CONFLICT (series_id) DO UPDATE SET
                        {", ".join(f"{c} = excluded.{c}" for c in _SERIES_COLUMNS.split(", "))},
                        fetched_at = excluded.fetched_at, last_run_id = excluded.last_run_id
                    """,
                    params,
                )
            if state is not None:
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
        except BaseException:
            con.rollback()
            raise
    finally:
        con.close()


def _update_state(con: duckdb.DuckDBPyConnection, state: StateUpdate, succeeded: list[str], run_id: str) -> None:
    if state.reset:
        con.execute("DELETE FROM series_state WHERE series_id IN (SELECT unnest($ids))", {"ids": list(state.reset)})
    if succeeded:
        con.execute(
            """
            INSERT INTO series_state
            SELECT s.series_id, s.last_updated, o.last_date, $run_id, now(), $checked
            FROM series s
            LEFT JOIN (SELECT series_id, max(date) AS last_date FROM observations
                       WHERE series_id IN (SELECT unnest($succeeded)) GROUP BY series_id) o
                   USING (series_id)
            WHERE s.series_id IN (SELECT unnest($succeeded))
            ON CONFLICT (series_id) DO UPDATE SET
                last_updated = excluded.last_updated,
                last_observation_date = excluded.last_observation_date,
                last_run_id = excluded.last_run_id, last_success_at = excluded.last_success_at,
                checked_through = excluded.checked_through
            """,
            {"succeeded": succeeded, "run_id": run_id, "checked": state.checked_through},
        )
    if state.unchanged and state.checked_through is not None:
        con.execute("UPDATE series_state SET checked_through = $checked WHERE series_id IN (SELECT unnest($ids))",
                    {"checked": state.checked_through, "ids": list(state.unchanged)})


def _upsert(con: duckdb.DuckDBPyConnection, table: str, key: tuple[str, ...], columns: str,
            files: list[str], filesystem: Any = None) -> None:
    """Replace the rows of ``table`` whose ``key`` is in the staged ``files``, then insert the staged rows."""
    match = " AND ".join(f"t.{k} = s.{k}" for k in key)
    params: dict[str, Any] = {}
    con.execute(f"DELETE FROM {table} t USING {staged(con, files, filesystem, params)} s WHERE {match}", params)
    params = {}
    con.execute(f"INSERT INTO {table} ({columns}) SELECT {columns} FROM {staged(con, files, filesystem, params)}",
                params)


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

    __slots__ = ("path", "memory_limit")

    def __init__(self, path: str | Path, *, memory_limit: str | None = "512MB") -> None:
        self.path = Path(path).absolute()
        self.memory_limit = memory_limit

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
              vintage_range: tuple[date | None, date | None] = (None, None), filesystem: Any = None) -> None:
        """Every staged file of a run and its record, in ONE transaction (see :func:`merge_run`)."""
        merge_run(self.path, record, manifests, catalog_files, state=state, vintage_range=vintage_range,
                  memory_limit=self.memory_limit, filesystem=filesystem)
