"""store.py: schema, one-transaction merge, idempotent upsert, revisions, run records."""

from __future__ import annotations

from datetime import date, datetime, timezone

import duckdb
import pyarrow as pa
import pytest

from fredflow.sources.fred.parse import OBSERVATION_SCHEMA, SERIES_SCHEMA
from fredflow.staging import BatchManifest, RunStaging, SeriesFailure
from fredflow.destinations.duckdb import RunRecord, connect, merge_run, recent_runs
from fredflow.errors import StoreBusy


def _obs(dates: list[date], values: list[float | None]) -> pa.Table:
    n = len(dates)
    return pa.Table.from_pydict(
        {"date": dates, "value": values, "realtime_start": [date(2026, 1, 1)] * n, "realtime_end": [date(2026, 1, 1)] * n},
        schema=OBSERVATION_SCHEMA,
    )


def _meta(series_id: str, title: str) -> pa.Table:
    row = {f.name: None for f in SERIES_SCHEMA}
    row.update(series_id=series_id, title=title, frequency="Monthly", last_updated=datetime(2026, 1, 1, tzinfo=timezone.utc))
    return pa.Table.from_pylist([row], schema=SERIES_SCHEMA)


def _record(run_id: str, **overrides) -> RunRecord:
    now = datetime.now(timezone.utc)
    values = dict(run_id=run_id, started_at=now, finished_at=now, status="succeeded", runner="asyncio", mode="full",
                  n_series=2, n_failed=0, n_rows=0, requests=4, retries=0, throttled=0, seconds=1.0, achieved_rps=4.0, utilization=1.0,
                  parameters={"settings": {"rate": 2}})
    values.update(overrides)
    return RunRecord(**values)


def _stage(tmp_path, run_id: str, series: dict[str, pa.Table], failures=()) -> list[BatchManifest]:
    staging = RunStaging(tmp_path / "staging", run_id).create({"run_id": run_id})
    writer = staging.batch_writer(0, flush_rows=3)  # tiny flushes: several files per batch
    manifest = BatchManifest(batch_index=0, failures=list(failures))
    for series_id, table in series.items():
        writer.add_series(_meta(series_id, f"title {series_id}"))
        writer.add_observations(series_id, table)
        manifest.succeeded.append(series_id)
    return [writer.finish(manifest)]


def _rows(db) -> list[tuple]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute("SELECT series_id, date, value FROM observations ORDER BY 1, 2").fetchall()
    finally:
        con.close()


def test_merge_writes_every_row_and_the_run(tmp_path):
    db = tmp_path / "f.duckdb"
    a = _obs([date(2020, 1, 1), date(2020, 2, 1), date(2020, 3, 1), date(2020, 4, 1)], [1.5, None, 3.25, 4.0])
    b = _obs([date(2021, 1, 1)], [10.0])
    manifests = _stage(tmp_path, "r1", {"A": a, "B": b}, failures=[SeriesFailure("C", 400, "Bad Request.  The series does not exist.", 1)])
    assert len(manifests[0].observation_files) == 2  # flushed at 3 rows
    merge_run(db, _record("r1", n_rows=5, n_failed=1, status="partial"), manifests)
    assert _rows(db) == [
        ("A", date(2020, 1, 1), 1.5), ("A", date(2020, 2, 1), None), ("A", date(2020, 3, 1), 3.25),
        ("A", date(2020, 4, 1), 4.0), ("B", date(2021, 1, 1), 10.0),
    ]
    con = duckdb.connect(str(db), read_only=True)
    assert con.execute("SELECT series_id, title, last_run_id FROM series ORDER BY 1").fetchall() == [
        ("A", "title A", "r1"), ("B", "title B", "r1")]
    assert con.execute("SELECT run_id, series_id, http_status, attempts FROM ingest_failures").fetchall() == [("r1", "C", 400, 1)]
    run = con.execute("SELECT status, n_rows, n_failed, parameters->>'$.settings.rate' FROM ingest_runs").fetchone()
    assert run == ("partial", 5, 1, "2")
    # the merge's views of the staged files were temporary: the file holds fredflow's tables only
    assert con.execute("SELECT table_name FROM information_schema.tables WHERE table_type <> 'BASE TABLE'"
                       ).fetchall() == []
    con.close()


def test_rerun_is_idempotent_and_a_revision_replaces_the_old_value(tmp_path):
    db = tmp_path / "f.duckdb"
    original = _obs([date(2020, 1, 1), date(2020, 2, 1)], [1.0, 2.0])
    merge_run(db, _record("r1"), _stage(tmp_path, "r1", {"A": original}))
    merge_run(db, _record("r2"), _stage(tmp_path, "r2", {"A": original}))
    assert _rows(db) == [("A", date(2020, 1, 1), 1.0), ("A", date(2020, 2, 1), 2.0)]
    revised = _obs([date(2020, 2, 1), date(2020, 3, 1)], [2.5, None])
    merge_run(db, _record("r3"), _stage(tmp_path, "r3", {"A": revised}))
    assert _rows(db) == [("A", date(2020, 1, 1), 1.0), ("A", date(2020, 2, 1), 2.5), ("A", date(2020, 3, 1), None)]
    assert [r["run_id"] for r in recent_runs(db)] == ["r3", "r2", "r1"]


def test_failed_merge_commits_nothing(tmp_path):
    db = tmp_path / "f.duckdb"
    merge_run(db, _record("r1"), _stage(tmp_path, "r1", {"A": _obs([date(2020, 1, 1)], [1.0])}))
    manifests = _stage(tmp_path, "r2", {"A": _obs([date(2020, 1, 1)], [9.0]), "B": _obs([date(2020, 1, 1)], [2.0])})
    manifests[0].observation_files.append(str(tmp_path / "missing.parquet"))  # the merge fails mid-way
    with pytest.raises(duckdb.Error):
        merge_run(db, _record("r2"), manifests)
    assert _rows(db) == [("A", date(2020, 1, 1), 1.0)]
    con = duckdb.connect(str(db), read_only=True)
    assert con.execute("SELECT run_id FROM ingest_runs").fetchall() == [("r1",)]
    con.close()


def test_api_key_never_reaches_the_run_record(tmp_path):
    from fredflow.settings import Settings

    settings = Settings(api_key="abcdefghijklmnopqrstuvwxyz012345")
    assert "abcdefghijklmnopqrstuvwxyz012345" not in repr(settings)
    db = tmp_path / "f.duckdb"
    merge_run(db, _record("r1", parameters={"settings": settings.public_dict()}), [])
    con = duckdb.connect(str(db), read_only=True)
    stored = con.execute("SELECT parameters::VARCHAR FROM ingest_runs").fetchone()[0]
    con.close()
    assert "abcdefghijklmnopqrstuvwxyz012345" not in stored and "api_key" not in stored


def test_locked_database_is_a_clear_error(tmp_path):
    import subprocess
    import sys

    db = tmp_path / "f.duckdb"
    holder = subprocess.Popen([sys.executable, "-c",
                               f"import duckdb,sys,time; c=duckdb.connect({str(db)!r}); print('ok', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ok"
        with pytest.raises(StoreBusy, match="locked by another process"):
            connect(db)
    finally:
        holder.kill()
        holder.wait()


def test_replacing_a_slice_deletes_what_is_no_longer_served_and_logs_every_change(tmp_path):
    db = tmp_path / "f.duckdb"
    d = [date(2020, m, 1) for m in range(1, 7)]
    merge_run(db, _record("r1"), _stage(tmp_path, "r1", {"A": _obs(d[:5], [1.0, 2.0, None, 4.0, 5.0]),
                                                         "B": _obs(d[:2], [7.0, 8.0])}), slices=[("A", None, None)])
    # A: d1 revised, d2 removed, d3 "." -> 3.0, d4 unchanged, d5 -> ".", d6 new; B is not in the run
    counts = merge_run(db, _record("r2"), _stage(tmp_path, "r2", {"A": _obs([d[0], d[2], d[3], d[4], d[5]],
                                                                           [1.5, 3.0, 4.0, None, 6.0])}),
                       slices=[("A", None, None)])
    assert _rows(db) == [("A", d[0], 1.5), ("A", d[2], 3.0), ("A", d[3], 4.0), ("A", d[4], None), ("A", d[5], 6.0),
                         ("B", d[0], 7.0), ("B", d[1], 8.0)]
    con = duckdb.connect(str(db), read_only=True)
    log = con.execute("SELECT run_id, series_id, date, old_value, new_value, kind FROM revisions ORDER BY date").fetchall()
    runs = con.execute("SELECT run_id, n_revised, n_deleted, n_added FROM ingest_runs ORDER BY run_id").fetchall()
    con.close()
    assert log == [("r2", "A", d[0], 1.0, 1.5, "revised"), ("r2", "A", d[1], 2.0, None, "deleted"),
                   ("r2", "A", d[2], None, 3.0, "revised"), ("r2", "A", d[4], 5.0, None, "revised"),
                   ("r2", "A", d[5], None, 6.0, "added")]  # r1 was a first load: nothing logged
    assert counts == {"n_revised": 3, "n_deleted": 1, "n_added": 1}
    assert runs == [("r1", 0, 0, 0), ("r2", 3, 1, 1)]


def test_a_bounded_slice_leaves_the_rest_and_a_failed_merge_logs_nothing(tmp_path):
    db = tmp_path / "f.duckdb"
    d = [date(2020, m, 1) for m in range(1, 7)]
    merge_run(db, _record("r1"), _stage(tmp_path, "r1", {"A": _obs(d, [1.0, 2.0, 3.0, 4.0, 5.0, 6.0])}),
              slices=[("A", None, None)])
    # the run fetched only March..April, and FRED no longer serves April
    merge_run(db, _record("r2"), _stage(tmp_path, "r2", {"A": _obs([d[2]], [3.5])}), slices=[("A", d[2], d[3])])
    assert _rows(db) == [("A", d[0], 1.0), ("A", d[1], 2.0), ("A", d[2], 3.5), ("A", d[4], 5.0), ("A", d[5], 6.0)]
    manifests = _stage(tmp_path, "r3", {"A": _obs([d[0]], [9.0])})
    manifests[0].observation_files.append(str(tmp_path / "missing.parquet"))  # the merge fails mid-way
    with pytest.raises(duckdb.Error):
        merge_run(db, _record("r3"), manifests, slices=[("A", None, None)])
    assert _rows(db)[0] == ("A", d[0], 1.0)
    con = duckdb.connect(str(db), read_only=True)
    assert con.execute("SELECT run_id, date, kind FROM revisions ORDER BY date").fetchall() == [
        ("r2", d[2], "revised"), ("r2", d[3], "deleted")]
    con.close()
