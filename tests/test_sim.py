"""The FRED simulator, tested over real HTTP against a real subprocess.

The test process builds its own SimCatalog with the server's arguments and
compares it with what the server (another process) serves, so these tests
also prove cross-process determinism.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Iterator
from datetime import date, datetime, timedelta
from typing import Any

import aiohttp
import orjson
import pytest

from fredflow.sim import DEMO_API_KEY, UNREGISTERED_KEY, SimCatalog, SimConfig, SimProcess
from fredflow.sim.cli import config_to_argv, parse_args
from fredflow.sim.server import FredSimulator

#: Real FRED responses (same location rule as conftest.py).
from conftest import SAMPLES  # noqa: E402

# Key orders of real FRED responses (checked against SAMPLES when present).
SERIES_ENVELOPE_KEYS = ["realtime_start", "realtime_end", "seriess"]
META_KEYS = [
    "id", "realtime_start", "realtime_end", "title", "observation_start", "observation_end",
    "frequency", "frequency_short", "units", "units_short", "seasonal_adjustment",
    "seasonal_adjustment_short", "last_updated", "popularity", "notes",
]
LISTING_META_KEYS = META_KEYS[:14] + ["group_popularity", "notes"]
OBS_ENVELOPE_KEYS = [
    "realtime_start", "realtime_end", "observation_start", "observation_end", "units",
    "output_type", "file_type", "order_by", "sort_order", "count", "offset", "limit", "observations",
]
OBS_KEYS = ["realtime_start", "realtime_end", "date", "value"]
LISTING_ENVELOPE_KEYS = [
    "realtime_start", "realtime_end", "order_by", "sort_order", "count", "offset", "limit", "seriess",
]
UPDATES_ENVELOPE_KEYS = [
    "realtime_start", "realtime_end", "filter_variable", "filter_value", "order_by", "sort_order",
    "count", "offset", "limit", "seriess",
]
VINTAGEDATES_KEYS = [
    "realtime_start", "realtime_end", "order_by", "sort_order", "count", "offset", "limit", "vintage_dates",
]
JSON_CONTENT_TYPE = "application/json; charset=UTF-8"
KEY_HELP = "  Read https://fred.stlouisfed.org/docs/api/api_key.html for more information."

MAIN = {"n_series": 1200, "seed": 7, "withdrawn": 3}


@pytest.fixture(scope="module")
def sim() -> Iterator[SimProcess]:
    with SimProcess(**MAIN) as proc:
        yield proc


async def fetch(base: str, endpoint: str, timeout: float = 30, **params: Any) -> tuple[int, Any, bytes]:
    """GET base/endpoint with a valid api_key and file_type=json unless
    overridden (a value of None drops the parameter)."""
    query = {"api_key": DEMO_API_KEY, "file_type": "json", **params}
    query = {k: str(v) for k, v in query.items() if v is not None}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session:
        async with session.get(f"{base}/{endpoint}", params=query) as resp:
            return resp.status, resp.headers, await resp.read()


def first_series(catalog: SimCatalog, predicate: Any) -> str:
    return next(s for s in catalog.series_ids if predicate(s))


def assert_matches_catalog(observations: list[dict[str, str]], catalog: SimCatalog, series_id: str) -> None:
    table = catalog.observations(series_id)
    assert [o["date"] for o in observations] == [d.isoformat() for d in table["date"].to_pylist()]
    for obs, value in zip(observations, table["value"].to_pylist(), strict=True):
        if value is None:
            assert obs["value"] == "."
        else:
            assert float(obs["value"]) == value
    assert [o["value"] for o in observations] == catalog.served_values(series_id).to_pylist()


# ------------------------------------------------------------------ shapes


def test_key_orders_are_those_of_real_fred_samples() -> None:
    def load(fragment: str) -> dict[str, Any]:
        (path,) = [p for p in SAMPLES.glob("*.json") if fragment in p.name]
        return json.loads(path.read_text())

    series = load("test_get_series_info__i0")
    assert list(series) == SERIES_ENVELOPE_KEYS
    assert list(series["seriess"][0]) == META_KEYS
    obs = load("WGS10YR_observations")
    assert list(obs) == OBS_ENVELOPE_KEYS
    assert list(obs["observations"][0]) == OBS_KEYS
    for fragment in ("get_release_series__i0", "get_category_series__i0"):
        listing = load(fragment)
        assert list(listing) == LISTING_ENVELOPE_KEYS
        with_notes = [e for e in listing["seriess"] if "notes" in e]
        assert {tuple(e) for e in with_notes} == {tuple(LISTING_META_KEYS)}
    for fragment in ("get_series_updates__i0", "get_series_updates__i2"):
        updates = load(fragment)
        assert list(updates) == UPDATES_ENVELOPE_KEYS
        assert {tuple(e) for e in updates["seriess"] if "notes" in e} == {tuple(META_KEYS)}
    for fragment in ("get_series_vintagedates__i0", "get_series_vintagedates__i2"):
        assert list(load(fragment)) == VINTAGEDATES_KEYS
    for fragment in ("all_releases_json__i0", "asof_date_json__i0", "initial_release_json__i0"):
        vintages = load(fragment)
        assert list(vintages) == OBS_ENVELOPE_KEYS and list(vintages["observations"][0]) == OBS_KEYS
    error = json.loads(next((SAMPLES / "errors").glob("*HTTP429.json")).read_text())
    assert error == {"error_code": 429, "error_message": "Too Many Requests.  Exceeded Rate Limit"}


async def test_series_metadata(sim: SimProcess) -> None:
    catalog = sim.catalog
    sid = first_series(catalog, lambda s: "notes" in catalog.meta(s))
    status, headers, body = await fetch(sim.url, "series", series_id=sid)
    assert status == 200
    assert headers["Content-Type"] == JSON_CONTENT_TYPE
    doc = orjson.loads(body)
    assert list(doc) == SERIES_ENVELOPE_KEYS
    assert doc["realtime_start"] == doc["realtime_end"] == "2026-11-20"
    assert list(doc["seriess"][0]) == META_KEYS
    assert doc["seriess"][0] == catalog.meta(sid)
    assert b"https:\\/\\/fred.stlouisfed.org" in body  # PHP-style escaped slashes
    meta = doc["seriess"][0]
    assert all(isinstance(v, str) for k, v in meta.items() if k != "popularity")
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d-0[56]", meta["last_updated"])


async def test_observations_envelope_values_and_missing(sim: SimProcess) -> None:
    catalog = sim.catalog
    sid = first_series(catalog, lambda s: catalog.meta(s)["frequency"] == "Daily")
    status, headers, body = await fetch(sim.url, "series/observations", series_id=sid)
    assert status == 200 and headers["Content-Type"] == JSON_CONTENT_TYPE
    doc = orjson.loads(body)
    assert list(doc) == OBS_ENVELOPE_KEYS
    rows = catalog.observations(sid).num_rows
    assert {k: doc[k] for k in OBS_ENVELOPE_KEYS[:-1]} == {
        "realtime_start": "2026-11-20", "realtime_end": "2026-11-20",
        "observation_start": "1600-01-01", "observation_end": "9999-12-31",
        "units": "lin", "output_type": 1, "file_type": "json", "order_by": "observation_date",
        "sort_order": "asc", "count": rows, "offset": 0, "limit": 100000,
    }
    assert 1000 < rows < 100_000
    assert all(list(o) == OBS_KEYS for o in doc["observations"])
    assert_matches_catalog(doc["observations"], catalog, sid)
    dots = [o["date"] for o in doc["observations"] if o["value"] == "."]
    assert 0.005 * rows < len(dots) < 0.05 * rows
    assert any(d.endswith("-12-25") for d in dots)  # business-daily holidays are "."
    meta = catalog.meta(sid)
    assert doc["observations"][0]["date"] == meta["observation_start"]
    assert doc["observations"][-1]["date"] == meta["observation_end"]


async def test_paging_reproduces_whole_series(sim: SimProcess) -> None:
    catalog = sim.catalog
    sid = first_series(catalog, lambda s: catalog.meta(s)["frequency"] == "Weekly, Ending Friday")
    collected: list[dict[str, str]] = []
    offset, count = 0, None
    while count is None or offset < count:
        status, _, body = await fetch(sim.url, "series/observations", series_id=sid, limit=500, offset=offset)
        assert status == 200
        page = orjson.loads(body)
        assert (page["offset"], page["limit"]) == (offset, 500)
        assert count is None or page["count"] == count
        count = page["count"]
        assert len(page["observations"]) == min(500, count - offset)
        collected += page["observations"]
        offset += 500
    assert count == len(collected) > 1000
    assert_matches_catalog(collected, catalog, sid)
    _, _, body = await fetch(sim.url, "series/observations", series_id=sid, limit=500, offset=count + 7)
    assert orjson.loads(body)["observations"] == []


async def test_long_series_needs_two_pages(sim: SimProcess) -> None:
    catalog = sim.catalog
    (sid, _) = catalog.long_series_ids
    first = orjson.loads((await fetch(sim.url, "series/observations", series_id=sid))[2])
    assert first["count"] == catalog.observations(sid).num_rows > 120_000
    assert len(first["observations"]) == 100_000
    second = orjson.loads((await fetch(sim.url, "series/observations", series_id=sid, offset=100_000))[2])
    assert len(second["observations"]) == first["count"] - 100_000
    assert_matches_catalog(first["observations"] + second["observations"], catalog, sid)
    assert catalog.meta(sid)["frequency"] == "Daily, 7-Day"


async def test_date_range_and_descending_order(sim: SimProcess) -> None:
    catalog = sim.catalog
    sid = first_series(catalog, lambda s: catalog.meta(s)["frequency"] == "Monthly")
    table = catalog.observations(sid)
    dates = [d.isoformat() for d in table["date"].to_pylist()]
    start, end = dates[10], dates[40]
    doc = orjson.loads(
        (await fetch(sim.url, "series/observations", series_id=sid, observation_start=start,
                     observation_end=end, sort_order="desc", limit=7, offset=2))[2]
    )
    assert (doc["observation_start"], doc["observation_end"], doc["count"]) == (start, end, 31)
    assert [o["date"] for o in doc["observations"]] == dates[38:31:-1]


# ------------------------------------------------------------- determinism


def test_catalog_is_deterministic_and_seed_sensitive() -> None:
    a, b = SimCatalog(n_series=60, seed=3, withdrawn=2), SimCatalog(n_series=60, seed=3, withdrawn=2)
    other = SimCatalog(n_series=60, seed=4, withdrawn=2)
    assert a.series_ids == b.series_ids and a.withdrawn_ids == b.withdrawn_ids == ["SIMW0001", "SIMW0002"]
    assert a.releases == b.releases and a.categories == b.categories
    for sid in a.series_ids[:12] + a.long_series_ids:
        assert a.meta(sid) == b.meta(sid)
        assert a.observations(sid).equals(b.observations(sid))
        assert a.served_values(sid).equals(b.served_values(sid))
    differs = [not a.observations(s).equals(other.observations(s)) for s in a.series_ids[:12]]
    assert all(differs)


def test_catalog_obs_per_series_and_listings() -> None:
    catalog = SimCatalog(n_series=40, obs_per_series=1500, long_series=1, withdrawn=2)
    (long_id,) = catalog.long_series_ids
    for sid in catalog.series_ids:
        rows = catalog.observations(sid).num_rows
        if sid == long_id:
            assert rows > 120_000
        else:
            assert rows == 1500
        assert catalog.observations(sid)["date"][-1].as_py() < date(2026, 11, 20)
    assert catalog.releases[1] == sorted(catalog.series_ids + catalog.withdrawn_ids)
    for groups in (catalog.releases, catalog.categories):
        parts = [ids for gid, ids in groups.items() if gid != 1]
        assert sorted(sum(parts, [])) == catalog.listed_ids and len(parts) >= 2
    with pytest.raises(KeyError):
        catalog.observations("SIMW0001")


def test_cli_round_trip() -> None:
    config = SimConfig(
        n_series=9, seed=5, obs_per_series=30, long_series=1, withdrawn=2, today=date(2025, 1, 2),
        rate=2.5, burst=3, latency=0.01, fault_rate=0.25, fault_kinds=("500", "reset"),
        hang_seconds=1.5, max_limit=1000, unregistered_keys=(), cache_mb=8, changes=(3, 0, 9),
        max_vintage_dates=50,
    )
    assert parse_args([*config_to_argv(config), "--port", "0"]) == (config, "127.0.0.1", 0)
    assert parse_args(config_to_argv(SimConfig()))[0] == SimConfig()


# ------------------------------------------------------------------ errors

ERROR_CASES = [
    ("series", {"series_id": "NOSUCHSERIES"}, 400, "Bad Request.  The series does not exist."),
    ("series", {"series_id": "SIMW0001"}, 404, "Not Found.  The series does not exist."),
    ("series/observations", {"series_id": "SIMW0002"}, 404, "Not Found.  The series does not exist."),
    ("series/observations", {"series_id": "NOSUCH"}, 400, "Bad Request.  The series does not exist."),
    ("series/observations", {}, 400, "Bad Request.  Variable series_id has not been set."),
    ("series", {"series_id": "SIM000001", "api_key": None}, 400,
     "Bad Request.  Variable api_key has not been set." + KEY_HELP),
    ("series", {"series_id": "SIM000001", "api_key": DEMO_API_KEY.upper()}, 400,
     "Bad Request.  The value for variable api_key is not a 32 character alpha-numeric lower-case string."
     + KEY_HELP),
    ("series", {"series_id": "SIM000001", "api_key": "abc"}, 400,
     "Bad Request.  The value for variable api_key is not a 32 character alpha-numeric lower-case string."
     + KEY_HELP),
    ("series", {"series_id": "SIM000001", "api_key": UNREGISTERED_KEY}, 400,
     "Bad Request.  The value for variable api_key is not registered." + KEY_HELP),
    ("series/observations", {"series_id": "SIM000001", "limit": 0}, 400,
     "Bad Request.  Variable limit is not between 1 and 100000."),
    ("series/observations", {"series_id": "SIM000001", "limit": 100001}, 400,
     "Bad Request.  Variable limit is not between 1 and 100000."),
    ("series/observations", {"series_id": "SIM000001", "offset": -1}, 400,
     "Bad Request.  Variable offset is not 0 or a positive integer."),
    ("series/observations", {"series_id": "SIM000001", "observation_start": "2020-13-01"}, 400,
     "Bad Request.  Variable observation_start is not a valid date in YYYY-MM-DD format."),
    ("series/observations", {"series_id": "SIM000001", "sort_order": "up"}, 400,
     "Bad Request.  Variable sort_order is not one of the values: 'asc', 'desc'."),
    ("release/series", {"release_id": 999}, 400, "Bad Request.  The release does not exist."),
    ("release/series", {}, 400, "Bad Request.  Variable release_id has not been set."),
    ("release/series", {"release_id": 1, "limit": 1001}, 400,
     "Bad Request.  Variable limit is not between 1 and 1000."),
    ("category/series", {"category_id": 5}, 400, "Bad Request.  The category does not exist."),
    ("series/updates", {"filter_value": "national"}, 400,
     "Bad Request.  Variable filter_value is not one of the values: 'macro', 'regional', 'all'."),
    ("series/updates", {"limit": 1001}, 400, "Bad Request.  Variable limit is not between 1 and 1000."),
    ("series/updates", {"start_time": "202611200700"}, 400, "Bad Request.  Variable end_time has not been set."),
    ("series/updates", {"end_time": "202611200700"}, 400, "Bad Request.  Variable start_time has not been set."),
    ("series/updates", {"start_time": "2026-11-20", "end_time": "202611200700"}, 400,
     "Bad Request.  Variable start_time is not a valid time in YYYYMMDDHhmm format."),
    ("series/vintagedates", {"series_id": "SIM000001", "limit": 10001}, 400,
     "Bad Request.  Variable limit is not between 1 and 10000."),
    ("series/vintagedates", {"series_id": "SIMW0001"}, 404, "Not Found.  The series does not exist."),
    ("series/vintagedates", {"series_id": "SIM000001", "sort_order": "up"}, 400,
     "Bad Request.  Variable sort_order is not one of the values: 'asc', 'desc'."),
    ("series/observations", {"series_id": "SIM000001", "realtime_start": "2020-02-30"}, 400,
     "Bad Request.  Variable realtime_start is not a valid date in YYYY-MM-DD format."),
    ("series/observations", {"series_id": "SIM000001", "realtime_start": "2020-01-02", "realtime_end": "2020-01-01"},
     400, "Bad Request.  Variable realtime_start can not be after realtime_end."),
    ("series/observations", {"series_id": "SIM000001", "realtime_end": "2020-01-01", "output_type": 5}, 400,
     "Bad Request.  Variable output_type is not one of the values: '1', '2', '3', '4'."),
]


@pytest.mark.parametrize(("endpoint", "params", "status", "message"), ERROR_CASES)
async def test_error_bodies(sim: SimProcess, endpoint: str, params: dict[str, Any], status: int,
                            message: str) -> None:
    got_status, headers, body = await fetch(sim.url, endpoint, **params)
    assert got_status == status
    assert headers["Content-Type"] == JSON_CONTENT_TYPE
    assert body.startswith(b'{"error_code":')
    assert orjson.loads(body) == {"error_code": status, "error_message": message}


# ---------------------------------------------------------------- listings


async def test_release_1_lists_every_id_across_pages(sim: SimProcess) -> None:
    catalog = sim.catalog
    ids: list[str] = []
    for offset in (0, 1000):
        status, _, body = await fetch(sim.url, "release/series", release_id=1, offset=offset)
        assert status == 200
        doc = orjson.loads(body)
        assert list(doc) == LISTING_ENVELOPE_KEYS
        assert (doc["count"], doc["offset"], doc["limit"]) == (1203, offset, 1000)
        for entry in doc["seriess"]:
            assert list(entry) == (LISTING_META_KEYS if "notes" in entry else LISTING_META_KEYS[:-1])
            assert entry == catalog.listing_meta(entry["id"])
        ids += [entry["id"] for entry in doc["seriess"]]
    assert ids == catalog.listed_ids == sorted(catalog.series_ids + ["SIMW0001", "SIMW0002", "SIMW0003"])


async def test_partition_release_and_category(sim: SimProcess) -> None:
    catalog = sim.catalog
    release_id = min(r for r in catalog.releases if r != 1)
    category_id = min(catalog.categories)
    for endpoint, name, gid, expected in (
        ("release/series", "release_id", release_id, catalog.releases[release_id]),
        ("category/series", "category_id", category_id, catalog.categories[category_id]),
    ):
        doc = orjson.loads((await fetch(sim.url, endpoint, **{name: gid, "limit": 1000}))[2])
        assert doc["count"] == len(expected) and [e["id"] for e in doc["seriess"]] == expected


# -------------------------------------------------------------- rate limit


async def test_rate_limit_429_and_admitted_per_second() -> None:
    rate, burst = 5, 2
    with SimProcess(n_series=3, rate=rate, burst=burst) as proc:
        statuses: list[int] = []
        throttled_bodies: list[tuple[Any, bytes]] = []
        async with aiohttp.ClientSession() as session:

            async def worker(deadline: float) -> None:
                while time.monotonic() < deadline:
                    params = {"series_id": "SIM000001", "api_key": DEMO_API_KEY, "file_type": "json"}
                    async with session.get(f"{proc.url}/series", params=params) as resp:
                        statuses.append(resp.status)
                        if resp.status == 429:
                            throttled_bodies.append((resp.headers, await resp.read()))
                    await asyncio.sleep(0.01)

            start = time.monotonic()
            await asyncio.gather(*(worker(start + 2.5) for _ in range(4)))
            elapsed = time.monotonic() - start
        stats = proc.stats()

    admitted = statuses.count(200)
    assert set(statuses) == {200, 429}
    assert admitted <= burst + rate * elapsed + 1
    assert admitted >= rate * 2
    headers, body = throttled_bodies[0]
    assert body == b'{"error_code":429,"error_message":"Too Many Requests.  Exceeded Rate Limit"}'
    assert headers["Content-Type"] == JSON_CONTENT_TYPE and "Retry-After" not in headers
    assert stats["throttled"] == statuses.count(429) and stats["admitted"] == admitted
    assert stats["requests"] == len(statuses)
    assert max(stats["admitted_per_second"]) <= rate + burst


async def test_stats_reset(sim: SimProcess) -> None:
    sim.reset_stats()
    await fetch(sim.url, "series", series_id="SIM000002")
    await fetch(sim.url, "series", series_id="NOPE")
    stats = sim.stats()
    assert stats["requests"] == 2 and stats["by_status"] == {"200": 1, "400": 1}
    assert stats["admitted_per_second"][-1] >= 1 and stats["throttled"] == 0


# ------------------------------------------------------------------ faults


@pytest.mark.parametrize("kind", ["500", "502", "504", "hang", "truncate", "reset"])
async def test_fault_kind(kind: str) -> None:
    config = {"n_series": 3, "fault_rate": 1.0, "fault_kinds": (kind,), "hang_seconds": 0.6}
    params = {"series_id": "SIM000001", "limit": 50}
    with SimProcess(**config) as proc:
        start = time.monotonic()
        if kind == "reset":
            with pytest.raises(aiohttp.ClientConnectionError):
                await fetch(proc.url, "series/observations", **params)
        else:
            status, headers, body = await fetch(proc.url, "series/observations", **params)
        elapsed = time.monotonic() - start
        faults = proc.stats()["faults"]
    # aiohttp itself retries an idempotent request once after a reset.
    assert list(faults) == [kind] and (faults[kind] == 1 or kind == "reset")
    query = {"api_key": DEMO_API_KEY, "file_type": "json", "series_id": "SIM000001", "limit": "50"}
    full = FredSimulator(SimConfig(n_series=3)).answer("series/observations", query)[1]
    if kind == "500":
        assert status == 500 and headers["Content-Type"] == JSON_CONTENT_TYPE
        assert body == b'{"error_code":500,"error_message":"Internal Server Error"}'
    elif kind in ("502", "504"):
        assert status == int(kind) and headers["Content-Type"].startswith("text/html")
        assert f"<title>{kind} ".encode() in body
    elif kind == "hang":
        assert status == 200 and body == full and elapsed >= 0.6
    elif kind == "truncate":
        assert status == 200 and int(headers["Content-Length"]) == len(body)
        assert body == full[: len(full) // 2]
        with pytest.raises(orjson.JSONDecodeError):
            orjson.loads(body)


# ----------------------------------------------------------- series/updates


def updates_order(catalog: SimCatalog) -> list[str]:
    """Servable ids by last_updated descending (as instants), ties by id: computed
    from the metadata strings, independently of the catalog's own ordering."""
    from fredflow.sources.fred.parse import parse_last_updated

    stamps = {sid: parse_last_updated(catalog.meta(sid)["last_updated"]) for sid in catalog.series_ids}
    return sorted(catalog.series_ids, key=lambda sid: (-stamps[sid].timestamp(), sid))


async def test_updates_shape_order_and_paging(sim: SimProcess) -> None:
    catalog = sim.catalog
    expected = updates_order(catalog)
    listed: list[str] = []
    for offset in (0, 1000):
        status, headers, body = await fetch(sim.url, "series/updates", offset=offset)
        assert status == 200 and headers["Content-Type"] == JSON_CONTENT_TYPE
        doc = orjson.loads(body)
        assert list(doc) == UPDATES_ENVELOPE_KEYS
        assert {k: doc[k] for k in UPDATES_ENVELOPE_KEYS[:-1]} == {
            "realtime_start": "2026-11-20", "realtime_end": "2026-11-20", "filter_variable": "geography",
            "filter_value": "all", "order_by": "last_updated", "sort_order": "desc",
            "count": 1200, "offset": offset, "limit": 1000,
        }
        assert len(doc["seriess"]) == (1000 if offset == 0 else 200)
        for entry in doc["seriess"]:
            assert entry == catalog.meta(entry["id"])
            assert list(entry) == (META_KEYS if "notes" in entry else META_KEYS[:-1])
        listed += [entry["id"] for entry in doc["seriess"]]
    assert listed == expected == catalog.updated_ids()
    assert not set(listed) & set(catalog.withdrawn_ids)
    # offsets (+ -05/-06) matter: ordering the strings would not give the same list
    stamps = [catalog.meta(sid)["last_updated"] for sid in listed]
    assert {s[-3:] for s in stamps} <= {"-05", "-06"}
    _, _, body = await fetch(sim.url, "series/updates", limit=7, offset=13)
    assert [e["id"] for e in orjson.loads(body)["seriess"]] == expected[13:20]


async def test_updates_filters_and_time_window(sim: SimProcess) -> None:
    from zoneinfo import ZoneInfo

    from fredflow.sources.fred.parse import parse_last_updated

    catalog = sim.catalog
    expected = updates_order(catalog)
    macro = orjson.loads((await fetch(sim.url, "series/updates", filter_value="macro", limit=5))[2])
    assert macro["filter_value"] == "macro" and macro["count"] == 1200
    assert [e["id"] for e in macro["seriess"]] == expected[:5]
    regional = orjson.loads((await fetch(sim.url, "series/updates", filter_value="regional"))[2])
    assert (regional["filter_value"], regional["count"], regional["seriess"]) == ("regional", 0, [])

    # start_time/end_time: US Central wall-clock minutes, both ends included
    chicago = ZoneInfo("America/Chicago")
    stamps = {sid: parse_last_updated(catalog.meta(sid)["last_updated"]) for sid in catalog.series_ids}
    for start_time, end_time in (("202611200745", "202611200815"), ("202610010000", "202611192359"),
                                 ("203001010000", "203001020000")):
        lo = datetime.strptime(start_time, "%Y%m%d%H%M").replace(tzinfo=chicago)
        hi = datetime.strptime(end_time, "%Y%m%d%H%M").replace(tzinfo=chicago) + timedelta(minutes=1)
        inside = [sid for sid in expected if lo <= stamps[sid] < hi]
        status, _, body = await fetch(sim.url, "series/updates", start_time=start_time, end_time=end_time)
        doc = orjson.loads(body)
        assert status == 200 and doc["count"] == len(inside)
        assert [e["id"] for e in doc["seriess"]] == inside[:1000]
        if start_time.startswith("2026"):
            assert 0 < len(inside) < 1200


# -------------------------------------------------------------- day advance


def test_catalog_day_advance() -> None:
    base = SimCatalog(n_series=60, seed=3, withdrawn=2)
    advanced = SimCatalog(n_series=60, seed=3, withdrawn=2, changes=(5, 7))
    assert (advanced.day, advanced.today, advanced.base_today) == (2, date(2026, 11, 22), date(2026, 11, 20))
    assert advanced.realtime == "2026-11-22"
    day1, day2 = advanced.changed_on(1), advanced.changed_on(2)
    assert len(day1) == len(set(day1)) == 5 and len(day2) == len(set(day2)) == 7
    assert day1 == sorted(day1) and set(day1 + day2) <= set(advanced.series_ids)
    assert advanced.changed_since(0) == set(day1) | set(day2) and advanced.changed_since(1) == set(day2)
    assert advanced.changed_since(2) == set()
    # day 1 does not depend on what happens later; same arguments, same catalog
    assert SimCatalog(n_series=60, seed=3, changes=(5,)).changed_on(1) == day1
    again = SimCatalog(n_series=60, seed=3, withdrawn=2, changes=(5, 7))
    assert SimCatalog(n_series=60, seed=4, changes=(5, 7)).changed_on(1) != day1

    times = []
    for sid in advanced.series_ids:
        before, after = base.observations(sid), advanced.observations(sid)
        assert after.equals(again.observations(sid)) and advanced.meta(sid) == again.meta(sid)
        old_meta, new_meta = base.meta(sid), advanced.meta(sid)
        for meta in (old_meta, new_meta):
            meta.pop("realtime_start"), meta.pop("realtime_end")
        texts = advanced.served_values(sid).to_pylist()
        values = after["value"].to_pylist()
        assert [None if t == "." else float(t) for t in texts] == values  # bit for bit
        days_changed = [t for t in (1, 2) if sid in advanced.changed_on(t)]
        if not days_changed:
            assert after.equals(before) and new_meta == old_meta
            continue
        n, k = before.num_rows, len(days_changed)
        dates = after["date"].to_pylist()
        old_rows = dict(zip(before["date"].to_pylist(), before["value"].to_pylist()))
        new_rows = dict(zip(dates, values))
        removed = set(old_rows) - set(new_rows)
        added = sorted(set(new_rows) - set(old_rows))
        # each change appends one date, and may remove one older one (never the first)
        assert len(added) == k and min(added) > max(old_rows) and len(removed) <= k
        assert dates[0] == before["date"][0].as_py() and after.num_rows == n + k - len(removed)
        assert dates == sorted(set(dates))
        assert values[-1] is not None and new_meta["observation_end"] == dates[-1].isoformat()
        revised = sorted(d for d in set(old_rows) & set(new_rows) if old_rows[d] != new_rows[d])
        assert all(old_rows[d] is not None and new_rows[d] is not None for d in revised)  # "." stays "."
        if k == 1:
            # the last three before the new date are revised (unless "."), and at most one older date
            tail = sorted(old_rows)[-3:]
            assert {d for d in tail if old_rows[d] is not None} <= set(revised)
            assert len(set(revised) - set(tail)) <= 1
            decimals = {len(t.split(".")[1]) if "." in t[1:] else 0 for t in texts if t != "."}
            assert len(decimals) == 1  # revised and new values keep the series' decimals
        stamp = new_meta.pop("last_updated")
        assert stamp.startswith(f"2026-11-2{days_changed[-1]} ") and stamp.endswith("-06")
        times.append(stamp[11:19])
        assert "07:30:00" <= stamp[11:19] < "08:30:00"
        assert {k: v for k, v in new_meta.items() if k != "observation_end"} == {
            k: v for k, v in old_meta.items() if k not in ("observation_end", "last_updated")}
    assert len(times) == len(advanced.changed_since(0))
    # the newest updates come first in series/updates
    assert set(advanced.updated_ids()[:7]) == set(day2)
    # over many changes, revisions reach far back and some observations are removed
    deep = SimCatalog(n_series=200, seed=3, long_series=0, changes=(200,))
    flat = SimCatalog(n_series=200, seed=3, long_series=0)
    oldest_revision, n_removed = date.max, 0
    for sid in deep.series_ids:
        b, a = flat.observations(sid), deep.observations(sid)
        was, now = dict(zip(b["date"].to_pylist(), b["value"].to_pylist())), dict(zip(a["date"].to_pylist(),
                                                                                        a["value"].to_pylist()))
        n_removed += len(set(was) - set(now))
        oldest_revision = min([oldest_revision, *(d for d in was if d in now and was[d] != now[d])])
    assert oldest_revision < date(1960, 1, 1) and 20 < n_removed < 80


def test_new_series_debut_one_a_day_in_release_listings() -> None:
    base = SimCatalog(n_series=60, seed=3, new_series=2)
    assert base.series_ids[-1] == "SIM000060" and not base.is_servable("SIMN0001")
    day1 = SimCatalog(n_series=60, seed=3, new_series=2, changes=(0,))
    day3 = SimCatalog(n_series=60, seed=3, new_series=2, changes=(0, 0, 0))
    assert day1.series_ids[-1:] == ["SIMN0001"] and day3.series_ids[-2:] == ["SIMN0001", "SIMN0002"]
    assert "SIMN0001" in day1.releases[1] and sum("SIMN0001" in ids for ids in day1.releases.values()) == 2
    assert day3.meta("SIMN0002")["last_updated"].startswith("2026-11-22 ")
    assert day1.updated_ids()[0] == "SIMN0001"  # the only update of day 1
    # the others are as before the debut
    for g, ids in base.releases.items():
        assert [s for s in day3.releases[g] if not s.startswith("SIMN")] == ids
    with pytest.raises(ValueError):
        SimCatalog(n_series=5, changes=(6,))


async def test_http_advance_matches_in_process_catalog() -> None:
    config = {"n_series": 40, "seed": 11, "withdrawn": 1}
    with SimProcess(**config) as proc:
        first_sid = proc.catalog.series_ids[0]
        await fetch(proc.url, "series/observations", series_id=first_sid)  # cached before the advance
        await fetch(proc.url, "series/updates")
        proc.reset_stats()
        changed = proc.advance(days=2, changed=4)
        assert proc.stats()["requests"] == 0  # the hook is not counted

        truth = SimConfig(**config, changes=(4, 4)).catalog()
        assert proc.config.changes == (4, 4) and proc.catalog.changes == (4, 4)
        assert changed == sorted(truth.changed_since(0)) and 4 <= len(changed) <= 8
        for sid in changed + [s for s in truth.series_ids if s not in changed][:3] + [first_sid]:
            _, _, body = await fetch(proc.url, "series/observations", series_id=sid)
            doc = orjson.loads(body)
            assert doc["realtime_start"] == doc["realtime_end"] == "2026-11-22"
            assert doc["count"] == truth.observations(sid).num_rows
            assert_matches_catalog(doc["observations"], truth, sid)
            _, _, body = await fetch(proc.url, "series", series_id=sid)
            assert orjson.loads(body)["seriess"][0] == truth.meta(sid) == proc.catalog.meta(sid)
        _, _, body = await fetch(proc.url, "series/updates")
        assert [e["id"] for e in orjson.loads(body)["seriess"]] == updates_order(truth)

        async with aiohttp.ClientSession() as session:
            async with session.post(f"{proc.root}/_sim/advance", params={"changed": 3}) as resp:
                answer = await resp.json()
            assert answer == {"today": "2026-11-23", "day": 3,
                              "changed": SimConfig(**config, changes=(4, 4, 3)).catalog().changed_on(3)}
            async with session.post(f"{proc.root}/_sim/advance", params={"changed": 41}) as resp:
                assert resp.status == 400
