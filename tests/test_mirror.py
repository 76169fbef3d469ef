"""The mirror guarantee against a simulator whose days advance: after a successful run, every series it
fetched equals the simulator's data row for row (revisions anywhere in history applied, removed
observations removed, new series added), ``revisions`` holds exactly what changed that day (old and
new values), and the requests counted AT THE SIMULATOR are the fewest FRED needs for the job."""

from __future__ import annotations

import json
import math
from datetime import date

import pytest

from e2e import assert_db_matches, count, day_changes, logged
from fredflow import CatalogSpec
from fredflow.api import backfill, ingest
from fredflow.cli import main as cli_main
from fredflow.sim.process import SimProcess
from fredflow.sources.fred.limits import LIST_PAGE_LIMIT, OBSERVATIONS_PAGE_LIMIT


def pages(catalog, series_ids, start: date | None = None) -> int:
    """The fewest series/observations requests for these series' histories (from ``start``)."""
    def rows(sid: str) -> int:
        dates = catalog.observations(sid).column("date").to_pylist()
        return len(dates) if start is None else sum(1 for d in dates if d >= start)

    return sum(max(1, math.ceil(rows(s) / OBSERVATIONS_PAGE_LIMIT)) for s in series_ids)


def sent(summary, sim) -> int:
    """The requests the run needed: what the simulator received (equal to the run's own count), less
    the retries of requests that timed out on a loaded machine (each retry is counted in both)."""
    received = sim.stats()["requests"]
    assert summary.requests == received
    return received - summary.retries


def listing_pages(n: int) -> int:
    return max(1, math.ceil(n / LIST_PAGE_LIMIT))


@pytest.fixture
def day_sim():
    """Its own simulator (days advance): one long series (2 request pages), two series debuting on days 1 and 2."""
    with SimProcess(n_series=150, seed=21, long_series=1, new_series=2) as process:
        yield process


def test_daily_release_mirror_is_exact_logged_and_minimal(tmp_path, day_sim, settings_for):
    db = tmp_path / "f.duckdb"
    settings = settings_for(day_sim)
    spec = CatalogSpec(release=1)
    catalog = day_sim.catalog
    long_id = catalog.long_series_ids[0]
    assert catalog.observations(long_id).num_rows > OBSERVATIONS_PAGE_LIMIT

    # day 0: the initial load. One listing page, one request per 100,000 rows of each series
    day_sim.reset_stats()
    first = ingest(db, spec, settings=settings, mode="incremental")
    minimum = listing_pages(len(catalog.releases[1])) + pages(catalog, catalog.series_ids)
    assert sent(first, day_sim) == minimum
    assert_db_matches(db, catalog, catalog.series_ids)
    assert (first.n_revised, first.n_deleted, first.n_added) == (0, 0, 0)  # a first load is no change
    assert count(db, "SELECT count(*) FROM revisions") == [(0,)]

    seen_kinds, oldest_revision, debuted = set(), date.max, []
    for day in (1, 2, 3):
        before = day_sim.catalog
        changed = day_sim.advance(days=1, changed=8)
        after = day_sim.catalog
        new_ids = sorted(set(after.series_ids) - set(before.series_ids))
        debuted += new_ids
        assert new_ids == ([f"SIMN000{day}"] if day <= 2 else [])
        day_sim.reset_stats()
        run = ingest(db, spec, settings=settings, mode="incremental")
        # the fewest requests: the listing (it carries last_updated) and the changed or new series' pages
        assert sent(run, day_sim) == (
            listing_pages(len(after.releases[1])) + pages(after, [*changed, *new_ids]))
        assert run.n_series == len(changed) + len(new_ids) and run.exit_code == 0
        # every row of every series equals the simulator's data now
        assert_db_matches(db, after, after.series_ids)
        # the revision log holds exactly the day's changes, old and new values, no more
        want = day_changes(before, after, changed)
        assert logged(db, run.run_id) == want
        kinds = [w[4] for w in want]
        assert (run.n_revised, run.n_deleted, run.n_added) == tuple(kinds.count(k) for k in
                                                                    ("revised", "deleted", "added"))
        recorded = count(db, f"SELECT n_revised, n_deleted, n_added FROM ingest_runs WHERE run_id = '{run.run_id}'")
        assert recorded == [(run.n_revised, run.n_deleted, run.n_added)]
        seen_kinds |= set(kinds)
        oldest_revision = min([oldest_revision, *(w[1] for w in want if w[4] == "revised")])
    assert seen_kinds == {"revised", "deleted", "added"}  # removals happened, and were applied
    assert oldest_revision < date(after.today.year - 30, 1, 1)  # a revision 30+ years back was applied
    assert set(debuted) <= {r[0] for r in count(db, "SELECT DISTINCT series_id FROM observations")}
    assert count(db, "SELECT count(*) - count(DISTINCT (series_id, date)) FROM observations") == [(0,)]


def test_explicit_ids_daily_refresh_is_whole_and_minimal(tmp_path, day_sim, settings_for):
    """Explicit ids learn what changed from series/updates (one page here); each changed series is
    fetched whole, in one request per 100,000 rows, and its metadata comes with the updates page."""
    db = tmp_path / "f.duckdb"
    settings = settings_for(day_sim)
    ids = day_sim.catalog.series_ids[:60]
    spec = CatalogSpec(series=tuple(ids))
    day_sim.reset_stats()
    first = ingest(db, spec, settings=settings, mode="incremental")
    # one series/updates page (checked_through), then metadata + observations per series
    assert sent(first, day_sim) == 1 + len(ids) + pages(day_sim.catalog, ids)
    before = day_sim.catalog
    ours = sorted(set(day_sim.advance(days=1, changed=40)) & set(ids))
    assert ours
    day_sim.reset_stats()
    run = ingest(db, spec, settings=settings, mode="incremental")
    assert sent(run, day_sim) == 1 + pages(day_sim.catalog, ours)
    assert_db_matches(db, day_sim.catalog, ids)
    assert logged(db, run.run_id) == day_changes(before, day_sim.catalog, ours)


def test_backfill_is_planned_by_request_pages(tmp_path, day_sim, settings_for):
    """All history: one listing page and one request per 100,000 rows of each series (requests ÷ minimum = 1)."""
    settings = settings_for(day_sim)
    catalog = day_sim.catalog
    release = next(r for r, ids in catalog.releases.items() if r != 1 and catalog.long_series_ids[0] in ids)
    ids = catalog.releases[release]
    db = tmp_path / "release.duckdb"
    day_sim.reset_stats()
    summary = backfill(db, CatalogSpec(release=release), start=date(1600, 1, 1), settings=settings)
    assert sent(summary, day_sim) == listing_pages(len(ids)) + pages(catalog, ids)
    assert summary.n_rows == assert_db_matches(db, catalog, ids)
    assert pages(catalog, ids) == len(ids) + 1  # the long series (from 1690) takes two pages, every other one
    # from 1776-07-04 the long series fits in one page: one request per series
    db = tmp_path / "release-1776.duckdb"
    day_sim.reset_stats()
    summary = backfill(db, CatalogSpec(release=release), start=date(1776, 7, 4), settings=settings)
    minimum = listing_pages(len(ids)) + pages(catalog, ids, date(1776, 7, 4))
    assert sent(summary, day_sim) == minimum == 1 + len(ids)

    # explicit ids: one series/updates page to stamp the state, metadata and the pages of each series
    db = tmp_path / "ids.duckdb"
    some = catalog.series_ids[:25]
    day_sim.reset_stats()
    summary = backfill(db, CatalogSpec(series=tuple(some)), start=date(1776, 7, 4), settings=settings)
    assert sent(summary, day_sim) == 1 + len(some) + pages(catalog, some)
    assert_db_matches(db, catalog, some)


def test_a_bounded_run_replaces_only_its_slice(tmp_path, day_sim, settings_for):
    import duckdb

    db = tmp_path / "f.duckdb"
    settings = settings_for(day_sim)
    ids = day_sim.catalog.series_ids[:6]
    ingest(db, CatalogSpec(series=tuple(ids)), settings=settings)
    sid = next(s for s in ids if day_sim.catalog.observations(s).column("date")[0].as_py() < date(1990, 1, 1))
    con = duckdb.connect(str(db))
    # rows FRED does not serve: one inside the slice the next run fetches, one before it
    con.execute("INSERT INTO observations VALUES ($1, DATE '2000-01-03', 1.5, NULL, NULL), "
                "($1, DATE '1700-01-03', 2.5, NULL, NULL)", [sid])
    con.close()
    run = ingest(db, CatalogSpec(series=tuple(ids)), settings=settings, start=date(1990, 1, 1), end=date(2010, 12, 31))
    assert logged(db, run.run_id) == {(sid, date(2000, 1, 3), 1.5, None, "deleted")}
    assert count(db, f"SELECT date FROM observations WHERE series_id = '{sid}' AND date < DATE '1800-01-01'") == [
        (date(1700, 1, 3),)]  # outside the slice: untouched
    whole = ingest(db, CatalogSpec(series=tuple(ids)), settings=settings)
    assert logged(db, whole.run_id) == {(sid, date(1700, 1, 3), 2.5, None, "deleted")}
    assert_db_matches(db, day_sim.catalog, ids)


def test_fredflow_changes_lists_the_log(tmp_path, day_sim, settings_for, capsys, monkeypatch):
    db = tmp_path / "f.duckdb"
    settings = settings_for(day_sim)
    ids = day_sim.catalog.series_ids[:80]
    spec = CatalogSpec(series=tuple(ids))
    ingest(db, spec, settings=settings, mode="incremental")
    before = day_sim.catalog
    ours = sorted(set(day_sim.advance(days=1, changed=30)) & set(ids))
    run = ingest(db, spec, settings=settings, mode="incremental")
    want = day_changes(before, day_sim.catalog, ours)
    capsys.readouterr()
    assert cli_main(["changes", "--db", str(db), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {(r["series_id"], date.fromisoformat(r["date"]), r["old_value"], r["new_value"], r["kind"])
            for r in rows} == want
    assert {r["run_id"] for r in rows} == {run.run_id}
    assert cli_main(["changes", "--db", str(db), "--json", "--run", run.run_id, "--series", ours[0]]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows and {r["series_id"] for r in rows} == {ours[0]}
    assert cli_main(["changes", "--db", str(db), "--json", "--since", "2999-01-01"]) == 0
    assert json.loads(capsys.readouterr().out) == []
    assert cli_main(["changes", "--db", str(db), "--series", ours[0]]) == 0
    out = capsys.readouterr()
    assert ours[0] in out.out and "changes:" in out.err


def vintages_equal(db, catalog, ids) -> None:
    got = count(db, "SELECT series_id, date, realtime_start, realtime_end, value FROM vintages ORDER BY 1, 2, 3")
    want = [(s, r["date"], r["realtime_start"], r["realtime_end"], r["value"])
            for s in sorted(ids) for r in catalog.vintage_rows(s).to_pylist()]
    assert got == want


def vintage_requests(catalog, ids, since: date | None = None) -> int:
    """Per series: series/vintagedates pages (10,000 dates each) + one request per real-time range of at most
    1,999 vintage dates (FRED refuses more than 2,000; fredflow keeps one of margin), no range here holding
    more than 100,000 rows."""
    total = 0
    for sid in ids:
        dates = [d for d in catalog.vintage_dates(sid) if since is None or d >= since]
        total += max(1, math.ceil(len(dates) / 10_000)) + max(1, math.ceil(len(dates) / 1999))
    return total


def test_incremental_vintages_fetch_only_new_vintages_stitched_exactly(tmp_path, settings_for):
    """The first vintage run stores whole histories and each series' newest vintage date; an incremental one
    fetches only series whose last_updated moved, and of each only the vintages from the stored newest one
    on, stitched onto the stored history: the table equals ALFRED's whole history after every day."""
    with SimProcess(n_series=30, seed=4, long_series=0, new_series=1) as sim:
        db = tmp_path / "v.duckdb"
        settings, spec = settings_for(sim), CatalogSpec(release=1)
        ids = sim.catalog.series_ids
        sim.reset_stats()
        first = ingest(db, spec, settings=settings, vintages=True)
        assert sent(first, sim) == 1 + vintage_requests(sim.catalog, ids)
        vintages_equal(db, sim.catalog, ids)
        newest = dict(count(db, "SELECT series_id, last_vintage_date FROM vintage_state"))
        assert newest == {s: sim.catalog.vintage_dates(s)[-1] for s in ids}
        for day in (1, 2):
            changed = sim.advance(days=1, changed=3)
            new_ids = sorted(set(sim.catalog.series_ids) - set(ids))
            sim.reset_stats()
            run = ingest(db, spec, settings=settings, vintages=True, mode="incremental")
            assert run.n_series == len(changed) + len(new_ids)
            # per changed series: vintage dates from the stored newest one, and one range of observations
            minimum = 1 + sum(vintage_requests(sim.catalog, [s], newest[s]) for s in changed) + vintage_requests(
                sim.catalog, new_ids)
            assert sent(run, sim) == minimum == 1 + 2 * (len(changed) + len(new_ids))
            ids = sim.catalog.series_ids
            vintages_equal(db, sim.catalog, ids)
            newest = dict(count(db, "SELECT series_id, last_vintage_date FROM vintage_state"))
            assert newest == {s: sim.catalog.vintage_dates(s)[-1] for s in ids}
        sim.reset_stats()
        idle = ingest(db, spec, settings=settings, vintages=True, mode="incremental")
        assert (idle.n_series, idle.requests, sim.stats()["requests"]) == (0, 1, 1)


def test_expected_pages_estimates_each_series_requests_from_its_metadata():
    """Planning estimates each series' requests from observation_start/end and the frequency; against the
    simulator's catalog (one long Daily, 7-Day series of 2 pages) it is exact for every series."""
    from fredflow.run.batches import expected_pages
    from fredflow.sim.catalog import SimCatalog

    catalog = SimCatalog(n_series=200, seed=31, long_series=2)
    for sid in catalog.series_ids:
        meta = catalog.meta(sid)
        first, last = date.fromisoformat(meta["observation_start"]), date.fromisoformat(meta["observation_end"])
        assert expected_pages(meta["frequency"], meta["frequency_short"], first, last) == pages(catalog, [sid])
        assert expected_pages(meta["frequency"], meta["frequency_short"], first, last,
                              start=date(1776, 7, 4)) == pages(catalog, [sid], date(1776, 7, 4))
    assert expected_pages("Monthly", "M", date(2000, 1, 1), date(2020, 1, 1), start=date(2030, 1, 1)) == 1
    assert expected_pages(None, None, None, None) == 1
