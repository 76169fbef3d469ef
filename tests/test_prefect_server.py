"""The Prefect user's path against a real ``prefect server start`` (one per module, private PREFECT_HOME,
free ports, always stopped), exactly as docs/README-prefect.md tells it:

``prefect work-pool create`` → ``prefect deploy --all`` from the repository root (both deployments of
prefect.yaml) → the CLI listings → the scheduler's upcoming runs of the cron → a process worker
(``prefect worker start --pool fredflow``) running triggered runs of each deployment against the
simulator, every row checked → what the UI shows of them (names, states, artifacts, logs, tags) →
``fredflow serve`` running a scheduled run of its own deployment → no api key in Prefect's database.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from conftest import REPO
from e2e import assert_db_matches, count
from fredflow.sim.process import SimProcess
from fredflow.sim.server import DEMO_API_KEY

BIN = Path(sys.executable).parent
#: Keys the simulator registers besides DEMO_API_KEY (the worker's FRED_API_KEY): one only in a Prefect
#: Secret block, one only passed as a plain run parameter. None of them may end up in Prefect's database.
BLOCK_KEY = "blockkey" + "0" * 24
PARAM_KEY = "paramkey" + "1" * 24
#: What fast runs against the simulator override: settings merge field by field over the deployment's.
FAST = {"rate": 500, "burst": 20, "backoff_base": 0.01, "backoff_max": 0.05}

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 30) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)  # its own session (start_new_session): the flow-run processes too
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


class Server:
    def __init__(self, home: Path, url: str, env: dict[str, str], log: Path) -> None:
        self.home, self.url, self.env, self.log = home, url, env, log

    def cli(self, *args: str, check: bool = True, timeout: float = 120, **env: str) -> subprocess.CompletedProcess:
        result = subprocess.run([str(BIN / "prefect"), *args], cwd=REPO, env={**self.env, **env},
                                capture_output=True, text=True, timeout=timeout)
        if check:
            assert result.returncode == 0, f"prefect {' '.join(args)}: {result.returncode}\n{result.stdout}\n{result.stderr}"
        return result

    def client(self):  # noqa: ANN201
        from prefect.client.orchestration import get_client

        return get_client(sync_client=True)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """``prefect server start`` on a free port with its own PREFECT_HOME (database, settings)."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    home = tmp_path_factory.mktemp("prefect-server-home")
    port = _free_port()
    url = f"http://127.0.0.1:{port}/api"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "FRED_"))}
    env.update(PREFECT_HOME=str(home), PREFECT_API_URL=url, PREFECT_SERVER_ANALYTICS_ENABLED="false",
               PREFECT_UI_ENABLED="false", PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}", COLUMNS="250",
               PREFECT_CLI_WRAP_LINES="false")
    log = home / "server.log"
    with log.open("wb") as out:
        # the scheduler every 5 s instead of 60: the test deletes its runs and waits for new ones
        proc = subprocess.Popen([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                                env={**env, "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "5"},
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        import httpx

        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, log.read_text()
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "prefect server start did not answer in 120 s"
            time.sleep(0.5)
        with temporary_settings({PREFECT_API_URL: url}):
            yield Server(home, url, env, log)
    finally:
        _stop(proc)


@pytest.fixture(scope="module")
def sim():
    with SimProcess(n_series=60, seed=23, withdrawn=1, long_series=0, keys=(BLOCK_KEY, PARAM_KEY)) as process:
        yield process


@pytest.fixture(scope="module")
def deployed(server):
    """The README's steps: a process work pool, then ``prefect deploy --all`` from the repository root."""
    server.cli("work-pool", "create", "fredflow", "--type", "process")
    result = server.cli("--no-prompt", "deploy", "--all")
    out = result.stdout
    assert "Deployment 'fredflow-ingest/daily-incremental' successfully created" in out, out
    assert "Deployment 'fredflow-backfill/backfill' successfully created" in out, out
    with server.client() as client:
        return {d.name: d for d in (client.read_deployment_by_name("fredflow-ingest/daily-incremental"),
                                    client.read_deployment_by_name("fredflow-backfill/backfill"))}


@pytest.fixture(scope="module")
def worker(server, deployed, tmp_path_factory):
    """``FRED_API_KEY=… prefect worker start --pool fredflow``: flow runs read the key from its environment.
    The first batch task any of its runs starts fails once (a failpoint): Prefect retries it."""
    folder = tmp_path_factory.mktemp("worker")
    log = folder / "worker.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([str(BIN / "prefect"), "worker", "start", "--pool", "fredflow"], cwd=REPO,
                                env={**server.env, "FRED_API_KEY": DEMO_API_KEY, "PREFECT_WORKER_QUERY_SECONDS": "2",
                                     "FREDFLOW_FAIL_ONCE": "fetch-batch-task",
                                     "FREDFLOW_FAIL_FILE": str(folder / "failed-once")},
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield log
    finally:
        _stop(proc)


def _wait_final(client, flow_run_id, timeout: float = 300):  # noqa: ANN001, ANN202
    deadline = time.monotonic() + timeout
    while True:
        run = client.read_flow_run(flow_run_id)
        if run.state and run.state.is_final():
            return run
        assert time.monotonic() < deadline, f"flow run {run.name} still {run.state and run.state.name}"
        time.sleep(1)


def _logs(client, flow_run_id) -> list[str]:  # noqa: ANN001
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.client.schemas.sorting import LogSort

    logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])), limit=200,
                            sort=LogSort.TIMESTAMP_ASC)
    return [entry.message for entry in logs]


def _logs_with(client, flow_run_id, needle: str, timeout: float = 60.0) -> str:  # noqa: ANN001
    """The run's logs, once ``needle`` is among them (or after ``timeout`` s): a flow run's process ships
    its logs in the background, and may still be sending them when the run's state is final."""
    deadline = time.monotonic() + timeout
    while True:
        text = "\n".join(_logs(client, flow_run_id))
        if needle in text or time.monotonic() > deadline:
            return text
        time.sleep(0.5)


def _task_runs(client, flow_run_id):  # noqa: ANN001, ANN202
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.client.schemas.sorting import TaskRunSort

    return client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])),
                                 limit=200, sort=TaskRunSort.EXPECTED_START_TIME_DESC)


def _artifact(client, key: str):  # noqa: ANN202
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    return client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])),
                                 sort=ArtifactSort.CREATED_DESC, limit=50)


# --------------------------------------------------------------------------- deploy, listings, scheduler


def test_deploy_all_creates_both_deployments_as_declared(deployed):
    daily, backfill = deployed["daily-incremental"], deployed["backfill"]
    assert (daily.work_pool_name, backfill.work_pool_name) == ("fredflow", "fredflow")
    assert set(daily.tags) == {"fredflow", "daily"} and set(backfill.tags) == {"fredflow", "backfill"}
    assert [s.schedule.cron for s in daily.schedules] == ["0 6 * * *"] and not backfill.schedules
    for deployment in (daily, backfill):  # one run at a time; a second one waits for the slot
        assert deployment.global_concurrency_limit.limit == 1
        assert str(deployment.concurrency_options.collision_strategy).endswith("ENQUEUE")
        assert deployment.parameters["options"]["db"] == "data/fred.duckdb"
        assert "api_key" not in deployment.parameters
    # the typed options render as a form: the schema knows every RunOptions field and the catalog's
    schema = daily.parameter_openapi_schema
    assert {"options", "settings", "api_key", "api_key_secret"} <= set(schema["properties"])
    assert '"format": "password"' in json.dumps(schema["properties"]["api_key"])  # a masked input in the UI


def test_cli_listings(server, deployed):
    deployments = server.cli("deployment", "ls").stdout
    assert "fredflow-ingest/daily-incremental" in deployments and "fredflow-backfill/backfill" in deployments
    assert "fredflow" in server.cli("work-pool", "ls").stdout


def test_scheduler_creates_the_upcoming_runs_of_the_cron(server, deployed):
    from prefect.client.schemas.filters import (DeploymentFilter, DeploymentFilterId, FlowRunFilter,
                                                FlowRunFilterState, FlowRunFilterStateType)
    from prefect.client.schemas.objects import StateType
    from prefect.client.schemas.sorting import FlowRunSort

    daily = deployed["daily-incremental"]

    def scheduled(client):  # noqa: ANN001, ANN202
        return client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[daily.id])),
            flow_run_filter=FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.SCHEDULED]))),
            sort=FlowRunSort.EXPECTED_START_TIME_ASC, limit=50)

    with server.client() as client:
        deadline = time.monotonic() + 60
        while not (runs := scheduled(client)):
            assert time.monotonic() < deadline, "no scheduled run of daily-incremental"
            time.sleep(1)
        # the server's scheduler service (not only deployment creation) makes them: delete, wait for new ones
        for run in runs:
            client.delete_flow_run(run.id)
        deadline = time.monotonic() + 60
        while not (runs := scheduled(client)):
            assert time.monotonic() < deadline, f"the scheduler made no new run:\n{server.log.read_text()[-3000:]}"
            time.sleep(1)
    chicago = [r.expected_start_time.astimezone(ZoneInfo("America/Chicago")) for r in runs]
    assert all((t.hour, t.minute) == (6, 0) for t in chicago), chicago
    assert len({t.date() for t in chicago}) == len(chicago)  # one a day
    assert all(r.auto_scheduled for r in runs)
    listing = server.cli("flow-run", "ls", "--state", "SCHEDULED").stdout
    assert "fredflow-ingest" in listing
    assert "bulk_dml" not in server.log.read_text()  # sqlalchemy 2.1 broke the scheduler this way


# --------------------------------------------------------------------------- runs through the worker


@pytest.fixture(scope="module")
def worker_runs(server, deployed, worker, serving, sim, tmp_path_factory):
    """Four triggered runs at once on the process worker; two of them of one deployment (the second waits):

    * ``partial``: daily-incremental from the CLI (``prefect deployment run --params``), key from the
      worker's environment, on Dask, with a withdrawn series: ends ``Partial``;
    * ``plain_key``: daily-incremental with the key as a plain ``api_key`` parameter, threads;
    * ``backfill``: the backfill deployment, key from a Secret block named by ``api_key_secret``.
    """
    from prefect.blocks.system import Secret

    Secret(value=BLOCK_KEY).save("fred-api-key", overwrite=True)
    data = tmp_path_factory.mktemp("worker-data")
    ids = sim.catalog.series_ids
    withdrawn = sim.catalog.withdrawn_ids
    live = [s for s in ids if s not in withdrawn]
    plans = {
        "partial": dict(deployment="fredflow-ingest/daily-incremental", ids=live[:14] + withdrawn, params={
            "options": {"db": str(data / "daily.duckdb"), "catalog": {"series": live[:14] + withdrawn},
                        "mode": "incremental", "runner": "dask", "workers": 1, "threads_per_worker": 2,
                        "batch_size": 5},
            "settings": {"api_url": sim.url, **FAST}}),
        "plain_key": dict(deployment="fredflow-ingest/daily-incremental", ids=live[14:24], params={
            "options": {"db": str(data / "plain.duckdb"), "catalog": {"series": live[14:24]},
                        "mode": "incremental", "runner": "thread", "thread_slots": 2},
            "settings": {"api_url": sim.url, **FAST}, "api_key": PARAM_KEY}),
        "backfill": dict(deployment="fredflow-backfill/backfill", ids=live[24:34], params={
            "options": {"db": str(data / "backfill.duckdb"), "catalog": {"series": live[24:34]},
                        "mode": "backfill", "start": "1600-01-01", "window": "100y", "runner": "thread",
                        "thread_slots": 2},
            "settings": {"api_url": sim.url, **FAST}, "api_key_secret": "fred-api-key"}),
    }
    ids_of = {}
    # the README's command, for the first
    out = server.cli("deployment", "run", plans["partial"]["deployment"], "--params",
                     json.dumps(plans["partial"]["params"])).stdout
    ids_of["partial"] = uuid.UUID(re.search(r"UUID: ([0-9a-f-]{36})", out).group(1))
    with server.client() as client:
        for name in ("plain_key", "backfill"):
            deployment = client.read_deployment_by_name(plans[name]["deployment"])
            ids_of[name] = client.create_flow_run_from_deployment(deployment.id, parameters=plans[name]["params"]).id
        runs = {name: _wait_final(client, run_id) for name, run_id in ids_of.items()}
    return {name: dict(plans[name], run=runs[name], db=Path(plans[name]["params"]["options"]["db"])) for name in plans}


def test_triggered_runs_land_every_row(worker_runs, sim, worker):
    for name, plan in worker_runs.items():
        run = plan["run"]
        assert run.state.is_completed(), f"{name}: {run.state.name} {run.state.message}\n{worker.read_text()[-4000:]}"
        expected = [s for s in plan["ids"] if s not in sim.catalog.withdrawn_ids]
        n_rows = assert_db_matches(plan["db"], sim.catalog, expected)
        assert run.state.message.endswith(f"{n_rows:,} rows, " + run.state.message.split(" rows, ")[1])
        mode = "backfill" if name == "backfill" else "incremental"
        assert count(plan["db"], "SELECT mode, n_rows FROM ingest_runs") == [(mode, n_rows)]


def test_a_run_with_failed_series_ends_partial(worker_runs, sim):
    run = worker_runs["partial"]["run"]
    assert (run.state.type.value, run.state.name) == ("COMPLETED", "Partial")  # alertable: prefect.flow-run.Partial
    assert f"1 of 15 series failed ({sim.catalog.withdrawn_ids[0]})" in run.state.message
    assert worker_runs["plain_key"]["run"].state.name == "Completed"


def test_flow_run_names_say_database_catalog_and_mode(worker_runs):
    names = {name: plan["run"].name for name, plan in worker_runs.items()}
    assert names == {"partial": "daily.duckdb · 15 series · incremental",
                     "plain_key": "plain.duckdb · 10 series · incremental",
                     "backfill": "backfill.duckdb · 10 series · backfill"}


def test_settings_merge_field_by_field_over_the_deployment(worker_runs):
    import orjson

    (stored,) = count(worker_runs["partial"]["db"], "SELECT parameters FROM ingest_runs")[0]
    settings = orjson.loads(stored)["settings"] if isinstance(stored, str) else stored["settings"]
    # the run gave api_url and rate; prefect.yaml's concurrency 8 stays (Prefect alone would drop it)
    assert settings["rate"] == 500 and settings["concurrency"] == 8 and settings["api_url"].startswith("http://127.")


def test_deployment_runs_queue_instead_of_colliding(worker_runs):
    first, second = sorted((worker_runs["partial"]["run"], worker_runs["plain_key"]["run"]),
                           key=lambda r: r.start_time)
    assert second.start_time >= first.end_time  # concurrency_limit 1, ENQUEUE: the second waited


def test_artifacts_hold_the_runs_real_figures(server, worker_runs, sim):
    with server.client() as client:
        summaries = _artifact(client, "daily-incremental-summary")
        failures = _artifact(client, "daily-incremental-failures")
        backfill = _artifact(client, "backfill-summary")
    by_run = {a.flow_run_id: a for a in summaries}
    assert set(by_run) == {worker_runs["partial"]["run"].id, worker_runs["plain_key"]["run"].id}  # one key, versions
    partial = worker_runs["partial"]
    result = count(partial["db"], "SELECT run_id, n_rows, requests, retries, throttled FROM ingest_runs")[0]
    run_id, n_rows, requests, retries, throttled = result
    markdown = by_run[partial["run"].id].data
    for line in ("| status | **partial**: 1 series failed |", f"| rows | {n_rows:,} |",
                 f"| requests | {requests:,} |", f"| retries | {retries:,} |", f"| 429s | {throttled:,} |",
                 f"| run id | `{run_id}` |", "| catalog | 15 series |", "| mode | incremental (15 of 15 catalog",
                 "| runner | dask (1 workers × 2 threads) |", "| utilization |", "| seconds |"):
        assert line in markdown, (line, markdown)
    table = next(a for a in failures if a.flow_run_id == partial["run"].id).data
    rows = json.loads(table) if isinstance(table, str) else table
    assert [r["series_id"] for r in rows] == sim.catalog.withdrawn_ids
    assert backfill and "| mode | backfill |" in backfill[0].data


def test_logs_and_task_runs_show_where_and_how(server, worker_runs):
    partial, plain, backfill = (worker_runs[n]["run"] for n in ("partial", "plain_key", "backfill"))
    expected = {"partial": "api key from FRED_API_KEY in the environment",
                "plain": "api key from the api_key parameter",
                "backfill": "api key from the Prefect Secret block 'fred-api-key'"}
    with server.client() as client:
        logs = {name: _logs_with(client, run.id, expected[name]) for name, run in
                (("partial", partial), ("plain", plain), ("backfill", backfill))}
        tasks = _task_runs(client, partial.id)
    assert "api key from FRED_API_KEY in the environment" in logs["partial"]
    assert "api key from the api_key parameter" in logs["plain"]
    assert "api key from the Prefect Secret block 'fred-api-key'" in logs["backfill"]
    # each batch task says where it ran: the Dask worker process's name and address
    where = re.findall(r"batch (\d+): \d+ series on dask worker \S+ \(tcp://127\.0\.0\.1:\d+\)", logs["partial"])
    assert set(where) == {"0", "1", "2"}, logs["partial"]
    batches = [t for t in tasks if t.name.startswith("batch-")]
    assert len(batches) == 3
    assert all({"runner:dask", "mode:incremental"} <= set(t.tags) for t in tasks), [t.tags for t in tasks]


def test_a_task_retry_has_a_log_line_saying_why(server, worker_runs):
    with server.client() as client:
        logs = "\n".join(line for plan in worker_runs.values() for line in _logs(client, plan["run"].id))
    retries = re.findall(r"batch-\d+ attempt 1 of 3 failed, Prefect retries it: .*injected failure", logs)
    assert len(retries) == 1, logs
    assert len(re.findall(r"batch \d+: \d+ series on .* \(attempt 2 of 3\)", logs)) == 1


def test_plain_key_parameter_is_masked_where_prefect_shows_it(server, worker_runs):
    with server.client() as client:
        run = client.read_flow_run(worker_runs["plain_key"]["run"].id)
    assert run.parameters["api_key"] == "**********"
    assert PARAM_KEY not in json.dumps(run.parameters)
    listing = server.cli("flow-run", "inspect", str(run.id)).stdout
    assert PARAM_KEY not in listing and "**********" in listing


def test_a_bad_parameter_is_named_as_a_parameter(server, deployed, worker, tmp_path, sim):
    """An error from the flow names the parameter the user filled in, not a CLI flag."""
    with server.client() as client:
        run_id = client.create_flow_run_from_deployment(deployed["backfill"].id, parameters={
            "options": {"db": str(tmp_path / "x.duckdb"), "catalog": {"series": ["A"], "release": 10},
                        "start": "1900-01-01", "runner": "thread"}}).id
        run = _wait_final(client, run_id, timeout=120)
        logs = "\n".join(_logs(client, run_id))
    assert run.state.is_failed()
    assert "options.catalog.series, options.catalog.series_file, options.catalog.release or " \
           "options.catalog.category (got series, release)" in (run.state.message + logs)
    assert "--series" not in run.state.message


# --------------------------------------------------------------------------- fredflow serve


def test_serve_refuses_to_take_over_a_work_pool_deployment(server, deployed, sim, tmp_path):
    result = subprocess.run([str(BIN / "fredflow"), "serve", "--db", str(tmp_path / "s.duckdb"), "--release", "1",
                             "--name", "daily-incremental", "--api-url", sim.url], cwd=REPO,
                            env={**server.env, "FRED_API_KEY": DEMO_API_KEY}, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 2, result.stderr
    assert "runs on work pool 'fredflow'" in result.stderr and "pick another --name" in result.stderr
    with server.client() as client:
        daily = client.read_deployment_by_name("fredflow-ingest/daily-incremental")
    assert daily.work_pool_name == "fredflow" and not daily.paused


@pytest.fixture(scope="module")
def serving(server, deployed, sim, tmp_path_factory):
    """``fredflow serve`` with a one-minute cron, started before the worker's runs (its first scheduled
    run is due within a minute and runs meanwhile)."""
    folder = tmp_path_factory.mktemp("serve")
    ids = sim.catalog.series_ids[40:46]
    db, log = folder / "served.duckdb", folder / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([str(BIN / "fredflow"), "serve", "--db", str(db), "--series", ",".join(ids),
                                 "--api-url", sim.url, "--rate", "500", "--runner", "thread", "--cron", "* * * * *"],
                                cwd=REPO, env={**server.env, "FRED_API_KEY": DEMO_API_KEY,
                                               "PREFECT_RUNNER_POLL_FREQUENCY": "2"},
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield proc, db, ids, log
    finally:
        _stop(proc)


def test_serve_runs_a_scheduled_run(server, deployed, sim, serving):
    """The server's scheduler makes the runs of serve's cron; serve runs them in its own processes."""
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
    from prefect.client.schemas.sorting import FlowRunSort

    proc, db, ids, log = serving
    with server.client() as client:
        deadline = time.monotonic() + 150
        finished = None
        while finished is None:
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, f"no scheduled run of fredflow-serve finished:\n{log.read_text()}"
            try:
                served = client.read_deployment_by_name("fredflow-ingest/fredflow-serve")
            except Exception:  # noqa: BLE001 - not created yet
                time.sleep(2)
                continue
            # the minute cron: the scheduler keeps ~100 runs ahead; the first one is due within a minute
            runs = client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[served.id])),
                                         sort=FlowRunSort.EXPECTED_START_TIME_ASC, limit=3)
            finished = next((r for r in runs if r.state and r.state.is_final()), None)
            if finished is None:
                time.sleep(2)
        daily = client.read_deployment_by_name("fredflow-ingest/daily-incremental")
    _stop(proc)  # before reading its database: the next minute's run would hold it
    assert served.work_pool_name is None and served.id != daily.id and daily.work_pool_name == "fredflow"
    assert finished.auto_scheduled and finished.state.is_completed(), (finished.state, log.read_text())
    assert finished.name == "served.duckdb · 6 series · incremental"
    assert_db_matches(db, sim.catalog, ids)


# --------------------------------------------------------------------------- last: the database


def test_no_api_key_in_prefects_database(server, worker_runs):
    """No key in Prefect's database: not the worker's FRED_API_KEY, not the Secret block's (stored
    encrypted): not a byte of either in the database file or its write-ahead log. A key sent as a plain
    run parameter is in no row of any table once the run started (the flow masks it), but the server
    stored it as sent first: its bytes can linger in SQLite's write-ahead log and free pages until
    overwritten, which is why docs/README-prefect.md says to use a Secret block instead."""
    import sqlite3

    files = [p for p in server.home.iterdir() if p.name.startswith("prefect.db")]
    assert any(p.name == "prefect.db" for p in files)
    found = {key: [p.name for p in files if key.encode() in p.read_bytes()] for key in (DEMO_API_KEY, BLOCK_KEY)}
    assert found == {DEMO_API_KEY: [], BLOCK_KEY: []}
    con = sqlite3.connect(f"file:{server.home / 'prefect.db'}?mode=ro", uri=True)
    try:
        tables = [name for (name,) in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        hits = {}
        for table in tables:
            columns = [row[1] for row in con.execute(f'PRAGMA table_info("{table}")')]
            for column in columns:
                for key in (DEMO_API_KEY, BLOCK_KEY, PARAM_KEY):
                    n = con.execute(f'SELECT count(*) FROM "{table}" WHERE CAST("{column}" AS TEXT) LIKE ?',
                                    (f"%{key}%",)).fetchone()[0]
                    if n:
                        hits[(table, column, key)] = n
        masked = con.execute("SELECT count(*) FROM flow_run WHERE parameters LIKE '%**********%'").fetchone()[0]
    finally:
        con.close()
    assert len(tables) > 20 and hits == {}
    assert masked >= 1  # the plain-key run, as stored now
