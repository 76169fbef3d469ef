"""Signals from schedulers and terminals: SIGINT and SIGTERM during the fetch and inside the merge
transaction, on asyncio and on the Prefect thread runner (and a hard kill of the parent).

Each: exit 130 / 143 within its bound, the last stderr line names the run id and the ``fredflow resume``
command, no traceback, every process the run started is gone (process tree via psutil), the database
is unchanged, and ``fredflow resume`` completes the run exactly."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from e2e import assert_db_matches, count
from fredflow.sim.process import SimProcess
from fredflow.sim.server import DEMO_API_KEY

BOUND_S = {"asyncio": 5.0, "thread": 20.0, "dask": 20.0}
EXIT = {signal.SIGINT: 130, signal.SIGTERM: 143}


@pytest.fixture(scope="module")
def slow_sim():
    """Every request takes 0.05 s: with --concurrency 2 the fetch of 30 series lasts seconds."""
    with SimProcess(n_series=40, seed=13, obs_per_series=120, long_series=0, latency=0.05) as process:
        yield process


@pytest.fixture(scope="module")
def prefect_home(tmp_path_factory):
    return tmp_path_factory.mktemp("signals-prefect-home")


def _env(prefect_home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FRED_", "FREDFLOW_", "PREFECT_API"))}
    env["PREFECT_HOME"] = str(prefect_home)
    env.update(extra)
    return env


def _start(db: Path, sim, ids, runner: str, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "fredflow.cli", "ingest", "--db", str(db), "--series", ",".join(ids),
         "--api-url", sim.url, "--api-key", DEMO_API_KEY, "--rate", "200", "--concurrency", "2",
         "--batch-size", "3", "--quiet", "--runner", runner],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _wait_for(predicate, what: str, proc: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"exited ({proc.returncode}) before {what}: {proc.stderr.read()}")
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


def _assert_gone(processes: list[psutil.Process], timeout: float = 10) -> None:
    _, alive = psutil.wait_procs(processes, timeout=timeout)
    alive = [p for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not alive, [(p.pid, p.cmdline()) for p in alive]


def _db_unchanged(db: Path) -> None:
    if db.exists():
        tables = {r[0] for r in count(db, "SELECT table_name FROM information_schema.tables")}
        if "ingest_runs" in tables:
            assert count(db, "SELECT count(*) FROM ingest_runs") == [(0,)]
            assert count(db, "SELECT count(*) FROM observations") == [(0,)]


@pytest.mark.parametrize("runner", ["asyncio", "thread"])
@pytest.mark.parametrize("where", ["fetch", "merge"])
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_exits_cleanly_and_resume_completes(tmp_path, slow_sim, prefect_home, runner, where, signum):
    _signal_case(tmp_path, slow_sim, prefect_home, runner, where, signum)


def test_sigterm_on_dask_stops_workers_and_server(tmp_path, slow_sim, prefect_home):
    """The Dask runner (a local cluster of worker processes): one case, the costliest to start."""
    _signal_case(tmp_path, slow_sim, prefect_home, "dask", "fetch", signal.SIGTERM)


def _signal_case(tmp_path, slow_sim, prefect_home, runner, where, signum):
    db, staging = tmp_path / "s.duckdb", tmp_path / "s.staging"
    ids = slow_sim.catalog.series_ids[:30]
    if where == "merge":
        marker = tmp_path / "paused"
        proc = _start(db, slow_sim, ids, runner,
                      _env(prefect_home, FREDFLOW_PAUSE_AT="merge-before-commit", FREDFLOW_PAUSE_FILE=str(marker)))
        _wait_for(marker.exists, "the merge transaction", proc)
    else:
        proc = _start(db, slow_sim, ids, runner, _env(prefect_home))
        _wait_for(lambda: len(list(staging.glob("*/batch-*.manifest.json"))) >= 1, "a staged batch", proc)
    if runner == "dask":
        time.sleep(1.0)  # every worker process up
    started = _descendants(proc.pid)
    if runner != "asyncio":
        assert started, "the Prefect runner started no temporary server?"
    sent = time.monotonic()
    proc.send_signal(signum)
    try:
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    elapsed = time.monotonic() - sent
    assert proc.returncode == EXIT[signum], (proc.returncode, err)
    assert elapsed < BOUND_S[runner], (elapsed, err)
    assert "Traceback" not in err, err
    last = err.strip().splitlines()[-1]
    found = re.search(r"run (\S+) was not committed.*'fredflow resume \1 --db (.+)'", last)
    assert found and signal.Signals(signum).name in last, err
    run_id = found.group(1)
    _assert_gone(started)
    _db_unchanged(db)

    done = subprocess.run([sys.executable, "-m", "fredflow.cli", "resume", run_id, "--db", str(db),
                           "--api-key", DEMO_API_KEY, "--json", "--quiet"],
                          capture_output=True, text=True, timeout=120, env=_env(prefect_home))
    assert done.returncode == 0, done.stderr
    assert_db_matches(db, slow_sim.catalog, ids)
    assert count(db, "SELECT run_id FROM ingest_runs") == [(run_id,)]


@pytest.mark.parametrize("runner", ["thread"])
def test_hard_kill_of_the_parent_leaves_no_process(tmp_path, slow_sim, prefect_home, runner):
    """kill -9 of fredflow: no finally runs, yet the temporary Prefect server (and any Dask worker) goes."""
    db = tmp_path / "k.duckdb"
    marker = tmp_path / "paused"
    proc = _start(db, slow_sim, slow_sim.catalog.series_ids[:30], runner,
                  _env(prefect_home, FREDFLOW_PAUSE_AT="after-staging", FREDFLOW_PAUSE_FILE=str(marker)))
    _wait_for(marker.exists, "every batch staged", proc)
    time.sleep(1.0)  # the watchdog has seen every child
    started = _descendants(proc.pid)
    assert len(started) >= 2, [p.cmdline() for p in started]  # the server and its watchdog
    proc.kill()
    proc.wait(timeout=30)
    _assert_gone(started, timeout=15)
    _db_unchanged(db)
