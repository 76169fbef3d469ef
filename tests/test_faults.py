"""Fault injection: a flaky, rate-limited FRED; kill -9 of the ingest process mid-fetch on every runner;
a Dask worker killed mid-run; a read-only or full staging directory; bad input at the CLI; a database
held by another run or another program.

What is already proved elsewhere is not repeated here (see README "Guarantees"): kill -9 after
staging and inside the merge transaction (test_pipeline.py), usage errors (test_cli.py), single
fault kinds and 429 back-off at the client (test_fred.py), a DuckDB lock at connect (test_store.py).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import orjson
import psutil
import pytest

from e2e import assert_db_matches, count
from fredflow import CatalogSpec, ingest
from fredflow.sim.process import SimProcess
from fredflow.sim.server import DEMO_API_KEY, UNREGISTERED_KEY

BIN = Path(sys.executable).parent


def _cli(*args: str, env: dict[str, str] | None = None, stderr=subprocess.PIPE) -> subprocess.Popen:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("FRED_", "FREDFLOW_"))}
    full_env.update(env or {})
    return subprocess.Popen([sys.executable, "-m", "fredflow.cli", *args], stdout=subprocess.PIPE,
                            stderr=stderr, text=True, env=full_env)


def _run_cli(*args: str, timeout: float = 120) -> tuple[int, str, str]:
    proc = _cli(*args)
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def _fatal_line(err: str) -> str:
    """The CLI's error: exactly one ``fredflow:`` line, the last one, and no traceback."""
    lines = err.strip().splitlines()
    assert "Traceback" not in err, err
    ours = [line for line in lines if line.startswith("fredflow:")]
    assert len(ours) == 1 and lines[-1] == ours[0], err
    return ours[0]


def _wait_for(predicate, what: str, timeout: float = 120, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"process exited ({proc.returncode}) before {what}: "
                                 f"{proc.stderr.read() if proc.stderr else ''}")
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _db_state(db: Path):
    return (count(db, "SELECT series_id, date, value FROM observations ORDER BY ALL"),
            count(db, "SELECT run_id, n_rows FROM ingest_runs ORDER BY ALL"))


@pytest.fixture(scope="module")
def slow_sim():
    """Every request takes 0.1 s: with a small --concurrency a run lasts seconds, long enough to hit it mid-fetch."""
    with SimProcess(n_series=40, seed=5, obs_per_series=300, long_series=0, withdrawn=0, latency=0.1) as process:
        yield process


# --------------------------------------------------------------------------- a flaky, rate-limited FRED


def test_mixed_faults_and_429s_land_exactly_and_retries_are_recorded(tmp_path):
    """8 % of requests fail: 5 % 500/502/504, 2 % hang past the client's 1 s timeout, 1 % truncated JSON
    (one kind drawn per faulty request, weighted by repetition); the server admits 40 req/s while the client
    asks for 80, so 429s come in bursts. Every series lands exactly, and every extra request is a counted retry."""
    kinds = ("500", "500", "502", "502", "504", "hang", "hang", "truncate")
    with SimProcess(n_series=60, seed=37, obs_per_series=400, long_series=0, withdrawn=0, rate=40, burst=4,
                    fault_rate=0.08, fault_kinds=kinds, hang_seconds=3) as flaky:
        db = tmp_path / "f.duckdb"
        code, out, err = _run_cli(
            "-v", "ingest", "--db", str(db), "--release", "1", "--api-url", flaky.url, "--api-key", DEMO_API_KEY,
            "--rate", "80", "--burst", "4", "--concurrency", "8", "--timeout", "1", "--max-attempts", "8",
            "--batch-size", "10", "--json")
        assert code == 0, err
        summary = orjson.loads(out)
        ids = flaky.catalog.series_ids
        assert summary["n_failed"] == 0 and summary["n_series"] == len(ids)
        assert summary["n_rows"] == assert_db_matches(db, flaky.catalog, ids)  # exact, no duplicates
        assert count(db, "SELECT count(*) FROM (SELECT DISTINCT series_id, date FROM observations)") == \
            [(summary["n_rows"],)]

        server = flaky.stats()
        # seed 37 draws every kind within its first 51 admitted requests: the whole mix was exercised
        assert set(server["faults"]) == {"500", "502", "504", "hang", "truncate"}, server["faults"]
        assert server["throttled"] > 0 and summary["throttled"] == server["throttled"]
        # every request the server saw is counted, and every one beyond the listing + one per series is a retry
        assert summary["requests"] == server["requests"]
        assert summary["retries"] == summary["requests"] - (1 + len(ids)) > 0
        run = count(db, "SELECT run_id, requests, retries, throttled, n_rows, status FROM ingest_runs")
        assert run == [(summary["run_id"], summary["requests"], summary["retries"], summary["throttled"],
                        summary["n_rows"], "succeeded")]
        # the key was on the command line: it is in no log line (debug level), output, run record or db byte
        assert DEMO_API_KEY not in out + err
        assert DEMO_API_KEY.encode() not in db.read_bytes()
        assert count(db, "SELECT count(*) FROM ingest_runs WHERE parameters::VARCHAR LIKE '%api_key%'") == [(0,)]


# --------------------------------------------------------------------------- kill -9 mid-fetch


def _descendants(pid: int) -> dict[psutil.Process, str]:
    """Every process under ``pid``, with its command line (read now: a dead process has none)."""
    found = {}
    with contextlib.suppress(psutil.NoSuchProcess):
        for proc in psutil.Process(pid).children(recursive=True):
            with contextlib.suppress(psutil.Error):
                found[proc] = " ".join(proc.cmdline())
    return found


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _is_prefect_server(cmdline: str) -> bool:
    return "prefect.server" in cmdline


def _orphans_after_kill(children: dict[psutil.Process, str], timeout: float = 20) -> list[str]:
    """Wait for the killed run's processes to go; return what stays (the temporary Prefect server
    is known to stay: wait only for the others), and kill it, since this test started it."""
    deadline = time.monotonic() + timeout
    while True:
        alive = {p: cmd for p, cmd in children.items() if _alive(p)}
        if all(_is_prefect_server(cmd) for cmd in alive.values()) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    return list(alive.values())


@pytest.mark.parametrize("runner,options", [
    ("asyncio", []),
    ("thread", ["--thread-slots", "2"]),
    ("dask", ["--workers", "2", "--threads-per-worker", "1"]),
])
def test_kill_during_fetch_leaves_db_unchanged_and_rerun_completes(tmp_path, slow_sim, settings_for, runner,
                                                                   options):
    db = tmp_path / "f.duckdb"
    ids = slow_sim.catalog.series_ids[:32]
    ingest(db, CatalogSpec(series=tuple(ids[:4])), settings=settings_for(slow_sim))  # a committed run before
    before = _db_state(db)

    log = tmp_path / "victim.log"  # a file, not a pipe: processes left behind would hold a pipe open
    with open(log, "w") as log_file:
        victim = _cli("-v", "ingest", "--db", str(db), "--series", ",".join(ids), "--api-url", slow_sim.url,
                      "--api-key", DEMO_API_KEY, "--rate", "500", "--concurrency", "2", "--batch-size", "4",
                      "--runner", runner, *options, stderr=log_file)
    staged = tmp_path / "f.staging"
    children: dict[psutil.Process, str] = {}
    try:
        _wait_for(lambda: any(staged.glob("*/batch-*.manifest.json")), "a first staged batch", proc=victim)
        assert len(list(staged.glob("*/batch-*.manifest.json"))) < len(ids) // 4  # still fetching
        children = _descendants(victim.pid)
        victim.send_signal(signal.SIGKILL)
        assert victim.wait(timeout=30) == -signal.SIGKILL
    finally:
        if victim.poll() is None:
            children = children or _descendants(victim.pid)
            victim.kill()
            victim.wait()
        # The LocalCluster's worker processes follow their parent. The temporary Prefect server does not
        # (a known leak after kill -9, see README "Guarantees"); the test reaps it.
        orphans = _orphans_after_kill(children)
    assert all(_is_prefect_server(cmd) for cmd in orphans), orphans
    assert DEMO_API_KEY not in log.read_text()

    assert _db_state(db) == before  # DuckDB opens and holds nothing of the killed run
    summary = ingest(db, CatalogSpec(series=tuple(ids)), settings=settings_for(slow_sim), runner=runner,
                     runner_options={"thread": {"thread_slots": 2},
                                     "dask": {"workers": 2, "threads_per_worker": 1}}.get(runner), batch_size=8)
    assert summary.exit_code == 0
    assert summary.n_rows == assert_db_matches(db, slow_sim.catalog, ids)
    assert count(db, "SELECT count(*) FROM ingest_runs") == [(2,)]


# --------------------------------------------------------------------------- a Dask worker dies mid-run


@pytest.fixture
def killable_cluster():
    """A `dask scheduler` and two separate `dask worker --nworkers 1` (with nannies) on 127.0.0.1."""
    from distributed import Client

    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    address = f"tcp://127.0.0.1:{port}"
    procs = [subprocess.Popen([str(BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port", str(port),
                               "--dashboard-address", ":0"], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)]
    for _ in range(2):
        procs.append(subprocess.Popen([str(BIN / "dask"), "worker", address, "--nworkers", "1", "--nthreads", "2",
                                       "--no-dashboard"], env=env, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL))
    try:
        with Client(address, timeout=30) as client:
            client.wait_for_workers(2, timeout=60)
        yield address
    finally:
        for proc in procs[1:]:
            proc.kill()  # a nanny's worker process exits with its nanny; a graceful close takes seconds
        procs[0].terminate()
        for proc in procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_dask_worker_killed_mid_run_completes_or_commits_nothing(tmp_path, slow_sim, settings_for,
                                                                 killable_cluster):
    from distributed import Client

    db = tmp_path / "f.duckdb"
    ids = slow_sim.catalog.series_ids[:40]
    ingest(db, CatalogSpec(series=tuple(ids[:4])), settings=settings_for(slow_sim))
    before = _db_state(db)
    killed: list[tuple[str, int]] = []

    def kill_a_busy_worker() -> None:
        staged = tmp_path / "f.staging"
        deadline = time.monotonic() + 120
        while not any(staged.glob("*/batch-*.manifest.json")) and time.monotonic() < deadline:
            time.sleep(0.05)
        with Client(killable_cluster, timeout=15) as client:
            pids = client.run(os.getpid)
            busy = {addr: len(keys) for addr, keys in client.processing().items() if keys}
            victim = max(busy, key=busy.get) if busy else next(iter(pids))
            os.kill(pids[victim], signal.SIGKILL)
            killed.append((victim, busy.get(victim, 0)))

    killer = threading.Thread(target=kill_a_busy_worker, daemon=True)
    killer.start()
    try:
        summary = ingest(db, CatalogSpec(series=tuple(ids)), settings=settings_for(slow_sim, concurrency=4),
                         runner="dask", runner_options={"dask_address": killable_cluster}, batch_size=4)
    except Exception as exc:  # allowed: a clean failure, with nothing of the run committed
        killer.join(timeout=30)
        assert killed, exc
        assert _db_state(db) == before, exc
        warnings.warn(f"the run failed cleanly after a Dask worker was killed, instead of recovering: {exc!r}")
        return
    killer.join(timeout=30)
    assert killed and killed[0][1] > 0, killed  # a worker really died with batches in flight
    assert summary.exit_code == 0
    assert summary.n_rows == assert_db_matches(db, slow_sim.catalog, ids)
    assert count(db, "SELECT count(*) FROM ingest_runs") == [(2,)]


# --------------------------------------------------------------------------- staging directory unusable


def _mount_tmpfs(path: Path, options: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        return False
    return subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
                          capture_output=True).returncode == 0


def _umount(path: Path) -> None:
    if subprocess.run(["umount", str(path)], capture_output=True).returncode != 0:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


@contextlib.contextmanager
def read_only_dir(path: Path):
    """A read-only tmpfs when root (root ignores permission bits), else a directory without write permission."""
    if _mount_tmpfs(path, "ro,size=1m"):
        try:
            yield path
        finally:
            _umount(path)
    else:
        path.chmod(0o555)
        try:
            yield path
        finally:
            path.chmod(0o755)


@contextlib.contextmanager
def nearly_full_dir(path: Path, free_bytes: int):
    """A 1 MiB tmpfs filled up to ``free_bytes`` (needs root to mount)."""
    if not _mount_tmpfs(path, "size=1m"):
        pytest.skip("a full staging directory needs a small tmpfs, and mounting one needs root")
    try:
        total = os.statvfs(path).f_blocks * os.statvfs(path).f_frsize
        (path / "filler").write_bytes(b"\0" * (total - free_bytes))
        yield path
    finally:
        _umount(path)


def _ingest_with_staging(tmp_path, sim, staging: Path, ids) -> tuple[int, str, str]:
    return _run_cli("ingest", "--db", str(tmp_path / "f.duckdb"), "--series", ",".join(ids), "--api-url", sim.url,
                    "--api-key", DEMO_API_KEY, "--rate", "1000", "--concurrency", "16", "--staging-dir",
                    str(staging), "--quiet")


def test_read_only_staging_dir_is_fatal_with_one_line(tmp_path, sim, settings_for):
    db = tmp_path / "f.duckdb"
    ingest(db, CatalogSpec(series=tuple(sim.catalog.series_ids[:2])), settings=settings_for(sim))
    before = _db_state(db)
    with read_only_dir(tmp_path / "ro") as staging:
        code, _, err = _ingest_with_staging(tmp_path, sim, staging, sim.catalog.series_ids[:20])
    assert code == 1, err
    line = _fatal_line(err)
    assert f"cannot create staging folder {staging}/" in line and "--staging-dir" in line, line
    assert "(nothing was committed)" in line
    assert _db_state(db) == before


def test_full_staging_dir_is_fatal_with_one_line(tmp_path, sim, settings_for):
    db = tmp_path / "f.duckdb"
    ingest(db, CatalogSpec(series=tuple(sim.catalog.series_ids[:2])), settings=settings_for(sim))
    before = _db_state(db)
    # room for the run's folder and run.json, not for a batch of observations
    with nearly_full_dir(tmp_path / "full", free_bytes=8192) as staging:
        code, _, err = _ingest_with_staging(tmp_path, sim, staging, sim.catalog.series_ids[:40])
        leftovers = [p.name for p in staging.iterdir() if p.name != "filler"]
    assert code == 1, err
    line = _fatal_line(err)
    assert "cannot write staging file" in line and "No space left on device" in line, line
    assert "--staging-dir" in line and "(nothing was committed)" in line
    assert leftovers == []  # the failed run's folder is removed
    assert _db_state(db) == before


# --------------------------------------------------------------------------- bad input at the CLI


@pytest.mark.parametrize("args,needle", [
    (["--api-key", UNREGISTERED_KEY, "--series", "S0001,S0002"], "api_key is not registered"),
    (["--api-key", "NOT-A-KEY", "--series", "S0001"], "not a 32 character alpha-numeric lower-case string"),
    (["--api-key", DEMO_API_KEY, "--release", "424242"], "The release does not exist"),
    (["--api-key", DEMO_API_KEY, "--category", "424242"], "The category does not exist"),
])
def test_fatal_input_exits_1_with_one_line_and_commits_nothing(tmp_path, sim, args, needle):
    db = tmp_path / "f.duckdb"
    code, out, err = _run_cli("ingest", "--db", str(db), "--api-url", sim.url, "--rate", "1000", "--quiet", *args)
    assert code == 1, err
    line = _fatal_line(err)
    assert needle in line and "(nothing was committed)" in line, line
    for key in (UNREGISTERED_KEY, "NOT-A-KEY"):
        assert key not in out + err
    assert not db.exists()
    assert not any((tmp_path / "f.staging").iterdir())


# --------------------------------------------------------------------------- one database, two writers


def test_second_run_on_the_same_db_fails_at_once_and_the_first_completes(tmp_path, slow_sim):
    db = tmp_path / "f.duckdb"
    ids = slow_sim.catalog.series_ids[:24]
    common = ["--db", str(db), "--api-url", slow_sim.url, "--api-key", DEMO_API_KEY, "--rate", "500", "--quiet"]
    first = _cli("ingest", *common, "--series", ",".join(ids), "--concurrency", "2")
    lock = tmp_path / "f.duckdb.lock"
    try:
        _wait_for(lambda: lock.exists() and lock.read_text().strip() == str(first.pid), "the first run's lock",
                  proc=first)
        started = time.monotonic()
        code, _, err = _run_cli("ingest", *common, "--series", ",".join(ids[:3]))
        assert code == 1, err
        line = _fatal_line(err)
        assert f"{db} is being written by another fredflow run (pid {first.pid})" in line, line
        assert first.poll() is None  # it failed while the first run was still fetching, not at merge time
        assert time.monotonic() - started < 30
        assert first.wait(timeout=120) == 0, first.stderr.read()
    finally:
        if first.poll() is None:
            first.kill()
    assert_db_matches(db, slow_sim.catalog, ids)
    assert count(db, "SELECT count(*) FROM ingest_runs") == [(1,)]
    assert not any((tmp_path / "f.staging").iterdir())  # the refused run left nothing behind


def test_db_held_by_another_program_fails_before_fetching(tmp_path, sim, settings_for):
    db = tmp_path / "f.duckdb"
    ingest(db, CatalogSpec(series=tuple(sim.catalog.series_ids[:2])), settings=settings_for(sim))
    before = _db_state(db)
    holder = subprocess.Popen([sys.executable, "-c", f"import duckdb, time; c = duckdb.connect({str(db)!r}); "
                               "print('ok', flush=True); time.sleep(120)"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ok"
        requests_before = sim.stats()["requests"]
        code, _, err = _run_cli("ingest", "--db", str(db), "--series", ",".join(sim.catalog.series_ids[:20]),
                                "--api-url", sim.url, "--api-key", DEMO_API_KEY, "--quiet")
        assert code == 1, err
        line = _fatal_line(err)
        assert "is locked by another process" in line, line
        assert sim.stats()["requests"] == requests_before  # refused before a single request
    finally:
        holder.kill()
        holder.wait()
    assert _db_state(db) == before
