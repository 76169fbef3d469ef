"""Third-party FRED clients (fredapi, pyfredapi, full_fred) run unchanged against a real simulator.

fredapi speaks FRED's default XML, pyfredapi and full_fred JSON.  Each is
pointed at the simulator the only way it offers: fredapi's ``root_url``
attribute, full_fred's (name-mangled) base URL attribute, pyfredapi's
default ``base_url`` argument of its one request function.  Every answer is
checked against the simulator's own data (:class:`SimCatalog`).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from datetime import date, timedelta
from typing import Any

import pytest

from fredflow.sim import DEMO_API_KEY, SimCatalog, SimProcess
from fredflow.sim.reference import Reference

pd = pytest.importorskip("pandas")
fredapi = pytest.importorskip("fredapi")
pyfredapi = pytest.importorskip("pyfredapi")
full_fred = pytest.importorskip("full_fred.fred")

SIM = {"n_series": 40, "seed": 3, "withdrawn": 1, "long_series": 0}


@pytest.fixture(scope="module")
def sim() -> Iterator[SimProcess]:
    with SimProcess(**SIM) as process:
        yield process


@pytest.fixture(scope="module")
def catalog(sim: SimProcess) -> SimCatalog:
    return sim.catalog


def _few_vintages(catalog: SimCatalog, most: int = 2000) -> str:
    """A series whose whole real-time history fits one observations request."""
    return next(s for s in catalog.series_ids if len(catalog.vintage_days(s)) <= most)


def _expected_values(catalog: SimCatalog, series_id: str) -> list[float]:
    return [math.nan if v is None else v for v in catalog.observations(series_id).column("value").to_pylist()]


def _same_floats(got: list[float], want: list[float]) -> bool:
    return len(got) == len(want) and all((math.isnan(a) and math.isnan(b)) or a == b for a, b in zip(got, want))


def _dates(catalog: SimCatalog, series_id: str) -> list[date]:
    return catalog.observations(series_id).column("date").to_pylist()


# ------------------------------------------------------------------ fredapi (XML)


@pytest.fixture
def fa(sim: SimProcess) -> Any:
    client = fredapi.Fred(api_key=DEMO_API_KEY)
    client.root_url = sim.url
    return client


def test_fredapi_observations_and_info(fa: Any, catalog: SimCatalog) -> None:
    sid = catalog.series_ids[0]
    series = fa.get_series(sid)
    assert [d.date() for d in series.index] == _dates(catalog, sid)
    assert _same_floats(series.tolist(), _expected_values(catalog, sid))
    info = fa.get_series_info(sid)
    meta = catalog.meta(sid)
    assert info.to_dict() == {k: str(v) for k, v in meta.items()}  # notes with newlines survive XML
    part = fa.get_series(sid, observation_start="2020-01-01", observation_end="2020-12-31")
    assert all(date(2020, 1, 1) <= d.date() <= date(2020, 12, 31) for d in part.index)
    assert len(part) == sum(date(2020, 1, 1) <= d <= date(2020, 12, 31) for d in _dates(catalog, sid))


def test_fredapi_vintages_and_vintage_dates(fa: Any, catalog: SimCatalog) -> None:
    sid = _few_vintages(catalog)
    assert [d.date() for d in fa.get_series_vintage_dates(sid)] == catalog.vintage_dates(sid)
    frame = fa.get_series_all_releases(sid)
    rows = catalog.vintage_rows(sid)
    assert [d.date() for d in frame["date"]] == rows.column("date").to_pylist()
    assert [d.date() for d in frame["realtime_start"]] == rows.column("realtime_start").to_pylist()
    want = [math.nan if v is None else v for v in rows.column("value").to_pylist()]
    # (pandas turns fredapi's NaN into NaT in this object column)
    assert _same_floats([math.nan if pd.isna(v) else float(v) for v in frame["value"]], want)
    first = fa.get_series_first_release(sid)
    assert len(first) == len(catalog.observations(sid))


def test_fredapi_release_category_and_search(fa: Any, catalog: SimCatalog) -> None:
    release_id = next(r for r in catalog.releases if r != 1)
    listed = fa.search_by_release(release_id)
    assert list(listed.index) == catalog.releases[release_id]
    assert listed.loc[listed.index[0], "title"] == catalog.meta(listed.index[0])["title"]
    everything = fa.search_by_release(1)  # withdrawn ids are listed too
    assert list(everything.index) == catalog.listed_ids
    category_id = next(iter(catalog.categories))
    assert list(fa.search_by_category(category_id).index) == catalog.categories[category_id]
    word = catalog.meta(catalog.series_ids[0])["title"].split()[0]
    found = fa.search(word, order_by="series_id", sort_order="asc")
    want = [s for s in catalog.series_ids if word.lower() in catalog.meta(s)["title"].lower()]
    assert list(found.index) == want
    monthly = fa.search(word, filter=("frequency", "Monthly"))
    expected = {s for s in want if catalog.meta(s)["frequency"] == "Monthly"}
    assert set(monthly.index if monthly is not None else ()) == expected


def test_fredapi_errors_are_read_from_xml(fa: Any) -> None:
    with pytest.raises(ValueError, match="The series does not exist"):
        fa.get_series("NOSUCHSERIES")
    fa.api_key = "0" * 32
    with pytest.raises(ValueError, match="api_key is not registered"):
        fa.get_series_info("SIM000001")


# ---------------------------------------------------------------- pyfredapi (JSON)


@pytest.fixture
def pf(sim: SimProcess, monkeypatch: pytest.MonkeyPatch) -> Any:
    from pyfredapi import _base

    wrapped = _base._get_request.__wrapped__
    monkeypatch.setattr(wrapped, "__defaults__", (None, None, sim.url))
    monkeypatch.setenv("FRED_API_KEY", DEMO_API_KEY)
    _base._get_request.cache_clear()
    _base._get_api_key.cache_clear()
    yield pyfredapi
    _base._get_request.cache_clear()


def test_pyfredapi_observations_info_and_vintages(pf: Any, catalog: SimCatalog) -> None:
    sid = catalog.series_ids[1]
    frame = pf.get_series(sid)
    assert [d.date() for d in frame["date"]] == _dates(catalog, sid)
    assert _same_floats(frame["value"].tolist(), _expected_values(catalog, sid))
    info = pf.get_series_info(sid)
    meta = catalog.meta(sid)
    assert (info.id, info.title, info.frequency, info.last_updated) == (
        meta["id"], meta["title"], meta["frequency"], meta["last_updated"])

    sid = _few_vintages(catalog)
    assert pf.get_series_vintagedates(sid) == [d.isoformat() for d in catalog.vintage_dates(sid)]
    rows = catalog.vintage_rows(sid)
    every = pf.get_series_all_releases(sid, return_format="json")
    assert [o["realtime_start"] for o in every] == [d.isoformat() for d in rows.column("realtime_start").to_pylist()]
    initial = pf.get_series_initial_release(sid, return_format="json")
    assert len(initial) == len(catalog.observations(sid))
    first_rows = {}
    for d, start, text in zip(rows.column("date").to_pylist(), rows.column("realtime_start").to_pylist(),
                              catalog.vintage_data(sid).text.to_pylist()):
        first_rows.setdefault(d.isoformat(), (start.isoformat(), text))
    assert {o["date"]: (o["realtime_start"], o["value"]) for o in initial} == first_rows
    # as of a date: the value valid on that date, for every observation released by then
    as_of = catalog.vintage_dates(sid)[len(catalog.vintage_dates(sid)) // 2]
    known = pf.get_series_asof_date(sid, as_of.isoformat(), return_format="json")
    assert {o["date"] for o in known} == {
        d.isoformat() for d, s in zip(rows.column("date").to_pylist(), rows.column("realtime_start").to_pylist())
        if s <= as_of
    }
    assert all(o["realtime_start"] <= o["realtime_end"] <= as_of.isoformat() for o in known)


def test_pyfredapi_listings_search_and_updates(pf: Any, catalog: SimCatalog) -> None:
    reference = Reference(catalog)
    releases = pf.get_releases()
    assert [r["id"] for r in releases["releases"]] == sorted(catalog.releases)
    release_id = next(r for r in catalog.releases if r != 1)
    assert pf.get_release(release_id)["releases"][0] == reference.release(release_id)
    dates = pf.get_release_dates(release_id)
    assert [d["date"] for d in dates["release_dates"]][:10000] == [
        (date(1970, 1, 1) + timedelta(days=int(d))).isoformat() for d in reference.release_days(release_id)][:10000]
    assert [s["id"] for s in pf.get_release_series(release_id)["seriess"]] == catalog.releases[release_id]
    year = pf.get_releases_dates()
    assert year["realtime_start"] == f"{catalog.realtime[:4]}-01-01" and year["sort_order"] == "desc"
    assert all(d["date"] >= year["realtime_start"] for d in year["release_dates"])

    assert pf.get_category(0)["categories"] == [{"id": 0, "name": "Categories", "parent_id": 0}]
    groups = pf.get_category_children(0)["categories"]
    leaves = [c for g in groups for c in pf.get_category_children(g["id"])["categories"]]
    assert sorted(c["id"] for c in leaves) == sorted(catalog.categories)
    leaf = leaves[0]["id"]
    assert list(pf.get_category_series(leaf)) == catalog.categories[leaf]  # {id: SeriesInfo}

    sid = catalog.series_ids[2]
    assert pf.get_series_releases(sid)["releases"][0]["id"] == reference.release_of(sid)
    assert pf.get_series_categories(sid)["categories"][0]["id"] == reference.category_of(sid)
    tags = pf.get_series_tags(sid)["tags"]
    assert {t["name"] for t in tags} == {n for n, _ in reference.series_tags(sid)}

    hits = pf.search_series(sid, search_type="series_id", return_format="json")
    assert [s["id"] for s in hits["seriess"]] == [sid]
    updates = pf.get_series_updates(sid)  # pyfredapi sends series_id, which FRED ignores
    assert [s["id"] for s in updates["seriess"]] == catalog.updated_ids()


def test_pyfredapi_errors(pf: Any) -> None:
    from pyfredapi.exceptions import FredAPIRequestError

    with pytest.raises(FredAPIRequestError, match="The series does not exist"):
        pf.get_series_info("NOSUCHSERIES")


# ---------------------------------------------------------------- full_fred (JSON)


@pytest.fixture
def ff(sim: SimProcess, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("FRED_API_KEY", DEMO_API_KEY)
    client = full_fred.Fred()
    client._FredBase__url_base = f"{sim.url}/"
    return client


def test_full_fred_observations_vintages_and_info(ff: Any, catalog: SimCatalog) -> None:
    sid = catalog.series_ids[3]
    frame = ff.get_series_df(sid)
    assert frame["date"].tolist() == [d.isoformat() for d in _dates(catalog, sid)]
    assert frame["value"].tolist() == catalog.served_values(sid).to_pylist()
    assert ff.get_a_series(sid)["seriess"][0] == catalog.meta(sid)
    sid = _few_vintages(catalog)
    assert ff.get_series_vintagedates(sid)["vintage_dates"] == [d.isoformat() for d in catalog.vintage_dates(sid)]
    every = ff.get_series_df(sid, realtime_start="1776-07-04", realtime_end="9999-12-31")
    assert len(every) == catalog.vintage_rows(sid).num_rows
    vintage = catalog.vintage_dates(sid)[-1].isoformat()
    as_of = ff.get_series_df(sid, vintage_dates=vintage)  # (a list would be sent as its repr)
    assert set(as_of["realtime_start"]) == {vintage} and len(as_of) == len(catalog.observations(sid))
    assert as_of["value"].tolist() == catalog.served_values(sid).to_pylist()


def test_full_fred_releases_categories_search_updates(ff: Any, catalog: SimCatalog) -> None:
    reference = Reference(catalog)
    assert [r["id"] for r in ff.get_all_releases()["releases"]] == sorted(catalog.releases)
    release_id = next(r for r in catalog.releases if r != 1)
    assert ff.get_a_release(release_id)["releases"][0]["name"] == reference.release(release_id)["name"]
    assert ff.get_release_dates(release_id)["count"] == len(reference.release_days(release_id))
    assert ff.get_release_dates_all_releases()["order_by"] == "release_date"
    assert [s["id"] for s in ff.get_series_on_a_release(release_id)["seriess"]] == catalog.releases[release_id]
    leaf = next(iter(catalog.categories))
    assert ff.get_a_category(leaf)["categories"][0]["id"] == leaf
    assert [s["id"] for s in ff.get_series_in_a_category(leaf)["seriess"]] == catalog.categories[leaf]
    word = catalog.meta(catalog.series_ids[0])["title"].split()[0]
    found = ff.search_for_series([word], order_by="series_id")
    assert [s["id"] for s in found["seriess"]] == [
        s for s in catalog.series_ids if word.lower() in catalog.meta(s)["title"].lower()]
    updates = ff.get_series_updates()
    assert [s["id"] for s in updates["seriess"]] == catalog.updated_ids()
