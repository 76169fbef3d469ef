"""The simulator's units / frequency / aggregation_method (sim/transforms.py) on hand-computed cases,
and its FRED-style answers (400 bodies, paging, sort order, the ``units`` field)."""

from __future__ import annotations

import math
from datetime import date, timedelta

import numpy as np
import orjson
import pytest

from fredflow.sim import DEMO_API_KEY, SimConfig
from fredflow.sim.server import FredSimulator
from fredflow.sim.transforms import aggregate, apply_units, period_labels

EPOCH = date(1970, 1, 1)


def days(*isos: str) -> np.ndarray:
    return np.array([(date.fromisoformat(d) - EPOCH).days for d in isos], dtype=np.int64)


def isos(values: np.ndarray) -> list[str]:
    return [(EPOCH + timedelta(days=int(d))).isoformat() for d in values]


def test_period_labels():
    d = days("2020-05-17", "2020-05-22", "2020-12-31", "1969-12-31")  # a Sunday, a Friday, ...
    assert isos(period_labels(d, "m")) == ["2020-05-01", "2020-05-01", "2020-12-01", "1969-12-01"]
    assert isos(period_labels(d, "q")) == ["2020-04-01", "2020-04-01", "2020-10-01", "1969-10-01"]
    assert isos(period_labels(d, "sa")) == ["2020-01-01", "2020-01-01", "2020-07-01", "1969-07-01"]
    assert isos(period_labels(d, "a")) == ["2020-01-01", "2020-01-01", "2020-01-01", "1969-01-01"]
    assert isos(period_labels(d, "w")) == ["2020-05-22", "2020-05-22", "2021-01-01", "1970-01-02"]
    assert isos(period_labels(d, "wef")) == isos(period_labels(d, "w"))
    assert isos(period_labels(d[:1], "wesu")) == ["2020-05-17"]
    assert isos(period_labels(d[:1], "wesa")) == ["2020-05-23"]
    assert isos(period_labels(d[:1], "wem")) == ["2020-05-18"]
    assert isos(period_labels(d[:1], "wetu")) == ["2020-05-19"]
    assert isos(period_labels(d[:1], "wew")) == ["2020-05-20"]
    assert isos(period_labels(d[:1], "weth")) == ["2020-05-21"]
    for code, anchor in (("bw", date(1970, 1, 7)), ("bwew", date(1970, 1, 7)), ("bwem", date(1970, 1, 5))):
        for iso in ("2020-05-17", "1969-12-31", "1970-01-07"):
            day = date.fromisoformat(iso)
            end = next(day + timedelta(k) for k in range(14) if (day + timedelta(k) - anchor).days % 14 == 0)
            assert isos(period_labels(days(iso), code)) == [end.isoformat()], (code, iso)
            assert end.weekday() == anchor.weekday()


def test_aggregation_averages_the_available_values():
    d = days("2020-01-01", "2020-01-02", "2020-01-03", "2020-02-03", "2020-02-04", "2020-03-02")
    x = np.array([1.0, np.nan, 4.0, 2.0, np.nan, np.nan])
    labels, avg = aggregate(d, x, "m", "avg")
    assert isos(labels) == ["2020-01-01", "2020-02-01", "2020-03-01"]
    assert avg[:2].tolist() == [2.5, 2.0] and math.isnan(avg[2])
    assert aggregate(d, x, "m", "sum")[1][:2].tolist() == [5.0, 2.0]
    eop = aggregate(d, x, "m", "eop")[1]
    assert eop[:2].tolist() == [4.0, 2.0] and math.isnan(eop[2])  # February's last day is missing: 2.0
    labels, q = aggregate(d, x, "q", "avg")
    assert isos(labels) == ["2020-01-01"] and q.tolist() == [round(7.0 / 3, 10)]  # rounded to 10 decimals


def test_units_formulas():
    x = np.array([100.0, 110.0, np.nan, 121.0, 133.1, 0.0, 5.0])
    chg = apply_units(x, "chg", 4)
    assert np.isnan(chg[[0, 2, 3]]).all() and chg[1] == 10.0 and chg[4] == pytest.approx(12.1)
    assert apply_units(x, "pch", 4)[1] == pytest.approx(10.0)
    assert apply_units(x, "pca", 4)[1] == pytest.approx(46.41)
    assert apply_units(x, "cch", 4)[1] == pytest.approx(math.log(1.1) * 100)
    assert apply_units(x, "cca", 12)[1] == pytest.approx(math.log(1.1) * 1200)
    assert apply_units(x, "ch1", 4)[4] == pytest.approx(33.1) and np.isnan(apply_units(x, "ch1", 4)[:4]).all()
    assert apply_units(x, "pc1", 3)[4] == pytest.approx(21.0)
    log = apply_units(x, "log", 1)
    assert log[0] == pytest.approx(math.log(100)) and math.isnan(log[5])  # ln 0: missing, not -inf
    assert math.isnan(apply_units(x, "pch", 4)[6])  # a ratio to 0: missing, not inf
    assert np.array_equal(apply_units(x, "lin", 1), x, equal_nan=True)


@pytest.fixture(scope="module")
def fred():
    sim = FredSimulator(SimConfig(n_series=40, seed=3, long_series=1))
    by_frequency = {}
    for sid in sim.catalog.series_ids:
        by_frequency.setdefault(sim.catalog.meta(sid)["frequency_short"], sid)

    def get(series_id, **params):
        status, body = sim.answer("series/observations",
                                  {"series_id": series_id, "api_key": DEMO_API_KEY, "file_type": "json", **params})
        return status, orjson.loads(body)

    return get, by_frequency


@pytest.mark.parametrize(("native", "allowed"), [
    ("A", "'a'"),
    ("Q", "'q', 'sa', 'a'"),
    ("M", "'m', 'q', 'sa', 'a'"),
    ("W", "'w', 'bw', 'm', 'q', 'sa', 'a', 'wef', 'weth', 'wew', 'wetu', 'wem', 'wesu', 'wesa', 'bwew', 'bwem'"),
])
def test_a_higher_or_unknown_frequency_is_fred_s_400(fred, native, allowed):
    get, ids = fred
    for bad in ("d", "x"):
        status, body = get(ids[native], frequency=bad)
        assert status == 400
        assert body == {"error_code": 400, "error_message": f"Bad Request.  Value of frequency is not one of: {allowed}."}


def test_bad_units_and_aggregation_are_fred_s_400(fred):
    get, ids = fred
    assert get(ids["M"], units="percent") == (400, {"error_code": 400, "error_message":
        "Bad Request.  Value of units is not one of: cap, cca, cch, ch1, chg, lin, log, pc1, pca, pch."})
    assert get(ids["M"], units="cap")[0] == 400
    assert get(ids["M"], frequency="q", aggregation_method="median") == (400, {"error_code": 400, "error_message":
        "Bad Request.  Value of aggregation_method is not one of: 'avg', 'sum', 'eop'."})
    # the simulator validates aggregation_method even without a frequency (what FRED does is not recorded)
    assert get(ids["M"], aggregation_method="median")[0] == 400


def test_native_frequency_means_no_aggregation_and_lin_is_the_plain_answer(fred):
    get, ids = fred
    plain = get(ids["M"])[1]
    assert get(ids["M"], units="lin")[1] == plain
    native = get(ids["M"], frequency="m", aggregation_method="sum")[1]
    assert [o["date"] for o in native["observations"]] == [o["date"] for o in plain["observations"]]
    assert [float(o["value"]) if o["value"] != "." else None for o in native["observations"]] == \
           [float(o["value"]) if o["value"] != "." else None for o in plain["observations"]]


def test_transformed_answers_page_sort_and_say_their_units(fred):
    get, ids = fred
    status, whole = get(ids["D"], frequency="m", units="pc1", observation_start="2000-01-01",
                        observation_end="2009-12-31")
    assert status == 200 and whole["units"] == "pc1" and whole["count"] == 120
    assert whole["observations"][0]["date"] == "2000-01-01" and whole["observations"][-1]["date"] == "2009-12-01"
    page = get(ids["D"], frequency="m", units="pc1", observation_start="2000-01-01", observation_end="2009-12-31",
               sort_order="desc", limit="5", offset="2")[1]
    assert page["count"] == 120 and page["limit"] == 5 and page["offset"] == 2
    assert page["observations"] == whole["observations"][::-1][2:7]
    # the first year of a pc1 is missing: nothing a year before it
    first = get(ids["Q"], units="pc1")[1]["observations"]
    assert [o["value"] for o in first[:4]] == ["."] * 4 and any(o["value"] != "." for o in first[4:8])


def test_as_of_transforms_need_a_one_day_real_time_period(fred):
    get, ids = fred
    status, body = get(ids["M"], units="pch", realtime_start="2020-01-01", realtime_end="2020-01-01")
    assert status == 200 and body["realtime_start"] == body["realtime_end"] == "2020-01-01"
    assert {o["realtime_start"] for o in body["observations"]} == {"2020-01-01"}
    assert get(ids["M"], units="pch", realtime_start="2019-01-01", realtime_end="2020-01-01")[0] == 400
    # lin over a real-time period is the usual vintage answer
    assert get(ids["M"], units="lin", realtime_start="2019-01-01", realtime_end="2020-01-01")[0] == 200
