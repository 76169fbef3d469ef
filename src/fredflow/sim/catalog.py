"""Deterministic synthetic FRED catalog: the source of truth for the simulator.

A :class:`SimCatalog` is a pure function of its constructor arguments.  Two
catalogs built with the same arguments -- in the same process or in different
processes, on any machine -- hold identical series ids, metadata, observations
and release/category listings.  Every random draw comes from a numpy
``Generator`` seeded with ``[seed, series_index, stream]`` (plus the day for
what a simulated day changes); Python's ``hash()`` is never used.

Nothing is generated eagerly: metadata, observations and vintages are built
on first use and kept in bounded LRU caches, so constructing a catalog is cheap
even for thousands of series.

The server renders exactly what this module returns: for every observation,
``float(served_value_string) == observations(series_id)["value"]`` bit for bit,
and a served ``"."`` is a null in the table.

**Day advance.**  ``changes=(K1, K2, ...)`` simulates ``len(changes)`` days
after the base day ``today``: :attr:`SimCatalog.today` is the base date plus
that many days.  On day ``t`` (1-based) a seeded choice of ``K_t`` distinct
servable ids changes (``Generator([seed, t, stream])``).  Each change of a
series on day ``t``:

- appends exactly one observation, the next period date after its current last
  one, never missing, with a seeded value (one random-walk step);
- revises its three observations before that new one by a seeded, non-zero
  number of ticks (same number of decimals; a ``"."`` stays ``"."``);
- revises one more observation anywhere in the rest of its history (a seeded
  position, uniform over the older rows; a comprehensive revision reaching
  decades back) by a seeded, non-zero number of ticks (a ``"."`` stays ``"."``);
- with probability 1/4 removes one observation (a seeded position among the
  older rows, never the first: ``observation_start`` does not move), as FRED
  sometimes stops serving a date;
- sets ``last_updated`` to day ``t`` at a seeded time in 07:30-08:30, US
  Central offset; ``observation_end`` follows the new last observation.

Series that never changed keep everything, including their base
``last_updated``.  Each day that changed a series is also one more vintage
date of it (see the end of **Vintages** below).

**New series.**  ``new_series=N`` adds ids ``SIMN0001`` ... ``SIMN{N}``:
``SIMN000j`` does not exist before day ``j``; from day ``j`` on it is servable,
listed by release 1 and by one partition release (the ``(j-1) % n``-th), and
its ``last_updated`` is day ``j`` (so ``series/updates`` lists it then).
It is never among a day's changed series.

**Vintages (ALFRED).**  Built from the base data (day 0), unclipped:

- an observation dated ``d`` is first released on ``v(d) = d + lag``, clamped
  to [1776-07-04 (FRED's earliest real-time date), base ``today``], with lag
  1 day (Daily, Daily 7-Day), 6 days (Weekly), 30 (Monthly), 60 (Quarterly)
  or 90 (Annual); the series' vintage dates are the sorted unique ``v(d)``
  (a business-daily series from the 1960s has more than 10,000);
- at its first vintage and at the next two vintage dates of the series it
  shows seeded pre-revision values (the base value plus a seeded number of
  ticks, often zero; occasionally ``"."``); from the third vintage after its
  release on -- and always at the latest vintage date -- it shows its base
  value, so the latest vintage is what ``observations()`` held at day 0; a
  missing base observation is ``"."`` in every vintage;
- consecutive versions with the same value form one real-time period (FRED:
  one row per maximal run of equal values, ``"."`` equal to ``"."``); a
  period ends the day before the next version starts, the last one on
  9999-12-31.  So an observation has one to four rows;
- a simulated day ``t`` that changed the series adds the vintage date
  ``base today + t``: each value it revised or added starts a period there
  (the previous one ends the day before), a removed observation's period ends
  the day before.  So the latest vintage always equals :meth:`observations`.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

__all__ = [
    "DEFAULT_TODAY",
    "MIN_OBSERVATION_DATE",
    "REALTIME_END_MAX",
    "REALTIME_START_MIN",
    "SeriesData",
    "SimCatalog",
    "VintageData",
]

DEFAULT_TODAY = date(2026, 11, 20)
"""The simulated "today": realtime_start/realtime_end of every response."""

MIN_OBSERVATION_DATE = date(1600, 1, 1)
"""FRED's default ``observation_start``; no simulated observation is older."""

LONG_SERIES_START = date(1690, 1, 1)
"""First observation of the extra-long "Daily, 7-Day" series (> 123,000 rows)."""

_SPEC_STREAM = 0
_VALUE_STREAM = 1
_CHANGE_VALUE_STREAM = 3  # [seed, series_index, stream, day]
_CHANGE_TIME_STREAM = 4  # [seed, series_index, stream, day]
_VINTAGE_STREAM = 5
_RELEASE_STREAM = 2**32 + 1
_CATEGORY_STREAM = 2**32 + 2
_CHANGED_SET_STREAM = 2**32 + 3  # [seed, day, stream]

REALTIME_START_MIN = date(1776, 7, 4)
"""FRED's earliest real-time date: no vintage is older."""
REALTIME_END_MAX = date(9999, 12, 31)
"""``realtime_end`` of a vintage period that is still current."""

_EPOCH = date(1970, 1, 1)
_REALTIME_END_MAX_DAYS = (REALTIME_END_MAX - _EPOCH).days
_PUBLICATION_LAG_DAYS = {"D7": 1, "D": 1, "W": 6, "M": 30, "Q": 60, "A": 90}
_PRE_REVISIONS = 3  # vintages showing a pre-revision value: the first release and the next two
_UNREVISED_SHARE = 0.3  # chance that a pre-revision value equals the next version
_PRE_MISSING_SHARE = 0.02  # chance that a pre-revision value is "."
_REMOVAL_SHARE = 0.25  # chance that a change also removes one older observation

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


@dataclass(frozen=True)
class VintageData:
    """The whole real-time history of one series (unclipped), as served.

    ``vintage_days`` are the series' vintage dates (int32 days since
    1970-01-01, ascending).  One entry per row in ``table`` order (by date,
    then realtime_start): ``date_days``, ``start_days``, ``end_days`` (int32
    days), ``initial`` (True on the row of an observation's first release) and
    ``text`` (the served value string, ``"."`` = missing).  ``table`` has
    columns ``date``, ``realtime_start``, ``realtime_end`` (date32) and
    ``value`` (float64, null = ``"."``) with ``float(text[i]) == value[i]``.
    """

    vintage_days: np.ndarray
    date_days: np.ndarray
    start_days: np.ndarray
    end_days: np.ndarray
    initial: np.ndarray
    table: pa.Table
    text: pa.StringArray


@dataclass(frozen=True)
class _Values:
    """Observation dates, values in integer ticks and the missing mask."""

    dates: np.ndarray  # datetime64[D], ascending
    ticks: np.ndarray  # int64, value * 10**decimals
    missing: np.ndarray  # bool


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
        today: the simulated base date (day 0).
        changes: number of series changed on each simulated day after the
            base day (see the module docstring); :attr:`today`, the date of
            realtime_start/realtime_end, is ``today + len(changes)`` days.

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
        changes: tuple[int, ...] = (),
        new_series: int = 0,
    ) -> None:
        if not 0 <= new_series <= 9999:
            raise ValueError("new_series must be in 0..9999")
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
        changes = tuple(int(k) for k in changes)
        if any(not 0 <= k <= n_series for k in changes):
            raise ValueError("every number of changed series must be in 0..n_series")

        self.n_series = n_series
        self.seed = seed
        self.obs_per_series = obs_per_series
        self.long_series = long_series
        self.withdrawn = withdrawn
        self.base_today = today
        """Day 0: the base data and the vintage history are as of this date."""
        self.changes = changes
        self.day = len(changes)
        """Simulated days since the base day."""
        self.today = today + timedelta(days=self.day)
        """The simulated current date: realtime_start/realtime_end of responses."""
        self.realtime = self.today.isoformat()

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

        # new series that have debuted by now: appended after the base ids (still sorted: "SIMN" > "SIM0")
        self.new_series = new_series
        self._debut_day: dict[str, int] = {f"SIMN{j:04d}": j for j in range(1, min(new_series, self.day) + 1)}
        partition_ids = list(_PARTITION_RELEASE_IDS[:n_releases])
        for sid, j in self._debut_day.items():
            self._index[sid] = n_series + withdrawn + j
            self.series_ids.append(sid)
            self.releases[1].append(sid)
            self.releases[partition_ids[(j - 1) % len(partition_ids)]].append(sid)
        if self._debut_day:
            self.listed_ids = sorted(self.listed_ids + list(self._debut_day))
            self.releases = {g: sorted(ids) for g, ids in self.releases.items()}

        self._changed_on: list[list[str]] = [self._draw_changed(t, k) for t, k in enumerate(changes, 1)]
        self._change_days: dict[str, list[int]] = {}
        for t, changed in enumerate(self._changed_on, 1):
            for sid in changed:
                self._change_days.setdefault(sid, []).append(t)

        self._spec = functools.lru_cache(maxsize=65536)(self._make_spec)
        self._data = functools.lru_cache(maxsize=1024)(self._make_data)
        self._vintages = functools.lru_cache(maxsize=16)(self._make_vintages)
        self._vintage_days = functools.lru_cache(maxsize=1024)(self._make_vintage_days)
        self._base_vintage_days = functools.lru_cache(maxsize=1024)(self._base_vintage_days)

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
        last, last_updated = self._current(spec)
        meta: dict[str, Any] = {
            "id": spec.series_id,
            "realtime_start": self.realtime,
            "realtime_end": self.realtime,
            "title": f"{spec.concept} (Simulated {spec.series_id})",
            "observation_start": str(spec.first),
            "observation_end": str(last),
            "frequency": spec.frequency.name,
            "frequency_short": spec.frequency.short,
            "units": spec.unit.name,
            "units_short": spec.unit.short,
            "seasonal_adjustment": _SEASONAL[spec.seasonal_short],
            "seasonal_adjustment_short": spec.seasonal_short,
            "last_updated": last_updated,
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

    # ------------------------------------------------------ day advance, updates

    def changed_on(self, day: int) -> list[str]:
        """Sorted ids changed on simulated day ``day`` (1 .. :attr:`day`)."""
        if not 1 <= day <= self.day:
            raise ValueError(f"day must be in 1..{self.day}")
        return list(self._changed_on[day - 1])

    def changed_since(self, day: int) -> set[str]:
        """Ids changed on any day after ``day`` (``changed_since(0)``: every change so far)."""
        return {sid for t in range(max(day, 0) + 1, self.day + 1) for sid in self._changed_on[t - 1]}

    def last_updated_at(self, series_id: str) -> datetime:
        """``meta(series_id)["last_updated"]`` as an aware UTC datetime."""
        return _parse_last_updated(self._current(self._spec(series_id))[1])

    @functools.cached_property
    def _updates_order(self) -> list[tuple[datetime, str]]:
        stamps = [(self.last_updated_at(sid), sid) for sid in self.series_ids]
        # last_updated descending, ties by id ascending (ids are unique)
        return sorted(stamps, key=lambda item: (-item[0].timestamp(), item[1]))

    def updated_ids(self, start: datetime | None = None, end: datetime | None = None) -> list[str]:
        """Servable ids as ``fred/series/updates`` lists them: ``last_updated``
        descending (as instants), ties by id ascending; only those with
        ``start <= last_updated < end`` when given (aware datetimes)."""
        return [
            sid
            for stamp, sid in self._updates_order
            if (start is None or stamp >= start) and (end is None or stamp < end)
        ]

    # ---------------------------------------------------------------- vintages

    def vintage_dates(self, series_id: str) -> list[date]:
        """The series' vintage dates, ascending (see the module docstring)."""
        return [_EPOCH + timedelta(days=int(d)) for d in self.vintage_days(series_id)]

    def vintage_days(self, series_id: str) -> np.ndarray:
        """:meth:`vintage_dates` as int32 days since 1970-01-01 (read-only)."""
        if not self.is_servable(series_id):
            raise KeyError(series_id)
        return self._vintage_days(series_id)

    def vintage_rows(self, series_id: str) -> pa.Table:
        """Every real-time period of every observation, unclipped: ``date``,
        ``realtime_start``, ``realtime_end`` (date32; 9999-12-31 = current) and
        ``value`` (float64, null = "."), sorted by date then realtime_start."""
        return self.vintage_data(series_id).table

    def vintage_data(self, series_id: str) -> VintageData:
        """Cached vintage history of a servable series (see :class:`VintageData`)."""
        if not self.is_servable(series_id):
            raise KeyError(series_id)
        return self._vintages(series_id)

    # ----------------------------------------------------------------- private

    def _draw_changed(self, day: int, n_changed: int) -> list[str]:
        rng = np.random.default_rng([self.seed, day, _CHANGED_SET_STREAM])
        positions = rng.choice(self.n_series, size=n_changed, replace=False)
        return sorted(self.series_ids[int(p)] for p in positions)

    def _current(self, spec: _Spec) -> tuple[np.datetime64, str]:
        """Last observation date and ``last_updated`` after the simulated days."""
        days = self._change_days.get(spec.series_id)
        if not days:
            debut = self._debut_day.get(spec.series_id)
            if debut is not None:
                rng = np.random.default_rng([self.seed, spec.index, _CHANGE_TIME_STREAM, 0])
                return spec.last, _stamp(self.base_today + timedelta(days=debut), int(rng.integers(3600)))
            return spec.last, spec.last_updated
        last = _periods_before(spec.frequency, spec.last, -len(days))
        rng = np.random.default_rng([self.seed, spec.index, _CHANGE_TIME_STREAM, days[-1]])
        return last, _stamp(self.base_today + timedelta(days=days[-1]), int(rng.integers(3600)))

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
        today = np.datetime64(self.base_today, "D")
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
        updated_day = min(last.item() + timedelta(days=int(rng.integers(1, 45))), self.base_today)
        if freq.code in ("D7", "D"):
            updated_day = self.base_today
        last_updated = _stamp(updated_day, int(rng.integers(3600)))
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
            last_updated=last_updated,
            popularity=popularity,
            group_popularity=min(100, popularity + int(rng.integers(10))),
            has_notes=bool(rng.random() < 0.9),
        )

    def _base_values(self, spec: _Spec) -> _Values:
        """Day-0 observations (the draws behind every base value)."""
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
        return _Values(dates=dates, ticks=ticks, missing=missing)

    def _apply_change(self, spec: _Spec, values: _Values, day: int) -> _Values:
        """One change on ``day``: revise the last three observations, append one."""
        rng = np.random.default_rng([self.seed, spec.index, _CHANGE_VALUE_STREAM, day])
        ticks = values.ticks.copy()
        step = _step_ticks(spec, ticks[-1:])[0]
        revisions = np.rint(rng.normal(0.0, 0.5 * step, _PRE_REVISIONS)).astype(np.int64)
        revisions[revisions == 0] = 1  # a revision always changes the value
        tail = slice(max(0, len(ticks) - _PRE_REVISIONS), len(ticks))
        revised = revisions[: tail.stop - tail.start]
        ticks[tail] += np.where(values.missing[tail], 0, revised)
        new_tick = ticks[-1] + int(np.rint(rng.normal(0.0, step)))
        new_date = _periods_before(spec.frequency, values.dates[-1], -1)
        # drawn in this order, after the draws above: days simulated before this rule keep their values
        older = tail.start  # rows before the three recent ones
        deep = int(rng.integers(older)) if older > 0 else -1
        deep_step = _step_ticks(spec, ticks[max(deep, 0):max(deep, 0) + 1])[0]
        deep_ticks = int(np.rint(rng.normal(0.0, 2.0 * deep_step))) or 1
        remove = bool(rng.random() < _REMOVAL_SHARE) and older > 1
        removed = int(rng.integers(1, older)) if older > 1 else -1
        if deep >= 0 and not values.missing[deep]:
            ticks[deep] += deep_ticks
        dates, missing = values.dates, values.missing
        if remove and removed != deep:
            keep = np.ones(len(ticks), dtype=bool)
            keep[removed] = False
            dates, ticks, missing = dates[keep], ticks[keep], missing[keep]
        return _Values(
            dates=np.append(dates, new_date),
            ticks=np.append(ticks, new_tick),
            missing=np.append(missing, False),
        )

    def _changed_vintages(self, spec: _Spec, base: _Values, date_days, starts, ends, initial, row_ticks,
                          row_missing):
        """The base vintage rows plus one vintage per simulated day that changed the series: on day
        ``t`` (vintage date ``base today + t``) every value the day revised starts a new period (the
        open one is closed the day before), a removed observation's open period is closed, a new
        observation starts its first period. The latest vintage is then the current data."""
        rows = [list(r) for r in zip(date_days.tolist(), starts.tolist(), ends.tolist(), initial.tolist(),
                                     row_ticks.tolist(), row_missing.tolist())]
        open_row = {r[0]: r for r in rows if r[2] == _REALTIME_END_MAX_DAYS}
        values = base
        for day in self._change_days[spec.series_id]:
            vintage = (self.base_today + timedelta(days=day) - _EPOCH).days
            before = _value_map(values)
            values = self._apply_change(spec, values, day)
            now = _value_map(values)
            for d in before.keys() - now.keys():
                open_row.pop(d)[2] = vintage - 1
            for d, (tick, missing) in now.items():
                old = before.get(d)
                if old is not None and (old == (tick, missing) or (old[1] and missing)):
                    continue
                if old is not None:
                    open_row[d][2] = vintage - 1
                row = [d, vintage, _REALTIME_END_MAX_DAYS, old is None, tick, missing]
                rows.append(row)
                open_row[d] = row
        rows.sort(key=lambda r: (r[0], r[1]))
        columns = list(zip(*rows))
        return (np.array(columns[0], np.int32), np.array(columns[1], np.int32), np.array(columns[2], np.int32),
                np.array(columns[3], bool), np.array(columns[4], np.int64), np.array(columns[5], bool))

    def _make_data(self, series_id: str) -> SeriesData:
        spec = self._spec(series_id)
        values = self._base_values(spec)
        for day in self._change_days.get(series_id, ()):
            values = self._apply_change(spec, values, day)
        scale = 10**spec.unit.decimals
        days = values.dates.astype(np.int64).astype(np.int32)
        date_array = pa.array(days, pa.int32()).cast(pa.date32())
        value_array = pa.array(values.ticks / scale, pa.float64(), mask=values.missing)
        text = pc.if_else(pa.array(values.missing), ".", _format_ticks(values.ticks, spec.unit.decimals))
        table = pa.table({"date": date_array, "value": value_array})
        return SeriesData(days=days, dates=date_array, table=table, text=text)

    def _release_dates(self, spec: _Spec, dates: np.ndarray) -> np.ndarray:
        """First-release vintage of each observation date (datetime64[D])."""
        lag = _PUBLICATION_LAG_DAYS[spec.frequency.code]
        earliest, latest = np.datetime64(REALTIME_START_MIN, "D"), np.datetime64(self.base_today, "D")
        return np.clip(dates + lag, earliest, latest)

    def _base_vintage_days(self, series_id: str) -> np.ndarray:
        spec = self._spec(series_id)
        releases = self._release_dates(spec, _calendar(spec.frequency, spec.first, spec.last))
        return np.unique(releases).astype(np.int64).astype(np.int32)

    def _make_vintage_days(self, series_id: str) -> np.ndarray:
        days = self._base_vintage_days(series_id)
        # a simulated day that changed the series is a vintage date of it (its data changed on that day)
        change_days = [(self.base_today + timedelta(days=t) - _EPOCH).days for t in self._change_days.get(series_id, ())]
        if change_days:
            days = np.concatenate([days, np.array(change_days, np.int32)])
        days.flags.writeable = False
        return days

    def _make_vintages(self, series_id: str) -> VintageData:
        spec = self._spec(series_id)
        base = self._base_values(spec)
        vintage_days = self._base_vintage_days(series_id)
        n = len(base.dates)
        release_days = self._release_dates(spec, base.dates).astype(np.int64)
        first = np.searchsorted(vintage_days, release_days)  # vintage index of the first release
        latest = len(vintage_days) - 1

        # Versions 0..2 are pre-revision, version 3 is the base value.
        rng = np.random.default_rng([self.seed, spec.index, _VINTAGE_STREAM])
        noise = rng.normal(0.0, 1.0, (n, _PRE_REVISIONS))
        unrevised = rng.random((n, _PRE_REVISIONS)) < _UNREVISED_SHARE
        pre_missing = rng.random((n, _PRE_REVISIONS)) < _PRE_MISSING_SHARE
        deltas = np.rint(noise * _step_ticks(spec, base.ticks)[:, None]).astype(np.int64)
        deltas[unrevised] = 0
        ticks = np.concatenate([base.ticks[:, None] + deltas, base.ticks[:, None]], axis=1)
        missing = np.concatenate([base.missing[:, None] | pre_missing, base.missing[:, None]], axis=1)

        index = first[:, None] + np.arange(_PRE_REVISIONS + 1)  # vintage index of each version
        exists = index <= latest
        at_latest = index == latest  # the latest vintage always shows the base value
        ticks = np.where(at_latest, base.ticks[:, None], ticks)
        missing = np.where(at_latest, base.missing[:, None], missing)
        same = np.zeros_like(exists)
        same[:, 1:] = (missing[:, 1:] & missing[:, :-1]) | (
            ~missing[:, 1:] & ~missing[:, :-1] & (ticks[:, 1:] == ticks[:, :-1])
        )
        kept = np.flatnonzero((exists & ~same).ravel())  # row-major: by date, then version

        rows = kept // (_PRE_REVISIONS + 1)
        starts = vintage_days[np.minimum(index, latest).ravel()[kept]].astype(np.int32)
        ends = np.full(len(kept), _REALTIME_END_MAX_DAYS, dtype=np.int32)
        same_row = rows[1:] == rows[:-1]
        ends[:-1] = np.where(same_row, starts[1:] - 1, _REALTIME_END_MAX_DAYS)
        initial = np.ones(len(kept), dtype=bool)
        initial[1:] = ~same_row
        date_days = base.dates.astype(np.int64).astype(np.int32)[rows]
        row_ticks = ticks.ravel()[kept]
        row_missing = missing.ravel()[kept]
        if self._change_days.get(series_id):
            date_days, starts, ends, initial, row_ticks, row_missing = self._changed_vintages(
                spec, base, date_days, starts, ends, initial, row_ticks, row_missing)
            vintage_days = self._vintage_days(series_id)

        def date32(days: np.ndarray) -> pa.Array:
            return pa.array(days, pa.int32()).cast(pa.date32())

        scale = 10**spec.unit.decimals
        table = pa.table(
            {
                "date": date32(date_days),
                "realtime_start": date32(starts),
                "realtime_end": date32(ends),
                "value": pa.array(row_ticks / scale, pa.float64(), mask=row_missing),
            }
        )
        text = pc.if_else(pa.array(row_missing), ".", _format_ticks(row_ticks, spec.unit.decimals))
        return VintageData(
            vintage_days=vintage_days,
            date_days=date_days,
            start_days=starts,
            end_days=ends,
            initial=initial,
            table=table,
            text=text,
        )


def _value_map(values: _Values) -> dict[int, tuple[int, bool]]:
    days = values.dates.astype(np.int64).tolist()
    return dict(zip(days, zip(values.ticks.tolist(), values.missing.tolist())))


def _step_ticks(spec: _Spec, ticks: np.ndarray) -> np.ndarray:
    """Standard deviation of one random-walk step, in ticks, at each value (>= 1)."""
    unit = spec.unit
    vol = unit.annual_vol / np.sqrt(spec.frequency.periods_per_year)
    scale = 10**unit.decimals
    step = np.full(len(ticks), vol * scale) if unit.additive else np.abs(ticks) * vol
    return np.maximum(step, 1.0)


def _stamp(day: date, second_of_hour: int) -> str:
    """FRED's ``last_updated`` on ``day`` at 07:30 + ``second_of_hour`` s, US Central."""
    seconds = 7 * 3600 + 30 * 60 + second_of_hour
    at = time(seconds // 3600, seconds // 60 % 60, seconds % 60)
    return f"{day.isoformat()} {at.isoformat()}{_central_offset(day)}"


def _parse_last_updated(text: str) -> datetime:
    """``"2026-11-20 07:41:09-06"`` -> aware UTC datetime."""
    local = datetime.strptime(text[:19], "%Y-%m-%d %H:%M:%S")
    offset = timezone(timedelta(hours=int(text[19:])))
    return local.replace(tzinfo=offset).astimezone(timezone.utc)


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
