"""The head start of ``--runner thread|dask`` (runners/prefect/headstart.py): batches fetched in the run's own
process until the flow's task runner is up, then handed over.

* :class:`HeadStart` on its own (no Prefect): real simulator, real plan, real TokenService. The batches it
  fetched plus the ones it handed back are exactly the plan's, disjoint, every series once; its staged rows
  are the simulator's; a fatal error inside it is raised by ``hand_over``/``join``; ``abort`` leaves no thread.
* ``ingest(runner="thread"|"dask")`` against the simulator's strict token bucket: every row once, the
  minimum number of requests (no batch fetched twice across the hand-over), no second above rate + burst,
  no 429, and both the head start and Prefect task runs fetched batches.
* SIGINT while the head start sends (the Prefect server not ready yet): exit 130, nothing committed, no
  process left, ``fredflow resume`` finishes exactly.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from e2e import RecordingProgress, assert_db_matches
from fredflow import CatalogSpec, FatalRunError, ingest
from fredflow.options import RunOptions
from fredflow.ratelimit.service import TokenService
from fredflow.run.plan import plan_run
from fredflow.runners.prefect.headstart import HeadStart
from fredflow.sim.process import SimProcess
from fredflow.sim.server import DEMO_API_KEY, UNREGISTERED_KEY
from test_signals import _assert_gone, _db_unchanged, _descendants, _env, _wait_for


@pytest.fixture(scope="module")
def hs_sim():
    """No rate limit at the server; 20 ms per request: a head start paced at a few req/s is mid-run for seconds."""
    with SimProcess(n_series=40, seed=31, obs_per_series=150, long_series=0, withdrawn=0, latency=0.02) as process:
        yield process


def _plan(tmp_path, sim, settings, n_series=24, batch_size=2):
    options = RunOptions.build(db=tmp_path / "h.duckdb", catalog=CatalogSpec(series=tuple(sim.catalog.series_ids[:n_series])),
                               runner="thread", batch_size=batch_size)
    return plan_run(options, settings, slots=2)


def _wait(predicate, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


@contextlib.contextmanager
def _started(tmp_path, sim, settings, progress, plan=None):
    """A HeadStart of a real plan (24 series, 12 batches) paced by a real TokenService; its staging removed after."""
    plan = plan or _plan(tmp_path, sim, settings)
    try:
        with TokenService(settings.rate, settings.burst) as quota:
            yield plan, HeadStart(plan, progress, quota.url).start()
    finally:
        plan.staging.remove()


def _head_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "fredflow-head-start"]


# --------------------------------------------------------------------------- HeadStart on its own


def test_head_start_fetches_then_hands_over_exactly_the_plans_batches(tmp_path, hs_sim, settings_for):
    settings = settings_for(hs_sim, rate=8, burst=1, concurrency=2)
    progress = RecordingProgress()
    with _started(tmp_path, hs_sim, settings, progress) as (plan, head):
        _wait(lambda: len(head.manifests) >= 2, "two batches fetched by the head start")
        left = head.hand_over()
        assert head.hand_over() == []  # the iterator is spent: a second call hands nothing twice
        manifests = head.join()
        assert not _head_threads()
        planned = list(plan.batches())
        fetched = sorted(m.batch_index for m in manifests)
        handed = [b.index for b in left]
        assert fetched and handed, (fetched, handed)  # some fetched, some left: this is a hand-over
        assert not set(fetched) & set(handed)
        assert sorted(fetched + handed) == [b.index for b in planned]
        # at the hand-over it kept two seconds of requests at the run's rate, at most twice its concurrency
        # (8 req/s, concurrency 2: 4 series, two batches), fetched while the first task runs start
        assert len(head.kept) == 2 and set(head.kept) <= set(fetched)
        assert max(fetched) == max(head.kept) < min(handed)
        series = [sid for m in manifests for sid in m.succeeded] + [sid for b in left for sid in b.series_ids]
        assert sorted(series) == sorted(hs_sim.catalog.series_ids[:24])  # every series once
        # progress: each fetched batch reported once, from the head start's thread before the hand-over,
        # from this (the flow's) thread after it
        assert sorted(progress.batches) == fetched
        assert set(progress.threads) <= {"fredflow-head-start", threading.current_thread().name}
        # the staged files are the simulator's rows
        by_sid = {}
        for m in manifests:
            assert m.check_files() is None
            for path in m.observation_files:
                table = pq.read_table(path)
                for sid in set(table.column("series_id").to_pylist()):
                    by_sid[sid] = table.filter(pc.equal(table.column("series_id"), sid))
        assert set(by_sid) == {sid for m in manifests for sid in m.succeeded}
        for sid, table in by_sid.items():
            truth = hs_sim.catalog.observations(sid)
            assert table.column("date").to_pylist() == truth.column("date").to_pylist(), sid
            assert table.column("value").to_pylist() == truth.column("value").to_pylist(), sid
        # the requests are exactly metadata + observations of each fetched series
        assert sum(m.requests for m in manifests) == 2 * sum(len(m.succeeded) for m in manifests)


class SlowProgress(RecordingProgress):
    """batch_done takes 0.5 s, and says when the head start's thread is inside it."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()
        self.inside = 0

    def batch_done(self, manifest) -> None:  # noqa: ANN001
        self.inside += 1
        self.entered.set()
        time.sleep(0.5)
        super().batch_done(manifest)
        self.inside -= 1


def test_after_hand_over_only_the_flows_thread_reports_progress(tmp_path, hs_sim, settings_for):
    """hand_over returns once the head start's thread is out of the progress display: from then on the flow's
    thread reports every batch (the display is not reported to from two threads at once)."""
    settings = settings_for(hs_sim, rate=20, burst=1, concurrency=2)
    progress = SlowProgress()
    with _started(tmp_path, hs_sim, settings, progress) as (plan, head):
        assert progress.entered.wait(30), "no batch reported"
        left = head.hand_over()  # the head start's thread is inside batch_done now
        assert progress.inside == 0, "the head start still reports progress after hand_over returned"
        manifests = head.join()
        assert sorted([m.batch_index for m in manifests] + [b.index for b in left]) == list(range(12))
        assert sorted(progress.batches) == sorted(m.batch_index for m in manifests)


def test_head_start_fatal_error_is_raised_by_hand_over_and_join(tmp_path, hs_sim, settings_for):
    settings = settings_for(hs_sim, api_key=UNREGISTERED_KEY, rate=50, burst=1, concurrency=2)
    planned = _plan(tmp_path, hs_sim, settings_for(hs_sim))  # the plan's own requests with a good key
    plan = dataclasses.replace(planned, settings=settings)  # the key is refused once the head start sends
    with _started(tmp_path, hs_sim, settings, RecordingProgress(), plan) as (_, head):
        _wait(lambda: head.error is not None, "the head start's fatal error")
        with pytest.raises(FatalRunError):
            head.hand_over()
        with pytest.raises(FatalRunError):
            head.join()
        assert not _head_threads()
        assert head.manifests == []
        assert UNREGISTERED_KEY not in str(head.error)


def test_head_start_abort_cancels_in_flight_batches_and_leaves_no_thread(tmp_path, hs_sim, settings_for):
    settings = settings_for(hs_sim, rate=4, burst=1, concurrency=2)
    hs_sim.reset_stats()
    with _started(tmp_path, hs_sim, settings, RecordingProgress()) as (_, head):
        _wait(lambda: hs_sim.stats()["requests"] >= 1, "the head start's first request")
        head.abort()
        assert not _head_threads()
        sent = hs_sim.stats()["requests"]
        time.sleep(0.5)
        assert hs_sim.stats()["requests"] == sent  # nothing sends after abort
        assert sent < 2 * 24  # cancelled, not fetched to the end of the plan


# --------------------------------------------------------------------------- through ingest()


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture
def prefect_lines():
    """The flow's and tasks' Prefect run-logger lines of runs in this process."""
    import fredflow.runners.prefect.flows  # noqa: F401 - Prefect configures its loggers on import: first

    handler = _Lines()
    loggers = [logging.getLogger(name) for name in ("prefect.flow_runs", "prefect.task_runs")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.addHandler(handler)
        lg.setLevel(logging.INFO)
    yield handler.lines
    for lg, level in zip(loggers, levels):
        lg.removeHandler(handler)
        lg.setLevel(level)


SERVER_RATE, SERVER_BURST = 3, 2


@pytest.fixture(scope="module")
def strict_sim():
    """FRED's kind of limit: a strict token bucket (a request over it gets a 429)."""
    with SimProcess(n_series=90, seed=41, obs_per_series=100, long_series=0, withdrawn=0,
                    rate=SERVER_RATE, burst=SERVER_BURST) as process:
        yield process


HEAD_LINE = re.compile(r"(\d+) batches taken by the head start in the flow's process, (\d+) by task runs")


@pytest.mark.parametrize("runner,shape", [("thread", {"thread_slots": 3}),
                                          ("dask", {"workers": 2, "threads_per_worker": 1})])
def test_ingest_with_head_start_holds_the_rate_across_the_hand_over(runner, shape, tmp_path, strict_sim,
                                                                   settings_for, prefect_lines):
    # 90 series, 181 requests at 3 req/s: ~60 s, longer than the temporary server's and cluster's start even on
    # a loaded 2-core machine (40 s seen for both at load 4.4)
    ids = strict_sim.catalog.series_ids[:90]
    db = tmp_path / "r.duckdb"
    strict_sim.reset_stats()
    progress = RecordingProgress()
    summary = ingest(db, CatalogSpec(series=tuple(ids)), runner=runner, batch_size=3, progress=progress,
                     settings=settings_for(strict_sim, rate=SERVER_RATE, burst=1, concurrency=4), **shape)
    stats = strict_sim.stats()
    assert summary.exit_code == 0 and summary.n_series == 90
    assert summary.n_rows == assert_db_matches(db, strict_sim.catalog, ids)
    # metadata + observations of each series, each once: no batch fetched by both sides of the hand-over
    # (and the plan's one series/updates page)
    assert stats["admitted"] == 2 * len(ids) + 1 == summary.requests, stats
    assert stats["requests"] == stats["admitted"] + stats["throttled"]
    assert stats["throttled"] == 0, stats  # one TokenService paced both: the rate held throughout
    assert max(stats["admitted_per_second"]) <= SERVER_RATE + SERVER_BURST
    assert sorted(progress.batches) == list(range(30))  # every batch reported once
    # both fetched: the head start some batches, Prefect task runs the rest
    (found,) = [HEAD_LINE.search(line) for line in prefect_lines if HEAD_LINE.search(line)]
    by_head, by_tasks = int(found.group(1)), int(found.group(2))
    assert by_head + by_tasks == 30
    assert by_head >= 1, prefect_lines
    assert by_tasks >= 1, "the head start fetched every batch: the task runner took none (server or cluster slower than 60 s?)"
    if runner == "thread":  # the tasks' own lines (a Dask task logs in its worker's process)
        task_batches = [line for line in prefect_lines if re.match(r"batch \d+: \d+ series on thread ", line)]
        assert len(task_batches) == by_tasks, task_batches


# --------------------------------------------------------------------------- SIGINT during the head start


def _server_ready(children) -> bool:
    """Does the temporary Prefect server (a child running uvicorn) answer its health check yet?"""
    for child in children:
        try:
            cmd = child.cmdline()
        except Exception:  # noqa: BLE001 - gone
            continue
        if "uvicorn" in cmd and "--port" in cmd:
            port = cmd[cmd.index("--port") + 1]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=1) as response:
                    return response.status == 200
            except OSError:
                return False
    return False


def test_sigint_during_head_start_exits_130_commits_nothing_and_resume_finishes(tmp_path, hs_sim,
                                                                                tmp_path_factory):
    home = tmp_path_factory.mktemp("hs-prefect-home")  # a cold Prefect database: the server boots for seconds
    db, staging = tmp_path / "s.duckdb", tmp_path / "s.staging"
    ids = hs_sim.catalog.series_ids[:40]
    proc = subprocess.Popen(
        [sys.executable, "-m", "fredflow.cli", "ingest", "--db", str(db), "--series", ",".join(ids),
         "--api-url", hs_sim.url, "--api-key", DEMO_API_KEY, "--rate", "4", "--burst", "1", "--concurrency", "2",
         "--batch-size", "2", "--quiet", "--runner", "thread"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(home))
    try:
        _wait_for(lambda: len(list(staging.glob("*/batch-*.manifest.json"))) >= 1, "a batch staged", proc)
        started = _descendants(proc.pid)
        assert not _server_ready(started), "the Prefect server was up already: not during the head start"
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, (proc.returncode, err)
    assert "Traceback" not in err and DEMO_API_KEY not in err + out, err
    found = re.search(r"run (\S+) was not committed.*'fredflow resume \1 --db (.+)'", err.strip().splitlines()[-1])
    assert found, err
    run_id = found.group(1)
    _assert_gone(started)
    _db_unchanged(db)
    staged = {int(p.name.split(".")[0].split("-")[1]) for p in staging.glob(f"{run_id}/batch-*.manifest.json")}
    assert 1 <= len(staged) < 20
    unstaged = [sid for b in range(20) if b not in staged for sid in ids[2 * b:2 * b + 2]]

    hs_sim.reset_stats()
    done = subprocess.run([sys.executable, "-m", "fredflow.cli", "resume", run_id, "--db", str(db),
                           "--api-url", hs_sim.url, "--api-key", DEMO_API_KEY, "--json", "--quiet"],
                          capture_output=True, text=True, timeout=180, env=_env(home))
    assert done.returncode == 0, done.stderr
    assert hs_sim.stats()["requests"] == 2 * len(unstaged)  # only the batches without a manifest
    assert_db_matches(db, hs_sim.catalog, ids)


# --------------------------------------------------------------------------- a cluster process that never gets ready


@pytest.mark.timeout(180)  # without the bound the run waits forever: fail instead
def test_a_wedged_cluster_process_fails_the_run_in_bounded_time(tmp_path, hs_sim, settings_for, monkeypatch):
    """The LocalCluster process hangs before printing its address (e.g. a worker that never answers its
    warm-up: Client.run has no timeout): the run fails with one line after FREDFLOW_CLUSTER_START_TIMEOUT,
    the head start is stopped, the process is gone, nothing is committed (it used to wait forever)."""
    from fredflow.errors import FredflowError
    from fredflow.runners.prefect import runner as runner_module
    from fredflow.runners.prefect.cluster import ClusterProcess

    started: list[subprocess.Popen] = []

    class WedgedCluster(ClusterProcess):
        def __init__(self, workers: int, threads_per_worker: int) -> None:
            self.process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"],
                                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True)
            started.append(self.process)
            self.address = runner_module.concurrent.futures.Future()
            threading.Thread(target=self._read, daemon=True).start()

    monkeypatch.setattr(runner_module, "ClusterProcess", WedgedCluster)
    monkeypatch.setenv("FREDFLOW_CLUSTER_START_TIMEOUT", "3")
    db = tmp_path / "w.duckdb"
    with pytest.raises(FredflowError, match="LocalCluster was not ready after 3 s"):
        ingest(db, CatalogSpec(series=tuple(hs_sim.catalog.series_ids[:6])), runner="dask", workers=1,
               threads_per_worker=1, batch_size=2, settings=settings_for(hs_sim, rate=50, burst=1, concurrency=2))
    (process,) = started
    assert process.poll() is not None  # stopped by the run
    assert not _head_threads()
    _db_unchanged(db)
