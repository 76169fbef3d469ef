"""Warehouse units/frequency (DuckDB SQL) against the simulator's (numpy), for every unit code and
every allowed frequency × aggregation on a series of each native frequency the simulator has.

The data goes in through the public API only (``ingest`` from a real ``SimProcess``); the
simulator's answers come from an in-process ``FredSimulator`` of the same configuration (checked
byte for byte against the real process over HTTP for a sample of requests).
"""

from __future__ import annotations

import math
import random
import urllib.parse
import urllib.request

import numpy as np
import orjson
import pyarrow.compute as pc
import pytest

from fredflow import CatalogSpec, Settings, UsageError, Warehouse, ingest
from fredflow.sim import DEMO_API_KEY, SimConfig, SimProcess
from fredflow.sim.server import FredSimulator

CONFIG = dict(n_series=40, seed=3, long_series=1)
NATIVE_CODES = ("D7", "D", "W", "M", "Q", "A")  # sim/catalog.py: _D7, _D, _W, _M, _Q, _A
FREQUENCIES = ("d", "w", "bw", "m", "q", "sa", "a", "wef", "weth", "wew", "wetu", "wem", "wesu", "wesa",
               "bwew", "bwem")
LEVEL = {"d": 0, "w": 1, "bw": 2, "m": 3, "q": 4, "sa": 5, "a": 6, "wef": 1, "weth": 1, "wew": 1, "wetu": 1,
         "wem": 1, "wesu": 1, "wesa": 1, "bwew": 2, "bwem": 2}
NATIVE_LEVEL = {"D7": 0, "D": 0, "W": 1, "M": 3, "Q": 4, "A": 6}
UNITS = ("lin", "chg", "ch1", "pch", "pc1", "pca", "cch", "cca", "log")
AGGS = ("avg", "sum", "eop")
NAMES = {"D7": "Daily, 7-Day", "D": "Daily", "W": "Weekly, Ending Friday", "M": "Monthly", "Q": "Quarterly",
         "A": "Annual"}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A simulator process, one series per native frequency ingested (current and vintages), and
    an in-process FredSimulator of the same configuration."""
    answerer = FredSimulator(SimConfig(**CONFIG))
    catalog = answerer.catalog
    picks: dict[str, str] = {}
    for sid in catalog.series_ids:
        frequency = catalog.meta(sid)["frequency"]
        for code, name in NAMES.items():
            if frequency == name and code not in picks:
                # a series with missing values ("." gaps), so that NULL propagation is exercised
                if any(v is None for v in catalog.observations(sid)["value"].to_pylist()):
                    picks[code] = sid
    assert set(picks) == set(NAMES), picks
    root = tmp_path_factory.mktemp("transforms")
    with SimProcess(**CONFIG) as process:
        settings = Settings(api_url=process.url, api_key=DEMO_API_KEY, rate=1000, burst=50)
        ids = tuple(picks.values())
        current = ingest(root / "current.duckdb", CatalogSpec(series=ids), settings=settings)
        assert current.exit_code == 0
        vintages = ingest(root / "vintages.duckdb", CatalogSpec(series=ids), settings=settings, vintages=True)
        assert vintages.exit_code == 0
        yield dict(process=process, answerer=answerer, picks=picks,
                   current=Warehouse(root / "current.duckdb"), vintages=Warehouse(root / "vintages.duckdb"))


def sim_answer(answerer: FredSimulator, series_id: str, **params: str) -> tuple[np.ndarray, np.ndarray]:
    """Every page of the simulator's answer (FRED pages at 100,000 rows): dates (datetime64[D]) and
    values (NaN for ".")."""
    dates: list[str] = []
    values: list[float] = []
    while True:
        status, body = answerer.answer("series/observations", {
            "series_id": series_id, "api_key": DEMO_API_KEY, "file_type": "json", **params, "offset": str(len(dates))})
        assert status == 200, body
        data = orjson.loads(body)
        dates += [o["date"] for o in data["observations"]]
        values += [math.nan if o["value"] == "." else float(o["value"]) for o in data["observations"]]
        if len(dates) >= data["count"] or not data["observations"]:
            assert len(dates) == data["count"]
            return np.array(dates, dtype="datetime64[D]"), np.array(values, dtype=np.float64)


def wh_answer(table) -> tuple[np.ndarray, np.ndarray]:
    return (table["date"].to_numpy().astype("datetime64[D]"),
            table["value"].to_numpy(zero_copy_only=False).astype(np.float64))


def sim_rows(answerer: FredSimulator, series_id: str, **params: str) -> list[tuple[str, float | None]]:
    dates, values = sim_answer(answerer, series_id, **params)
    return [(str(d), None if math.isnan(v) else float(v)) for d, v in zip(dates, values)]


def wh_rows(table) -> list[tuple[str, float | None]]:
    return [(d.isoformat(), v) for d, v in zip(table["date"].to_pylist(), table["value"].to_pylist())]


def close(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)


def mismatches(expected, got) -> list[str]:
    """Differences between two answers, either as (dates, values) arrays or as lists of (date, value)."""
    if isinstance(expected, list):
        expected = (np.array([d for d, _ in expected], dtype="datetime64[D]"),
                    np.array([math.nan if v is None else v for _, v in expected], dtype=np.float64))
        got = (np.array([d for d, _ in got], dtype="datetime64[D]"),
               np.array([math.nan if v is None else v for _, v in got], dtype=np.float64))
    (ed, ev), (gd, gv) = expected, got
    if len(ed) != len(gd) or not np.array_equal(ed, gd):
        e, g = set(ed.tolist()), set(gd.tolist())
        return [f"{len(ed)} vs {len(gd)} dates; only sim: {sorted(e - g)[:3]} only warehouse: {sorted(g - e)[:3]}"]
    same = (np.isnan(ev) & np.isnan(gv)) | np.isclose(ev, gv, rtol=1e-9, atol=1e-9)
    bad = np.flatnonzero(~same)
    return [f"{ed[i]}: sim {ev[i]} warehouse {gv[i]}" for i in bad[:3]]


def combos(native: str):
    """(freq, agg) pairs FRED allows for this native frequency, plus no aggregation."""
    yield None, "avg"
    for freq in FREQUENCIES:
        if LEVEL[freq] >= NATIVE_LEVEL[native]:
            for agg in AGGS:
                yield freq, agg


@pytest.mark.parametrize("units", UNITS)
def test_every_frequency_and_aggregation_matches_the_simulator(world, units):
    """For this unit code: no aggregation and every (frequency, aggregation) FRED allows, on a series
    of each native frequency (one warehouse call per combination, holding every series it applies to)."""
    wh, answerer, picks = world["current"], world["answerer"], world["picks"]
    problems, compared, missing_out, present_out = [], 0, 0, 0
    plans = [(None, "avg")] + [(freq, agg) for freq in FREQUENCIES for agg in AGGS]
    for freq, agg in plans:
        natives = [n for n in NATIVE_CODES if freq is None or LEVEL[freq] >= NATIVE_LEVEL[n]]
        table = wh.observations([picks[n] for n in natives], freq=freq, agg=agg, units=units)
        for native in natives:
            sid = picks[native]
            params = {"units": units}
            if freq is not None:
                params.update(frequency=freq, aggregation_method=agg)
            expected = sim_answer(answerer, sid, **params)
            got = wh_answer(table.filter(pc.equal(table["series_id"], sid)))
            bad = mismatches(expected, got)
            if bad:
                problems.append(f"{sid} ({native}) freq={freq} agg={agg} units={units}: {bad}")
            compared += len(expected[0])
            missing_out += int(np.isnan(expected[1]).sum())
            present_out += int((~np.isnan(expected[1])).sum())
    assert not problems, "\n".join(problems[:20])
    assert compared > 0 and present_out > 0 and missing_out > 0  # NULLs went through, values too
    assert sum(1 for f, _ in plans for n in NATIVE_CODES if f is None or LEVEL[f] >= NATIVE_LEVEL[n]) == 6 + 3 * (
        16 * 2 + 15 + 4 + 3 + 1)  # D7, D: 16 codes; W: 15; M: 4; Q: 3; A: 1


def test_gaps_propagate_like_fred(world):
    """A missing monthly value: its own chg/pch/log and the next change are missing; the quarter
    holding it averages the two available months."""
    sid = world["picks"]["M"]
    rows = wh_rows(world["current"].observations([sid]))
    gap = next(i for i, (_, v) in enumerate(rows) if v is None and 3 <= i < len(rows) - 3)
    chg = wh_rows(world["current"].observations([sid], units="chg"))
    assert chg[gap][1] is None and chg[gap + 1][1] is None
    assert chg[gap - 1][1] is not None or rows[gap - 2][1] is None
    quarter = rows[gap][0][:5] + {1: "01", 2: "01", 3: "01", 4: "04", 5: "04", 6: "04", 7: "07", 8: "07", 9: "07",
                                  10: "10", 11: "10", 12: "10"}[int(rows[gap][0][5:7])] + "-01"
    months = [v for d, v in rows if quarter <= d < _add_months(quarter, 3) and v is not None]
    q = dict(wh_rows(world["current"].observations([sid], freq="q", agg="avg")))
    assert math.isclose(q[quarter], sum(months) / len(months), rel_tol=1e-12)
    q_sum = dict(wh_rows(world["current"].observations([sid], freq="q", agg="sum")))
    assert math.isclose(q_sum[quarter], sum(months), rel_tol=1e-12)


def _add_months(iso: str, k: int) -> str:
    y, m = int(iso[:4]), int(iso[5:7]) - 1 + k
    return f"{y + m // 12:04d}-{m % 12 + 1:02d}-01"


def test_panel_is_the_long_answers_side_by_side(world):
    wh = world["current"]
    ids = [world["picks"][c] for c in ("M", "Q", "A")]
    panel = wh.panel([i.lower() for i in ids], start="1990-01-01", end="2020-12-31", freq="a", agg="eop", units="pc1")
    assert panel.column_names == ["date", *ids]
    dates = [d.isoformat() for d in panel["date"].to_pylist()]
    assert dates == sorted(dates) and dates[0] == "1990-01-01" and dates[-1] == "2020-01-01"
    for sid in ids:
        expected = dict(sim_rows(world["answerer"], sid, frequency="a", aggregation_method="eop", units="pc1",
                                 observation_start="1990-01-01", observation_end="2020-12-31"))
        column = dict(zip(dates, panel[sid].to_pylist()))
        assert set(expected) <= set(column)
        assert all(close(expected[d], column[d]) for d in expected)
        assert all(column[d] is None for d in column if d not in expected)


def test_mixed_frequencies_align_on_the_union_of_dates(world):
    wh = world["current"]
    m, q = world["picks"]["M"], world["picks"]["Q"]
    panel = wh.panel([m, q], start="2000-01-01", end="2000-12-31")
    assert [d.isoformat() for d in panel["date"].to_pylist()] == [f"2000-{k:02d}-01" for k in range(1, 13)]
    assert sum(v is not None for v in panel[q].to_pylist()) >= 3  # quarterly values on quarter starts only
    assert all(v is None for d, v in zip(panel["date"].to_pylist(), panel[q].to_pylist()) if d.month not in (1, 4, 7, 10))


def test_asof_panel_transforms_use_the_as_of_values(world):
    wh, answerer = world["vintages"], world["answerer"]
    rng = random.Random(11)
    checked = 0
    for native in NATIVE_CODES:
        sid = world["picks"][native]
        days = answerer.catalog.vintage_dates(sid)
        for _ in range(3):
            on = days[rng.randrange(len(days) // 2, len(days))].isoformat()
            freq, agg = rng.choice([c for c in combos(native)])
            units = rng.choice(UNITS)
            params = {"units": units, "realtime_start": on, "realtime_end": on}
            if freq:
                params.update(frequency=freq, aggregation_method=agg)
            expected = sim_rows(answerer, sid, **params)
            got = wh_rows(wh.asof([sid], on, freq=freq, agg=agg, units=units))
            assert not mismatches(expected, got), (sid, on, freq, agg, units, mismatches(expected, got))
            panel = wh.panel([sid], freq=freq, agg=agg, units=units, asof=on)
            assert [(d.isoformat(), v) for d, v in zip(panel["date"].to_pylist(), panel[sid].to_pylist())] == got
            checked += len(expected)
    assert checked > 0
    # and the as-of values differ from today's somewhere (so the test could tell them apart)
    sid = world["picks"]["M"]
    on = answerer.catalog.vintage_dates(sid)[-40].isoformat()
    old = wh_rows(wh.asof([sid], on, units="pch"))
    new = dict(sim_rows(answerer, sid, units="pch"))
    assert any(not close(v, new.get(d)) for d, v in old)


def test_higher_frequency_is_refused_by_both(world):
    sid = world["picks"]["Q"]
    status, body = world["answerer"].answer("series/observations", {
        "series_id": sid, "api_key": DEMO_API_KEY, "file_type": "json", "frequency": "m"})
    # FRED's own words for GDP (quarterly) asked frequency=m
    assert (status, orjson.loads(body)) == (400, {"error_code": 400, "error_message":
                                                  "Bad Request.  Value of frequency is not one of: 'q', 'sa', 'a'."})
    with pytest.raises(UsageError, match=rf"higher than the native frequency of {sid} \(quarterly\)"):
        world["current"].panel([sid, world["picks"]["M"]], freq="m")
    with pytest.raises(UsageError, match="units 'pcx' is not one of"):
        world["current"].observations([sid], units="pcx")
    with pytest.raises(UsageError, match="agg 'mean' is not one of"):
        world["current"].observations([sid], freq="a", agg="mean")
    with pytest.raises(UsageError, match="freq 'x' is not one of"):
        world["current"].observations([sid], freq="x")


def test_the_simulator_process_serves_the_same_bytes_over_http(world):
    """The in-process answers used above are what the real simulator process sends."""
    rng = random.Random(5)
    base = world["process"].url
    for native in NATIVE_CODES:
        sid = world["picks"][native]
        freq, agg = rng.choice(list(combos(native))[1:])
        for units in rng.sample(UNITS, 2):
            query = {"series_id": sid, "api_key": DEMO_API_KEY, "file_type": "json", "units": units,
                     "frequency": freq, "aggregation_method": agg}
            with urllib.request.urlopen(f"{base}/series/observations?{urllib.parse.urlencode(query)}") as resp:
                body = resp.read()
            assert body == world["answerer"].answer("series/observations", query)[1]
            data = orjson.loads(body)
            assert data["units"] == units and data["count"] > 0
