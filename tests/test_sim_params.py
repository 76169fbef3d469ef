"""The simulator's FRED fidelity: XML, keys, real-time bounds, listing and observation parameters.

In-process (:meth:`FredSimulator.answer`) where HTTP adds nothing; over HTTP
for headers.  Every answer is checked against :class:`SimCatalog` /
:class:`Reference`, the simulator's own data.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from fredflow.sim import DEMO_API_KEY, UNREGISTERED_KEY, SimConfig
from fredflow.sim.cli import config_to_argv, parse_args
from fredflow.sim.reference import Reference
from fredflow.sim.server import FredSimulator

CONFIG = SimConfig(n_series=60, seed=5, withdrawn=1, long_series=0)
TODAY = CONFIG.today.isoformat()
KEY_HELP = "  Read https://fred.stlouisfed.org/docs/api/api_key.html for more information."
EPOCH = date(1970, 1, 1)


@pytest.fixture(scope="module")
def fred() -> FredSimulator:
    return FredSimulator(CONFIG)


def ask(sim: FredSimulator, endpoint: str, **params: Any) -> tuple[int, bytes]:
    query = {"api_key": DEMO_API_KEY, **{k: str(v) for k, v in params.items() if v is not None}}
    return sim.answer(endpoint, query)


def ok_json(sim: FredSimulator, endpoint: str, **params: Any) -> dict[str, Any]:
    status, body = ask(sim, endpoint, file_type="json", **params)
    assert status == 200, body
    return orjson.loads(body)


def ok_xml(sim: FredSimulator, endpoint: str, **params: Any) -> ET.Element:
    status, body = ask(sim, endpoint, **params)  # no file_type: FRED's default, XML
    assert status == 200, body
    assert body.startswith(b'<?xml version="1.0" encoding="utf-8" ?>\n')
    return ET.fromstring(body)


def error_of(sim: FredSimulator, endpoint: str, file_type: str | None = "json", **params: Any) -> tuple[int, str]:
    status, body = ask(sim, endpoint, file_type=file_type, **params)
    if file_type == "json":
        doc = orjson.loads(body)
        assert list(doc) == ["error_code", "error_message"] and doc["error_code"] == status
        return status, doc["error_message"]
    root = ET.fromstring(body)
    assert root.tag == "error" and list(root.attrib) == ["code", "message"] and root.get("code") == str(status)
    return status, root.get("message")  # type: ignore[return-value]


def as_strings(item: dict[str, Any]) -> dict[str, str]:
    return {k: ("true" if v is True else "false" if v is False else str(v)) for k, v in item.items()}


# -------------------------------------------------------------------- XML shapes

XML_CASES = [
    # endpoint, params, root, child, JSON list key (None: text items)
    ("series", {"series_id": "SIM000001"}, "seriess", "series"),
    ("series/observations", {"series_id": "SIM000002", "limit": 50}, "observations", "observation"),
    ("series/observations", {"series_id": "SIM000002", "realtime_start": "2020-01-01", "realtime_end": "2021-01-01",
                             "limit": 40}, "observations", "observation"),
    ("series/vintagedates", {"series_id": "SIM000003", "limit": 30}, "vintage_dates", "vintage_date"),
    ("series/updates", {"limit": 20}, "seriess", "series"),
    ("series/search", {"search_text": "rate"}, "seriess", "series"),
    ("series/release", {"series_id": "SIM000004"}, "releases", "release"),
    ("series/categories", {"series_id": "SIM000004"}, "categories", "category"),
    ("series/tags", {"series_id": "SIM000004"}, "tags", "tag"),
    ("release", {"release_id": 10}, "releases", "release"),
    ("releases", {}, "releases", "release"),
    ("releases/dates", {"limit": 25}, "release_dates", "release_date"),
    ("release/dates", {"release_id": 10, "limit": 25}, "release_dates", "release_date"),
    ("release/series", {"release_id": 1}, "seriess", "series"),
    ("category", {"category_id": 0}, "categories", "category"),
    ("category/children", {"category_id": 0}, "categories", "category"),
    ("category/series", {"category_id": 100}, "seriess", "series"),
]


@pytest.mark.parametrize(("endpoint", "params", "root", "child"), XML_CASES)
def test_xml_is_the_default_and_carries_the_json_data(fred: FredSimulator, endpoint: str, params: dict[str, Any],
                                                      root: str, child: str) -> None:
    xml_root = ok_xml(fred, endpoint, **params)
    doc = ok_json(fred, endpoint, **params)
    assert xml_root.tag == root
    items = doc.pop(root)
    envelope = as_strings(doc)
    if endpoint == "series/observations":
        envelope["file_type"] = "xml"
    assert xml_root.attrib == envelope  # same attributes, same order
    assert list(xml_root.attrib) == list(envelope)
    assert [e.tag for e in xml_root] == [child] * len(items) and items
    for element, item in zip(xml_root, items):
        if isinstance(item, str):  # <vintage_date>1991-12-04</vintage_date>
            assert element.text == item and not element.attrib
        elif child == "release_date":  # <release_date release_id="9" ...>2013-08-13</release_date>
            assert element.text == item.pop("date") and element.attrib == as_strings(item)
        else:
            assert element.attrib == as_strings(item) and list(element.attrib) == list(item)


def test_xml_escapes_notes_names_and_quotes(fred: FredSimulator) -> None:
    sid = next(s for s in fred.catalog.series_ids if "notes" in fred.catalog.meta(s))
    status, body = ask(fred, "series", series_id=sid)
    assert b"&#10;" in body and b"&quot;.&quot;" in body  # notes hold newlines and quotes
    assert ET.fromstring(body)[0].get("notes") == fred.catalog.meta(sid)["notes"]
    _, body = ask(fred, "category/children", category_id=0)
    assert b"Money, Banking, &amp; Finance" in body
    assert ET.fromstring(body)[0].get("name") == "Money, Banking, & Finance"


def test_xml_observations_equal_served_values(fred: FredSimulator) -> None:
    sid = "SIM000005"
    root = ok_xml(fred, "series/observations", series_id=sid)
    assert root.get("count") == str(len(fred.catalog.observations(sid))) and root.get("file_type") == "xml"
    assert [o.get("value") for o in root] == fred.catalog.served_values(sid).to_pylist()
    assert [o.get("date") for o in root] == [d.isoformat() for d in
                                             fred.catalog.observations(sid).column("date").to_pylist()]
    desc = ok_xml(fred, "series/observations", series_id=sid, sort_order="desc", limit=3, offset=2)
    assert [o.get("value") for o in desc] == fred.catalog.served_values(sid).to_pylist()[::-1][2:5]


def test_xml_errors(fred: FredSimulator) -> None:
    assert error_of(fred, "series", file_type=None, series_id="NOPE") == (400, "Bad Request.  The series does not exist.")
    assert error_of(fred, "series", file_type="csv", series_id="SIM000001") == (
        400, "Bad Request.  Variable file_type is not one of the values: 'xml', 'json'.")
    assert error_of(fred, "series", file_type=None)[1] == "Bad Request.  Variable series_id has not been set."
    assert error_of(fred, "series", file_type=None, series_id="SIMW0001") == (
        404, "Not Found.  The series does not exist.")
    assert error_of(fred, "no/such", file_type=None)[0] == 404


# ------------------------------------------------------------------------- keys

def test_key_messages_and_registry(tmp_path: Path) -> None:
    open_sim = FredSimulator(CONFIG)
    other = "k" * 32
    assert ask(open_sim, "series", series_id="SIM000001", api_key=other)[0] == 200  # no registry: any key
    for sim_file_type in ("json", None):
        got = error_of(open_sim, "series", sim_file_type, series_id="SIM000001", api_key=UNREGISTERED_KEY)
        assert got == (400, "Bad Request.  The value for variable api_key is not registered." + KEY_HELP)
    status, body = open_sim.answer("series", {"series_id": "SIM000001", "file_type": "json"})
    assert orjson.loads(body)["error_message"] == "Bad Request.  Variable api_key has not been set." + KEY_HELP
    assert error_of(open_sim, "series", series_id="SIM000001", api_key="ABC")[1] == (
        "Bad Request.  The value for variable api_key is not a 32 character alpha-numeric lower-case string."
        + KEY_HELP)

    mine = "m" * 31 + "1"
    registry = FredSimulator(SimConfig(n_series=3, keys=(mine,)))
    assert ask(registry, "series", series_id="SIM000001", api_key=mine)[0] == 200
    assert ask(registry, "series", series_id="SIM000001")[0] == 200  # the demo key is always registered
    assert error_of(registry, "series", series_id="SIM000001", api_key=other)[1].startswith(
        "Bad Request.  The value for variable api_key is not registered.")

    keys = tmp_path / "keys.txt"
    keys.write_text(f"# our keys\n{mine}\n\n{other}  # second\n")
    config, _, _ = parse_args(["--keys", str(keys), "--series", "3"])
    assert config.keys == (mine, other)
    assert parse_args(config_to_argv(config))[0] == config
    with pytest.raises(ValueError, match="32-character"):
        SimConfig(keys=("short",))


# --------------------------------------------------------------- real-time bounds

AFTER_TODAY = (date.fromisoformat(TODAY) + timedelta(days=1)).isoformat()
REALTIME_ERRORS = [
    ({"realtime_end": AFTER_TODAY},
     f"Bad Request.  Variable realtime_end can not be after today's date ({TODAY}) unless it's equal to the "
     "real-time max date 9999-12-31."),
    ({"realtime_start": AFTER_TODAY, "realtime_end": "9999-12-31"},
     f"Bad Request.  Variable realtime_start can not be after today's date ({TODAY})."),
    ({"realtime_start": "1776-07-03", "realtime_end": "2000-01-01"},
     "Bad Request.  Variable realtime_start can not be before the real-time min date 1776-07-04."),
    ({"realtime_start": "2001-01-01", "realtime_end": "2000-01-01"},
     "Bad Request.  Variable realtime_start can not be after realtime_end."),
    ({"realtime_start": "2001-02-30"}, "Bad Request.  Variable realtime_start is not a valid date in YYYY-MM-DD format."),
]
REALTIME_ENDPOINTS = [
    ("series", {"series_id": "SIM000001"}), ("series/observations", {"series_id": "SIM000001"}),
    ("series/vintagedates", {"series_id": "SIM000001"}), ("series/updates", {}),
    ("release/series", {"release_id": 1}), ("category/series", {"category_id": 100}),
    ("series/search", {"search_text": "rate"}), ("releases", {}), ("release/dates", {"release_id": 1}),
    ("releases/dates", {}), ("series/release", {"series_id": "SIM000001"}), ("series/tags", {"series_id": "SIM000001"}),
]


@pytest.mark.parametrize(("endpoint", "base"), REALTIME_ENDPOINTS)
@pytest.mark.parametrize(("period", "message"), REALTIME_ERRORS)
def test_realtime_bounds(fred: FredSimulator, endpoint: str, base: dict[str, Any], period: dict[str, str],
                         message: str) -> None:
    assert error_of(fred, endpoint, **base, **period) == (400, message)


def test_series_honours_realtime(fred: FredSimulator) -> None:
    doc = ok_json(fred, "series", series_id="SIM000001", realtime_start="2000-01-01", realtime_end="9999-12-31")
    assert (doc["realtime_start"], doc["realtime_end"]) == ("2000-01-01", "9999-12-31")
    meta = fred.catalog.meta("SIM000001") | {"realtime_start": "2000-01-01", "realtime_end": "9999-12-31"}
    assert doc["seriess"] == [meta]
    # one bound alone: the other is the real-time min/max (as FRED answers observations)
    assert ok_json(fred, "series", series_id="SIM000001", realtime_end="9999-12-31")["realtime_start"] == "1776-07-04"
    assert ok_json(fred, "series", series_id="SIM000001", realtime_start=TODAY)["realtime_end"] == "9999-12-31"
    assert ok_json(fred, "series", series_id="SIM000001")["realtime_end"] == TODAY


# ------------------------------------------------------------ observations params


def _valid_on(fred: FredSimulator, sid: str, day: date) -> dict[str, str]:
    data = fred.catalog.vintage_data(sid)
    v = (day - EPOCH).days
    rows = np.flatnonzero((data.start_days <= v) & (data.end_days >= v))
    return {(EPOCH + timedelta(days=int(data.date_days[r]))).isoformat(): data.text[int(r)].as_py() for r in rows}


def test_vintage_dates_parameter(fred: FredSimulator) -> None:
    sid = "SIM000006"
    vintages = fred.catalog.vintage_dates(sid)
    picks = [vintages[len(vintages) // 3], vintages[-1]]
    doc = ok_json(fred, "series/observations", series_id=sid, vintage_dates=",".join(d.isoformat() for d in picks))
    assert (doc["realtime_start"], doc["realtime_end"]) == (picks[0].isoformat(), picks[1].isoformat())
    for pick in picks:
        rows = [o for o in doc["observations"] if o["realtime_start"] == pick.isoformat()]
        assert all(o["realtime_end"] == pick.isoformat() for o in rows)
        assert {o["date"]: o["value"] for o in rows} == _valid_on(fred, sid, pick)
    keys = [(o["date"], o["realtime_start"]) for o in doc["observations"]]
    assert keys == sorted(keys) and doc["count"] == len(keys)
    latest = [o["value"] for o in doc["observations"] if o["realtime_start"] == picks[1].isoformat()]
    assert latest == fred.catalog.served_values(sid).to_pylist()
    bad = "Bad Request.  Variable vintage_dates is not a comma separated list of dates in YYYY-MM-DD format."
    assert error_of(fred, "series/observations", series_id=sid, vintage_dates="2020-01-01,2020-13-01") == (400, bad)
    assert error_of(fred, "series/observations", series_id=sid, vintage_dates=AFTER_TODAY)[0] == 400


def test_output_types(fred: FredSimulator) -> None:
    sid = "SIM000007"
    vintages = fred.catalog.vintage_dates(sid)
    start, end = vintages[-5].isoformat(), vintages[-1].isoformat()
    period = {"series_id": sid, "realtime_start": start, "realtime_end": end}
    wide = ok_json(fred, "series/observations", output_type=2, **period)
    columns = [f"{sid}_{d.strftime('%Y%m%d')}" for d in vintages[-5:]]
    assert wide["output_type"] == 2
    assert all(list(o) == ["date", *columns] for o in wide["observations"])
    for day, column in zip(vintages[-5:], columns):
        valid = _valid_on(fred, sid, day)
        assert {o["date"]: o[column] for o in wide["observations"] if o["date"] in valid} == valid
    new = ok_json(fred, "series/observations", output_type=3, **period)
    assert new["output_type"] == 3 and len(new["observations"]) <= len(wide["observations"])
    assert any(v != "." for o in new["observations"] for k, v in o.items() if k != "date")
    initial = ok_json(fred, "series/observations", output_type=4, series_id=sid)  # no period: today only
    assert (initial["realtime_start"], initial["realtime_end"], initial["output_type"]) == (TODAY, TODAY, 4)
    assert all(o["realtime_start"] == TODAY for o in initial["observations"])
    assert error_of(fred, "series/observations", series_id=sid, output_type=5)[1] == (
        "Bad Request.  Variable output_type is not one of the values: '1', '2', '3', '4'.")
    every = ok_json(fred, "series/observations", series_id=sid, output_type=4, realtime_start="1776-07-04",
                    realtime_end="9999-12-31")
    assert every["count"] == len(fred.catalog.observations(sid))


# -------------------------------------------------------------- listing params


def test_listing_order_filters_and_errors(fred: FredSimulator) -> None:
    catalog = fred.catalog
    ids = catalog.releases[1]
    by_pop = ok_json(fred, "release/series", release_id=1, order_by="popularity", sort_order="desc")
    popularity = [s["popularity"] for s in by_pop["seriess"]]
    assert popularity == sorted(popularity, reverse=True) and by_pop["order_by"] == "popularity"
    assert sorted(s["id"] for s in by_pop["seriess"]) == ids
    by_title = ok_json(fred, "release/series", release_id=1, order_by="title")["seriess"]
    assert [s["title"] for s in by_title] == sorted(s["title"] for s in by_title)
    updated = ok_json(fred, "category/series", category_id=100, order_by="last_updated", sort_order="desc")
    stamps = [catalog.last_updated_at(s["id"]) for s in updated["seriess"]]
    assert stamps == sorted(stamps, reverse=True)
    desc = ok_json(fred, "release/series", release_id=1, sort_order="desc")["seriess"]
    assert [s["id"] for s in desc] == ids[::-1]

    monthly = ok_json(fred, "release/series", release_id=1, filter_variable="frequency", filter_value="Monthly")
    want = [s for s in ids if catalog.meta(s)["frequency"] == "Monthly"]
    assert [s["id"] for s in monthly["seriess"]] == want and monthly["count"] == len(want)
    tagged = ok_json(fred, "release/series", release_id=1, tag_names="monthly;usa")
    assert [s["id"] for s in tagged["seriess"]] == [s for s in want if catalog.is_servable(s)]
    untagged = ok_json(fred, "release/series", release_id=1, exclude_tag_names="monthly")
    assert not {s["id"] for s in untagged["seriess"]} & {s for s in want if catalog.is_servable(s)}

    assert error_of(fred, "release/series", release_id=1, order_by="colour")[1].startswith(
        "Bad Request.  Variable order_by is not one of the values: 'series_id', 'title',")
    assert error_of(fred, "release/series", release_id=1, sort_order="up")[1] == (
        "Bad Request.  Variable sort_order is not one of the values: 'asc', 'desc'.")
    assert error_of(fred, "release/series", release_id=1, filter_variable="colour")[1] == (
        "Bad Request.  Variable filter_variable is not one of the values: 'frequency', 'units', "
        "'seasonal_adjustment'.")
    assert error_of(fred, "release/series", release_id="x")[1] == "Bad Request.  Variable release_id is not an integer."
    assert error_of(fred, "release", release_id=999)[1] == "Bad Request.  The release does not exist."
    assert error_of(fred, "category", category_id=99)[1] == "Bad Request.  The category does not exist."
    assert error_of(fred, "releases", order_by="size")[1] == (
        "Bad Request.  Variable order_by is not one of the values: 'release_id', 'name', 'press_release', "
        "'realtime_start', 'realtime_end'.")
    assert error_of(fred, "releases/dates", order_by="x")[1] == (
        "Bad Request.  Variable order_by is not one of the values: 'release_date', 'release_id', 'release_name'.")
    assert error_of(fred, "releases", limit=1001)[1] == "Bad Request.  Variable limit is not between 1 and 1000."
    assert error_of(fred, "release/dates", release_id=1, limit=10001)[1] == (
        "Bad Request.  Variable limit is not between 1 and 10000.")


def test_search(fred: FredSimulator) -> None:
    catalog = fred.catalog
    title = catalog.meta("SIM000010")["title"]
    words = title.split()[:2]
    doc = ok_json(fred, "series/search", search_text="+".join(words))
    want = {s for s in catalog.series_ids if all(w.lower() in catalog.meta(s)["title"].lower() for w in words)}
    assert {s["id"] for s in doc["seriess"]} == want and "SIM000010" in want
    assert (doc["order_by"], doc["sort_order"]) == ("search_rank", "desc")
    assert list(doc["seriess"][0]) == list(catalog.listing_meta(doc["seriess"][0]["id"]))
    ids = ok_json(fred, "series/search", search_text="sim00001*", search_type="series_id")
    assert [s["id"] for s in ids["seriess"]] == [f"SIM00001{i}" for i in range(10)]
    assert (ids["order_by"], ids["sort_order"]) == ("series_id", "asc")
    assert ok_json(fred, "series/search", search_text="no such words here")["count"] == 0
    assert error_of(fred, "series/search")[1] == "Bad Request.  Variable search_text has not been set."
    assert error_of(fred, "series/search", search_text="x", search_type="fuzzy")[1] == (
        "Bad Request.  Variable search_type is not one of the values: 'full_text', 'series_id'.")


def test_releases_categories_and_tags(fred: FredSimulator) -> None:
    catalog, reference = fred.catalog, Reference(fred.catalog)
    releases = ok_json(fred, "releases")
    assert [r["id"] for r in releases["releases"]] == sorted(catalog.releases)
    by_name = ok_json(fred, "releases", order_by="name")["releases"]
    assert [r["name"] for r in by_name] == sorted(r["name"] for r in by_name)
    days = reference.release_days(10)
    dates = ok_json(fred, "release/dates", release_id=10, sort_order="desc", limit=5)
    assert [d["date"] for d in dates["release_dates"]] == [
        (EPOCH + timedelta(days=int(d))).isoformat() for d in days[::-1][:5]]
    assert dates["count"] == len(days)
    for sid in catalog.releases[10][:5]:
        if catalog.is_servable(sid):
            assert set(catalog.vintage_days(sid)) <= set(days.tolist())
    year = ok_json(fred, "releases/dates", order_by="release_id", sort_order="asc")
    assert [d["release_id"] for d in year["release_dates"]] == sorted(d["release_id"] for d in year["release_dates"])
    assert all(d["date"] >= f"{TODAY[:4]}-01-01" for d in year["release_dates"])

    leaf = 100
    category = ok_json(fred, "category", category_id=leaf)["categories"][0]
    parent = category["parent_id"]
    assert leaf in [c["id"] for c in ok_json(fred, "category/children", category_id=parent)["categories"]]
    assert ok_json(fred, "category/series", category_id=parent)["count"] == 0  # series sit in leaves
    assert ok_json(fred, "category")["categories"][0]["id"] == 0  # category_id defaults to 0
    sid = catalog.categories[leaf][0]
    assert ok_json(fred, "series/categories", series_id=sid)["categories"] == [category]
    assert ok_json(fred, "series/release", series_id=sid)["releases"][0]["id"] in catalog.releases
    tags = ok_json(fred, "series/tags", series_id=sid, order_by="name")
    assert [t["name"] for t in tags["tags"]] == sorted(n for n, _ in reference.series_tags(sid))
    assert all(t["series_count"] >= 1 for t in tags["tags"])


# -------------------------------------------------------------- series/updates


def test_background_updates() -> None:
    sim = FredSimulator(SimConfig(n_series=30, seed=2, background_updates=150))
    everything = ok_json(sim, "series/updates")
    assert everything["count"] == 30 + 14 * 150
    regional = ok_json(sim, "series/updates", filter_value="regional")
    macro = ok_json(sim, "series/updates", filter_value="macro")
    assert regional["count"] + macro["count"] == everything["count"]
    assert all(s["id"].startswith("SIMB") for s in regional["seriess"])
    assert set(sim.catalog.series_ids) <= {s["id"] for s in macro["seriess"]}
    pages = [ok_json(sim, "series/updates", offset=o)["seriess"] for o in range(0, everything["count"], 1000)]
    listed = [s["id"] for page in pages for s in page]
    assert len(listed) == len(set(listed)) == everything["count"]
    assert [s for s in listed if s.startswith("SIM0")] == sim.catalog.updated_ids()
    window = ok_json(sim, "series/updates", start_time=TODAY.replace("-", "") + "0000",
                     end_time=TODAY.replace("-", "") + "2359")
    assert 0 < window["count"] < everything["count"]
    assert all(s["last_updated"].startswith(TODAY) for s in window["seriess"])
    assert ok_json(FredSimulator(SimConfig(n_series=30, seed=2)), "series/updates")["count"] == 30  # default: none


def test_updates_days_keeps_recent_updates_only() -> None:
    config = SimConfig(n_series=80, seed=2, updates_days=14, background_updates=10)
    sim = FredSimulator(config)
    first = (sim.catalog.today - timedelta(days=13)).isoformat()
    doc = ok_json(sim, "series/updates")
    assert doc["count"] == len(doc["seriess"]) and all(s["last_updated"][:10] >= first for s in doc["seriess"])
    recent = [s for s in sim.catalog.updated_ids() if sim.catalog.meta(s)["last_updated"][:10] >= first]
    assert [s["id"] for s in doc["seriess"] if s["id"].startswith("SIM0")] == recent
    assert len(recent) < 80  # older (monthly, quarterly...) series have dropped out
    assert parse_args(config_to_argv(config))[0] == config


# --------------------------------------------------------- shapes of real samples


def test_search_and_listings_have_the_key_order_of_real_fred_samples(fred: FredSimulator) -> None:
    import json

    from conftest import SAMPLES

    def sample(fragment: str) -> dict[str, Any]:
        (path,) = [p for p in SAMPLES.glob("*.json") if fragment in p.name]
        return json.loads(path.read_text())

    cases = [
        ("search_series_json__i0", "series/search", {"search_text": "rate"}),
        ("get_release_series__i0", "release/series", {"release_id": 1}),
        ("get_category_series__i0", "category/series", {"category_id": 100}),
        ("get_series_updates__i0", "series/updates", {}),
    ]
    for fragment, endpoint, params in cases:
        real, ours = sample(fragment), ok_json(fred, endpoint, **params)
        assert list(ours) == list(real), endpoint
        real_keys = {tuple(e) for e in real["seriess"] if "notes" in e}
        assert {tuple(e) for e in ours["seriess"] if "notes" in e} == real_keys, endpoint
        if endpoint == "series/search":
            assert (ours["order_by"], ours["sort_order"]) == (real["order_by"], real["sort_order"])
