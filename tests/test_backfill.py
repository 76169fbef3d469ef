"""Backfills: windows × series batches as independent units, stitched exactly, merged in one transaction."""

from __future__ import annotations

from datetime import date

import pytest

from e2e import assert_db_matches, count
from fredflow import CatalogSpec
from fredflow.run.batches import windows
from fredflow.errors import UsageError
from fredflow.api import backfill, ingest


def test_windows_tile_the_range_exactly():
    cuts = windows(date(1947, 1, 1), date(2026, 11, 20), "10y")
    assert cuts[0] == (date(1947, 1, 1), date(1956, 12, 31))
    assert cuts[-1] == (date(2027 - 10 + 0, 1, 1), date(2026, 11, 20))
    for (_, end), (start, _) in zip(cuts, cuts[1:]):
        assert (start - end).days == 1  # contiguous and disjoint: every day in exactly one window
    months = windows(date(2020, 1, 31), date(2020, 12, 31), "1m")
    assert months[:2] == [(date(2020, 1, 31), date(2020, 2, 28)), (date(2020, 2, 29), date(2020, 3, 28))]
    with pytest.raises(UsageError, match="--window"):
        windows(date(2000, 1, 1), date(2001, 1, 1), "ten years")


def test_backfill_stitches_windows_exactly(tmp_path, sim, settings_for):
    """Every window × batch is its own unit; together they land each series' history once, row by row."""
    db = tmp_path / "f.duckdb"
    ids = sim.catalog.series_ids[:24]
    summary = backfill(db, CatalogSpec(series=tuple(ids)), start=date(1600, 1, 1), window="25y",
                       settings=settings_for(sim), batch_size=5)
    assert summary.exit_code == 0 and summary.mode == "backfill"
    assert summary.n_series == len(ids)
    cuts = windows(date(1600, 1, 1), date.today(), "25y")
    # metadata once per series (at planning: it tells which windows a series reaches), one observations
    # request per series and window its history reaches (the open last window: every series), and one
    # series/updates page to stamp the state (checked_through)
    spans = {sid: (date.fromisoformat(sim.catalog.meta(sid)["observation_start"]),
                   date.fromisoformat(sim.catalog.meta(sid)["observation_end"])) for sid in ids}
    reached = sum(1 for sid in ids for n, (a, b) in enumerate(cuts)
                  if n == len(cuts) - 1 or (spans[sid][0] <= b and spans[sid][1] >= a))
    assert reached < len(ids) * len(cuts) / 3  # most of 1600-2026 is before any simulated history
    assert summary.requests == len(ids) + reached + 1
    assert summary.n_rows == assert_db_matches(db, sim.catalog, ids)
    assert count(db, "SELECT count(*) - count(DISTINCT (series_id, date)) FROM observations") == [(0,)]
    assert count(db, "SELECT count(*), min(mode) FROM ingest_runs") == [(1, "backfill")]  # one transaction, one run
    # the state says "fetched through the latest observation": an incremental run has nothing to do
    state = dict(count(db, "SELECT series_id, last_observation_date FROM series_state"))
    assert state == {sid: sim.catalog.observations(sid).column("date")[-1].as_py() for sid in ids}


def test_bounded_backfill_keeps_only_its_range_and_no_state(tmp_path, sim, settings_for):
    db = tmp_path / "f.duckdb"
    ids = sim.catalog.series_ids[30:36]
    start, end = date(1990, 3, 15), date(2011, 7, 4)
    summary = backfill(db, CatalogSpec(series=tuple(ids)), start=start, end=end, window="7y",
                       settings=settings_for(sim), batch_size=4)
    assert summary.exit_code == 0
    want = [(sid, r["date"], r["value"]) for sid in sorted(ids) for r in sim.catalog.observations(sid).to_pylist()
            if start <= r["date"] <= end]
    assert count(db, "SELECT series_id, date, value FROM observations ORDER BY series_id, date") == want
    # a run that stopped at --end did not see the latest data: it must not mark series as up to date
    assert count(db, "SELECT count(*) FROM series_state") == [(0,)]


def test_backfill_rerun_overlapping_is_an_upsert(tmp_path, sim, settings_for):
    db = tmp_path / "f.duckdb"
    ids = sim.catalog.series_ids[40:46]
    backfill(db, CatalogSpec(series=tuple(ids)), start=date(1950, 1, 1), window="10y", settings=settings_for(sim))
    backfill(db, CatalogSpec(series=tuple(ids)), start=date(1600, 1, 1), window="33y", settings=settings_for(sim))
    ingest(db, CatalogSpec(series=tuple(ids)), settings=settings_for(sim))
    assert_db_matches(db, sim.catalog, ids)
    assert count(db, "SELECT count(*) - count(DISTINCT (series_id, date)) FROM observations") == [(0,)]


def test_backfill_needs_a_start_and_window_is_backfill_only(tmp_path, sim, settings_for):
    with pytest.raises(UsageError, match="--start"):
        ingest(tmp_path / "f.duckdb", CatalogSpec(series=("A",)), settings=settings_for(sim), mode="backfill")
    with pytest.raises(UsageError, match="--window"):
        ingest(tmp_path / "f.duckdb", CatalogSpec(series=("A",)), settings=settings_for(sim), window="5y")
    with pytest.raises(UsageError, match="in the future"):
        backfill(tmp_path / "f.duckdb", CatalogSpec(series=("A",)), start=date(2999, 1, 1), settings=settings_for(sim))
    assert not (tmp_path / "f.duckdb").exists()
