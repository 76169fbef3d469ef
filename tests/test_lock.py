"""A notebook or dashboard on the warehouse: a read-only connection held by another process while a run
fetches and merges. Planning reads the database read-only beside it; the merge waits for DuckDB's write
lock up to ``--lock-timeout``, saying once who holds it; on timeout exit 1 naming the run and
``fredflow resume``, staged work kept. A second fredflow run still fails at once, on every runner."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from e2e import assert_db_matches, count
from fredflow import CatalogSpec, ingest
from fredflow.sim.server import DEMO_API_KEY
from fredflow.staging import PidLock


def _env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FRED_", "FREDFLOW_", "PREFECT_API"))}
    env["PREFECT_HOME"] = str(tmp_path / "prefect-home")
    return env


def _reader(db: Path, seconds: float) -> subprocess.Popen:
    """Another program reading the database (read-only), for ``seconds``."""
    proc = subprocess.Popen([sys.executable, "-c", f"import duckdb, time; c = duckdb.connect({str(db)!r}, "
                             f"read_only=True); c.execute('SELECT count(*) FROM observations').fetchall(); "
                             f"print('ok', flush=True); time.sleep({seconds})"],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ok"
    return proc


def _ingest(db: Path, sim, ids, *extra: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fredflow.cli", "ingest", "--db", str(db), "--series", ",".join(ids),
                           "--api-url", sim.url, "--api-key", DEMO_API_KEY, "--rate", "500", "--quiet", *extra],
                          capture_output=True, text=True, timeout=300, env=env)


@pytest.fixture
def seeded(tmp_path, sim, settings_for):
    db = tmp_path / "w.duckdb"
    ingest(db, CatalogSpec(series=tuple(sim.catalog.series_ids[:2])), settings=settings_for(sim))
    return db


def test_reader_released_while_the_merge_waits_the_run_commits(tmp_path, sim, seeded):
    ids = sim.catalog.series_ids[:20]
    reader = _reader(seeded, 8)
    try:
        started = time.monotonic()
        done = _ingest(seeded, sim, ids, env=_env(tmp_path))
        elapsed = time.monotonic() - started
    finally:
        reader.kill()
        reader.wait()
    assert done.returncode == 0, done.stderr
    assert elapsed >= 3, elapsed  # it did wait for the reader
    waiting = [line for line in done.stderr.splitlines() if "waiting up to" in line]
    assert len(waiting) == 1 and f"pid {reader.pid}" in waiting[0], done.stderr
    assert_db_matches(seeded, sim.catalog, ids)
    assert count(seeded, "SELECT count(*) FROM ingest_runs") == [(2,)]


def test_reader_not_released_exits_1_after_lock_timeout_and_resume_completes(tmp_path, sim, seeded):
    ids = sim.catalog.series_ids[:20]
    before = count(seeded, "SELECT series_id, date, value FROM observations ORDER BY ALL")
    reader = _reader(seeded, 120)
    try:
        started = time.monotonic()
        done = _ingest(seeded, sim, ids, "--lock-timeout", "3", env=_env(tmp_path))
        elapsed = time.monotonic() - started
        assert done.returncode == 1, done.stderr
        assert 3 <= elapsed < 30, elapsed
        assert "Traceback" not in done.stderr
        last = done.stderr.strip().splitlines()[-1]
        found = re.search(r"run (\S+) was not committed.*'fredflow resume \1 --db ", last)
        assert found and "--lock-timeout 3s" in last, done.stderr
    finally:
        reader.kill()
        reader.wait()
    assert count(seeded, "SELECT series_id, date, value FROM observations ORDER BY ALL") == before
    run_id = found.group(1)
    assert (tmp_path / "w.staging" / run_id).is_dir()  # the staged work is kept
    resumed = subprocess.run([sys.executable, "-m", "fredflow.cli", "resume", run_id, "--db", str(seeded),
                              "--api-key", DEMO_API_KEY, "--quiet"], capture_output=True, text=True, timeout=120,
                             env=_env(tmp_path))
    assert resumed.returncode == 0, resumed.stderr
    assert_db_matches(seeded, sim.catalog, ids)


@pytest.mark.parametrize("runner", ["asyncio", "thread"])
def test_second_run_fails_at_once_on_every_runner(tmp_path, sim, runner):
    db = tmp_path / "w.duckdb"
    lock = PidLock(db.with_name(db.name + ".lock"))
    lock.acquire()  # as a running fredflow run holds it
    try:
        requests_before = sim.stats()["requests"]
        started = time.monotonic()
        done = _ingest(db, sim, sim.catalog.series_ids[:3], "--runner", runner, env=_env(tmp_path))
        elapsed = time.monotonic() - started
    finally:
        lock.release()
    assert done.returncode == 1, done.stderr
    assert elapsed < 10, elapsed  # before the temporary Prefect server would have started
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("fredflow: fatal:")
    assert f"being written by another fredflow run (pid {os.getpid()})" in done.stderr
    assert sim.stats()["requests"] == requests_before
