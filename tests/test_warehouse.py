"""The read side against real ALFRED answers (recorded GDP vintages) and the simulator's vintage history.

Recordings (tests/data/fred-samples, each with its request URI in .meta.txt):
- ``*get_series_all_releases_json__i0/i2``: GDP, realtime_start=1776-07-04, realtime_end=9999-12-31;
- ``*get_series_asof_date_json__i0``: GDP, realtime_start=1776-07-04, realtime_end=2019-01-01;
- ``*get_series_initial_release_json__i0/i2``: GDP, output_type=4.
"""

from __future__ import annotations

import random
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from datetime import date, timedelta

import duckdb
import orjson
import pyarrow as pa
import pytest

from conftest import SAMPLES
from fredflow import CatalogSpec, StoreBusy, UsageError, Warehouse, ingest
from fredflow.sim import DEMO_API_KEY
from fredflow.warehouse import install_macros, macro_sql

PREFIX = "gw-moore+pyfredapi__tests_vhs_test_series_test_get_series_"

# The tables the Warehouse reads, as README.md's Schema section defines them.
SCHEMA = """
CREATE TABLE observations (series_id VARCHAR NOT NULL, date DATE NOT NULL, value DOUBLE, realtime_start DATE,
                           realtime_end DATE);
CREATE TABLE vintages (series_id VARCHAR NOT NULL, date DATE NOT NULL, realtime_start DATE NOT NULL,
                       realtime_end DATE NOT NULL, value DOUBLE);
CREATE TABLE series (series_id VARCHAR PRIMARY KEY, title VARCHAR, frequency VARCHAR, frequency_short VARCHAR,
                     units VARCHAR, units_short VARCHAR, seasonal_adjustment VARCHAR,
                     seasonal_adjustment_short VARCHAR, last_updated TIMESTAMPTZ, observation_start DATE,
                     observation_end DATE, popularity INTEGER, notes VARCHAR, fetched_at TIMESTAMPTZ,
                     last_run_id VARCHAR);
"""


def recording(name: str) -> dict:
    meta = (SAMPLES / f"{PREFIX}{name}.meta.txt").read_text()
    body = orjson.loads((SAMPLES / f"{PREFIX}{name}.json").read_bytes())
    body["request_uri"] = next(line.split(": ", 1)[1] for line in meta.splitlines() if line.startswith("request_uri"))
    return body


def _value(text: str) -> float | None:
    return None if text == "." else float(text)


def gdp_database(path, all_releases: dict) -> Warehouse:
    """A fredflow-schema database holding FRED's all-releases answer for GDP in ``vintages``."""
    assert "realtime_start=1776-07-04" in all_releases["request_uri"]
    assert "realtime_end=9999-12-31" in all_releases["request_uri"]
    rows = all_releases["observations"]
    table = pa.table({
        "series_id": ["GDP"] * len(rows),
        "date": pa.array([date.fromisoformat(r["date"]) for r in rows], pa.date32()),
        "realtime_start": pa.array([date.fromisoformat(r["realtime_start"]) for r in rows], pa.date32()),
        "realtime_end": pa.array([date.fromisoformat(r["realtime_end"]) for r in rows], pa.date32()),
        "value": pa.array([_value(r["value"]) for r in rows], pa.float64()),
    })
    con = duckdb.connect(str(path))
    con.execute(SCHEMA)
    con.register("recorded", table)
    con.execute("INSERT INTO vintages SELECT * FROM recorded")
    con.execute("INSERT INTO series (series_id, title, frequency, frequency_short) "
                "VALUES ('GDP', 'Gross Domestic Product', 'Quarterly', 'Q')")
    con.close()
    return Warehouse(path)


def rows_of(table: pa.Table, *columns: str) -> list[tuple]:
    data = [table[c].to_pylist() for c in columns]
    return [tuple(v.isoformat() if isinstance(v, date) else v for v in row) for row in zip(*data)]


def fred_rows(body: dict, *columns: str) -> list[tuple]:
    return [tuple(_value(o[c]) if c == "value" else o[c] for c in columns) for o in body["observations"]]


# ------------------------------------------------------------------ ALFRED recordings


@pytest.fixture(scope="module")
def gdp(tmp_path_factory):
    return gdp_database(tmp_path_factory.mktemp("gdp") / "gdp.duckdb", recording("all_releases_json__i0"))


def test_asof_equals_alfred_as_of_2019_01_01(gdp):
    fred = recording("asof_date_json__i0")
    assert "realtime_end=2019-01-01" in fred["request_uri"]
    # FRED answered the whole history up to 2019-01-01; the rows in effect on that day end on it.
    in_effect = [o for o in fred["observations"] if o["realtime_end"] == "2019-01-01"]
    assert len(in_effect) == len({o["date"] for o in fred["observations"]}) == 291  # 1946Q1 … 2018Q3
    got = gdp.asof(["gdp"], "2019-01-01")
    assert got.column_names == ["series_id", "date", "value"]
    assert set(got["series_id"].to_pylist()) == {"GDP"}
    assert rows_of(got, "date", "value") == fred_rows({"observations": in_effect}, "date", "value")
    # the 1946 quarters are published as "." then: present, with a NULL value (as ALFRED)
    assert rows_of(got, "date", "value")[0] == ("1946-01-01", None)
    # and not the same as today's values
    assert rows_of(gdp.asof(["GDP"], date(2024, 11, 1)), "date", "value")[-10:] != rows_of(got, "date", "value")[-10:]


def test_vintages_equal_alfred_real_time_period_row_for_row(gdp):
    fred = recording("asof_date_json__i0")
    got = gdp.vintages(["GDP"], "1776-07-04", "2019-01-01")
    columns = ("date", "realtime_start", "realtime_end", "value")
    assert rows_of(got, *columns) == fred_rows(fred, *columns)
    assert len(got) == fred["count"] == 2902
    everything = recording("all_releases_json__i0")
    assert rows_of(gdp.vintages("GDP"), *columns) == fred_rows(everything, *columns)


@pytest.mark.parametrize("snapshot", ["i0", "i2"])
def test_first_release_equals_alfred_initial_release(tmp_path, snapshot):
    wh = gdp_database(tmp_path / "gdp.duckdb", recording(f"all_releases_json__{snapshot}"))
    fred = recording(f"initial_release_json__{snapshot}")
    assert "output_type=4" in fred["request_uri"] and fred["output_type"] == 4
    got = wh.first_release(["GDP"])
    assert rows_of(got, "date", "value") == fred_rows(fred, "date", "value")
    assert len(got) == fred["count"] == 132  # not the 315 dates GDP has: see FIRST_RELEASE_RULE
    # the SQL macro gives the same rows, with the date of each first release
    with wh.connect() as con:
        macro = con.sql("SELECT date, realtime_start, value FROM fredflow_first_release() ORDER BY date").to_arrow_table()
    assert rows_of(macro, "date", "realtime_start", "value") == fred_rows(fred, "date", "realtime_start", "value")


def test_asof_transforms_on_gdp(gdp):
    """Quarter-on-quarter growth of GDP as published on 2019-01-01 (the 2018Q3 third estimate)."""
    level = dict(rows_of(gdp.asof("GDP", "2019-01-01"), "date", "value"))
    pch = dict(rows_of(gdp.asof("GDP", "2019-01-01", units="pch"), "date", "value"))
    assert pch["2018-07-01"] == pytest.approx((level["2018-07-01"] / level["2018-04-01"] - 1) * 100, rel=1e-12)
    pca = gdp.panel(["GDP"], start="2018-01-01", end="2018-12-31", units="pca", asof="2019-01-01")
    assert [d.isoformat() for d in pca["date"].to_pylist()] == ["2018-01-01", "2018-04-01", "2018-07-01"]
    assert pca["GDP"].to_pylist()[2] == pytest.approx(((level["2018-07-01"] / level["2018-04-01"]) ** 4 - 1) * 100)
    annual = dict(rows_of(gdp.asof("GDP", "2019-01-01", freq="a", agg="avg"), "date", "value"))
    assert annual["2017-01-01"] == pytest.approx(sum(level[f"2017-{m}-01"] for m in ("01", "04", "07", "10")) / 4)
    assert "2018-01-01" in annual  # an incomplete last year (3 quarters) averages what it has


# ------------------------------------------------------------------ simulator vintages

SIM_IDS = tuple(f"SIM{i:06d}" for i in range(1, 11))


@pytest.fixture(scope="module")
def sim_dbs(sim, tmp_path_factory):
    from fredflow.settings import Settings  # what conftest's settings_for builds; a module-scoped copy

    root = tmp_path_factory.mktemp("simwh")
    settings = Settings(api_url=sim.url, api_key=DEMO_API_KEY, rate=1000, burst=50, concurrency=16)
    assert ingest(root / "v.duckdb", CatalogSpec(series=SIM_IDS), settings=settings, vintages=True).exit_code == 0
    assert ingest(root / "c.duckdb", CatalogSpec(series=SIM_IDS[:3]), settings=settings).exit_code == 0
    return Warehouse(root / "v.duckdb"), Warehouse(root / "c.duckdb")


def sim_get(sim, **query) -> dict:
    query = {"api_key": DEMO_API_KEY, "file_type": "json", **query}
    with urllib.request.urlopen(f"{sim.url}/series/observations?{urllib.parse.urlencode(query)}") as resp:
        return orjson.loads(resp.read())


def sim_vintage_dates(sim, series_id: str) -> list[str]:
    query = {"api_key": DEMO_API_KEY, "file_type": "json", "series_id": series_id}
    with urllib.request.urlopen(f"{sim.url}/series/vintagedates?{urllib.parse.urlencode(query)}") as resp:
        return orjson.loads(resp.read())["vintage_dates"]


def test_asof_equals_the_simulator_at_many_dates(sim, sim_dbs):
    wh = sim_dbs[0]
    rng = random.Random(2026)
    checked = 0
    for sid in SIM_IDS:
        vintage_dates = sim_vintage_dates(sim, sid)
        first, last = date.fromisoformat(vintage_dates[0]), date.fromisoformat(vintage_dates[-1])
        picks = {vintage_dates[0], vintage_dates[-1], (last - timedelta(days=1)).isoformat(), "2026-11-20"}
        picks |= {rng.choice(vintage_dates) for _ in range(4)}
        picks |= {(date.fromisoformat(rng.choice(vintage_dates[1:])) - timedelta(days=1)).isoformat() for _ in range(3)}
        picks |= {(first + timedelta(days=rng.randrange((last - first).days + 1))).isoformat() for _ in range(6)}
        for on in sorted(picks):
            fred = sim_get(sim, series_id=sid, realtime_start=on, realtime_end=on)
            assert rows_of(wh.asof([sid.lower()], on), "date", "value") == fred_rows(fred, "date", "value"), (sid, on)
            checked += fred["count"]
    assert checked > 1000
    # several series in one call: the same rows, by series in the order asked
    on = "2015-06-30"
    both = wh.asof([SIM_IDS[4], SIM_IDS[1]], on)
    assert both["series_id"].to_pylist() == sorted(both["series_id"].to_pylist(), key=[SIM_IDS[4], SIM_IDS[1]].index)
    assert rows_of(both, "series_id", "date", "value") == [
        (sid, *row) for sid in (SIM_IDS[4], SIM_IDS[1])
        for row in fred_rows(sim_get(sim, series_id=sid, realtime_start=on, realtime_end=on), "date", "value")]


def test_first_release_equals_the_simulator_except_its_first_vintage(sim, sim_dbs):
    """The simulator's output_type=4 also lists the observations of a series' first vintage; FRED does
    not (see the GDP recording above), and neither does the warehouse: exactly those rows differ."""
    wh = sim_dbs[0]
    for sid in SIM_IDS:
        fred = sim_get(sim, series_id=sid, realtime_start="1776-07-04", output_type="4")
        first_vintage = sim_vintage_dates(sim, sid)[0]
        expected = [(o["date"], _value(o["value"])) for o in fred["observations"] if o["realtime_start"] != first_vintage]
        assert len(expected) < fred["count"]  # the simulator does list first-vintage rows
        assert rows_of(wh.first_release([sid]), "date", "value") == expected


def test_observations_are_the_current_values(sim, sim_dbs):
    current = sim_dbs[1]
    for sid in SIM_IDS[:3]:
        fred = sim_get(sim, series_id=sid)
        assert rows_of(current.observations([sid]), "date", "value") == fred_rows(fred, "date", "value")
        window = sim_get(sim, series_id=sid, observation_start="2001-02-03", observation_end="2010-01-01")
        got = current.observations(sid, start=date(2001, 2, 3), end="2010-01-01")
        assert rows_of(got, "date", "value") == fred_rows(window, "date", "value")


def test_series_metadata(sim, sim_dbs):
    table = sim_dbs[1].series(["sim000003", "SIM000001"])
    assert table["series_id"].to_pylist() == ["SIM000003", "SIM000001"]
    assert table.column_names[0] == "series_id" and "frequency_short" in table.column_names
    query = {"api_key": DEMO_API_KEY, "file_type": "json", "series_id": "SIM000003"}
    with urllib.request.urlopen(f"{sim.url}/series?{urllib.parse.urlencode(query)}") as resp:
        meta = orjson.loads(resp.read())["seriess"][0]
    assert table.to_pylist()[0]["title"] == meta["title"]
    assert table.to_pylist()[0]["frequency_short"] == meta["frequency_short"]
    assert len(sim_dbs[1].series()) == 3


# ------------------------------------------------------------------ errors


def test_unknown_ids_are_one_clear_error(sim_dbs):
    vint, current = sim_dbs
    with pytest.raises(UsageError, match=r"unknown series \(nothing stored\): NOPE, ALSO_NOT"):
        current.observations(["SIM000001", "nope", "also_not"])
    with pytest.raises(UsageError, match="NOPE"):
        current.panel(["SIM000001", "nope"])
    with pytest.raises(UsageError, match="no metadata stored for NOPE"):
        current.series(["nope"])
    with pytest.raises(UsageError, match=r"no vintages stored for SIM000001, SIM000002 \(ingest them with --vintages\)"):
        current.asof(["SIM000001", "SIM000002"], "2020-01-01")
    with pytest.raises(UsageError, match="no vintages stored for SIM000001"):
        current.first_release(["SIM000001"])
    with pytest.raises(UsageError, match="only vintages: use asof or first_release"):
        vint.observations(["SIM000004"])


def test_asof_before_the_first_vintage_is_an_error(sim_dbs, sim):
    wh = sim_dbs[0]
    first = sim_vintage_dates(sim, "SIM000002")[0]
    day_before = (date.fromisoformat(first) - timedelta(days=1)).isoformat()
    with pytest.raises(UsageError, match=rf"asof {day_before} is before the first stored vintage of SIM000002 "
                                         rf"\(first stored vintage {first}\)"):
        wh.asof(["SIM000002"], day_before)
    assert len(wh.asof(["SIM000002"], first)) >= 1
    # every problem of a call in one error
    with pytest.raises(UsageError, match=r"no vintages stored for NOPE .*; asof 1700-01-01 is before the first "
                                         r"stored vintage of SIM000001 .*, SIM000002 "):
        wh.asof(["SIM000001", "nope", "SIM000002"], "1700-01-01")


def test_bad_dates_and_arguments(sim_dbs, tmp_path):
    wh = sim_dbs[1]
    with pytest.raises(UsageError, match="start '2019-13-01' is not a date"):
        wh.observations(["SIM000001"], start="2019-13-01")
    with pytest.raises(UsageError, match="is after end"):
        wh.observations(["SIM000001"], start="2020-01-01", end="2019-01-01")
    with pytest.raises(UsageError, match="asof 20190101 is not a date"):
        sim_dbs[0].asof(["SIM000001"], 20190101)
    with pytest.raises(UsageError, match="no series ids given"):
        wh.observations([])
    with pytest.raises(UsageError, match="no database at"):
        Warehouse(tmp_path / "missing.duckdb")


# ------------------------------------------------------------------ locks, macros, DataFrames

_HOLDER = """
import duckdb, sys, time
con = duckdb.connect(sys.argv[1])
print("holding", flush=True)
time.sleep(float(sys.argv[2]))
con.close()
"""


def _hold(path, seconds: float) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", _HOLDER, str(path), str(seconds)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "holding"
    return proc


def test_a_locked_database_is_waited_for_then_a_one_line_error(tmp_path, gdp):
    path = tmp_path / "locked.duckdb"
    gdp_database(path, recording("all_releases_json__i0"))
    holder = _hold(path, 30)
    try:
        wh = Warehouse(path, lock_timeout=0.5)
        t0 = time.monotonic()
        with pytest.raises(StoreBusy) as err:
            wh.asof("GDP", "2019-01-01")
        assert 0.5 <= time.monotonic() - t0 < 5
        assert "\n" not in str(err.value) and "locked by a writer" in str(err.value)
    finally:
        holder.kill()
        holder.wait()
    holder = _hold(path, 1.0)  # released after a second: a patient reader gets its answer
    try:
        t0 = time.monotonic()
        got = Warehouse(path, lock_timeout=20).asof("GDP", "2019-01-01")
        assert time.monotonic() - t0 >= 0.5
        assert rows_of(got, "date", "value") == rows_of(gdp.asof("GDP", "2019-01-01"), "date", "value")
    finally:
        holder.wait()


def test_a_read_write_connection_of_this_process_is_named(tmp_path):
    path = tmp_path / "mine.duckdb"
    gdp_database(path, recording("all_releases_json__i0"))
    mine = duckdb.connect(str(path))
    try:
        with pytest.raises(StoreBusy, match="open read-write in this process"):
            Warehouse(path, lock_timeout=0.2).asof("GDP", "2019-01-01")
    finally:
        mine.close()
    assert len(Warehouse(path, lock_timeout=0.2).asof("GDP", "2019-01-01")) == 291


def test_the_warehouse_holds_nothing_open_between_calls(tmp_path):
    path = tmp_path / "open.duckdb"
    wh = gdp_database(path, recording("all_releases_json__i0"))
    wh.asof("GDP", "2019-01-01")
    con = duckdb.connect(str(path))  # a writer can take the database right after a read
    con.execute("INSERT INTO series (series_id, frequency_short) VALUES ('X', 'M')")
    con.close()
    assert wh.series("x")["series_id"].to_pylist() == ["X"]


def test_sql_macros_installed_for_good_and_temporary(tmp_path, gdp):
    path = tmp_path / "macros.duckdb"
    gdp_database(path, recording("all_releases_json__i0"))
    con = duckdb.connect(str(path), read_only=True)  # nothing persistent before installing
    assert con.execute("SELECT count(*) FROM duckdb_functions() WHERE function_name LIKE 'fredflow_%'").fetchone()[0] == 0
    con.close()
    install_macros(path)
    con = duckdb.connect(str(path), read_only=True)
    asof = con.sql("SELECT date, value FROM fredflow_asof(DATE '2019-01-01') WHERE series_id = 'GDP' "
                   "ORDER BY date").to_arrow_table()
    quarters = con.execute("SELECT fredflow_period(DATE '2020-05-17', 'q'), fredflow_period(DATE '2020-05-17', 'wef'), "
                           "fredflow_period(DATE '2020-05-17', 'sa'), fredflow_obs_per_year('m')").fetchone()
    con.close()
    assert rows_of(asof, "date", "value") == rows_of(gdp.asof("GDP", "2019-01-01"), "date", "value")
    assert quarters == (date(2020, 4, 1), date(2020, 5, 22), date(2020, 1, 1), 12)
    printed = subprocess.run([sys.executable, "-m", "fredflow.warehouse.sql"], capture_output=True, text=True, check=True)
    assert printed.stdout == macro_sql(temporary=False)
    fresh = duckdb.connect()
    fresh.execute(SCHEMA)
    fresh.execute(printed.stdout)  # pastes into any session on a database with fredflow's tables
    assert fresh.execute("SELECT count(*) FROM fredflow_first_release()").fetchone() == (0,)
    fresh.close()


def test_tables_convert_to_pandas_and_polars(gdp):
    import pandas as pd
    import polars as pl

    panel = gdp.panel(["GDP"], start="2010-01-01", end="2010-12-31", units="pc1", asof="2019-01-01")
    frame = panel.to_pandas()
    assert list(frame.columns) == ["date", "GDP"] and len(frame) == 4
    assert pd.api.types.is_float_dtype(frame["GDP"])
    polars_frame = pl.from_arrow(gdp.first_release("GDP"))
    assert polars_frame.columns == ["series_id", "date", "value"] and polars_frame.height == 132
