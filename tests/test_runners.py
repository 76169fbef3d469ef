"""The Prefect runners end to end: thread pool, Dask LocalCluster with worker processes, an existing cluster.

Every test checks every row in DuckDB against the simulator. Nothing here sets
PREFECT_API_URL: the runner must bring its own API for the worker processes.
"""

from __future__ import annotations

import os
from datetime import date
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from e2e import assert_db_matches, count
from fredflow import CatalogSpec, ingest
from fredflow.errors import BadApiKey
from fredflow.sim.process import SimProcess
from fredflow.sim.server import DEMO_API_KEY, UNREGISTERED_KEY

BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def runner_sim():
    with SimProcess(n_series=60, seed=11, withdrawn=1, long_series=1) as process:
        yield process


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def dask_cluster():
    """A real `dask scheduler` and `dask worker` (2 processes) on 127.0.0.1, started without any Prefect settings."""
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    scheduler = subprocess.Popen([str(BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port", str(port),
                                  "--dashboard-address", ":0"], env=env, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)
    workers = subprocess.Popen([str(BIN / "dask"), "worker", f"tcp://127.0.0.1:{port}", "--nworkers", "2",
                                "--nthreads", "2", "--no-dashboard"], env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    address = f"tcp://127.0.0.1:{port}"
    try:
        from distributed import Client

        with Client(address, timeout=30) as client:
            client.wait_for_workers(2, timeout=60)
        yield address
    finally:
        for proc in (workers, scheduler):
            proc.terminate()
        for proc in (workers, scheduler):
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()


@pytest.mark.parametrize("runner,options", [
    ("thread", {"thread_slots": 4}),
    ("dask", {"workers": 2, "threads_per_worker": 2}),
])
def test_flow_lands_every_row(tmp_path, runner_sim, settings_for, runner, options):
    db = tmp_path / "f.duckdb"
    summary = ingest(db, CatalogSpec(release=1), settings=settings_for(runner_sim), runner=runner,
                     runner_options=options, batch_size=7)
    assert summary.runner == runner
    assert summary.failed == runner_sim.catalog.withdrawn_ids
    assert summary.n_rows == assert_db_matches(db, runner_sim.catalog, runner_sim.catalog.series_ids)
    assert count(db, "SELECT runner, n_series, n_failed FROM ingest_runs") == [(runner, 61, 1)]


def test_dask_on_an_existing_cluster(tmp_path, runner_sim, settings_for, dask_cluster):
    for attempt in range(2):  # twice: long-lived workers must follow a new temporary Prefect API each run
        db = tmp_path / f"f{attempt}.duckdb"
        summary = ingest(db, CatalogSpec(series=tuple(runner_sim.catalog.series_ids[:25])),
                         settings=settings_for(runner_sim), runner="dask",
                         runner_options={"dask_address": dask_cluster})
        assert summary.exit_code == 0
        assert_db_matches(db, runner_sim.catalog, runner_sim.catalog.series_ids[:25])


def test_batch_failing_as_a_whole_is_retried_by_prefect(tmp_path, runner_sim, settings_for, monkeypatch):
    marker = tmp_path / "failed-once"
    # set before the LocalCluster spawns its worker processes, which inherit the environment
    monkeypatch.setenv("FREDFLOW_FAIL_ONCE", "fetch-batch-task")
    monkeypatch.setenv("FREDFLOW_FAIL_FILE", str(marker))
    db = tmp_path / "f.duckdb"
    summary = ingest(db, CatalogSpec(series=tuple(runner_sim.catalog.series_ids[:30])),
                     settings=settings_for(runner_sim), runner="dask",
                     runner_options={"workers": 2, "threads_per_worker": 2}, batch_size=5,
                     head_start=False)  # every batch a Prefect task run (else the head start may fetch them all)
    assert marker.exists()  # one batch really failed once
    assert summary.exit_code == 0
    assert_db_matches(db, runner_sim.catalog, runner_sim.catalog.series_ids[:30])


def test_bad_key_on_dask_is_fatal_and_commits_nothing(tmp_path, runner_sim, settings_for):
    db = tmp_path / "f.duckdb"
    started = time.monotonic()
    with pytest.raises(BadApiKey):
        ingest(db, CatalogSpec(series=tuple(runner_sim.catalog.series_ids[:20])),
               settings=settings_for(runner_sim, api_key=UNREGISTERED_KEY), runner="dask",
               runner_options={"workers": 2, "threads_per_worker": 1}, batch_size=5)
    assert not db.exists()
    assert time.monotonic() - started < 60  # no task retries of a fatal error (2 retries x 4 batches)


def test_asyncio_runner_imports_neither_prefect_nor_dask(runner_sim, tmp_path):
    code = (
        "import sys\n"
        "from fredflow.cli import main\n"
        f"rc = main(['ingest', '--db', {str(tmp_path / 'f.duckdb')!r}, '--series', {runner_sim.catalog.series_ids[0]!r},"
        f" '--api-url', {runner_sim.url!r}, '--api-key', {DEMO_API_KEY!r}, '--quiet'])\n"
        "assert rc == 0, rc\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('prefect', 'prefect_dask', 'dask', 'distributed'))\n"
        "print(loaded)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_runs_appear_on_the_configured_prefect_server(tmp_path, runner_sim, settings_for, monkeypatch):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.sorting import FlowRunSort, TaskRunSort
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from fredflow.runners.prefect.api_server import prefect_api

    with prefect_api() as api_url:  # stands in for `prefect server start`
        monkeypatch.setenv("PREFECT_API_URL", api_url)
        with temporary_settings({PREFECT_API_URL: api_url}):
            summary = ingest(tmp_path / "f.duckdb", CatalogSpec(series=tuple(runner_sim.catalog.series_ids[:12])),
                             settings=settings_for(runner_sim), runner="dask",
                             runner_options={"workers": 2, "threads_per_worker": 1}, batch_size=3,
                             head_start=False)  # every batch a task run: the head start may fetch them all first
            assert summary.exit_code == 0
            with get_client(sync_client=True) as client:
                # explicit limit/sort: prefect 3.8.8's client sends null defaults its server rejects (422)
                flow_runs = client.read_flow_runs(limit=50, sort=FlowRunSort.START_TIME_DESC)
                ingest_runs = [r for r in flow_runs if r.name == "f.duckdb · 12 series · full"]
                assert ingest_runs and ingest_runs[0].state.is_completed()
                params = ingest_runs[0].parameters
                assert DEMO_API_KEY not in repr(params)
                deadline = time.monotonic() + 30
                while True:  # task-run states arrive as events, asynchronously
                    task_runs = client.read_task_runs(limit=200, sort=TaskRunSort.EXPECTED_START_TIME_DESC)
                    names = sorted(t.name for t in task_runs if t.flow_run_id == ingest_runs[0].id)
                    if len([n for n in names if n.startswith("batch-")]) == 4 or time.monotonic() > deadline:
                        break
                    time.sleep(1)
                assert [n for n in names if n.startswith("batch-")] == ["batch-0", "batch-1", "batch-2", "batch-3"]


def test_prefect_yaml_deployments_load_and_validate():
    import yaml
    from prefect.flows import load_flow_from_entrypoint

    from conftest import REPO

    config = yaml.safe_load((REPO / "prefect.yaml").read_text())
    deployments = {d["name"]: d for d in config["deployments"]}
    assert set(deployments) == {"daily-incremental", "backfill"}
    assert deployments["daily-incremental"]["schedules"][0] == {"cron": "0 6 * * *", "timezone": "America/Chicago"}
    names = {}
    for deployment in deployments.values():
        flow = load_flow_from_entrypoint(deployment["entrypoint"])
        names[deployment["name"]] = flow.name
        validated = flow.validate_parameters(deployment["parameters"])  # raises on a wrong name or type
        assert str(validated["options"].db) == "data/fred.duckdb"
        assert "api_key" not in deployment["parameters"]
    assert names == {"daily-incremental": "fredflow-ingest", "backfill": "fredflow-backfill"}


def test_backfill_windows_are_contiguous_and_disjoint():
    from datetime import date, timedelta

    from fredflow.run.batches import windows

    cuts = windows(date(1947, 1, 1), date(2026, 11, 20), 10)
    assert cuts[0][0] == date(1947, 1, 1) and cuts[-1][1] == date(2026, 11, 20)
    for (_, end), (start, _) in zip(cuts, cuts[1:]):
        assert start == end + timedelta(days=1)
    assert cuts[0] == (date(1947, 1, 1), date(1956, 12, 31))
    assert windows(date(2020, 2, 29), date(2031, 1, 1), 5)[0] == (date(2020, 2, 29), date(2025, 2, 27))


def test_backfill_and_incremental_through_the_flow(tmp_path, settings_for):
    """Backfill windows on Dask worker processes, then an incremental day on the thread pool:
    the flow's parameters carry the mode, windows and state through Prefect like any run."""
    from fredflow.api import backfill

    with SimProcess(n_series=40, seed=4, long_series=0) as sim:
        db = tmp_path / "f.duckdb"
        ids = sim.catalog.series_ids[:30]
        first = backfill(db, CatalogSpec(series=tuple(ids)), start=date(1600, 1, 1), window="100y",
                         settings=settings_for(sim), runner="dask",
                         runner_options={"workers": 2, "threads_per_worker": 2}, batch_size=8)
        assert (first.mode, first.runner, first.exit_code) == ("backfill", "dask", 0)
        assert first.n_rows == assert_db_matches(db, sim.catalog, ids)

        ours = sorted(set(sim.advance(days=1, changed=10)) & set(ids))
        sim.reset_stats()
        day = ingest(db, CatalogSpec(series=tuple(ids)), settings=settings_for(sim), runner="thread",
                     runner_options={"thread_slots": 2}, mode="incremental")
        assert (day.mode, day.n_series, day.n_unchanged) == ("incremental", len(ours), 30 - len(ours))
        assert day.requests == sim.stats()["requests"] <= len(ours) + 2
        assert_db_matches(db, sim.catalog, ids)
