"""End to end on the asyncio runner: simulator process → aiohttp → staging → one DuckDB transaction."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import date

import orjson
import pytest

from e2e import assert_db_matches, count
from fredflow import CatalogSpec, ingest
from fredflow.errors import BadApiKey, CatalogNotFound
from fredflow.sim.server import DEMO_API_KEY, UNREGISTERED_KEY


def test_release_lands_exactly_and_withdrawn_series_fail(tmp_path, sim, settings_for):
    db = tmp_path / "f.duckdb"
    summary = ingest(db, CatalogSpec(release=1), settings=settings_for(sim), batch_size=13)
    ok_ids = sim.catalog.series_ids
    assert summary.n_series == len(ok_ids) + len(sim.catalog.withdrawn_ids)
    assert sorted(summary.failed) == sorted(sim.catalog.withdrawn_ids)
    assert summary.status == "partial" and summary.exit_code == 3
    assert summary.n_rows == assert_db_matches(db, sim.catalog, ok_ids)
    # a listing gives metadata for free: one request per series (+2 for the long one's pages, +1 listing)
    assert summary.requests == 1 + len(ok_ids) + len(sim.catalog.withdrawn_ids) + 1
    failures = count(db, "SELECT series_id, http_status, message FROM ingest_failures ORDER BY 1")
    assert failures == [(w, 404, "Not Found.  The series does not exist.") for w in sorted(sim.catalog.withdrawn_ids)]
    titles = dict(count(db, "SELECT series_id, title FROM series"))
    assert set(titles) == set(ok_ids)
    assert all(titles[s] == sim.catalog.meta(s)["title"] for s in ok_ids)
    run = count(db, "SELECT run_id, status, n_series, n_failed, n_rows, requests FROM ingest_runs")
    assert run == [(summary.run_id, "partial", summary.n_series, 2, summary.n_rows, summary.requests)]
    assert not (tmp_path / "f.staging" / summary.run_id).exists()  # staging removed after the commit


def test_rerun_is_idempotent(tmp_path, sim, settings_for):
    db = tmp_path / "f.duckdb"
    ids = sim.catalog.series_ids[:20]
    first = ingest(db, CatalogSpec(series=tuple(ids)), settings=settings_for(sim))
    second = ingest(db, CatalogSpec(series=tuple(ids)), settings=settings_for(sim))
    assert first.exit_code == second.exit_code == 0
    # series + observations per id, + one series/updates page that stamps the state (checked_through)
    assert first.requests == second.requests == 41
    assert_db_matches(db, sim.catalog, ids)
    assert count(db, "SELECT count(*) FROM ingest_runs") == [(2,)]


def test_date_window(tmp_path, sim, settings_for):
    db = tmp_path / "f.duckdb"
    sid = sim.catalog.series_ids[5]
    ingest(db, CatalogSpec(series=(sid,)), settings=settings_for(sim), start=date(2010, 1, 1), end=date(2012, 12, 31))
    truth = sim.catalog.observations(sid).to_pylist()
    want = [(sid, r["date"], r["value"]) for r in truth if date(2010, 1, 1) <= r["date"] <= date(2012, 12, 31)]
    assert count(db, "SELECT series_id, date, value FROM observations ORDER BY date") == want


def test_bad_api_key_commits_nothing(tmp_path, sim, settings_for):
    db = tmp_path / "f.duckdb"
    with pytest.raises(BadApiKey, match="not registered"):
        ingest(db, CatalogSpec(series=tuple(sim.catalog.series_ids[:30])), settings=settings_for(sim, api_key=UNREGISTERED_KEY))
    assert not db.exists()
    assert not any((tmp_path / "f.staging").iterdir())


def test_unknown_release_is_fatal(tmp_path, sim, settings_for):
    with pytest.raises(CatalogNotFound):
        ingest(tmp_path / "f.duckdb", CatalogSpec(release=424242), settings=settings_for(sim))
    assert not (tmp_path / "f.duckdb").exists()


def _cli(*args, env=None, **kwargs):
    return subprocess.Popen([sys.executable, "-m", "fredflow.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})}, **kwargs)


def test_cli_json_summary_and_runs(tmp_path, sim):
    db = tmp_path / "f.duckdb"
    ids = ",".join(sim.catalog.series_ids[:10] + ["NOSUCH"])
    proc = _cli("ingest", "--db", str(db), "--series", ids, "--api-url", sim.url, "--api-key", DEMO_API_KEY,
                "--rate", "200", "--json")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 3, err
    summary = orjson.loads(out)  # exactly one JSON object
    assert out.count("\n") == 1
    assert {"run_id", "status", "n_series", "n_failed", "n_rows", "seconds", "requests", "retries", "failed"} <= set(summary)
    assert summary["failed"] == ["NOSUCH"] and summary["n_series"] == 11 and summary["n_failed"] == 1
    assert DEMO_API_KEY not in out + err
    assert_db_matches(db, sim.catalog, sim.catalog.series_ids[:10])
    runs = _cli("runs", "--db", str(db), "--json")
    out, err = runs.communicate(timeout=60)
    assert runs.returncode == 0
    (row,) = orjson.loads(out)
    assert row["run_id"] == summary["run_id"] and row["n_rows"] == summary["n_rows"]
    assert DEMO_API_KEY not in out


@pytest.mark.parametrize("point", ["after-staging", "merge-before-commit"])
def test_kill_before_commit_leaves_db_unchanged_and_next_run_completes(tmp_path, sim, point):
    db = tmp_path / "f.duckdb"
    ids = sim.catalog.series_ids[:40]
    base = ["ingest", "--db", str(db), "--api-url", sim.url, "--api-key", DEMO_API_KEY, "--rate", "500", "--quiet"]
    # a first committed run of 10 series, so "unchanged" is a real check
    first = _cli(*base, "--series", ",".join(ids[:10]))
    assert first.wait(timeout=120) == 0, first.stderr.read()
    before = count(db, "SELECT series_id, date, value FROM observations ORDER BY ALL")

    marker = tmp_path / "paused"
    victim = _cli(*base, "--series", ",".join(ids), env={"FREDFLOW_PAUSE_AT": point, "FREDFLOW_PAUSE_FILE": str(marker)})
    deadline = time.monotonic() + 120
    while not marker.exists():
        assert victim.poll() is None, victim.stderr.read()
        assert time.monotonic() < deadline
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=30)

    assert count(db, "SELECT series_id, date, value FROM observations ORDER BY ALL") == before
    assert count(db, "SELECT count(*) FROM ingest_runs") == [(1,)]
    again = _cli(*base, "--series", ",".join(ids))
    assert again.wait(timeout=120) == 0, again.stderr.read()
    assert_db_matches(db, sim.catalog, ids)
    assert count(db, "SELECT count(*) FROM ingest_runs") == [(2,)]
