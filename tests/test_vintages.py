"""Vintages (ALFRED): real-sample parsing, the simulator's model and endpoints, and
``FredClient.vintages`` splitting FRED's 2000-vintage-date limit and stitching the
pieces back, checked row by row against the catalog.

Read-only: these tests use the shared session simulator (``sim`` in conftest.py).
"""

from __future__ import annotations

import json
from collections import defaultdict
from datetime import date, timedelta
from typing import Any

import aiohttp
import orjson
import pyarrow as pa
import pytest

from conftest import SAMPLES
from fredflow.errors import BadRequest
from fredflow.sources.fred.client import FredClient, RequestStats, new_session, vintage_ranges
from fredflow.ratelimit.service import ScheduleLimiter
from fredflow.sources.fred.parse import VINTAGE_SCHEMA, parse_vintage_dates, parse_vintage_observations, stitch_vintages
from fredflow.sim import DEMO_API_KEY, SimCatalog
from fredflow.sim.catalog import REALTIME_END_MAX

REALTIME_MIN, REALTIME_MAX = date(1776, 7, 4), date(9999, 12, 31)
LAG_DAYS = {"Daily": 1, "Daily, 7-Day": 1, "Weekly, Ending Friday": 6, "Monthly": 30, "Quarterly": 60, "Annual": 90}
TOO_MANY = (
    "Bad Request.  There are {n} vintage dates in the specified real-time period: {rs} to {re}.  "
    "This exceeds the maximum number of vintage dates allowed for this file type ({max})."
)
Row = tuple[date, date, date, float | None]


def sample(fragment: str) -> bytes:
    (path,) = SAMPLES.glob(f"*{fragment}.json")
    return path.read_bytes()


def rows_of(table: pa.Table) -> list[Row]:
    assert table.schema == VINTAGE_SCHEMA
    return [(r["date"], r["realtime_start"], r["realtime_end"], r["value"]) for r in table.to_pylist()]


def clipped_truth(catalog: SimCatalog, series_id: str, rs: date, re: date,
                  obs_start: date = date.min, obs_end: date = date.max) -> list[Row]:
    """The catalog's unclipped history cut to [rs, re] the way FRED does, in plain Python."""
    rows = []
    for d, start, end, value in rows_of(catalog.vintage_rows(series_id)):
        if start <= re and end >= rs and obs_start <= d <= obs_end:
            rows.append((d, max(start, rs), min(end, re), value))
    return rows


def assert_tiles(rows: list[Row], rs: date, re: date, releases: dict[date, date]) -> None:
    """Per date: periods back to back from max(rs, first release) to re, each a maximal run."""
    periods: dict[date, list[Row]] = defaultdict(list)
    for row in rows:
        periods[row[0]].append(row)
    for d, runs in periods.items():
        assert runs[0][1] == max(rs, releases[d]), d
        assert runs[-1][2] == re, d
        for prev, cur in zip(runs, runs[1:]):
            assert cur[1] == prev[2] + timedelta(days=1), (prev, cur)  # no gap, no overlap
            assert cur[3] != prev[3], (prev, cur)  # equal neighbours would be one period
        assert all(start <= end for _, start, end, _ in runs)


def first_releases(catalog: SimCatalog, series_id: str) -> dict[date, date]:
    lag = timedelta(days=LAG_DAYS[catalog.meta(series_id)["frequency"]])
    return {d: min(max(d + lag, REALTIME_MIN), catalog.base_today)
            for d in catalog.observations(series_id)["date"].to_pylist()}


def oldest(catalog: SimCatalog, frequency: str) -> str:
    """The series of that frequency with the longest history (ties: smallest id)."""
    ids = [s for s in catalog.series_ids if catalog.meta(s)["frequency"] == frequency]
    return min(ids, key=lambda s: (catalog.meta(s)["observation_start"], s))


async def fetch(base: str, endpoint: str, **params: Any) -> tuple[int, Any]:
    query = {"api_key": DEMO_API_KEY, "file_type": "json", **{k: str(v) for k, v in params.items()}}
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{base}/{endpoint}", params=query) as resp:
            return resp.status, orjson.loads(await resp.read())


async def with_client(settings, body):
    stats = RequestStats()
    async with new_session(settings, settings.concurrency) as session:
        client = FredClient(session, settings, ScheduleLimiter.at(settings.rate, settings.burst), stats=stats)
        return await body(client), stats


# ------------------------------------------------------------------ real samples


@pytest.mark.parametrize("fragment", [
    "all_releases_json__i0", "all_releases_json__i2", "asof_date_json__i0",
    "initial_release_json__i0", "initial_release_json__i2",
])
def test_real_vintage_samples_parse_exactly(fragment: str) -> None:
    raw = sample(fragment)
    truth = json.loads(raw)
    source = truth["observations"]
    page = parse_vintage_observations(raw)
    assert page.table.schema == VINTAGE_SCHEMA
    assert page.count == truth["count"] == len(source) == page.table.num_rows
    assert page.table.column("value").null_count == sum(1 for r in source if r["value"] == ".")
    for got, want in zip(rows_of(page.table), source, strict=True):
        assert got == (
            date.fromisoformat(want["date"]), date.fromisoformat(want["realtime_start"]),
            date.fromisoformat(want["realtime_end"]), None if want["value"] == "." else float(want["value"]),
        )


def test_real_vintage_samples_spot_checks() -> None:
    rows = rows_of(parse_vintage_observations(sample("all_releases_json__i0")).table)
    assert len(rows) == 3199
    assert rows[0] == (date(1946, 1, 1), date(1992, 12, 22), date(1996, 1, 18), 199.7)
    assert rows[1] == (date(1946, 1, 1), date(1996, 1, 19), date(1997, 5, 6), None)
    assert rows[-1] == (date(2024, 7, 1), date(2024, 10, 30), REALTIME_MAX, 29349.924)

    asof = rows_of(parse_vintage_observations(sample("asof_date_json__i0")).table)
    assert len(asof) == 2902
    assert asof[3] == (date(1946, 1, 1), date(1999, 10, 28), date(2019, 1, 1), None)  # clipped to realtime_end
    assert asof[-1] == (date(2018, 7, 1), date(2018, 12, 21), date(2019, 1, 1), 20658.204)
    assert max(r[2] for r in asof) == date(2019, 1, 1)

    initial = rows_of(parse_vintage_observations(sample("initial_release_json__i0")).table)
    assert len(initial) == 132 and len({r[0] for r in initial}) == 132  # one row per observation
    assert initial[0] == (date(1991, 10, 1), date(1992, 1, 29), date(1992, 2, 27), 5736.6)
    assert initial[-1] == (date(2024, 7, 1), date(2024, 10, 30), REALTIME_MAX, 29349.924)


def test_real_vintagedates_samples() -> None:
    for fragment, count in (("get_series_vintagedates__i0", 393), ("get_series_vintagedates__i2", 395)):
        raw = sample(fragment)
        truth = json.loads(raw)
        page = parse_vintage_dates(raw)
        assert page.count == count == page.table.num_rows
        assert page.table.column("vintage_date").to_pylist() == [date.fromisoformat(d) for d in truth["vintage_dates"]]
    assert list(json.loads(sample("get_series_vintagedates__i0"))) == [
        "realtime_start", "realtime_end", "order_by", "sort_order", "count", "offset", "limit", "vintage_dates",
    ]


# ------------------------------------------------------------ the simulator's model


def test_catalog_vintage_model(sim) -> None:
    catalog = sim.catalog
    for frequency in ("Daily", "Weekly, Ending Friday", "Monthly", "Quarterly", "Annual"):
        sid = oldest(catalog, frequency)
        rows = rows_of(catalog.vintage_rows(sid))
        releases = first_releases(catalog, sid)
        vintage_dates = catalog.vintage_dates(sid)
        assert vintage_dates == sorted(set(releases.values()))
        assert_tiles(rows, REALTIME_MIN, REALTIME_MAX, releases)
        per_date: dict[date, list[Row]] = defaultdict(list)
        for row in rows:
            per_date[row[0]].append(row)
        assert 1 <= max(len(v) for v in per_date.values()) <= 4
        assert {r[1] for r in rows} <= set(vintage_dates)  # every version starts on a vintage date
        # the latest vintage is the non-vintage data of day 0
        latest = [(d, runs[-1][3]) for d, runs in sorted(per_date.items())]
        observations = catalog.observations(sid)
        assert latest == list(zip(observations["date"].to_pylist(), observations["value"].to_pylist()))
        # revisions exist, and a few first releases are "." although the final value is not
        assert sum(len(v) > 1 for v in per_date.values()) > len(per_date) // 2
        if frequency == "Daily":
            assert len(vintage_dates) > 10_000 and catalog.meta(sid)["observation_start"] < "1975"
            assert any(runs[0][3] is None and runs[-1][3] is not None for runs in per_date.values())
    again = SimCatalog(n_series=120, seed=7, withdrawn=2, long_series=1)
    sid = oldest(catalog, "Monthly")
    assert again.vintage_rows(sid).equals(catalog.vintage_rows(sid))
    assert again.vintage_data(sid).text.equals(catalog.vintage_data(sid).text)


def test_day_advance_adds_one_vintage_and_keeps_the_history() -> None:
    """A simulated day that changed a series is one more vintage date of it: the history before it is
    kept (only the periods it ends are closed the day before), and its latest vintage is the current data."""
    base = SimCatalog(n_series=20, seed=5)
    advanced = SimCatalog(n_series=20, seed=5, changes=(20,))
    day = base.today + timedelta(days=1)
    for sid in base.series_ids[:5]:
        assert advanced.vintage_dates(sid) == [*base.vintage_dates(sid), day]
        old, new = base.vintage_rows(sid).to_pylist(), advanced.vintage_rows(sid).to_pylist()
        kept = [r for r in new if r["realtime_start"] < day]
        assert len(kept) == len(old) and len(new) > len(old)
        for was, now in zip(old, kept):
            assert {**now, "realtime_end": None} == {**was, "realtime_end": None}
            closed = was["realtime_end"] == REALTIME_END_MAX and now["realtime_end"] == day - timedelta(days=1)
            assert now["realtime_end"] == was["realtime_end"] or closed
        current = {r["date"]: r["value"] for r in new if r["realtime_end"] == REALTIME_END_MAX}
        assert current == dict(zip(advanced.observations(sid)["date"].to_pylist(),
                                   advanced.observations(sid)["value"].to_pylist()))


# ------------------------------------------------------------------ endpoints


async def test_vintagedates_endpoint(sim) -> None:
    catalog = sim.catalog
    sid = oldest(catalog, "Monthly")
    truth = [d.isoformat() for d in catalog.vintage_dates(sid)]
    status, doc = await fetch(sim.url, "series/vintagedates", series_id=sid)
    assert status == 200
    assert list(doc) == list(json.loads(sample("get_series_vintagedates__i0")))
    assert {k: doc[k] for k in list(doc)[:-1]} == {
        "realtime_start": "1776-07-04", "realtime_end": "9999-12-31", "order_by": "vintage_date",
        "sort_order": "asc", "count": len(truth), "offset": 0, "limit": 10000,
    }
    assert doc["vintage_dates"] == truth
    rs, re = truth[100], truth[300]
    status, doc = await fetch(sim.url, "series/vintagedates", series_id=sid, realtime_start=rs,
                              realtime_end=re, limit=50, offset=20, sort_order="desc")
    assert status == 200 and doc["count"] == 201
    assert doc["vintage_dates"] == truth[100:301][::-1][20:70]
    # the long "Daily, 7-Day" series needs more than one page of 10000
    long_id = catalog.long_series_ids[0]
    status, doc = await fetch(sim.url, "series/vintagedates", series_id=long_id, offset=90_000)
    long_dates = catalog.vintage_dates(long_id)
    assert long_dates[0] == REALTIME_MIN  # observations from 1690 on were first released on FRED's day 1
    assert doc["count"] == len(long_dates) > 90_000
    assert doc["vintage_dates"] == [d.isoformat() for d in long_dates[90_000:100_000]]


async def test_realtime_observations_endpoint(sim) -> None:
    catalog = sim.catalog
    sid = oldest(catalog, "Quarterly")
    rs, re = date(1990, 2, 14), date(2001, 7, 3)
    status, doc = await fetch(sim.url, "series/observations", series_id=sid, realtime_start=rs, realtime_end=re,
                              observation_start="1985-01-01", limit=40, offset=10)
    assert status == 200
    assert list(doc) == list(json.loads(sample("all_releases_json__i0")))
    truth = clipped_truth(catalog, sid, rs, re, obs_start=date(1985, 1, 1))
    assert (doc["realtime_start"], doc["realtime_end"], doc["observation_start"]) == (
        "1990-02-14", "2001-07-03", "1985-01-01")
    assert (doc["count"], doc["offset"], doc["limit"], doc["output_type"]) == (len(truth), 10, 40, 1)
    assert rows_of(parse_vintage_observations(orjson.dumps(doc)).table) == truth[10:50]
    assert all(list(o) == ["realtime_start", "realtime_end", "date", "value"] for o in doc["observations"])
    # realtime_start alone: realtime_end defaults to 9999-12-31 (and the reverse)
    _, doc = await fetch(sim.url, "series/observations", series_id=sid, realtime_start="1776-07-04")
    assert doc["realtime_end"] == "9999-12-31" and doc["count"] == catalog.vintage_rows(sid).num_rows
    _, doc = await fetch(sim.url, "series/observations", series_id=sid, realtime_end="2000-01-01")
    assert doc["realtime_start"] == "1776-07-04"
    assert rows_of(parse_vintage_observations(orjson.dumps(doc)).table) == clipped_truth(
        catalog, sid, REALTIME_MIN, date(2000, 1, 1))
    # initial release: the first row of each observation first released in the period
    _, doc = await fetch(sim.url, "series/observations", series_id=sid, realtime_start="1776-07-04", output_type=4)
    first_rows = {}
    for row in rows_of(catalog.vintage_rows(sid)):
        first_rows.setdefault(row[0], row)
    assert doc["output_type"] == 4
    assert rows_of(parse_vintage_observations(orjson.dumps(doc)).table) == list(first_rows.values())


async def test_too_many_vintage_dates_is_freds_400(sim, settings_for) -> None:
    catalog = sim.catalog
    sid = oldest(catalog, "Daily")
    n = len(catalog.vintage_dates(sid))
    status, doc = await fetch(sim.url, "series/observations", series_id=sid, realtime_start="1776-07-04")
    message = TOO_MANY.format(n=n, rs="1776-07-04", re="9999-12-31", max=2000)
    assert (status, doc) == (400, {"error_code": 400, "error_message": message})

    # the client asked to put everything in one request: FRED's refusal, no retry
    with pytest.raises(BadRequest) as err:
        await with_client(settings_for(sim), lambda c: c.vintages(sid, REALTIME_MIN, REALTIME_MAX,
                                                                  max_vintage_dates=n))
    assert err.value.message == message and err.value.http_status == 400 and err.value.attempts == 1

    # exactly 2000 vintage dates is allowed, 2001 is not
    vintage_dates = catalog.vintage_dates(sid)
    rs, re = vintage_dates[5000], vintage_dates[6999]
    status, _ = await fetch(sim.url, "series/observations", series_id=sid, realtime_start=rs, realtime_end=re)
    assert status == 200
    status, doc = await fetch(sim.url, "series/observations", series_id=sid, realtime_start=rs,
                              realtime_end=vintage_dates[7000])
    assert status == 400 and doc["error_message"] == TOO_MANY.format(n=2001, rs=rs, re=vintage_dates[7000], max=2000)


# ------------------------------------------------------------------ the client


def test_vintage_ranges_tile_the_period() -> None:
    days = [date(2000, 1, 1) + timedelta(days=3 * k) for k in range(10)]  # 2000-01-01 .. 2000-01-28
    ranges = vintage_ranges(days, date(1999, 12, 1), date(2000, 3, 1), 4)
    assert ranges == [
        (date(1999, 12, 1), date(2000, 1, 12)),
        (date(2000, 1, 13), date(2000, 1, 24)),
        (date(2000, 1, 25), date(2000, 3, 1)),
    ]
    assert vintage_ranges([], date(2000, 1, 1), date(2000, 2, 1)) == [(date(2000, 1, 1), date(2000, 2, 1))]
    # 2000-01-04, -07 and -10 are inside: two ranges
    assert vintage_ranges(days, date(2000, 1, 4), date(2000, 1, 10), 2) == [
        (date(2000, 1, 4), date(2000, 1, 9)), (date(2000, 1, 10), date(2000, 1, 10))]


def test_stitch_joins_only_pieces_cut_at_a_boundary() -> None:
    def table(*rows: Row) -> pa.Table:
        return pa.Table.from_pylist([dict(zip(VINTAGE_SCHEMA.names, r)) for r in rows], schema=VINTAGE_SCHEMA)

    d1, d2 = date(2000, 1, 1), date(2000, 2, 1)
    boundary = date(2000, 1, 31)
    first = table((d1, date(2000, 1, 1), boundary, 1.5), (d2, date(2000, 1, 15), boundary, None))
    second = table(
        (d1, date(2000, 2, 1), date(2000, 2, 10), 1.5),  # continuation: joined
        (d1, date(2000, 2, 11), date(2000, 2, 28), 1.5),  # same value, but not cut by us: kept apart
        (d2, date(2000, 2, 1), date(2000, 2, 28), None),  # NULL continues NULL: joined
    )
    assert rows_of(stitch_vintages([second, first], [boundary])) == [
        (d1, date(2000, 1, 1), date(2000, 2, 10), 1.5),
        (d1, date(2000, 2, 11), date(2000, 2, 28), 1.5),
        (d2, date(2000, 1, 15), date(2000, 2, 28), None),
    ]
    changed = table((d1, date(2000, 2, 1), date(2000, 2, 28), 1.6))
    assert len(stitch_vintages([first.slice(0, 1), changed], [boundary])) == 2


async def test_client_vintages_full_history_of_a_daily_series(sim, settings_for) -> None:
    catalog = sim.catalog
    sid = oldest(catalog, "Daily")
    n_vintages = len(catalog.vintage_dates(sid))
    assert n_vintages > 2000
    table, stats = await with_client(settings_for(sim), lambda c: c.vintages(sid, REALTIME_MIN, REALTIME_MAX))
    assert table.schema == VINTAGE_SCHEMA
    assert table.equals(catalog.vintage_rows(sid))  # row by row, nothing duplicated or missing
    assert_tiles(rows_of(table), REALTIME_MIN, REALTIME_MAX, first_releases(catalog, sid))
    # vintagedates in pages of 10000, then one observations request per range of 2000 vintage dates
    assert stats.requests == -(-n_vintages // 10_000) + -(-n_vintages // 2000) and stats.retries == 0


@pytest.mark.parametrize("frequency,rs,re,obs_window,max_vintage_dates,page_limit", [
    ("Daily", date(1990, 3, 15), date(1992, 6, 30), (date(1989, 6, 1), date(1991, 12, 31)), 50, 100_000),
    ("Daily", date(1995, 5, 6), date(2003, 1, 9), (None, None), 2000, 100_000),  # mid-history, 2 ranges
    ("Monthly", REALTIME_MIN, REALTIME_MAX, (None, None), 50, 1000),  # many ranges, several pages each
    ("Weekly, Ending Friday", date(1999, 12, 31), date(2000, 1, 1), (None, None), 1, 100_000),
])
async def test_client_vintages_split_and_stitched(sim, settings_for, frequency, rs, re, obs_window,
                                                  max_vintage_dates, page_limit) -> None:
    catalog = sim.catalog
    sid = oldest(catalog, frequency)
    obs_start, obs_end = obs_window
    in_period = [d for d in catalog.vintage_dates(sid) if rs <= d <= re]
    settings = settings_for(sim, page_limit=page_limit)
    table, stats = await with_client(settings, lambda c: c.vintages(
        sid, rs, re, observation_start=obs_start, observation_end=obs_end, max_vintage_dates=max_vintage_dates))
    truth = clipped_truth(catalog, sid, rs, re, obs_start or date.min, obs_end or date.max)
    got = rows_of(table)
    assert got == truth
    assert_tiles(got, rs, re, first_releases(catalog, sid))
    n_ranges = max(1, -(-len(in_period) // max_vintage_dates))
    assert stats.requests >= 1 + n_ranges and stats.retries == 0
    if frequency == "Daily" and max_vintage_dates == 50:
        assert n_ranges > 10


# ------------------------------------------------------------------ the pipeline: --vintages


def _db_vintages(db) -> list[tuple]:
    import duckdb

    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute("SELECT series_id, date, realtime_start, realtime_end, value FROM vintages "
                           "ORDER BY series_id, date, realtime_start").fetchall()
    finally:
        con.close()


def _vintage_truth(catalog, ids, rs=REALTIME_MIN, re=REALTIME_MAX, obs_start=date.min) -> list[tuple]:
    return [(sid, *row) for sid in sorted(ids) for row in clipped_truth(catalog, sid, rs, re, obs_start=obs_start)]


def test_ingest_vintages_lands_revision_history_exactly(tmp_path, sim, settings_for) -> None:
    """--vintages over a daily series with > 2000 vintage dates (split and stitched) and a monthly one."""
    from fredflow import CatalogSpec
    from fredflow.api import backfill, ingest

    catalog = sim.catalog
    ids = [oldest(catalog, "Daily"), oldest(catalog, "Monthly")]
    assert len(catalog.vintage_dates(ids[0])) > 2000
    db = tmp_path / "v.duckdb"
    summary = ingest(db, CatalogSpec(series=tuple(ids)), settings=settings_for(sim), vintages=True)
    assert summary.exit_code == 0 and summary.n_rows == sum(catalog.vintage_rows(s).num_rows for s in ids)
    assert _db_vintages(db) == _vintage_truth(catalog, ids)
    # a vintages run stores history, not current values, and does not mark series up to date
    import duckdb

    con = duckdb.connect(str(db), read_only=True)
    assert con.execute("SELECT count(*) FROM observations").fetchall() == [(0,)]
    assert con.execute("SELECT count(*) FROM series_state").fetchall() == [(0,)]
    con.close()

    # a real-time range mid-history, as a windowed backfill: windows of dates x the split real-time axis
    db2 = tmp_path / "v2.duckdb"
    rs, re = date(1995, 3, 1), date(2012, 6, 30)
    summary = backfill(db2, CatalogSpec(series=tuple(ids)), start=date(1980, 1, 1), window="15y",
                       settings=settings_for(sim), vintages=True, realtime_start=rs, realtime_end=re)
    assert summary.exit_code == 0
    assert _db_vintages(db2) == _vintage_truth(catalog, ids, rs, re, obs_start=date(1980, 1, 1))


def test_a_bounded_vintages_run_replaces_the_series_history_in_its_range(tmp_path, sim, settings_for) -> None:
    """FRED clips periods to the requested real-time range: a bounded run replaces what is stored for its
    series and dates, rather than mixing clipped periods into whole ones."""
    from fredflow import CatalogSpec
    from fredflow.api import ingest

    catalog = sim.catalog
    ids = [oldest(catalog, "Quarterly"), oldest(catalog, "Monthly")]
    db = tmp_path / "v.duckdb"
    ingest(db, CatalogSpec(series=tuple(ids)), settings=settings_for(sim), vintages=True)
    rs, re = date(2001, 1, 1), date(2010, 12, 31)
    ingest(db, CatalogSpec(series=(ids[0],)), settings=settings_for(sim), vintages=True,
           realtime_start=rs, realtime_end=re)
    assert _db_vintages(db) == sorted(_vintage_truth(catalog, [ids[0]], rs, re) + _vintage_truth(catalog, [ids[1]]))
    ingest(db, CatalogSpec(series=tuple(ids)), settings=settings_for(sim), vintages=True)
    assert _db_vintages(db) == _vintage_truth(catalog, ids)
