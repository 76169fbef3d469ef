"""The runner contract: one suite every runner must pass (as Prefect's TaskRunnerStandardTestSuite).

Parametrised over asyncio, thread and dask (a LocalCluster with worker processes). Each runner:
lands every row; reports every batch to progress exactly once; hands the merge its manifests in
batch order; on a fatal error commits nothing, removes the run's staging folder and retries
nothing; and, killed mid-fetch, leaves a run that `fredflow resume` finishes exactly, fetching
only what it had not staged.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from e2e import RecordingProgress, assert_db_matches, count
from fredflow import CatalogSpec, FatalRunError, ingest, resumable_runs, resume
from fredflow.sim.process import SimProcess
from fredflow.sim.server import DEMO_API_KEY

RUNNERS = {
    "asyncio": {},
    "thread": {"thread_slots": 3},
    "dask": {"workers": 2, "threads_per_worker": 2},
}


@pytest.fixture(scope="module")
def contract_sim():
    with SimProcess(n_series=40, seed=23, withdrawn=2, long_series=0, obs_per_series=300, latency=0.02) as process:
        yield process


@pytest.mark.parametrize("runner", list(RUNNERS))
class TestRunnerContract:
    def test_lands_every_row_reports_each_batch_once_in_batch_order(self, runner, tmp_path, contract_sim,
                                                                    settings_for):
        db = tmp_path / "f.duckdb"
        catalog = contract_sim.catalog
        withdrawn = catalog.withdrawn_ids  # listed by FRED but "does not exist": they fail alone
        ids = [*catalog.series_ids[:19], withdrawn[0], *catalog.series_ids[19:38], withdrawn[1]]  # batches 4 and 9
        progress = RecordingProgress()
        summary = ingest(db, CatalogSpec(series=tuple(ids)), settings=settings_for(contract_sim), runner=runner,
                         batch_size=4, progress=progress, **RUNNERS[runner])
        assert summary.runner == runner and summary.exit_code == 3
        assert progress.started == (40, 10) and progress.closed == 1
        assert sorted(progress.batches) == list(range(10))  # every batch once
        assert summary.failed == withdrawn  # failures in batch (catalog) order: manifests merged in order
        landed = [sid for sid in ids if sid not in withdrawn]
        assert summary.n_rows == assert_db_matches(db, contract_sim.catalog, landed)
        assert not (tmp_path / "f.staging" / summary.run_id).exists()

    def test_fatal_error_commits_nothing_removes_staging_and_is_not_retried(self, runner, tmp_path, contract_sim,
                                                                           settings_for, monkeypatch):
        db = tmp_path / "f.duckdb"
        hits = tmp_path / "fatal-hits"
        monkeypatch.setenv("FREDFLOW_FATAL_AT", "fetch-batch")
        monkeypatch.setenv("FREDFLOW_FATAL_FILE", str(hits))
        with pytest.raises(FatalRunError, match="injected fatal error"):
            ingest(db, CatalogSpec(series=tuple(contract_sim.catalog.series_ids[:12])),
                   settings=settings_for(contract_sim), runner=runner, batch_size=4, **RUNNERS[runner])
        started = hits.read_text().split()
        assert started and len(started) == len(set(started)), f"a batch was retried after a fatal error: {started}"
        assert not db.exists() or count(db, "SELECT count(*) FROM ingest_runs") == [(0,)]
        assert list((tmp_path / "f.staging").iterdir()) == []

    def test_killed_mid_fetch_is_resumed_exactly(self, runner, tmp_path, contract_sim, settings_for):
        db = tmp_path / "f.duckdb"
        ids = contract_sim.catalog.series_ids[:36]
        shape = [f"--{k.replace('_', '-')}={v}" for k, v in RUNNERS[runner].items()]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("FRED_", "FREDFLOW_"))}
        victim = subprocess.Popen(
            [sys.executable, "-m", "fredflow.cli", "ingest", "--db", str(db), "--series", ",".join(ids),
             "--api-url", contract_sim.url, "--api-key", DEMO_API_KEY, "--rate", "60", "--burst", "2",
             "--batch-size", "3", "--runner", runner, "--quiet", *shape],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)
        staging = tmp_path / "f.staging"
        try:
            deadline = time.monotonic() + 180
            while len(list(staging.glob("*/batch-*.manifest.json"))) < 2:
                assert victim.poll() is None, f"exited {victim.returncode}: {victim.stderr.read()}"
                assert time.monotonic() < deadline, "no batch staged in time"
                time.sleep(0.05)
            os.killpg(victim.pid, signal.SIGKILL)  # the run and every process it started
            victim.wait(timeout=30)
        finally:
            if victim.poll() is None:
                os.killpg(victim.pid, signal.SIGKILL)
                victim.wait()
        assert not db.exists() or count(db, "SELECT count(*) FROM observations") == [(0,)]
        (run,) = resumable_runs(db)
        assert run.status == "resumable" and 2 <= run.staged_batches < run.n_batches == 12
        staged = {int(p.name.split(".")[0].split("-")[1]) for p in staging.glob(f"{run.run_id}/batch-*.manifest.json")}
        unstaged_series = [sid for b in range(12) if b not in staged for sid in ids[3 * b:3 * b + 3]]

        contract_sim.reset_stats()
        summary = resume(db, run.run_id, settings=settings_for(contract_sim), runner=runner, **RUNNERS[runner])
        assert summary.run_id == run.run_id and summary.resumed_batches == len(staged)
        # metadata + observations of each series not yet staged, nothing else
        assert contract_sim.stats()["requests"] == 2 * len(unstaged_series)
        assert summary.n_rows == assert_db_matches(db, contract_sim.catalog, ids)
        assert resumable_runs(db) == []
