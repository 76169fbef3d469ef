"""Incremental runs against a simulator whose days advance: only changed series are fetched,
revisions are applied, new rows are added, and the request count is close to the minimum."""

from __future__ import annotations

import pytest

from e2e import assert_db_matches, count, day_changes, logged
from fredflow import CatalogSpec
from fredflow.api import ingest
from fredflow.sim.process import SimProcess


@pytest.fixture
def daily_sim():
    """Its own simulator: advancing days changes what every later request sees."""
    with SimProcess(n_series=300, seed=21, long_series=0) as process:
        yield process


def _state(db):
    return dict(count(db, "SELECT series_id, (last_updated, last_observation_date, last_run_id) FROM series_state"))


def test_incremental_over_simulated_days_with_explicit_ids(tmp_path, daily_sim, settings_for):
    db = tmp_path / "f.duckdb"
    ids = daily_sim.catalog.series_ids[:200]
    spec = CatalogSpec(series=tuple(ids))
    settings = settings_for(daily_sim)

    # day 0: no state, an initial load: metadata + observations per series, and one series/updates
    # page telling how recent FRED's updates are now (the state's checked_through)
    first = ingest(db, spec, settings=settings, mode="incremental")
    assert (first.n_series, first.n_catalog, first.n_unchanged, first.requests) == (200, 200, 0, 401)
    assert_db_matches(db, daily_sim.catalog, ids)
    state = _state(db)
    assert set(state) == set(ids)
    assert all(state[s][2] == first.run_id for s in ids)

    # nothing changed: one page of series/updates and nothing else
    daily_sim.reset_stats()
    idle = ingest(db, spec, settings=settings, mode="incremental")
    assert (idle.n_series, idle.n_unchanged, idle.n_rows) == (0, 200, 0)
    assert idle.requests == daily_sim.stats()["requests"] == 1
    assert daily_sim.stats()["by_status"] == {"200": 1}

    # day 1: 12 of the 300 series change (appended observation, 3 revised values, newer last_updated)
    changed = daily_sim.advance(days=1, changed=12)
    ours = sorted(set(changed) & set(ids))
    assert ours, "the seed should change some of our series"
    daily_sim.reset_stats()
    day1 = ingest(db, spec, settings=settings, mode="incremental")
    assert day1.n_series == len(ours) and day1.n_unchanged == 200 - len(ours)
    # observations for each changed series (metadata came with the updates page), + the updates pages
    assert len(ours) < day1.requests <= len(ours) + 2
    assert day1.requests == daily_sim.stats()["requests"]
    # every row equals the advanced simulator: revisions replaced, new observations added, others untouched
    assert_db_matches(db, daily_sim.catalog, ids)
    state1 = _state(db)
    for sid in ids:
        if sid in ours:
            assert state1[sid][2] == day1.run_id
            assert state1[sid][1] == daily_sim.catalog.observations(sid).column("date")[-1].as_py()
            assert state1[sid][0] > state[sid][0]
        else:
            assert state1[sid] == state[sid]
    titles = dict(count(db, "SELECT series_id, observation_end FROM series"))
    assert all(str(titles[s]) == daily_sim.catalog.meta(s)["observation_end"] for s in ours)

    # days 2 and 3 at once, then a never-seen series joins the catalog
    changed = daily_sim.advance(days=2, changed=12)
    ours = sorted(set(changed) & set(ids))
    newcomer = daily_sim.catalog.series_ids[250]
    grown = CatalogSpec(series=(*ids, newcomer))
    day3 = ingest(db, grown, settings=settings, mode="incremental")
    assert day3.n_series == len(ours) + 1 and day3.n_catalog == 201
    assert_db_matches(db, daily_sim.catalog, [*ids, newcomer])
    assert count(db, "SELECT count(*) - count(DISTINCT (series_id, date)) FROM observations") == [(0,)]
    runs = count(db, "SELECT mode, n_series, n_catalog, n_unchanged FROM ingest_runs ORDER BY started_at")
    assert runs[-1] == ("incremental", len(ours) + 1, 201, 200 - len(ours))


def test_incremental_from_a_release_listing_needs_no_updates(tmp_path, daily_sim, settings_for):
    """A release listing carries last_updated: its pages are the whole change detection."""
    db = tmp_path / "f.duckdb"
    settings = settings_for(daily_sim)
    spec = CatalogSpec(release=1)
    ingest(db, spec, settings=settings, mode="incremental")
    changed = daily_sim.advance(days=1, changed=15)
    daily_sim.reset_stats()
    summary = ingest(db, spec, settings=settings, mode="incremental")
    assert summary.n_series == len(changed) and summary.n_catalog == 300
    assert summary.requests == 1 + len(changed)  # one listing page + one observations request per change
    paths = daily_sim.stats()["by_status"]
    assert paths == {"200": 1 + len(changed)}
    assert_db_matches(db, daily_sim.catalog, daily_sim.catalog.series_ids)


def test_revision_window_bounds_the_refetch_and_reset_state_reloads(tmp_path, daily_sim, settings_for):
    """The opt-in --revision-window fetches (and replaces) only each changed series' trailing window:
    the day's changes inside it are applied and logged, the ones older than it are lost (its risk)."""
    from fredflow.options import Span

    db = tmp_path / "f.duckdb"
    ids = daily_sim.catalog.series_ids[:40]
    spec = CatalogSpec(series=tuple(ids))
    settings = settings_for(daily_sim)
    ingest(db, spec, settings=settings, mode="incremental")
    before = daily_sim.catalog
    changed = sorted(set(daily_sim.advance(days=1, changed=60)) & set(ids))
    assert changed
    day1 = ingest(db, spec, settings=settings, mode="incremental", revision_window="2y")
    # only the trailing window of each changed series was fetched
    full_rows = sum(daily_sim.catalog.observations(s).num_rows for s in changed)
    assert 0 < day1.n_rows < full_rows
    cut = {s: Span.parse("2y").shift(before.observations(s).column("date")[-1].as_py(), -1) for s in changed}
    made = day_changes(before, daily_sim.catalog, changed)
    missed = {c for c in made if c[1] < cut[c[0]]}
    assert missed  # the simulator revised (or removed) values older than two years
    assert logged(db, day1.run_id) == made - missed
    # inside the window every row equals the simulator; before it, the old values stayed
    for sid in ids:
        got = count(db, f"SELECT date, value FROM observations WHERE series_id = '{sid}' ORDER BY date")
        now = [(r["date"], r["value"]) for r in daily_sim.catalog.observations(sid).to_pylist()]
        if sid not in cut:
            assert got == now
            continue
        was = [(r["date"], r["value"]) for r in before.observations(sid).to_pylist()]
        assert got == [r for r in was if r[0] < cut[sid]] + [r for r in now if r[0] >= cut[sid]]

    again = ingest(db, spec, settings=settings, mode="incremental", reset_state=True)
    assert again.n_series == 40 and again.n_rows == sum(daily_sim.catalog.observations(s).num_rows for s in ids)
    assert count(db, "SELECT count(DISTINCT last_run_id) FROM series_state") == [(1,)]
    assert_db_matches(db, daily_sim.catalog, ids)


def test_a_series_left_out_of_runs_is_caught_up_even_when_many_updates_followed(tmp_path, settings_for):
    """Each series keeps its own checked_through: a series missing from two days' runs (failed, or left out
    of their catalog) is read back for in series/updates, behind pages of newer updates. (Reading only back
    to the newest update the database has seen would stop pages before it.)"""
    from dataclasses import replace

    with SimProcess(n_series=6000, seed=5, obs_per_series=4, long_series=0) as sim:
        db = tmp_path / "f.duckdb"
        ids = sim.catalog.series_ids
        settings = settings_for(sim)
        ingest(db, CatalogSpec(series=tuple(ids)), settings=settings, mode="incremental")
        # the simulator is deterministic: the next days' changes are known. Leave out a series changed
        # on day 1 only, day 1's earliest update: on series/updates it sits behind day 2's 1,100 and
        # ~2,500 of day 1's, pages after the first day-1 entry
        ahead = replace(sim.config, changes=(3000, 1100, 10)).catalog()
        later = set(ahead.changed_on(2)) | set(ahead.changed_on(3))
        day1 = sorted(ahead.changed_on(1), key=ahead.last_updated_at)
        left_out = next(s for s in day1 if s not in later)
        without = CatalogSpec(series=tuple(s for s in ids if s != left_out))
        sim.advance(days=1, changed=3000)
        ingest(db, without, settings=settings, mode="incremental")
        sim.advance(days=1, changed=1100)
        ingest(db, without, settings=settings, mode="incremental")
        day3 = sim.advance(days=1, changed=10)
        summary = ingest(db, CatalogSpec(series=tuple(ids)), settings=settings, mode="incremental")
        assert summary.n_series == len(set(day3) | {left_out})
        assert_db_matches(db, sim.catalog, ids)


def test_series_updates_not_reaching_back_refetches_instead_of_failing(tmp_path, daily_sim, settings_for):
    """When series/updates runs out before a series' checked_through (FRED keeps ~2 weeks), the series is
    re-fetched with its metadata; one that no longer exists fails alone (exit 3), the run goes on."""
    import duckdb

    sim = SimProcess(n_series=60, seed=9, withdrawn=1, long_series=0)
    with sim:
        db = tmp_path / "f.duckdb"
        ids = sim.catalog.series_ids[:20]
        withdrawn = sim.catalog.withdrawn_ids[0]
        settings = settings_for(sim)
        ingest(db, CatalogSpec(series=tuple(ids)), settings=settings, mode="incremental")
        con = duckdb.connect(str(db))
        # as if last checked long ago (older than anything series/updates lists), and a series since withdrawn
        con.execute("UPDATE series_state SET checked_through = TIMESTAMPTZ '1990-01-01 00:00:00+00' "
                    "WHERE series_id = $1", [ids[3]])
        con.execute("INSERT INTO series_state VALUES ($1, TIMESTAMPTZ '1990-01-01 00:00:00+00', DATE '1989-01-01', "
                    "'old', now(), TIMESTAMPTZ '1990-01-01 00:00:00+00')", [withdrawn])
        con.close()
        sim.reset_stats()
        summary = ingest(db, CatalogSpec(series=(*ids, withdrawn)), settings=settings, mode="incremental")
        assert summary.failed == [withdrawn] and summary.exit_code == 3
        assert summary.n_series == 1  # only the withdrawn one was unlisted: the others are listed, unchanged
        assert_db_matches(db, sim.catalog, ids)


def test_reset_state_forgets_only_the_catalogs_series(tmp_path, daily_sim, settings_for):
    from fredflow.errors import UsageError

    db = tmp_path / "f.duckdb"
    a, b = daily_sim.catalog.series_ids[:5], daily_sim.catalog.series_ids[5:10]
    settings = settings_for(daily_sim)
    ingest(db, CatalogSpec(series=tuple(a)), settings=settings, mode="incremental")
    first_b = ingest(db, CatalogSpec(series=tuple(b)), settings=settings, mode="incremental")
    again = ingest(db, CatalogSpec(series=tuple(a)), settings=settings, mode="incremental", reset_state=True)
    assert again.n_series == 5
    runs = dict(count(db, "SELECT series_id, last_run_id FROM series_state"))
    assert {runs[s] for s in a} == {again.run_id} and {runs[s] for s in b} == {first_b.run_id}
    with pytest.raises(UsageError, match="--reset-state"):
        ingest(db, CatalogSpec(series=tuple(a)), settings=settings, reset_state=True, end=__import__("datetime").date(2020, 1, 1))
