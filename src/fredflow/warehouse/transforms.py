"""FRED's ``units`` and ``frequency``/``aggregation_method`` as DuckDB SQL over a long relation.

The semantics are FRED's (see ``docs/README-reading.md``); the simulator implements the same
independently in numpy (:mod:`fredflow.sim.transforms`) and the tests compare the two.

- frequency first (only to the native frequency or lower; the native one means no aggregation,
  except the weekly/biweekly *ending-day* variants, which re-bucket), then units;
- a period's value is the mean / sum / last of its *available* values; all missing -> missing;
  a mean or sum is rounded to 10 decimals (binary noise such as 1e-17 for 0 would blow up a
  following pch or log);
- units by position, ``n`` = observations per year of the resulting frequency (FRED's table:
  daily 260, weekly 52, biweekly 26, monthly 12, quarterly 4, semiannual 2, annual 1); a missing
  input or a non-finite result (log of x <= 0, ratio to 0) is missing;
- computed on the whole stored history; the ``start``/``end`` window is applied to the result.
"""

from __future__ import annotations

from dataclasses import dataclass

from fredflow.errors import UsageError

__all__ = ["AGGREGATIONS", "FREQUENCIES", "NATIVE_LEVEL", "UNITS", "Plan", "plan_for", "transform_sql"]

UNITS = ("lin", "chg", "ch1", "pch", "pc1", "pca", "cch", "cca", "log")
FREQUENCIES = ("d", "w", "bw", "m", "q", "sa", "a", "wef", "weth", "wew", "wetu", "wem", "wesu", "wesa",
               "bwew", "bwem")
AGGREGATIONS = ("avg", "sum", "eop")
FREQUENCY_LEVEL = {"d": 0, "w": 1, "bw": 2, "m": 3, "q": 4, "sa": 5, "a": 6, "wef": 1, "weth": 1, "wew": 1,
                   "wetu": 1, "wem": 1, "wesu": 1, "wesa": 1, "bwew": 2, "bwem": 2}
NATIVE_LEVEL = {"D": 0, "W": 1, "BW": 2, "M": 3, "Q": 4, "SA": 5, "A": 6}
NATIVE_NAME = {0: "daily", 1: "weekly", 2: "biweekly", 3: "monthly", 4: "quarterly", 5: "semiannual", 6: "annual"}
OBS_PER_YEAR = {0: 260, 1: 52, 2: 26, 3: 12, 4: 4, 5: 2, 6: 1}
ENDING_DAY_VARIANTS = frozenset(("wef", "weth", "wew", "wetu", "wem", "wesu", "wesa", "bwew", "bwem"))

_UNIT_SQL = {
    "lin": "value",
    "chg": "value - l1",
    "ch1": "value - ln_",
    "pch": "(value / l1 - 1) * 100",
    "pc1": "(value / ln_ - 1) * 100",
    "pca": "(pow(value / l1, n) - 1) * 100",
    "cch": "CASE WHEN value > 0 AND l1 > 0 THEN ln(value / l1) * 100 END",
    "cca": "CASE WHEN value > 0 AND l1 > 0 THEN ln(value / l1) * n * 100 END",
    "log": "CASE WHEN value > 0 THEN ln(value) END",
}
_AGG_SQL = {
    "avg": "round(avg(value), 10)",
    "sum": "round(sum(value), 10)",
    "eop": "arg_max(value, obs_date) FILTER (WHERE value IS NOT NULL)",
}


@dataclass(frozen=True)
class Plan:
    """What to compute for one series: aggregate into ``frequency`` periods or not, and its ``n``."""

    series_id: str
    aggregate: bool
    per_year: int


def check_options(freq: str | None, agg: str, units: str) -> tuple[str | None, str, str]:
    """Normalised (lower-case) options; a bad value is a :class:`UsageError` listing the valid ones."""
    freq = None if freq in (None, "") else str(freq).lower()
    agg, units = str(agg).lower(), str(units).lower()
    if units not in UNITS:
        raise UsageError(f"units {units!r} is not one of: {', '.join(UNITS)}")
    if freq is not None and freq not in FREQUENCY_LEVEL:
        raise UsageError(f"freq {freq!r} is not one of: {', '.join(FREQUENCIES)}")
    if agg not in AGGREGATIONS:
        raise UsageError(f"agg {agg!r} is not one of: {', '.join(AGGREGATIONS)}")
    return freq, agg, units


def plan_for(native_levels: dict[str, int], freq: str | None) -> list[Plan]:
    """One :class:`Plan` per series (in the given order); a ``freq`` higher than a series' native
    frequency is one :class:`UsageError` naming every such series (FRED refuses it too)."""
    if freq is None:
        return [Plan(sid, False, OBS_PER_YEAR[level]) for sid, level in native_levels.items()]
    target = FREQUENCY_LEVEL[freq]
    too_high = [f"{sid} ({NATIVE_NAME[level]})" for sid, level in native_levels.items() if level > target]
    if too_high:
        raise UsageError(f"freq {freq!r} ({NATIVE_NAME[target]}) is higher than the native frequency of "
                         f"{', '.join(too_high[:10])}{', ...' if len(too_high) > 10 else ''}: only the native frequency "
                         "or lower can be asked")
    return [Plan(sid, level < target or freq in ENDING_DAY_VARIANTS, OBS_PER_YEAR[target])
            for sid, level in native_levels.items()]


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def transform_sql(source: str, plans: list[Plan], freq: str | None, agg: str, units: str) -> str:
    """SQL over ``source`` (a relation with ``series_id`` (upper-case), ``date``, ``value``) giving
    ``series_id, date, value, pos`` after aggregation and units, for the planned series only.

    Needs the ``fredflow_period`` macro (:mod:`fredflow.warehouse.sql`) in the connection.
    """
    values = ", ".join(f"({_quote(p.series_id)}, {i}, {'TRUE' if p.aggregate else 'FALSE'}, {p.per_year})"
                       for i, p in enumerate(plans))
    label = f"fredflow_period(date, {_quote(freq)})" if freq is not None else "date"
    lags = sorted({p.per_year for p in plans})
    if units in ("ch1", "pc1"):
        lag_n = "CASE n " + " ".join(f"WHEN {k} THEN lag(value, {k}) OVER w" for k in lags) + " END"
    else:
        lag_n = "NULL"
    return f"""
    WITH plan(series_id, pos, agg, n) AS (VALUES {values}),
    src AS (
        SELECT plan.series_id, s.date, s.value, plan.agg
        FROM ({source}) s JOIN plan ON s.series_id = plan.series_id
    ),
    periods AS (
        SELECT series_id, CASE WHEN agg THEN {label} ELSE date END AS date, date AS obs_date, value FROM src
    ),
    aggregated AS (
        SELECT series_id, date, {_AGG_SQL[agg]} AS value FROM periods GROUP BY series_id, date
    ),
    lagged AS (
        SELECT a.series_id, a.date, a.value, plan.n, plan.pos,
               lag(a.value, 1) OVER w AS l1, {lag_n} AS ln_
        FROM aggregated a JOIN plan ON a.series_id = plan.series_id
        WINDOW w AS (PARTITION BY a.series_id ORDER BY a.date)
    )
    SELECT series_id, date, CASE WHEN isfinite(v) THEN v END AS value, pos
    FROM (SELECT series_id, date, pos, CAST({_UNIT_SQL[units]} AS DOUBLE) AS v FROM lagged)
    """
