"""Helpers for end-to-end tests: compare a DuckDB file with the simulator's truth, row by row."""

from __future__ import annotations

import threading
from pathlib import Path

import duckdb
import pyarrow as pa


def db_observations(db: Path) -> pa.Table:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.sql("SELECT series_id, date, value FROM observations ORDER BY series_id, date").to_arrow_table()
    finally:
        con.close()


def truth_observations(catalog, series_ids) -> pa.Table:
    tables = []
    for sid in sorted(series_ids):
        obs = catalog.observations(sid)
        tables.append(obs.select(["date", "value"]).add_column(0, "series_id", pa.array([sid] * obs.num_rows, pa.string())))
    return pa.concat_tables(tables)


def assert_db_matches(db: Path, catalog, series_ids) -> int:
    """Every row in ``observations`` equals the simulator's data for ``series_ids``, and nothing else is there."""
    got = db_observations(db)
    want = truth_observations(catalog, series_ids)
    assert got.num_rows == want.num_rows, f"{got.num_rows} rows in DuckDB, {want.num_rows} in the simulator"
    for name in ("series_id", "date", "value"):
        g, w = got.column(name).combine_chunks(), want.column(name).combine_chunks()
        if not g.equals(w):
            bad = next(i for i, (a, b) in enumerate(zip(g.to_pylist(), w.to_pylist())) if a != b)
            raise AssertionError(f"column {name} differs first at row {bad}: "
                                 f"{got.slice(bad, 1).to_pylist()} != {want.slice(bad, 1).to_pylist()}")
    return got.num_rows


def count(db: Path, sql: str):
    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def day_changes(before, after, series_ids) -> set[tuple]:
    """What the simulator changed between two of its days, as (series_id, date, old, new, kind)."""
    out = set()
    for sid in series_ids:
        if not before.is_servable(sid):
            continue  # a series' first appearance is a first load, not a change
        b, a = before.observations(sid), after.observations(sid)
        was = dict(zip(b["date"].to_pylist(), b["value"].to_pylist()))
        now = dict(zip(a["date"].to_pylist(), a["value"].to_pylist()))
        out |= {(sid, d, was[d], now[d], "revised") for d in was.keys() & now.keys() if was[d] != now[d]}
        out |= {(sid, d, was[d], None, "deleted") for d in was.keys() - now.keys()}
        out |= {(sid, d, None, now[d], "added") for d in now.keys() - was.keys()}
    return out


def logged(db, run_id) -> set[tuple]:
    return set(count(db, f"SELECT series_id, date, old_value, new_value, kind FROM revisions WHERE run_id = '{run_id}'"))


class RecordingProgress:
    """A progress display that records what it was told: the start, each batch (and the thread that
    reported it: the head start's before its hand-over, the flow's after), and how often it was closed."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.started: tuple[int, int] | None = None
        self.batches: list[int] = []
        self.threads: list[str] = []
        self.closed = 0

    def start(self, n_series: int, n_batches: int) -> None:
        self.started = (n_series, n_batches)

    def batch_done(self, manifest) -> None:  # noqa: ANN001
        with self.lock:
            self.batches.append(manifest.batch_index)
            self.threads.append(threading.current_thread().name)

    def close(self) -> None:
        self.closed += 1


def assert_resumed_exactly(summary, run, sim, db: Path, ids, staged: list, staged_series: set) -> None:
    """A resume after a kill: the same run finished, every staged batch kept, exactly metadata + observations
    requested for each series not staged yet, and the database holds every series' rows, once."""
    assert summary.exit_code == 0 and summary.run_id == run.run_id
    assert summary.resumed_batches == len(staged)
    assert sim.stats()["requests"] == 2 * (len(ids) - len(staged_series))
    assert summary.n_series == len(ids)
    assert summary.n_rows == assert_db_matches(db, sim.catalog, ids)
    assert count(db, "SELECT run_id FROM ingest_runs") == [(run.run_id,)]

