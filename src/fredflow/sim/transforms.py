"""FRED's ``units``, ``frequency`` and ``aggregation_method`` for the simulator, in plain numpy.

This is the reference the warehouse (:mod:`fredflow.warehouse`, DuckDB SQL) is
tested against, so it is written independently of it: numpy arrays of days
since 1970-01-01 and float64 values with NaN for FRED's ``"."``.

Semantics (FRED's API documentation for ``fred/series/observations`` and its
"Units Formulas" table; the choices FRED does not document are marked *choice*):

- **Frequency aggregation first, then units.**  ``frequency`` must not be higher
  than the series' native frequency (FRED answers 400 ``Value of frequency is
  not one of: ...`` listing the allowed codes).  The native frequency itself
  means no aggregation (``m`` on a monthly series), except the weekly and
  biweekly *ending-day* variants, which re-bucket a weekly (biweekly) series
  into weeks ending on that day.
- **Periods and labels.**  ``m``, ``q``, ``sa``, ``a``: calendar periods, labelled
  by their first day (``2020-04-01``).  Weekly (``w`` = ``wef`` ending Friday,
  ``weth``, ``wew``, ``wetu``, ``wem``, ``wesu``, ``wesa``): the 7 days ending on
  that weekday, labelled by that end day.  Biweekly (``bw`` = ``bwew`` ending
  Wednesday, ``bwem`` ending Monday): the 14 days ending on that weekday,
  labelled by the end day; *choice* (FRED does not document the phase): periods
  end on 1970-01-07 + 14k (Wednesday) or 1970-01-05 + 14k (Monday).  ``d``: the
  native daily data.
- **Aggregation over the available values** of the period (FRED averages the
  values it has): ``avg`` their mean, ``sum`` their sum, ``eop`` the last
  available one (*choice*: a missing last day does not make the period missing).
  A period whose values are all missing is missing.  Every period holding at
  least one observation is served, including an incomplete last one (*choice*).
- **Units** on the (aggregated) series, by position (``t-1`` is the previous
  observation, ``t-n`` the n-th previous), ``n`` = observations per year of the
  resulting frequency: daily 260, weekly 52, biweekly 26, monthly 12, quarterly
  4, semiannual 2, annual 1 (FRED's table).  A missing input gives a missing
  output, and so does a result that is not a finite number (``log`` of a value
  <= 0, a ratio to 0, ...).  The first ``1`` (or ``n``) observations of a
  change are missing.
- **Window after the transform**: everything is computed on the whole history,
  then ``observation_start``/``observation_end`` keep the output dates in range
  (*choice*).
- A period's ``avg``/``sum`` is rounded to 10 decimals (*choice*: removes the
  binary noise of a mean, e.g. 1e-17 for 0, that a following ``pch`` or ``log``
  would blow up).  Values are otherwise rendered in full precision (shortest
  round-trip decimal, Python's ``repr``: an exponent for |x| >= 1e16 or
  < 1e-4); FRED rounds transformed values.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

__all__ = [
    "AGGREGATE_DECIMALS",
    "AGGREGATIONS",
    "FREQUENCIES",
    "UNITS",
    "Transform",
    "TransformError",
    "aggregate",
    "apply_units",
    "observations_body",
    "parse_transform",
    "period_labels",
    "requested",
    "transform",
]

UNITS = ("lin", "chg", "ch1", "pch", "pc1", "pca", "cch", "cca", "log")
FREQUENCIES = ("d", "w", "bw", "m", "q", "sa", "a", "wef", "weth", "wew", "wetu", "wem", "wesu", "wesa",
               "bwew", "bwem")
AGGREGATIONS = ("avg", "sum", "eop")
PARAMETERS = ("units", "frequency", "aggregation_method")
AGGREGATE_DECIMALS = 10

# Ordering of frequencies: 0 daily ... 6 annual.
_LEVEL = {"d": 0, "w": 1, "bw": 2, "m": 3, "q": 4, "sa": 5, "a": 6,
          "wef": 1, "weth": 1, "wew": 1, "wetu": 1, "wem": 1, "wesu": 1, "wesa": 1, "bwew": 2, "bwem": 2}
_NATIVE_LEVEL = {"D": 0, "W": 1, "BW": 2, "M": 3, "Q": 4, "SA": 5, "A": 6}
_OBS_PER_YEAR = (260, 52, 26, 12, 4, 2, 1)
_WEEK_END = {"w": 4, "wef": 4, "weth": 3, "wew": 2, "wetu": 1, "wem": 0, "wesu": 6, "wesa": 5}  # Monday = 0
_BIWEEK_END_DAY = {"bw": 6, "bwew": 6, "bwem": 4}  # a period end: 1970-01-07 (Wed), 1970-01-05 (Mon)
_VARIANTS = frozenset(("wef", "weth", "wew", "wetu", "wem", "wesu", "wesa", "bwew", "bwem"))

# FRED's own body for a bad ``units`` (it lists "cap", which the simulator does not implement).
MSG_UNITS = "Bad Request.  Value of units is not one of: cap, cca, cch, ch1, chg, lin, log, pc1, pca, pch."
MSG_AGGREGATION = "Bad Request.  Value of aggregation_method is not one of: 'avg', 'sum', 'eop'."


def msg_frequency(native_short: str) -> str:
    """FRED's 400 for a frequency that is unknown or higher than the native one, e.g.
    ``Bad Request.  Value of frequency is not one of: 'q', 'sa', 'a'.`` for a quarterly series."""
    allowed = [code for code in FREQUENCIES if _LEVEL[code] >= _NATIVE_LEVEL[native_short]]
    return "Bad Request.  Value of frequency is not one of: " + ", ".join(f"'{c}'" for c in allowed) + "."


class TransformError(ValueError):
    """A 400 answer: ``message`` is FRED's error message."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class Transform:
    units: str = "lin"
    frequency: str | None = None
    aggregation: str = "avg"

    @property
    def identity(self) -> bool:
        return self.units == "lin" and self.frequency is None


def requested(query: Mapping[str, str]) -> bool:
    """True when the request names any of ``units``, ``frequency``, ``aggregation_method``."""
    return any(name in query for name in PARAMETERS)


def parse_transform(query: Mapping[str, str], native_short: str) -> Transform:
    """Validate the three parameters against a series of native frequency ``native_short`` (D, W, M...)."""
    units = query.get("units", "lin")
    if units not in UNITS:
        if units == "cap":
            raise TransformError("Bad Request.  The simulator does not implement units cap.")
        raise TransformError(MSG_UNITS)
    frequency = query.get("frequency") or None
    if frequency is not None:
        if frequency not in _LEVEL or _LEVEL[frequency] < _NATIVE_LEVEL[native_short]:
            raise TransformError(msg_frequency(native_short))
        if _LEVEL[frequency] == _NATIVE_LEVEL[native_short] and frequency not in _VARIANTS:
            frequency = None  # the native frequency: FRED does not aggregate
    aggregation = query.get("aggregation_method", "avg")
    if aggregation not in AGGREGATIONS:
        raise TransformError(MSG_AGGREGATION)
    return Transform(units=units, frequency=frequency, aggregation=aggregation)


def period_labels(days: np.ndarray, frequency: str) -> np.ndarray:
    """The label (int days since 1970-01-01) of the period of ``frequency`` holding each day."""
    days = np.asarray(days, dtype=np.int64)
    if frequency == "d":
        return days
    if frequency in _WEEK_END:
        weekday = (days + 3) % 7  # 1970-01-01 was a Thursday (3)
        return days + (_WEEK_END[frequency] - weekday) % 7
    if frequency in _BIWEEK_END_DAY:
        return days + (_BIWEEK_END_DAY[frequency] - days) % 14
    months = days.astype("datetime64[D]").astype("datetime64[M]").astype(np.int64)
    step = {"m": 1, "q": 3, "sa": 6, "a": 12}[frequency]
    first = (months - months % step).astype("datetime64[M]")
    return first.astype("datetime64[D]").astype(np.int64)


def aggregate(days: np.ndarray, values: np.ndarray, frequency: str, method: str) -> tuple[np.ndarray, np.ndarray]:
    """Aggregate ascending ``days``/``values`` (NaN = missing) into periods of ``frequency``."""
    labels = period_labels(days, frequency)
    if len(labels) == 0:
        return labels, np.asarray(values, dtype=np.float64)
    starts = np.concatenate(([0], np.flatnonzero(np.diff(labels)) + 1))
    available = ~np.isnan(values)
    counts = np.add.reduceat(available.astype(np.int64), starts)
    if method == "eop":
        last = np.maximum.reduceat(np.where(available, np.arange(len(values)), -1), starts)
        out = np.where(last >= 0, values[np.maximum(last, 0)], np.nan)
    else:
        sums = np.add.reduceat(np.where(available, values, 0.0), starts)
        out = sums / np.maximum(counts, 1) if method == "avg" else sums
        # rounded to 10 decimals: a mean or sum of values with a few decimals carries binary noise
        # (1e-17 instead of 0) that a following pch/log would blow up
        out = np.where(counts > 0, np.round(out, AGGREGATE_DECIMALS), np.nan)
    return labels[starts], out


def _shift(values: np.ndarray, k: int) -> np.ndarray:
    """``values`` moved ``k`` positions later (x(t-k)); NaN where there is no t-k."""
    out = np.full(len(values), np.nan)
    if k < len(values):
        out[k:] = values[: len(values) - k]
    return out


def apply_units(values: np.ndarray, units: str, per_year: int) -> np.ndarray:
    """FRED's unit formulas (see the module docstring); NaN = missing."""
    x = np.asarray(values, dtype=np.float64)
    with np.errstate(all="ignore"):
        if units == "lin":
            out = x.copy()
        elif units == "chg":
            out = x - _shift(x, 1)
        elif units == "ch1":
            out = x - _shift(x, per_year)
        elif units == "pch":
            out = (x / _shift(x, 1) - 1.0) * 100.0
        elif units == "pc1":
            out = (x / _shift(x, per_year) - 1.0) * 100.0
        elif units == "pca":
            out = ((x / _shift(x, 1)) ** per_year - 1.0) * 100.0
        elif units == "cch":
            out = (np.log(x) - np.log(_shift(x, 1))) * 100.0
        elif units == "cca":
            out = (np.log(x) - np.log(_shift(x, 1))) * 100.0 * per_year
        elif units == "log":
            out = np.log(x)
        else:
            raise ValueError(f"unknown units {units!r}")
    out[~np.isfinite(out)] = np.nan
    return out


def transform(days: np.ndarray, values: np.ndarray, native_short: str, spec: Transform) -> tuple[np.ndarray, np.ndarray]:
    """Aggregate (if ``spec.frequency``) then apply ``spec.units``: ``(days, values)`` of the result."""
    level = _NATIVE_LEVEL[native_short]
    if spec.frequency is not None:
        days, values = aggregate(days, values, spec.frequency, spec.aggregation)
        level = _LEVEL[spec.frequency]
    return np.asarray(days, dtype=np.int64), apply_units(values, spec.units, _OBS_PER_YEAR[level])


def _text(value: float) -> str:
    """Shortest round-trip decimal ("46851", "87.47666666666667"); "." for missing."""
    if value != value:
        return "."
    text = repr(value)
    return text[:-2] if text.endswith(".0") else text


def observations_body(sim, query: Mapping[str, str], file_type: str, series_id: str, start: str, end: str,
                      limit: int, offset: int, sort_order: str) -> bytes | None:
    """The body of a ``series/observations`` request naming a transform parameter, or ``None`` when it
    asks for the plain levels (``units=lin``, no aggregation: the caller serves it as usual).

    ``sim`` is the :class:`~fredflow.sim.server.FredSimulator`.  With ``realtime_start``/``realtime_end``
    only a one-day real-time period (as of that day) is implemented.
    """
    from fredflow.sim.server import FredError, _days, _observations_body, _observations_header, _render_rows

    try:
        spec = parse_transform(query, sim.catalog.meta(series_id)["frequency_short"])
    except TransformError as exc:
        raise FredError(400, exc.message) from None
    if spec.identity:
        return None
    vintage = "realtime_start" in query or "realtime_end" in query
    if vintage:
        realtime_start, realtime_end = sim._realtime_period(query)
        if realtime_start != realtime_end:
            raise FredError(400, "Bad Request.  The simulator implements units and frequency with real-time "
                                 "periods of one day only (realtime_start = realtime_end).")
        if query.get("output_type", "1") != "1":
            raise FredError(400, "Bad Request.  The simulator implements units and frequency with output_type 1 only.")
    else:
        realtime_start = realtime_end = sim.realtime

    def render() -> bytes:
        if vintage:
            data, on = sim.catalog.vintage_data(series_id), _days(realtime_start)
            rows = np.flatnonzero((data.start_days <= on) & (data.end_days >= on))
            days = data.date_days[rows].astype(np.int64)
            values = data.table["value"].to_numpy(zero_copy_only=False)[rows]
        else:
            data = sim.catalog.series_data(series_id)
            days = data.days.astype(np.int64)
            values = data.table["value"].to_numpy(zero_copy_only=False)
        out_days, out_values = transform(days, np.asarray(values, dtype=np.float64),
                                         sim.catalog.meta(series_id)["frequency_short"], spec)
        keep = np.flatnonzero((out_days >= _days(start)) & (out_days <= _days(end)))
        count = len(keep)
        keep = keep[offset: offset + limit] if sort_order == "asc" else keep[::-1][offset: offset + limit]
        dates = (out_days[keep]).astype("datetime64[D]").astype(str)
        header = _observations_header(realtime_start, realtime_end, start, end, 1, sort_order, count, offset, limit,
                                      file_type)
        units = spec.units.encode()
        header = (header.replace(b'"units":"lin"', b'"units":"' + units + b'"', 1) if file_type == "json"
                  else header.replace(b'units="lin"', b'units="' + units + b'"', 1))
        rows = _render_rows(file_type, realtime_start, realtime_end, pa.array(dates.tolist(), pa.string()),
                            pa.array([_text(v) for v in out_values[keep].tolist()], pa.string()))
        return _observations_body(file_type, header, rows)

    key = ("transform", series_id, start, end, realtime_start if vintage else None, spec, limit, offset, sort_order,
           file_type)
    return sim.cache.get_or_render(key, render)
