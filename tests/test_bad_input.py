"""Bad files and bad input: a ``--db`` that is not a usable DuckDB file, a database whose tables are not
fredflow's, a database of someone else's tables, a full disk during the merge, a series file with a
byte-order mark, two databases sharing one ``--staging-dir``, a refused key on the Prefect runner."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import orjson
import pytest

from e2e import assert_db_matches, count
from fredflow import CatalogSpec, ingest
from fredflow.api import resumable_runs, resume
from fredflow.errors import FatalRunError
from fredflow.sim.server import DEMO_API_KEY, UNREGISTERED_KEY


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FRED_", "FREDFLOW_", "PREFECT_API"))}
    env["PREFECT_HOME"] = str(tmp_path / "prefect-home")
    env.update(extra)
    return env


def _cli(tmp_path: Path, sim, *args: str, key: str = DEMO_API_KEY, env: dict | None = None):
    return subprocess.run([sys.executable, "-m", "fredflow.cli", *args, "--api-url", sim.url, "--api-key", key,
                           "--rate", "500", "--quiet"],
                          capture_output=True, text=True, timeout=300, env=env or _env(tmp_path))


def _one_line(err: str) -> str:
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    ours = [line for line in lines if line.startswith("fredflow:")]
    assert len(ours) == 1 and lines[-1] == ours[0], err
    return ours[0]


def _tables(db: Path) -> list[tuple]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute("SELECT table_name, column_name FROM information_schema.columns ORDER BY ALL").fetchall()
    finally:
        con.close()


@pytest.mark.parametrize("kind", ["directory", "text file"])
def test_db_that_is_not_a_duckdb_file_is_one_line(tmp_path, sim, kind):
    db = tmp_path / "x.duckdb"
    if kind == "directory":
        db.mkdir()
    else:
        db.write_text("not a database\n")
    done = _cli(tmp_path, sim, "ingest", "--db", str(db), "--series", ",".join(sim.catalog.series_ids[:2]))
    assert done.returncode == 1
    line = _one_line(done.stderr)
    assert str(db) in line and ("directory" in line if kind == "directory" else "not a valid DuckDB" in line), line
    if kind == "text file":
        assert db.read_text() == "not a database\n"


def test_read_only_db_is_one_line(tmp_path, sim, settings_for):
    """A database fredflow may not write: a 0444 file, or (as root, who ignores permission bits) a file on a
    read-only mount."""
    folder = tmp_path / "ro"
    folder.mkdir()
    mounted = os.geteuid() == 0 and subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(folder)], capture_output=True).returncode == 0
    db = folder / "x.duckdb"
    try:
        ingest(db, CatalogSpec(series=tuple(sim.catalog.series_ids[:1])), settings=settings_for(sim))
        before = db.read_bytes()
        if mounted:
            assert subprocess.run(["mount", "-o", "remount,ro", str(folder)], capture_output=True).returncode == 0
        else:
            db.chmod(0o444)
        done = _cli(tmp_path, sim, "ingest", "--db", str(db), "--series", ",".join(sim.catalog.series_ids[:2]))
        assert done.returncode == 1 and "read-only" in _one_line(done.stderr).lower(), done.stderr
        assert db.read_bytes() == before
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def test_foreign_observations_table_names_the_mismatch_and_writes_nothing(tmp_path, sim):
    db = tmp_path / "theirs.duckdb"
    con = duckdb.connect(str(db))
    con.execute("CREATE TABLE observations (ticker VARCHAR, day DATE, price DOUBLE)")
    con.execute("INSERT INTO observations VALUES ('X', DATE '2020-01-01', 1.5)")
    con.close()
    before, size = _tables(db), db.stat().st_size
    done = _cli(tmp_path, sim, "ingest", "--db", str(db), "--series", ",".join(sim.catalog.series_ids[:2]))
    assert done.returncode == 1
    line = _one_line(done.stderr)
    assert "table observations" in line and "ticker" in line and "series_id" in line, line
    assert _tables(db) == before and db.stat().st_size == size  # not one fredflow table added
    assert count(db, "SELECT * FROM observations") == [("X", __import__("datetime").date(2020, 1, 1), 1.5)]


def test_unrelated_tables_only_says_fredflow_adds_its_tables(tmp_path, sim):
    db = tmp_path / "mixed.duckdb"
    con = duckdb.connect(str(db))
    con.execute("CREATE TABLE prices (ticker VARCHAR, price DOUBLE)")
    con.close()
    ids = sim.catalog.series_ids[:3]
    done = _cli(tmp_path, sim, "ingest", "--db", str(db), "--series", ",".join(ids))
    assert done.returncode == 0, done.stderr
    assert "fredflow will add its tables" in done.stderr and "prices" in done.stderr
    assert_db_matches(db, sim.catalog, ids)
    assert ("prices", "ticker") in _tables(db)


def test_disk_full_during_the_merge_is_one_error_rolled_back_and_resumable(tmp_path, sim, settings_for, monkeypatch):
    from fredflow.destinations import duckdb as destination

    db = tmp_path / "f.duckdb"
    ids = sim.catalog.series_ids[:6]
    ingest(db, CatalogSpec(series=tuple(ids[:1])), settings=settings_for(sim))
    before = count(db, "SELECT series_id, date, value FROM observations ORDER BY ALL")
    real_upsert = destination._upsert

    def full_disk(con, *args, **kwargs):
        real_upsert(con, *args, **kwargs)
        raise duckdb.IOException('Could not write file "f.duckdb.wal": No space left on device')

    monkeypatch.setattr(destination, "_upsert", full_disk)
    with pytest.raises(FatalRunError) as failed:
        ingest(db, CatalogSpec(series=tuple(ids)), settings=settings_for(sim))
    text = str(failed.value)
    assert "\n" not in text and str(db) in text and "No space left on device" in text and "rolled back" in text
    assert count(db, "SELECT series_id, date, value FROM observations ORDER BY ALL") == before
    monkeypatch.setattr(destination, "_upsert", real_upsert)
    (run,) = resumable_runs(db)
    assert f"fredflow resume {run.run_id}" in text
    summary = resume(db, run.run_id, settings=settings_for(sim))
    assert summary.exit_code == 0
    assert_db_matches(db, sim.catalog, ids)


def test_series_file_with_a_byte_order_mark(tmp_path, sim):
    ids = sim.catalog.series_ids[:3]
    series_file = tmp_path / "ids.txt"
    series_file.write_bytes(b"\xef\xbb\xbf" + "\r\n".join(ids).encode() + b"\r\n")  # Notepad / Excel
    db = tmp_path / "bom.duckdb"
    done = _cli(tmp_path, sim, "ingest", "--db", str(db), "--series-file", str(series_file), "--json")
    assert done.returncode == 0, done.stderr
    assert orjson.loads(done.stdout)["n_failed"] == 0
    assert_db_matches(db, sim.catalog, ids)


def test_two_databases_sharing_a_staging_dir_list_only_their_own_runs(tmp_path, sim):
    shared = tmp_path / "staging"
    a, b = tmp_path / "a.duckdb", tmp_path / "b.duckdb"
    marker = tmp_path / "paused"
    victim = subprocess.Popen(
        [sys.executable, "-m", "fredflow.cli", "ingest", "--db", str(b), "--series", ",".join(sim.catalog.series_ids[:4]),
         "--api-url", sim.url, "--api-key", DEMO_API_KEY, "--staging-dir", str(shared), "--quiet"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=_env(tmp_path, FREDFLOW_PAUSE_AT="after-staging", FREDFLOW_PAUSE_FILE=str(marker)))
    deadline = time.monotonic() + 120
    while not marker.exists():
        assert victim.poll() is None and time.monotonic() < deadline, victim.stderr.read() if victim.stderr else ""
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=30)
    assert len(resumable_runs(b, shared)) == 1
    assert resumable_runs(a, shared) == []
    listing = subprocess.run([sys.executable, "-m", "fredflow.cli", "runs", "--db", str(a), "--staging-dir",
                              str(shared), "--json"], capture_output=True, text=True, timeout=60)
    assert listing.returncode == 0 and orjson.loads(listing.stdout) == [], listing.stderr + listing.stdout


def test_refused_key_on_the_prefect_runner_ends_with_fredflows_line(tmp_path, sim):
    db = tmp_path / "k.duckdb"
    started = time.monotonic()
    done = _cli(tmp_path, sim, "ingest", "--db", str(db), "--series", ",".join(sim.catalog.series_ids[:4]),
                "--runner", "thread", key=UNREGISTERED_KEY)
    elapsed = time.monotonic() - started
    assert done.returncode == 1, done.stderr
    line = _one_line(done.stderr)
    assert "not registered" in line and "All connection attempts failed" not in done.stderr, done.stderr
    assert elapsed < 90, elapsed  # the temporary Prefect server's start-up, then fredflow stops at once
