"""``--staging-dir s3://…``: runs stage on object storage (moto's S3 server on 127.0.0.1), the merge reads
it through Arrow in its one transaction, the plan, manifests, lease and resume work there."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pyarrow as pa
import pytest

from e2e import assert_db_matches, count, assert_resumed_exactly
from fredflow import CatalogSpec
from fredflow.api import ingest, resumable_runs, resume
from fredflow.errors import StoreBusy
from fredflow.sim.server import DEMO_API_KEY
from fredflow.staging import RunStaging, filesystem_for, run_folders
from s3server import CREDENTIALS, MotoServer, aws_credentials, staged_batches
from test_resume import _cli, _kill_when


@pytest.fixture(scope="module")
def moto():
    with aws_credentials(), MotoServer() as server:
        yield server


def _objects(uri: str) -> list[str]:
    fs, root = filesystem_for(uri)
    from pyarrow.fs import FileSelector

    try:
        return sorted(i.path for i in fs.get_file_info(FileSelector(root, recursive=True)))
    except FileNotFoundError:
        return []


def test_staging_on_s3_files_manifest_and_lease(moto):
    uri = moto.uri(prefix="unit")
    staging = RunStaging(uri, "r1").create({"what": "test"})
    staging.hold()
    try:
        assert staging.is_held() and staging.has("run.lease")
        with pytest.raises(StoreBusy, match="still running"):
            RunStaging(uri, "r1").hold()
        writer = staging.batch_writer(0)
        writer.add_observations("A", pa.table({"date": pa.array([0, 1], pa.date32()), "value": [1.0, 2.0],
                                               "realtime_start": pa.array([0, 0], pa.date32()),
                                               "realtime_end": pa.array([0, 0], pa.date32())}))
        from fredflow.staging import BatchManifest

        manifest = writer.finish(BatchManifest(batch_index=0, succeeded=["A"]))
        assert manifest.check_files(staging.fs) is None
        assert [m.rows for m in staging.manifests()] == [2]
        # one PUT per file: no .tmp object is ever left behind
        assert not [p for p in _objects(uri) if p.endswith(".tmp")]
        assert [r.run_id for r in run_folders(uri)] == ["r1"]
    finally:
        staging.release()
    assert not staging.has("run.lease") and not staging.is_held()
    staging.remove()
    assert not staging.exists()


def test_lease_of_a_dead_holder_or_expired_is_taken(moto):
    from fredflow.staging_lease import StagingLease

    staging = RunStaging(moto.uri(prefix="lease"), "r2").create({})
    stale = StagingLease(staging.fs, staging.file("run.lease"), ttl=0.5)
    stale.acquire()
    stale._stop.set()  # stops renewing, as a hung or partitioned holder would
    held = StagingLease(staging.fs, staging.file("run.lease"))
    with pytest.raises(Exception, match="on "):
        held.acquire()
    time.sleep(0.8)  # expired
    held.acquire()
    assert held.is_locked()
    held.release()
    staging.remove()


def test_resume_with_s3_staging_after_kill_inside_merge(tmp_path, sim, settings_for, moto):
    uri = moto.uri(prefix="resume")
    db = tmp_path / "f.duckdb"
    ids = sim.catalog.series_ids[:30]
    marker = tmp_path / "paused"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FRED_", "FREDFLOW_"))}
    env.update(FREDFLOW_PAUSE_AT="merge-before-commit", FREDFLOW_PAUSE_FILE=str(marker))
    victim = subprocess.Popen([sys.executable, "-m", "fredflow.cli", "ingest", "--db", str(db), "--series",
                               ",".join(ids), "--api-url", sim.url, "--api-key", DEMO_API_KEY, "--rate", "500",
                               "--batch-size", "7", "--staging-dir", uri, "--quiet"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 120
        while not marker.exists():
            assert victim.poll() is None, victim.stderr.read()
            assert time.monotonic() < deadline, "never reached the merge"
            time.sleep(0.05)
        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=30)
    finally:
        if victim.poll() is None:
            victim.kill()
            victim.wait()
    # nothing committed: not a row, not even fredflow's tables (they are created inside the transaction)
    assert count(db, "SELECT count(*) FROM information_schema.tables WHERE table_name = 'observations'") == [(0,)]
    (run,) = resumable_runs(db, uri)
    assert run.staged_batches == run.n_batches == 5
    before = sim.stats()["requests"]
    summary = resume(db, run.run_id, settings=settings_for(sim), staging_root=uri)
    assert summary.exit_code == 0 and summary.resumed_batches == 5
    assert sim.stats()["requests"] == before  # every batch was staged on S3: nothing fetched again
    assert summary.n_rows == assert_db_matches(db, sim.catalog, ids)
    assert resumable_runs(db, uri) == []


def test_resume_with_s3_staging_after_kill_mid_fetch(tmp_path, slow_sim, settings_for, moto):
    """The flow killed (-9) while fetching: ``fredflow resume`` with the s3:// staging fetches exactly the
    batches with no manifest on S3 (2 requests per series: metadata, observations) and lands every row."""
    uri = moto.uri(prefix="killed-mid-fetch")
    db = tmp_path / "f.duckdb"
    ids = slow_sim.catalog.series_ids[:40]
    victim = _cli("ingest", "--db", str(db), "--series", ",".join(ids), "--api-url", slow_sim.url,
                  "--api-key", DEMO_API_KEY, "--rate", "500", "--concurrency", "2", "--batch-size", "4",
                  "--staging-dir", uri, "--quiet")
    _kill_when(victim, lambda: len(staged_batches(uri)) >= 3, "three batches staged on S3")
    staged = staged_batches(uri)
    assert 3 <= len(staged) < 10
    staged_series = {sid for b in staged for sid in ids[4 * b:4 * b + 4]}
    (run,) = resumable_runs(db, uri)  # the killed holder's lease is free at once (its pid is gone)
    assert (run.staged_batches, run.n_batches) == (len(staged), 10)

    slow_sim.reset_stats()
    summary = resume(db, run.run_id, settings=settings_for(slow_sim), staging_root=uri)
    assert_resumed_exactly(summary, run, slow_sim, db, ids, staged, staged_series)
    assert resumable_runs(db, uri) == []
    assert not [p for p in _objects(uri) if f"/{run.run_id}/" in p or p.endswith(f"/{run.run_id}")]


@pytest.mark.parametrize("runner", ["asyncio", "dask"])
def test_ingest_with_s3_staging_lands_every_row(tmp_path, sim, settings_for, moto, runner):
    uri = moto.uri(prefix=f"e2e-{runner}")
    db = tmp_path / "f.duckdb"
    ids = sim.catalog.series_ids[:40]
    extra = {"workers": 2, "threads_per_worker": 2} if runner == "dask" else {}
    summary = ingest(db, CatalogSpec(series=tuple(ids)), settings=settings_for(sim), runner=runner, staging_dir=uri, batch_size=7,
                     **extra)
    assert summary.exit_code == 0 and summary.n_series == len(ids)
    assert summary.n_rows == assert_db_matches(db, sim.catalog, ids)
    assert count(db, "SELECT count(*), count(DISTINCT (series_id, date)) FROM observations")[0][0] == summary.n_rows
    assert count(db, "SELECT count(*) FROM series")[0][0] == len(ids)
    assert _objects(uri) == [] or all(not p.split("/")[-1].startswith(summary.run_id) for p in _objects(uri))
    assert resumable_runs(db, uri) == []


def test_a_bucket_not_created_yet_holds_no_runs(moto):
    uri = moto.uri(bucket="fredflow-never-created", prefix="x").replace("&allow_bucket_creation=true", "")
    assert run_folders(uri) == []


def test_a_stalled_s3_server_is_one_line_and_exit_1_not_a_hang(tmp_path, sim):
    """An endpoint that accepts connections and never answers: every S3 request times out and is retried a
    bounded number of times (FREDFLOW_S3_REQUEST_TIMEOUT=1 here), then the run stops with one line."""
    import socket
    import threading

    held: list[socket.socket] = []
    with socket.create_server(("127.0.0.1", 0)) as silent:
        silent.settimeout(0.2)

        def accept(stop: threading.Event) -> None:
            while not stop.is_set():
                try:
                    held.append(silent.accept()[0])
                except (TimeoutError, OSError):
                    pass

        stop = threading.Event()
        acceptor = threading.Thread(target=accept, args=(stop,), daemon=True)
        acceptor.start()
        uri = (f"s3://fredflow/stalled?endpoint_override=127.0.0.1:{silent.getsockname()[1]}&scheme=http"
               "&region=us-east-1")
        try:
            run = _cli("ingest", "--db", str(tmp_path / "f.duckdb"), "--series", sim.catalog.series_ids[0],
                       "--api-url", sim.url, "--api-key", DEMO_API_KEY, "--staging-dir", uri, "--quiet",
                       env={**CREDENTIALS, "FREDFLOW_S3_REQUEST_TIMEOUT": "1"})
            out, err = run.communicate(timeout=120)
        finally:
            stop.set()
            acceptor.join(5)
            for connection in held:
                connection.close()
    assert run.returncode == 1
    (line,) = err.strip().splitlines()
    assert line.startswith("fredflow: fatal: cannot create staging folder fredflow/stalled/") and "Timeout" in line
    assert held  # it did reach the endpoint
    assert not (tmp_path / "f.duckdb").exists()
