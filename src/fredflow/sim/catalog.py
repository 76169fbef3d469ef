"""Deterministic synthetic FRED catalog: the source of truth for the simulator.

A :class:`SimCatalog` is a pure function of its constructor arguments.  Two
catalogs built with the same arguments -- in the same process or in different
processes, on any machine -- hold identical series ids, metadata, observations
and release/category listings.  Every random draw comes from a numpy
``Generator`` seeded with ``[seed, series_index, stream]``; Python's ``hash()``
is never used.

Nothing is generated eagerly: metadata and observations are built on first use
and kept in bounded LRU caches, so constructing a catalog is cheap even for
thousands of series.

The server renders exactly what this module returns: for every observation,
``float(served_value_string) == observations(series_id)["value"]`` bit for bit,
and a served ``"."`` is a null in the table.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import date, time, timedelta
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

__all__ = ["DEFAULT_TODAY", "MIN_OBSERVATION_DATE", "SeriesData", "SimCatalog"]

DEFAULT_TODAY = date(2026, 11, 20)
"""The simulated "today": realtime_start/realtime_end of every response."""

MIN_OBSERVATION_DATE = date(1600, 1, 1)
"""FRED's default ``observation_start``; no simulated observation is older."""

LONG_SERIES_START = date(1690, 1, 1)
"""First observation of the extra-long "Daily, 7-Day" series (> 123,000 rows)."""

_SPEC_STREAM = 0
_VALUE_STREAM = 1
_RELEASE_STREAM = 2**32 + 1
_CATEGORY_STREAM = 2**32 + 2

_PARTITION_RELEASE_IDS = (10, 13, 18, 21, 46, 50, 53, 86)
_FIRST_CATEGORY_ID = 100
_MAX_CATEGORIES = 20


@dataclass(frozen=True)
class _Frequency:
    code: str
    name: str  # FRED "frequency"
    short: str  # FRED "frequency_short"
    periods_per_year: float
    start_years: tuple[int, int]  # default-mode first year, drawn in [lo, hi)


_D7 = _Frequency("D7", "Daily, 7-Day", "D", 365.25, (1690, 1691))
_D = _Frequency("D", "Daily", "D", 261.0, (1962, 2012))
_W = _Frequency("W", "Weekly, Ending Friday", "W", 52.18, (1960, 2012))
_M = _Frequency("M", "Monthly", "M", 12.0, (1947, 2000))
_Q = _Frequency("Q", "Quarterly", "Q", 4.0, (1947, 1990))
_A = _Frequency("A", "Annual", "A", 1.0, (1929, 1985))

_DRAWN_FREQUENCIES = (_D, _W, _M, _Q, _A)
_FREQUENCY_WEIGHTS = (0.20, 0.15, 0.40, 0.15, 0.10)
_DENSER = {_A: _Q, _Q: _M, _M: _W, _W: _D, _D: _D7}


@dataclass(frozen=True)
class _Unit:
    name: str  # FRED "units"
    short: str  # FRED "units_short"
    decimals: int  # every served value has exactly this many decimals
    level: tuple[float, float]  # starting level drawn uniformly in [lo, hi)
    annual_vol: float  # additive: points per sqrt(year); else log-vol
    additive: bool
    concepts: tuple[str, ...]


_UNITS = (
    _Unit("Percent", "%", 2, (0.5, 9.0), 0.8, True,
          ("Market Yield on U.S. Treasury Securities", "Unemployment Rate",
           "Federal Funds Effective Rate", "30-Year Fixed Rate Mortgage Average")),
    _Unit("Index 1982-1984=100", "Index 1982-1984=100", 3, (20.0, 300.0), 0.03, False,
          ("Consumer Price Index for All Urban Consumers", "Producer Price Index by Commodity")),
    _Unit("Billions of Dollars", "Bil. of $", 1, (50.0, 25000.0), 0.05, False,
          ("Gross Domestic Product", "Personal Consumption Expenditures", "M2 Money Stock")),
    _Unit("Thousands of Persons", "Thous. of Persons", 0, (500.0, 160000.0), 0.02, False,
          ("All Employees, Total Nonfarm", "Civilian Labor Force Level", "Initial Claims")),
    _Unit("Dollars per Barrel", "$ per Barrel", 2, (10.0, 120.0), 0.30, False,
          ("Crude Oil Prices: West Texas Intermediate", "Crude Oil Prices: Brent - Europe")),
    _Unit("U.S. Dollars to One Euro", "U.S. $ to 1 Euro", 4, (0.8, 1.6), 0.10, False,
          ("U.S. Dollars to Euro Spot Exchange Rate",)),
)

_SEASONAL = {
    "SA": "Seasonally Adjusted",
    "NSA": "Not Seasonally Adjusted",
    "SAAR": "Seasonally Adjusted Annual Rate",
}


@dataclass(frozen=True)
class _Spec:
    """Everything about a series except its observation values."""

    series_id: str
    index: int
    frequency: _Frequency
    first: np.datetime64  # first observation date (never missing)
    last: np.datetime64  # last observation date (never missing)
    unit: _Unit
    concept: str
    seasonal_short: str
    last_updated: str
    popularity: int
    group_popularity: int
    has_notes: bool


@dataclass(frozen=True)
class SeriesData:
    """Observations of one series, as served.

    ``days`` is ``dates`` as int32 days since 1970-01-01 (ascending, for range
    searches); ``table`` has columns ``date`` (date32) and ``value`` (float64,
    null where FRED sends ``"."``); ``text`` is the served ``value`` string of
    each row, with ``float(text[i]) == table["value"][i]`` exactly.
    """

    days: np.ndarray
    dates: pa.Date32Array
    table: pa.Table
    text: pa.StringArray


class SimCatalog:
    """Deterministic catalog of synthetic FRED series.

    Args:
        n_series: number of servable series, ids ``SIM000001`` ... (sorted).
        seed: master seed; any change yields a different, equally valid catalog.
        obs_per_series: if set, every non-long series has exactly this many
            observations, ending near ``today`` (a frequency too sparse to fit
            them after 1600-01-01 is replaced by the next denser one).
        long_series: number of extra-long "Daily, 7-Day" series (> 123,000
            observations from 1690) among the ``n_series``; default 2 if
            ``n_series >= 50`` else 0.
        withdrawn: number of extra ids ``SIMW0001`` ... that are listed by
            releases and categories but answer 404 on every series endpoint.
        today: the simulated current date (realtime_start/realtime_end).

    Guarantees: the first and last observation of a series are never missing;
    ``meta()["observation_start"/"observation_end"]`` are their dates; values
    keep a fixed number of decimals per series; about 1-3 % of observations
    (plus New Year, Independence Day and Christmas for business-daily series)
    are missing.
    """

    def __init__(
        self,
        n_series: int = 500,
        seed: int = 0,
        obs_per_series: int | None = None,
        long_series: int | None = None,
        withdrawn: int = 0,
        today: date = DEFAULT_TODAY,
    ) -> None:
        if not 0 <= n_series <= 999_999:
            raise ValueError("n_series must be in 0..999999")
        if obs_per_series is not None and obs_per_series < 1:
            raise ValueError("obs_per_series must be >= 1")
        if long_series is None:
            long_series = 2 if n_series >= 50 else 0
        if not 0 <= long_series <= n_series:
            raise ValueError("long_series must be in 0..n_series")
        if not 0 <= withdrawn <= 9999:
            raise ValueError("withdrawn must be in 0..9999")
        if seed < 0:
            raise ValueError("seed must be >= 0")

        self.n_series = n_series
        self.seed = seed
        self.obs_per_series = obs_per_series
        self.long_series = long_series
        self.withdrawn = withdrawn
        self.today = today
        self.realtime = today.isoformat()

        self.series_ids: list[str] = [f"SIM{i:06d}" for i in range(1, n_series + 1)]
        """Servable series ids, sorted."""
        self.withdrawn_ids: list[str] = [f"SIMW{j:04d}" for j in range(1, withdrawn + 1)]
        """Listed-but-404 ids, sorted."""
        self.listed_ids: list[str] = sorted(self.series_ids + self.withdrawn_ids)
        """Every id a listing can return (servable and withdrawn), sorted."""

        # Long series are spread evenly so that short prefixes of series_ids
        # (handy in tests) contain none of them.
        long_positions = {(2 * k + 1) * n_series // (2 * long_series) for k in range(long_series)}
        self.long_series_ids: list[str] = [self.series_ids[p] for p in sorted(long_positions)]
        """The extra-long series (a subset of ``series_ids``)."""

        self._index = {sid: i + 1 for i, sid in enumerate(self.series_ids)}
        self._index.update({sid: n_series + j + 1 for j, sid in enumerate(self.withdrawn_ids)})
        self._long = frozenset(self.long_series_ids)
        self._withdrawn = frozenset(self.withdrawn_ids)

        n_releases = min(len(_PARTITION_RELEASE_IDS), max(2, len(self.listed_ids) // 100))
        self.releases: dict[int, list[str]] = {
            1: list(self.listed_ids),
            **self._partition(_RELEASE_STREAM, list(_PARTITION_RELEASE_IDS[:n_releases])),
        }
        """release_id -> sorted ids.  Release 1 lists every id (withdrawn
        included); the others partition ``listed_ids``."""
        n_categories = min(_MAX_CATEGORIES, max(2, len(self.listed_ids) // 50))
        self.categories: dict[int, list[str]] = self._partition(
            _CATEGORY_STREAM, list(range(_FIRST_CATEGORY_ID, _FIRST_CATEGORY_ID + n_categories))
        )
        """category_id -> sorted ids; the categories partition ``listed_ids``."""

        self._spec = functools.lru_cache(maxsize=65536)(self._make_spec)
        self._data = functools.lru_cache(maxsize=1024)(self._make_data)

    # ------------------------------------------------------------------ public

    def is_withdrawn(self, series_id: str) -> bool:
        """True for a listed id that every series endpoint answers with 404."""
        return series_id in self._withdrawn

    def is_servable(self, series_id: str) -> bool:
        """True for an id whose metadata and observations are served."""
        return series_id in self._index and series_id not in self._withdrawn

    def meta(self, series_id: str) -> dict[str, Any]:
        """The series dict as in ``fred/series`` -> ``seriess[0]``.

        Key order is FRED's; ``notes`` is omitted for about 10 % of series, as
        FRED omits it for series without notes.  Raises ``KeyError`` for an id
        the catalog does not list.
        """
        spec = self._spec(series_id)
        meta: dict[str, Any] = {
            "id": spec.series_id,
            "realtime_start": self.realtime,
            "realtime_end": self.realtime,
            "title": f"{spec.concept} (Simulated {spec.series_id})",
            "observation_start": str(spec.first),
            "observation_end": str(spec.last),
            "frequency": spec.frequency.name,
            "frequency_short": spec.frequency.short,
            "units": spec.unit.name,
            "units_short": spec.unit.short,
            "seasonal_adjustment": _SEASONAL[spec.seasonal_short],
            "seasonal_adjustment_short": spec.seasonal_short,
            "last_updated": spec.last_updated,
            "popularity": spec.popularity,
        }
        if spec.has_notes:
            meta["notes"] = (
                f"Simulated {spec.frequency.name.lower()} series generated by fredflow.sim "
                f"(seed {self.seed}, series {spec.index}).\n\n"
                'Values follow a seeded random walk; a missing observation is reported as "." '
                "as on FRED.  API documentation: https://fred.stlouisfed.org/docs/api/fred/"
            )
        return meta

    def listing_meta(self, series_id: str) -> dict[str, Any]:
        """The series dict as in ``release/series`` and ``category/series``:
        :meth:`meta` with ``group_popularity`` right after ``popularity``."""
        meta = self.meta(series_id)
        items = list(meta.items())
        pos = list(meta).index("popularity") + 1
        items.insert(pos, ("group_popularity", self._spec(series_id).group_popularity))
        return dict(items)

    def observations(self, series_id: str) -> pa.Table:
        """All observations: ``date`` (date32), ``value`` (float64, null = ".").

        Raises ``KeyError`` for unknown and withdrawn ids.
        """
        return self.series_data(series_id).table

    def served_values(self, series_id: str) -> pa.StringArray:
        """The ``value`` strings the server sends, row for row ("." = missing)."""
        return self.series_data(series_id).text

    def series_data(self, series_id: str) -> SeriesData:
        """Cached observations of a servable series (see :class:`SeriesData`)."""
        if not self.is_servable(series_id):
            raise KeyError(series_id)
        return self._data(series_id)

    # ----------------------------------------------------------------- private

    def _partition(self, stream: int, group_ids: list[int]) -> dict[int, list[str]]:
        """Deal ``listed_ids`` round-robin, in a seeded order, into the groups."""
        rng = np.random.default_rng([self.seed, stream])
        order = rng.permutation(len(self.listed_ids))
        groups: dict[int, list[str]] = {g: [] for g in group_ids}
        for k, pos in enumerate(order.tolist()):
            groups[group_ids[k % len(group_ids)]].append(self.listed_ids[pos])
        return {g: sorted(ids) for g, ids in groups.items()}

    def _make_spec(self, series_id: str) -> _Spec:
        index = self._index[series_id]  # KeyError for unknown ids
        rng = np.random.default_rng([self.seed, index, _SPEC_STREAM])
        today = np.datetime64(self.today, "D")
        lag = int(rng.integers(1, 3))
        if series_id in self._long:
            freq = _D7
            first, last = np.datetime64(LONG_SERIES_START, "D"), today - lag
        else:
            freq = _DRAWN_FREQUENCIES[int(rng.choice(len(_DRAWN_FREQUENCIES), p=_FREQUENCY_WEIGHTS))]
            start_year = int(rng.integers(*freq.start_years))
            if self.obs_per_series is None:
                first = _first_on_or_after(freq, np.datetime64(f"{start_year}-01-01", "D"))
                last = _last_period(freq, today, lag)
            else:
                while True:
                    last = _last_period(freq, today, lag)
                    first = _periods_before(freq, last, self.obs_per_series - 1)
                    if first >= np.datetime64(MIN_OBSERVATION_DATE, "D"):
                        break
                    if freq not in _DENSER:
                        raise ValueError(f"obs_per_series={self.obs_per_series} does not fit after 1600")
                    freq = _DENSER[freq]

        # Long series are additive "Percent" walks: a 337-year geometric walk
        # could leave the exactly-representable range of float64 ticks.
        unit = _UNITS[0] if freq is _D7 else _UNITS[int(rng.integers(len(_UNITS)))]
        concept = unit.concepts[int(rng.integers(len(unit.concepts)))]
        if freq.code in ("D7", "D", "W", "A"):
            seasonal_short = "NSA"
        else:
            seasonal_short = ("SA", "NSA", "SAAR")[int(rng.integers(3 if freq is _Q else 2))]
        updated_day = min(last.item() + timedelta(days=int(rng.integers(1, 45))), self.today)
        if freq.code in ("D7", "D"):
            updated_day = self.today
        seconds = 7 * 3600 + 30 * 60 + int(rng.integers(3600))
        updated_at = time(seconds // 3600, seconds // 60 % 60, seconds % 60)
        popularity = int(100 * rng.beta(0.8, 3.0))
        return _Spec(
            series_id=series_id,
            index=index,
            frequency=freq,
            first=first,
            last=last,
            unit=unit,
            concept=concept,
            seasonal_short=seasonal_short,
            last_updated=f"{updated_day.isoformat()} {updated_at.isoformat()}{_central_offset(updated_day)}",
            popularity=popularity,
            group_popularity=min(100, popularity + int(rng.integers(10))),
            has_notes=bool(rng.random() < 0.9),
        )

    def _make_data(self, series_id: str) -> SeriesData:
        spec = self._spec(series_id)
        rng = np.random.default_rng([self.seed, spec.index, _VALUE_STREAM])
        dates = _calendar(spec.frequency, spec.first, spec.last)
        n = len(dates)
        unit = spec.unit
        scale = 10**unit.decimals
        level = rng.uniform(*unit.level)
        steps = rng.normal(0.0, unit.annual_vol / np.sqrt(spec.frequency.periods_per_year), n)
        steps[0] = 0.0
        walk = np.cumsum(steps)
        path = level + walk if unit.additive else level * np.exp(walk)
        ticks = np.rint(path * scale).astype(np.int64)

        missing = rng.random(n) < rng.uniform(0.01, 0.03)
        if spec.frequency is _D:
            missing |= _is_fixed_holiday(dates)
        missing[0] = missing[-1] = False

        days = dates.astype(np.int64).astype(np.int32)
        date_array = pa.array(days, pa.int32()).cast(pa.date32())
        values = pa.array(ticks / scale, pa.float64(), mask=missing)
        text = pc.if_else(pa.array(missing), ".", _format_ticks(ticks, unit.decimals))
        table = pa.table({"date": date_array, "value": values})
        return SeriesData(days=days, dates=date_array, table=table, text=text)


# ---------------------------------------------------------------- calendars


def _month(day: np.datetime64) -> np.datetime64:
    return day.astype("datetime64[M]")


def _first_on_or_after(freq: _Frequency, jan1: np.datetime64) -> np.datetime64:
    """First period date of ``freq`` on or after ``jan1`` (a January 1st)."""
    if freq is _D:
        return np.busday_offset(jan1, 0, roll="forward")
    if freq is _W:
        return np.busday_offset(jan1, 0, roll="forward", weekmask="Fri")
    return jan1  # January 1st starts a day, month, quarter and year


def _last_period(freq: _Frequency, today: np.datetime64, lag: int) -> np.datetime64:
    """Date of the latest published period, ``lag`` (1 or 2) periods back."""
    if freq is _D7:
        return today - lag
    if freq is _D:
        return np.busday_offset(today, -lag, roll="backward")
    if freq is _W:
        return np.busday_offset(today - 1 - 7 * (lag - 1), 0, roll="backward", weekmask="Fri")
    if freq is _M:
        return (_month(today) - lag).astype("datetime64[D]")
    if freq is _Q:
        months = int(_month(today).astype(np.int64))
        return (np.datetime64(months - months % 3, "M") - 3 * lag).astype("datetime64[D]")
    return (today.astype("datetime64[Y]") - lag).astype("datetime64[D]")


def _periods_before(freq: _Frequency, last: np.datetime64, k: int) -> np.datetime64:
    """The period date ``k`` periods before ``last`` (itself a period date)."""
    if freq is _D7:
        return last - k
    if freq is _D:
        return np.busday_offset(last, -k)
    if freq is _W:
        return last - 7 * k
    if freq is _M:
        return (_month(last) - k).astype("datetime64[D]")
    if freq is _Q:
        return (_month(last) - 3 * k).astype("datetime64[D]")
    return (last.astype("datetime64[Y]") - k).astype("datetime64[D]")


def _calendar(freq: _Frequency, first: np.datetime64, last: np.datetime64) -> np.ndarray:
    """All period dates from ``first`` to ``last`` inclusive (datetime64[D])."""
    if freq is _D7:
        return np.arange(first, last + 1)
    if freq is _D:
        days = np.arange(first, last + 1)
        return days[np.is_busday(days)]
    if freq is _W:
        return np.arange(first, last + 1, 7)
    if freq is _A:
        years = np.arange(first.astype("datetime64[Y]"), last.astype("datetime64[Y]") + 1)
        return years.astype("datetime64[D]")
    step = 3 if freq is _Q else 1
    return np.arange(_month(first), _month(last) + 1, step).astype("datetime64[D]")


def _is_fixed_holiday(dates: np.ndarray) -> np.ndarray:
    """True on January 1, July 4 and December 25."""
    months = dates.astype("datetime64[M]")
    month = months.astype(np.int64) % 12 + 1
    day = (dates - months.astype("datetime64[D]")).astype(np.int64) + 1
    return ((month == 1) & (day == 1)) | ((month == 7) & (day == 4)) | ((month == 12) & (day == 25))


def _nth_sunday(year: int, month: int, n: int) -> date:
    first = date(year, month, 1)
    return first + timedelta(days=(6 - first.weekday()) % 7 + 7 * (n - 1))


def _central_offset(day: date) -> str:
    """UTC offset of US Central time on ``day`` as FRED prints it: -05 or -06."""
    in_dst = _nth_sunday(day.year, 3, 2) <= day < _nth_sunday(day.year, 11, 1)
    return "-05" if in_dst else "-06"


def _format_ticks(ticks: np.ndarray, decimals: int) -> pa.StringArray:
    """Render integers ``ticks`` as decimal strings of ``ticks / 10**decimals``
    with exactly ``decimals`` digits after the point (e.g. 403, 2 -> "4.03")."""
    if decimals == 0:
        return pc.cast(pa.array(ticks), pa.string())
    scale = 10**decimals
    magnitude = np.abs(ticks)
    sign = pa.array(np.where(ticks < 0, "-", ""))
    whole = pc.cast(pa.array(magnitude // scale), pa.string())
    fraction = pc.utf8_lpad(pc.cast(pa.array(magnitude % scale), pa.string()), decimals, "0")
    return pc.binary_join_element_wise(sign, whole, ".", fraction, "")
