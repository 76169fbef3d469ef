"""DuckDB: schema, the one-transaction merge, run records.

Guarantee of :func:`merge_run`: every staged file of a run, its series
metadata, its ``ingest_runs`` row and its ``ingest_failures`` rows become
visible together in one transaction, or not at all. Observations are upserted
on ``(series_id, date)``: re-ingesting never duplicates a row, and a revised
value replaces the old one.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Iterable, Iterator

import duckdb

from .checkpoints import checkpoint
from .errors import FatalRunError, StoreBusy
from .stage import BatchManifest

SCHEMA_SQL = """
CREATE TABLE IF NOT EXISTS observations (
    series_id      VARCHAR NOT NULL,
    date           DATE    NOT NULL,
    value          DOUBLE,
    realtime_start DATE,
    realtime_end   DATE,
    PRIMARY KEY (series_id, date)
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
    parameters   JSON
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

    The lock is an exclusive ``flock`` on ``<db>.lock`` beside the database
    (the file holds the pid of the run that holds it, and stays after the run).
    A second run on the same database fails at once with :class:`StoreBusy`,
    before it fetches anything, instead of finding DuckDB locked at merge time.
    The kernel drops the lock when the process dies, so a killed run never
    leaves it held. An existing database is also opened once, so a DuckDB file
    held by another program (a notebook, the duckdb CLI) fails the run now too.
    """
    db_path = Path(db_path)
    lock_path = db_path.with_name(db_path.name + ".lock")
    try:
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise FatalRunError(f"cannot create the run lock {lock_path}: {exc.strerror or exc}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
            raise StoreBusy(
                f"{db_path} is being written by another fredflow run" + (f" (pid {holder})" if holder else "")
                + "; wait for it to finish and retry, or ingest into another --db"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        if db_path.exists():
            connect(db_path).close()
        yield
    finally:
        os.close(fd)  # releases the lock


def ensure_schema(con: duckdb.DuckDBPyConnection) -> None:
    con.execute(SCHEMA_SQL)


def merge_run(db_path: str | Path, record: RunRecord, manifests: Iterable[BatchManifest],
              catalog_files: Iterable[str] = ()) -> None:
    """Merge every staged file of a run and record the run, in ONE transaction."""
    manifests = list(manifests)
    observation_files = [f for m in manifests for f in m.observation_files]
    series_files = list(catalog_files) + [f for m in manifests for f in m.series_files]
    succeeded = [sid for m in manifests for sid in m.succeeded]
    failures = [f for m in manifests for f in m.failures]

    con = connect(db_path)
    try:
        ensure_schema(con)
        con.begin()
        try:
            if observation_files:
                con.execute(
                    """
                    INSERT INTO observations BY NAME
                    SELECT series_id, date, value, realtime_start, realtime_end FROM read_parquet($files)
                    ON CONFLICT (series_id, date) DO UPDATE SET
                        value = excluded.value,
                        realtime_start = excluded.realtime_start,
                        realtime_end = excluded.realtime_end
                    """,
                    {"files": observation_files},
                )
            if series_files and succeeded:
                # A listing may carry series that failed later; store metadata of the ones ingested.
                con.execute(
                    f"""
                    INSERT INTO series
                    SELECT series_id, {_SERIES_COLUMNS}, now() AS fetched_at, $run_id AS last_run_id
                    FROM read_parquet($files)
                    WHERE series_id IN (SELECT unnest($succeeded))
                    QUALIFY row_number() OVER (PARTITION BY series_id) = 1
                    ON CONFLICT (series_id) DO UPDATE SET
                        {", ".join(f"{c} = excluded.{c}" for c in _SERIES_COLUMNS.split(", "))},
                        fetched_at = excluded.fetched_at, last_run_id = excluded.last_run_id
                    """,
                    {"files": series_files, "succeeded": succeeded, "run_id": record.run_id},
                )
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


def recent_runs(db_path: str | Path, limit: int = 20) -> list[dict[str, Any]]:
    """The latest runs, newest first, as plain dicts."""
    con = connect(db_path, read_only=True)
    try:
        tables = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
        if "ingest_runs" not in tables:
            return []
        cursor = con.execute(
            "SELECT * EXCLUDE (parameters), parameters FROM ingest_runs ORDER BY started_at DESC LIMIT ?", [limit]
        )
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, values)) for values in cursor.fetchall()]
    finally:
        con.close()
