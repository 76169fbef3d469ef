"""Resume: a run killed mid-fetch, or inside its merge, is finished by ``fredflow resume RUN_ID``
without fetching again what it had staged; staged files are checked before they are merged."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from e2e import assert_db_matches, count, assert_resumed_exactly
from fredflow import CatalogSpec
from fredflow.errors import UsageError
from fredflow.api import ingest, resumable_runs, resume
from fredflow.sim.server import DEMO_API_KEY


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("FRED_", "FREDFLOW_"))}
    full_env.update(env or {})
    return subprocess.Popen([sys.executable, "-m", "fredflow.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=full_env)


def _wait_for(predicate, what: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert proc.poll() is None, f"exited ({proc.returncode}) before {what}: {proc.stderr.read()}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def _kill_when(victim: subprocess.Popen, predicate, what: str) -> None:
    """SIGKILL ``victim`` once ``predicate()`` holds (bounded by :func:`_wait_for`); it is dead on return."""
    try:
        _wait_for(predicate, what, victim)
        victim.send_signal(signal.SIGKILL)
        assert victim.wait(timeout=30) == -signal.SIGKILL
    finally:
        if victim.poll() is None:
            victim.kill()
            victim.wait()


def _paused_ingest(tmp_path: Path, db: Path, sim, ids, point: str, *extra: str) -> subprocess.Popen:
    """`fredflow ingest` in a child process, frozen at checkpoint ``point`` (see fredflow.testing.failpoints)."""
    marker = tmp_path / f"paused-{point}"
    proc = _cli("ingest", "--db", str(db), "--series", ",".join(ids), "--api-url", sim.url, "--api-key",
                DEMO_API_KEY, "--rate", "500", "--quiet", *extra,
                env={"FREDFLOW_PAUSE_AT": point, "FREDFLOW_PAUSE_FILE": str(marker)})
    _wait_for(marker.exists, point, proc)
    return proc


def _staged(staging: Path) -> list[Path]:
    return sorted(staging.glob("*/batch-*.manifest.json"))


def test_resume_after_kill_fetches_only_what_was_not_staged(tmp_path, slow_sim, settings_for):
    db = tmp_path / "f.duckdb"
    ids = slow_sim.catalog.series_ids[:40]
    victim = _cli("ingest", "--db", str(db), "--series", ",".join(ids), "--api-url", slow_sim.url,
                  "--api-key", DEMO_API_KEY, "--rate", "500", "--concurrency", "2", "--batch-size", "4", "--quiet")
    staging = tmp_path / "f.staging"
    _kill_when(victim, lambda: len(_staged(staging)) >= 3, "three staged batches")
    staged_batches = {int(p.name.split(".")[0].split("-")[1]) for p in _staged(staging)}
    assert 3 <= len(staged_batches) < 10
    staged_series = {sid for b in staged_batches for sid in ids[4 * b:4 * b + 4]}

    # `fredflow runs` lists it as resumable, with what it staged
    (run,) = resumable_runs(db)
    assert (run.staged_batches, run.n_batches, run.mode) == (len(staged_batches), 10, "full")
    listing = subprocess.run([sys.executable, "-m", "fredflow.cli", "runs", "--db", str(db), "--json"],
                             capture_output=True, text=True, timeout=60)
    assert listing.returncode == 0, listing.stderr
    assert orjson.loads(listing.stdout)[0]["status"] == "resumable"
    assert orjson.loads(listing.stdout)[0]["run_id"] == run.run_id

    slow_sim.reset_stats()
    summary = resume(db, run.run_id, settings=settings_for(slow_sim))
    # nothing staged was fetched again: metadata + observations for each series not yet staged
    assert_resumed_exactly(summary, run, slow_sim, db, ids, staged_batches, staged_series)
    assert resumable_runs(db) == [] and not (staging / run.run_id).exists()
    with pytest.raises(UsageError, match="no resumable run"):
        resume(db, run.run_id, settings=settings_for(slow_sim))


def test_resume_after_kill_inside_merge_fetches_nothing(tmp_path, sim, settings_for):
    db = tmp_path / "f.duckdb"
    ids = sim.catalog.series_ids[:30]
    victim = _paused_ingest(tmp_path, db, sim, ids, "merge-before-commit", "--batch-size", "7")
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=30)
    # the merge did not commit: not a row, not even fredflow's tables (they are created inside the transaction)
    assert count(db, "SELECT count(*) FROM information_schema.tables WHERE table_name = 'observations'") == [(0,)]

    (run,) = resumable_runs(db)
    assert run.staged_batches == run.n_batches == 5
    before = sim.stats()["requests"]
    done = subprocess.run([sys.executable, "-m", "fredflow.cli", "resume", run.run_id, "--db", str(db), "--json"],
                          capture_output=True, text=True, timeout=120,
                          env={k: v for k, v in os.environ.items() if not k.startswith(("FRED_", "FREDFLOW_"))})
    assert done.returncode == 0, done.stderr  # every batch staged: no api key needed, no request sent
    assert sim.stats()["requests"] == before
    summary = orjson.loads(done.stdout)
    # the original attempt's count: metadata + observations per id, + the series/updates page of its plan
    assert summary["resumed_batches"] == 5 and summary["requests"] == 2 * len(ids) + 1
    assert_db_matches(db, sim.catalog, ids)


def test_damaged_staged_batch_is_refetched(tmp_path, sim, settings_for):
    """A staged file that no longer matches its manifest is not merged: its batch is fetched again."""
    db = tmp_path / "f.duckdb"
    ids = sim.catalog.series_ids[:12]
    victim = _paused_ingest(tmp_path, db, sim, ids, "after-staging", "--batch-size", "4")
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=30)
    (run,) = resumable_runs(db)
    damaged = next(Path(run.staging).glob("batch-000001.obs-*.parquet"))
    damaged.write_bytes(damaged.read_bytes()[:100])  # truncated, e.g. by a full disk
    (Path(run.staging) / "batch-000002.manifest.json").write_text("{not json")  # a torn manifest

    before = sim.stats()["requests"]
    summary = resume(db, run.run_id, settings=settings_for(sim))
    assert summary.exit_code == 0 and summary.resumed_batches == 1
    assert sim.stats()["requests"] - before == 2 * 4 * 2  # batches 1 and 2 again, batch 0 kept
    assert_db_matches(db, sim.catalog, ids)


def test_resume_errors_are_one_line(tmp_path, sim):
    db = tmp_path / "f.duckdb"
    done = subprocess.run([sys.executable, "-m", "fredflow.cli", "resume", "20260101T000000Z-abcdef", "--db", str(db)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip().startswith("fredflow: error: no resumable run 20260101T000000Z-abcdef")
    assert len(done.stderr.strip().splitlines()) == 1


def test_a_live_run_is_never_resumed_and_keeps_its_files(tmp_path, sim, settings_for):
    """`runs` shows a run that a live process holds as running; `resume` refuses it and touches nothing."""
    db = tmp_path / "f.duckdb"
    ids = sim.catalog.series_ids[:8]
    live = _paused_ingest(tmp_path, db, sim, ids, "after-staging", "--batch-size", "4")
    try:
        (run,) = resumable_runs(db)
        assert run.status == "running"
        files = sorted(p.name for p in Path(run.staging).iterdir())
        from fredflow.errors import StoreBusy

        with pytest.raises(StoreBusy, match=f"being written by another fredflow run \\(pid {live.pid}\\)"):
            resume(db, run.run_id, settings=settings_for(sim))
        assert sorted(p.name for p in Path(run.staging).iterdir()) == files  # nothing removed
    finally:
        live.kill()
        live.wait()
    (run,) = resumable_runs(db)
    assert run.status == "resumable"
    assert resume(db, run.run_id, settings=settings_for(sim)).exit_code == 0
    assert_db_matches(db, sim.catalog, ids)


def test_resume_refuses_to_roll_back_newer_runs_unless_forced(tmp_path, sim, settings_for):
    db = tmp_path / "f.duckdb"
    ids = sim.catalog.series_ids[:6]
    victim = _paused_ingest(tmp_path, db, sim, ids, "after-staging")
    victim.kill()
    victim.wait()
    (old,) = resumable_runs(db)
    newer = ingest(db, CatalogSpec(series=tuple(ids)), settings=settings_for(sim))
    with pytest.raises(UsageError, match="before the last committed run"):
        resume(db, old.run_id, settings=settings_for(sim))
    forced = resume(db, old.run_id, settings=settings_for(sim), force=True)
    assert forced.exit_code == 0 and forced.run_id != newer.run_id
    assert_db_matches(db, sim.catalog, ids)
