"""aiohttp server imitating the FRED API over a :class:`SimCatalog`.

Endpoints (GET, under ``/fred/``): ``series``, ``series/observations``,
``series/vintagedates``, ``series/updates``, ``release/series``,
``category/series``.  Bodies, key order, value formats,
error bodies, status codes and the ``Content-Type`` header are FRED's (see
``/work/shared/fred-samples``); like FRED's PHP encoder, ``/`` is escaped as
``\\/`` inside JSON strings.

Per request on ``/fred/``, in this order:

1. rate limit -- one strict token bucket (``rate`` tokens/s, capacity
   ``burst``, starts full) for the whole server; a request finding no token
   gets FRED's 429 body, no ``Retry-After``, and consumes nothing;
2. ``latency`` seconds of sleep;
3. with probability ``fault_rate`` (seeded, so the sequence of faults is
   deterministic in request-arrival order) one of ``fault_kinds``;
4. parameter validation and the response, rendered once and kept in an LRU
   cache of bodies (bounded by ``cache_mb``).

``series/observations`` with ``realtime_start`` and/or ``realtime_end``
serves the catalog's vintage rows (ALFRED): every real-time period that
intersects the requested one, clipped to it, sorted by date then
realtime_start; more than ``max_vintage_dates`` vintage dates in the requested
period is FRED's 400.  ``output_type=4`` (initial release only) is supported
there.  ``series/updates`` lists servable series by ``last_updated``
descending; every simulated series counts as national, so
``filter_value=regional`` lists none.  Its ``start_time``/``end_time``
(``YYYYMMDDHhmm``) are US Central times, both or neither, end minute included.

Test hooks, not rate limited, not counted: ``GET /_sim/health``,
``GET /_sim/stats``, ``POST /_sim/reset``, ``POST /_sim/advance?days=N&changed=K``
(simulate N more days with K changed series each: see
:class:`~fredflow.sim.catalog.SimCatalog`; clears the body cache and answers
``{"today": ..., "day": ..., "changed": [sorted ids changed in these days]}``).
"""

from __future__ import annotations

import asyncio
import random
import re
import signal
import socket
import struct
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import date, datetime, timedelta, timezone
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
from aiohttp import web

from fredflow.sim.catalog import DEFAULT_TODAY, SimCatalog, _central_offset
from fredflow.sim import transforms

__all__ = [
    "DEMO_API_KEY",
    "FAULT_KINDS",
    "LISTING_MAX_LIMIT",
    "MAX_VINTAGE_DATES",
    "OBSERVATIONS_MAX_LIMIT",
    "VINTAGE_DATES_MAX_LIMIT",
    "SIMULATOR_KEY",
    "UNREGISTERED_KEY",
    "FredError",
    "FredSimulator",
    "SimConfig",
    "build_app",
    "run",
    "serve",
]

DEMO_API_KEY = "abcdefghijklmnopqrstuvwxyz012345"
"""A well-formed, registered key."""
UNREGISTERED_KEY = "0" * 32
"""The one well-formed key the simulator treats as not registered (by default)."""
FAULT_KINDS = ("500", "502", "504", "hang", "truncate", "reset")

OBSERVATIONS_MAX_LIMIT = 100_000
"""FRED's maximum (and default) ``limit`` for series/observations."""
LISTING_MAX_LIMIT = 1000
"""FRED's maximum (and default) ``limit`` for release/series, category/series and series/updates."""
VINTAGE_DATES_MAX_LIMIT = 10_000
"""FRED's maximum (and default) ``limit`` for series/vintagedates."""
MAX_VINTAGE_DATES = 2000
"""FRED's maximum number of vintage dates in the real-time period of one observations request."""
REALTIME_START_MIN = "1776-07-04"
REALTIME_END_MAX = "9999-12-31"

_KEY_HELP = "  Read https://fred.stlouisfed.org/docs/api/api_key.html for more information."
MSG_KEY_MISSING = "Bad Request.  Variable api_key has not been set." + _KEY_HELP
MSG_KEY_MALFORMED = (
    "Bad Request.  The value for variable api_key is not a 32 character alpha-numeric lower-case string."
    + _KEY_HELP
)
MSG_KEY_UNREGISTERED = "Bad Request.  The value for variable api_key is not registered." + _KEY_HELP
MSG_FILE_TYPE = "Bad Request.  Variable file_type is not one of the values: 'json'."
MSG_SERIES_UNKNOWN = "Bad Request.  The series does not exist."
MSG_SERIES_WITHDRAWN = "Not Found.  The series does not exist."
MSG_RELEASE_UNKNOWN = "Bad Request.  The release does not exist."
MSG_CATEGORY_UNKNOWN = "Bad Request.  The category does not exist."
MSG_RATE_LIMIT = "Too Many Requests.  Exceeded Rate Limit"
MSG_INTERNAL = "Internal Server Error"
MSG_SORT_ORDER = "Bad Request.  Variable sort_order is not one of the values: 'asc', 'desc'."


def msg_not_set(name: str) -> str:
    """E.g. "Bad Request.  Variable series_id has not been set." (FRED's)."""
    return f"Bad Request.  Variable {name} has not been set."


def msg_limit(max_limit: int) -> str:
    """E.g. "Bad Request.  Variable limit is not between 1 and 100000." (FRED's)."""
    return f"Bad Request.  Variable limit is not between 1 and {max_limit}."


def msg_not_integer(name: str) -> str:
    return f"Bad Request.  Variable {name} is not an integer."


def msg_bad_date(name: str) -> str:
    return f"Bad Request.  Variable {name} is not a valid date in YYYY-MM-DD format."


MSG_OFFSET = "Bad Request.  Variable offset is not 0 or a positive integer."
MSG_DATE_ORDER = "Bad Request.  Variable observation_start can not be after observation_end."
MSG_REALTIME_ORDER = "Bad Request.  Variable realtime_start can not be after realtime_end."
MSG_FILTER_VALUE = "Bad Request.  Variable filter_value is not one of the values: 'macro', 'regional', 'all'."
MSG_OUTPUT_TYPE = "Bad Request.  Variable output_type is not one of the values: '1', '2', '3', '4'."


def msg_too_many_vintages(n: int, realtime_start: str, realtime_end: str, maximum: int) -> str:
    """FRED's answer when an observations request spans more than ``maximum`` vintage dates."""
    return (
        f"Bad Request.  There are {n} vintage dates in the specified real-time period: "
        f"{realtime_start} to {realtime_end}.  This exceeds the maximum number of vintage dates "
        f"allowed for this file type ({maximum})."
    )


def msg_bad_time(name: str) -> str:
    return f"Bad Request.  Variable {name} is not a valid time in YYYYMMDDHhmm format."

_JSON_HEADERS = {"Content-Type": "application/json; charset=UTF-8"}
_HTML_HEADERS = {"Content-Type": "text/html"}
_PROXY_PAGES = {
    502: b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    b"<center><h1>502 Bad Gateway</h1></center>\r\n</body>\r\n</html>\r\n",
    504: b"<html>\r\n<head><title>504 Gateway Time-out</title></head>\r\n<body>\r\n"
    b"<center><h1>504 Gateway Time-out</h1></center>\r\n</body>\r\n</html>\r\n",
}
_KEY_RE = re.compile(r"[a-z0-9]{32}")
_DATE_RE = re.compile(r"\d{4}-\d{2}-\d{2}")
_TIME_RE = re.compile(r"\d{12}")
_EPOCH = date(1970, 1, 1)


@dataclass(frozen=True)
class SimConfig:
    """Everything that defines a simulator instance.

    The first six fields and ``changes`` are :class:`SimCatalog`'s arguments
    (``POST /_sim/advance`` appends to ``changes``).  ``rate`` is in
    requests/s (``None`` or 0: unlimited) with bucket capacity ``burst``;
    ``latency`` seconds are added to every admitted request; ``fault_rate``
    (0..1) of admitted requests fail as one of ``fault_kinds``; a ``"hang"``
    sleeps ``hang_seconds`` before answering normally.  ``max_limit`` is the
    default and maximum ``limit`` of series/observations.  Every
    32-character lower-case alphanumeric api_key is registered except those in
    ``unregistered_keys``.  ``cache_mb`` bounds the cache of rendered bodies.
    ``max_vintage_dates`` is the most vintage dates one real-time
    series/observations request may span (FRED: 2000).
    """

    n_series: int = 500
    seed: int = 0
    obs_per_series: int | None = None
    long_series: int | None = None
    withdrawn: int = 0
    today: date = DEFAULT_TODAY
    rate: float | None = None
    burst: int = 2
    latency: float = 0.0
    fault_rate: float = 0.0
    fault_kinds: tuple[str, ...] = FAULT_KINDS
    hang_seconds: float = 30.0
    max_limit: int = OBSERVATIONS_MAX_LIMIT
    unregistered_keys: tuple[str, ...] = (UNREGISTERED_KEY,)
    cache_mb: float = 256.0
    changes: tuple[int, ...] = ()
    max_vintage_dates: int = MAX_VINTAGE_DATES

    def __post_init__(self) -> None:
        object.__setattr__(self, "fault_kinds", tuple(self.fault_kinds))
        object.__setattr__(self, "unregistered_keys", tuple(self.unregistered_keys))
        object.__setattr__(self, "changes", tuple(int(k) for k in self.changes))
        if any(not 0 <= k <= self.n_series for k in self.changes):
            raise ValueError("every number of changed series must be in 0..n_series")
        if self.max_vintage_dates < 1:
            raise ValueError("max_vintage_dates must be >= 1")
        unknown = set(self.fault_kinds) - set(FAULT_KINDS)
        if unknown or not self.fault_kinds:
            raise ValueError(f"fault_kinds must be a non-empty subset of {FAULT_KINDS}")
        if self.rate is not None and self.rate < 0:
            raise ValueError("rate must be >= 0")
        if self.burst < 1:
            raise ValueError("burst must be >= 1")
        if self.latency < 0 or self.hang_seconds < 0:
            raise ValueError("latency and hang_seconds must be >= 0")
        if not 0.0 <= self.fault_rate <= 1.0:
            raise ValueError("fault_rate must be in [0, 1]")
        if not 1 <= self.max_limit <= OBSERVATIONS_MAX_LIMIT:
            raise ValueError(f"max_limit must be in 1..{OBSERVATIONS_MAX_LIMIT}")

    def catalog(self) -> SimCatalog:
        """The catalog this configuration serves."""
        return SimCatalog(
            n_series=self.n_series,
            seed=self.seed,
            obs_per_series=self.obs_per_series,
            long_series=self.long_series,
            withdrawn=self.withdrawn,
            today=self.today,
            changes=self.changes,
        )

    def describe(self) -> str:
        """One-line summary, e.g. "500 series, rate 2/s burst 2"."""
        parts = [f"{self.n_series} series"]
        parts.append(f"rate {self.rate:g}/s burst {self.burst}" if self.rate else "rate unlimited")
        if self.latency:
            parts.append(f"latency {self.latency:g}s")
        if self.fault_rate:
            parts.append(f"faults {self.fault_rate:g} of {','.join(self.fault_kinds)}")
        return ", ".join(parts)


class FredError(Exception):
    """A FRED error response: ``{"error_code": status, "error_message": message}``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def fred_json(obj: Any) -> bytes:
    """Encode like FRED (PHP ``json_encode``): compact, ``/`` escaped as ``\\/``."""
    return orjson.dumps(obj).replace(b"/", b"\\/")


def error_body(status: int, message: str) -> bytes:
    return fred_json({"error_code": status, "error_message": message})


class TokenBucket:
    """Strict token bucket: capacity ``burst``, refilled at ``rate`` tokens/s.

    Starts full.  Over any interval of ``t`` seconds at most
    ``burst + rate * t`` acquisitions succeed.
    """

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._rate = rate
        self._burst = float(burst)
        self._clock = clock
        self._tokens = float(burst)
        self._last = clock()

    def try_acquire(self) -> bool:
        """Take one token if available; a failed attempt consumes nothing."""
        now = self._clock()
        self._tokens = min(self._burst, self._tokens + (now - self._last) * self._rate)
        self._last = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False


class BodyCache:
    """LRU cache of rendered response bodies, bounded by total size in bytes."""

    def __init__(self, max_bytes: int) -> None:
        self._max_bytes = max_bytes
        self._bodies: OrderedDict[tuple[Any, ...], bytes] = OrderedDict()
        self.size = 0
        self.hits = 0
        self.misses = 0

    def get_or_render(self, key: tuple[Any, ...], render: Callable[[], bytes]) -> bytes:
        body = self._bodies.get(key)
        if body is not None:
            self.hits += 1
            self._bodies.move_to_end(key)
            return body
        self.misses += 1
        body = render()
        if len(body) <= self._max_bytes:
            self._bodies[key] = body
            self.size += len(body)
            while self.size > self._max_bytes:
                _, evicted = self._bodies.popitem(last=False)
                self.size -= len(evicted)
        return body

    def clear(self) -> None:
        """Drop every body (the counters stay)."""
        self._bodies.clear()
        self.size = 0

    def stats(self) -> dict[str, int]:
        return {"entries": len(self._bodies), "bytes": self.size, "hits": self.hits, "misses": self.misses}


class SimStats:
    """Counters behind ``/_sim/stats``; covers ``/fred/`` requests only."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.started_at = time.time()
        self._t0 = time.monotonic()
        self.requests = 0
        self.by_status: Counter[str] = Counter()
        self.faults: Counter[str] = Counter()
        self.admitted_per_second: list[int] = []

    def admit(self) -> None:
        """Count a request that passed the rate limit in its whole second."""
        second = int(time.monotonic() - self._t0)
        per_second = self.admitted_per_second
        if second >= len(per_second):
            per_second.extend([0] * (second + 1 - len(per_second)))
        per_second[second] += 1

    def to_json(self) -> dict[str, Any]:
        return {
            "started_at": self.started_at,
            "uptime": time.monotonic() - self._t0,
            "requests": self.requests,
            "by_status": dict(self.by_status),
            "throttled": self.by_status.get("429", 0),
            "admitted": sum(self.admitted_per_second),
            "admitted_per_second": self.admitted_per_second,
            "faults": dict(self.faults),
        }


class FredSimulator:
    """Request handling state: catalog, rate limiter, fault RNG, cache, stats.

    :meth:`answer` is the pure FRED part (no rate limit, latency or faults),
    usable in-process; :meth:`handle_fred` is the aiohttp handler around it.
    """

    def __init__(self, config: SimConfig) -> None:
        self._use(config)
        self.bucket = TokenBucket(config.rate, config.burst) if config.rate else None
        self.cache = BodyCache(int(config.cache_mb * 1024 * 1024))
        self.stats = SimStats()
        self._fault_rng = random.Random(config.seed)
        self._unregistered = frozenset(config.unregistered_keys)
        self._endpoints: dict[str, Callable[[Mapping[str, str]], bytes]] = {
            "series": self._series,
            "series/observations": self._observations,
            "series/vintagedates": self._vintagedates,
            "series/updates": self._updates,
            "release/series": lambda q: self._listing(q, "release", self.catalog.releases),
            "category/series": lambda q: self._listing(q, "category", self.catalog.categories),
        }

    def _use(self, config: SimConfig) -> None:
        """Serve ``config``'s catalog from now on."""
        self.config = config
        self.catalog = config.catalog()
        self.realtime = self.catalog.realtime
        self._row_prefix = f'{{"realtime_start":"{self.realtime}","realtime_end":"{self.realtime}","date":"'

    def advance(self, days: int = 1, changed: int = 10) -> list[str]:
        """Simulate ``days`` more days with ``changed`` changed series each;
        returns the sorted ids changed in these days."""
        if days < 0 or not 0 <= changed <= self.config.n_series:
            raise ValueError(f"days must be >= 0 and changed in 0..{self.config.n_series}")
        first_day = self.catalog.day + 1
        self._use(replace(self.config, changes=self.config.changes + (changed,) * days))
        self.cache.clear()
        return sorted(set().union(*(self.catalog.changed_on(t) for t in range(first_day, self.catalog.day + 1))))

    # -------------------------------------------------------------- HTTP layer

    async def handle_fred(self, request: web.Request) -> web.StreamResponse:
        self.stats.requests += 1
        if self.bucket is not None and not self.bucket.try_acquire():
            return self._respond(429, error_body(429, MSG_RATE_LIMIT))
        self.stats.admit()
        if self.config.latency:
            await asyncio.sleep(self.config.latency)

        fault = self._draw_fault()
        if fault is not None:
            self.stats.faults[fault] += 1
        if fault == "500":
            return self._respond(500, error_body(500, MSG_INTERNAL))
        if fault in ("502", "504"):
            status = int(fault)
            return self._respond(status, _PROXY_PAGES[status], _HTML_HEADERS)
        if fault == "reset":
            _reset_connection(request)
            return web.Response()  # never sent: the connection is gone
        if fault == "hang":
            await asyncio.sleep(self.config.hang_seconds)

        status, body = self.answer(request.match_info["endpoint"], request.query)
        if fault == "truncate":
            body = body[: len(body) // 2]
        return self._respond(status, body)

    def answer(self, endpoint: str, query: Mapping[str, str]) -> tuple[int, bytes]:
        """Status and body FRED would send for ``GET /fred/<endpoint>?<query>``."""
        handler = self._endpoints.get(endpoint)
        if handler is None:
            return 404, error_body(404, f"Not Found.  The simulator does not implement fred/{endpoint}.")
        try:
            self._check_common(query)
            return 200, handler(query)
        except FredError as exc:
            return exc.status, error_body(exc.status, exc.message)

    def _respond(self, status: int, body: bytes, headers: Mapping[str, str] = _JSON_HEADERS) -> web.Response:
        self.stats.by_status[str(status)] += 1
        return web.Response(status=status, body=body, headers=headers)

    def _draw_fault(self) -> str | None:
        rate = self.config.fault_rate
        if rate and self._fault_rng.random() < rate:
            return self._fault_rng.choice(self.config.fault_kinds)
        return None

    async def handle_health(self, request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    async def handle_stats(self, request: web.Request) -> web.Response:
        data = self.stats.to_json()
        data["cache"] = self.cache.stats()
        return web.Response(body=orjson.dumps(data), content_type="application/json")

    async def handle_reset(self, request: web.Request) -> web.Response:
        self.stats.reset()
        return web.json_response({"ok": True})

    async def handle_advance(self, request: web.Request) -> web.Response:
        try:
            days = int(request.query.get("days", "1"))
            changed = int(request.query.get("changed", "10"))
            changed_ids = self.advance(days, changed)
        except ValueError as exc:
            return web.json_response({"error": str(exc)}, status=400)
        return web.json_response({"today": self.realtime, "day": self.catalog.day, "changed": changed_ids})

    # --------------------------------------------------------------- endpoints

    def _check_common(self, query: Mapping[str, str]) -> None:
        key = query.get("api_key")
        if not key:
            raise FredError(400, MSG_KEY_MISSING)
        if not _KEY_RE.fullmatch(key):
            raise FredError(400, MSG_KEY_MALFORMED)
        if key in self._unregistered:
            raise FredError(400, MSG_KEY_UNREGISTERED)
        if query.get("file_type") != "json":
            raise FredError(400, MSG_FILE_TYPE)

    def _series_id(self, query: Mapping[str, str]) -> str:
        series_id = query.get("series_id")
        if not series_id:
            raise FredError(400, msg_not_set("series_id"))
        if self.catalog.is_withdrawn(series_id):
            raise FredError(404, MSG_SERIES_WITHDRAWN)
        if not self.catalog.is_servable(series_id):
            raise FredError(400, MSG_SERIES_UNKNOWN)
        return series_id

    def _series(self, query: Mapping[str, str]) -> bytes:
        series_id = self._series_id(query)
        return self.cache.get_or_render(
            ("series", series_id),
            lambda: fred_json(
                {
                    "realtime_start": self.realtime,
                    "realtime_end": self.realtime,
                    "seriess": [self.catalog.meta(series_id)],
                }
            ),
        )

    def _observations(self, query: Mapping[str, str]) -> bytes:
        series_id = self._series_id(query)
        start = _date_param(query, "observation_start", "1600-01-01")
        end = _date_param(query, "observation_end", "9999-12-31")
        if start > end:
            raise FredError(400, MSG_DATE_ORDER)
        limit, offset = _paging(query, self.config.max_limit)
        sort_order = query.get("sort_order", "asc")
        if sort_order not in ("asc", "desc"):
            raise FredError(400, MSG_SORT_ORDER)
        if transforms.requested(query):  # units, frequency, aggregation_method: sim/transforms.py
            body = transforms.observations_body(self, query, series_id, start, end, limit, offset, sort_order)
            if body is not None:
                return body
        if "realtime_start" in query or "realtime_end" in query:
            return self._vintage_observations(query, series_id, start, end, limit, offset, sort_order)
        key = ("obs", series_id, start, end, limit, offset, sort_order)
        return self.cache.get_or_render(
            key, lambda: self._render_observations(series_id, start, end, limit, offset, sort_order)
        )

    def _render_observations(
        self, series_id: str, start: str, end: str, limit: int, offset: int, sort_order: str
    ) -> bytes:
        data = self.catalog.series_data(series_id)
        first, stop = (int(i) for i in np.searchsorted(data.days, [_days(start), _days(end) + 1]))
        count = stop - first
        page = max(0, min(limit, count - offset))
        if sort_order == "asc":
            dates = data.dates.slice(first + offset, page)
            values = data.text.slice(first + offset, page)
        else:
            order = pa.array(np.arange(stop - 1 - offset, stop - 1 - offset - page, -1, dtype=np.int64))
            dates, values = data.dates.take(order), data.text.take(order)
        header = _observations_header(self.realtime, self.realtime, start, end, 1, sort_order, count, offset, limit)
        return header[:-1] + b',"observations":[' + self._render_rows(dates, values) + b"]}"

    def _render_rows(self, dates: pa.Array, values: pa.Array) -> bytes:
        """Comma-joined observation objects, built column-wise in Arrow."""
        if len(dates) == 0:
            return b""
        rows = pc.binary_join_element_wise(
            self._row_prefix, pc.cast(dates, pa.string()), '","value":"', values, '"}', ""
        )
        one_list = pa.ListArray.from_arrays(pa.array([0, len(rows)], pa.int32()), rows)
        return pc.binary_join(one_list, ",")[0].as_buffer().to_pybytes()

    def _realtime_period(self, query: Mapping[str, str]) -> tuple[str, str]:
        realtime_start = _date_param(query, "realtime_start", REALTIME_START_MIN)
        realtime_end = _date_param(query, "realtime_end", REALTIME_END_MAX)
        if realtime_start > realtime_end:
            raise FredError(400, MSG_REALTIME_ORDER)
        return realtime_start, realtime_end

    def _vintage_observations(
        self, query: Mapping[str, str], series_id: str, start: str, end: str, limit: int, offset: int,
        sort_order: str,
    ) -> bytes:
        realtime_start, realtime_end = self._realtime_period(query)
        output_type = query.get("output_type", "1")
        if output_type not in ("1", "2", "3", "4"):
            raise FredError(400, MSG_OUTPUT_TYPE)
        if output_type in ("2", "3"):
            raise FredError(400, f"Bad Request.  The simulator does not implement output_type {output_type}.")
        if output_type == "1":
            vintage_days = self.catalog.vintage_days(series_id)
            first, stop = np.searchsorted(vintage_days, [_days(realtime_start), _days(realtime_end) + 1])
            if stop - first > self.config.max_vintage_dates:
                raise FredError(400, msg_too_many_vintages(
                    int(stop - first), realtime_start, realtime_end, self.config.max_vintage_dates))
        key = ("vintages", series_id, start, end, realtime_start, realtime_end, output_type, limit, offset,
               sort_order)
        return self.cache.get_or_render(
            key,
            lambda: self._render_vintages(
                series_id, start, end, realtime_start, realtime_end, int(output_type), limit, offset, sort_order
            ),
        )

    def _render_vintages(
        self, series_id: str, start: str, end: str, realtime_start: str, realtime_end: str, output_type: int,
        limit: int, offset: int, sort_order: str,
    ) -> bytes:
        data = self.catalog.vintage_data(series_id)
        rs, re_ = _days(realtime_start), _days(realtime_end)
        selected = (
            (data.date_days >= _days(start)) & (data.date_days <= _days(end))
            & (data.start_days <= re_) & (data.end_days >= rs)
        )
        if output_type == 4:  # the initial release of observations first released in the period
            selected &= data.initial & (data.start_days >= rs)
        rows = np.flatnonzero(selected)
        count = len(rows)
        rows = rows[offset : offset + limit] if sort_order == "asc" else rows[::-1][offset : offset + limit]
        take = pa.array(rows, pa.int64())
        header = _observations_header(realtime_start, realtime_end, start, end, output_type, sort_order,
                                      count, offset, limit)
        if len(rows) == 0:
            return header[:-1] + b',"observations":[]}'
        starts = _date_strings(np.maximum(data.start_days[rows], rs))
        ends = _date_strings(np.minimum(data.end_days[rows], re_))
        dates = _date_strings(data.date_days[rows])
        rendered = pc.binary_join_element_wise(
            '{"realtime_start":"', starts, '","realtime_end":"', ends, '","date":"', dates,
            '","value":"', data.text.take(take), '"}', "",
        )
        one_list = pa.ListArray.from_arrays(pa.array([0, len(rendered)], pa.int32()), rendered)
        body = pc.binary_join(one_list, ",")[0].as_buffer().to_pybytes()
        return header[:-1] + b',"observations":[' + body + b"]}"

    def _vintagedates(self, query: Mapping[str, str]) -> bytes:
        series_id = self._series_id(query)
        realtime_start, realtime_end = self._realtime_period(query)
        limit, offset = _paging(query, VINTAGE_DATES_MAX_LIMIT)
        sort_order = query.get("sort_order", "asc")
        if sort_order not in ("asc", "desc"):
            raise FredError(400, MSG_SORT_ORDER)

        def render() -> bytes:
            vintage_days = self.catalog.vintage_days(series_id)
            first, stop = np.searchsorted(vintage_days, [_days(realtime_start), _days(realtime_end) + 1])
            selected = vintage_days[first:stop]
            if sort_order == "desc":
                selected = selected[::-1]
            page = _date_strings(selected[offset : offset + limit]).to_pylist()
            return fred_json(
                {
                    "realtime_start": realtime_start,
                    "realtime_end": realtime_end,
                    "order_by": "vintage_date",
                    "sort_order": sort_order,
                    "count": int(stop - first),
                    "offset": offset,
                    "limit": limit,
                    "vintage_dates": page,
                }
            )

        key = ("vintagedates", series_id, realtime_start, realtime_end, limit, offset, sort_order)
        return self.cache.get_or_render(key, render)

    def _updates(self, query: Mapping[str, str]) -> bytes:
        filter_value = query.get("filter_value", "all")
        if filter_value not in ("macro", "regional", "all"):
            raise FredError(400, MSG_FILTER_VALUE)
        raw_start, raw_end = query.get("start_time"), query.get("end_time")
        if raw_start is not None and raw_end is None:
            raise FredError(400, msg_not_set("end_time"))
        if raw_end is not None and raw_start is None:
            raise FredError(400, msg_not_set("start_time"))
        start_time = None if raw_start is None else _time_param(raw_start, "start_time")
        end_time = None if raw_end is None else _time_param(raw_end, "end_time")
        limit, offset = _paging(query, LISTING_MAX_LIMIT)

        def render() -> bytes:
            if filter_value == "regional":
                ids: list[str] = []  # every simulated series is national
            else:
                end_excl = None if end_time is None else end_time + timedelta(minutes=1)
                ids = self.catalog.updated_ids(start_time, end_excl)
            return fred_json(
                {
                    "realtime_start": self.realtime,
                    "realtime_end": self.realtime,
                    "filter_variable": "geography",
                    "filter_value": filter_value,
                    "order_by": "last_updated",
                    "sort_order": "desc",
                    "count": len(ids),
                    "offset": offset,
                    "limit": limit,
                    "seriess": [self.catalog.meta(s) for s in ids[offset : offset + limit]],
                }
            )

        return self.cache.get_or_render(("updates", filter_value, raw_start, raw_end, limit, offset), render)

    def _listing(self, query: Mapping[str, str], kind: str, groups: dict[int, list[str]]) -> bytes:
        id_name = f"{kind}_id"
        raw_id = query.get(id_name)
        if not raw_id:
            raise FredError(400, msg_not_set(id_name))
        group_id = _int_param(raw_id, id_name)
        limit, offset = _paging(query, LISTING_MAX_LIMIT)
        if group_id not in groups:
            raise FredError(400, f"Bad Request.  The {kind} does not exist.")
        ids = groups[group_id]

        def render() -> bytes:
            return fred_json(
                {
                    "realtime_start": self.realtime,
                    "realtime_end": self.realtime,
                    "order_by": "series_id",
                    "sort_order": "asc",
                    "count": len(ids),
                    "offset": offset,
                    "limit": limit,
                    "seriess": [self.catalog.listing_meta(s) for s in ids[offset : offset + limit]],
                }
            )

        return self.cache.get_or_render((kind, group_id, limit, offset), render)


def _observations_header(realtime_start: str, realtime_end: str, start: str, end: str, output_type: int,
                         sort_order: str, count: int, offset: int, limit: int) -> bytes:
    """The envelope of a ``series/observations`` answer, in FRED's key order (rows are appended to it)."""
    return fred_json(
        {
            "realtime_start": realtime_start,
            "realtime_end": realtime_end,
            "observation_start": start,
            "observation_end": end,
            "units": "lin",
            "output_type": output_type,
            "file_type": "json",
            "order_by": "observation_date",
            "sort_order": sort_order,
            "count": count,
            "offset": offset,
            "limit": limit,
        }
    )


def _int_param(raw: str, name: str) -> int:
    try:
        return int(raw)
    except ValueError:
        raise FredError(400, msg_not_integer(name)) from None


def _paging(query: Mapping[str, str], max_limit: int) -> tuple[int, int]:
    """``(limit, offset)``; ``limit`` defaults to ``max_limit``, ``offset`` to 0."""
    raw_limit = query.get("limit")
    try:
        limit = max_limit if raw_limit is None else int(raw_limit)
    except ValueError:
        limit = 0
    if not 1 <= limit <= max_limit:
        raise FredError(400, msg_limit(max_limit))
    try:
        offset = int(query.get("offset", "0"))
    except ValueError:
        offset = -1
    if offset < 0:
        raise FredError(400, MSG_OFFSET)
    return limit, offset


def _date_param(query: Mapping[str, str], name: str, default: str) -> str:
    value = query.get(name, default)
    try:
        if not _DATE_RE.fullmatch(value):
            raise ValueError(value)
        date.fromisoformat(value)
    except ValueError:
        raise FredError(400, msg_bad_date(name)) from None
    return value


def _days(iso: str) -> int:
    """Days since 1970-01-01 of a YYYY-MM-DD date."""
    return (date.fromisoformat(iso) - _EPOCH).days


def _date_strings(days: np.ndarray) -> pa.StringArray:
    """int days since 1970-01-01 -> "YYYY-MM-DD" strings."""
    return pc.cast(pa.array(np.asarray(days, dtype=np.int32), pa.int32()).cast(pa.date32()), pa.string())


def _time_param(raw: str, name: str) -> datetime:
    """``YYYYMMDDHhmm`` in US Central time -> aware UTC datetime."""
    try:
        if not _TIME_RE.fullmatch(raw):
            raise ValueError(raw)
        local = datetime.strptime(raw, "%Y%m%d%H%M")
    except ValueError:
        raise FredError(400, msg_bad_time(name)) from None
    offset = timezone(timedelta(hours=int(_central_offset(local.date()))))
    return local.replace(tzinfo=offset).astimezone(timezone.utc)


def _reset_connection(request: web.Request) -> None:
    """Abort the TCP connection with an RST (SO_LINGER 0), sending no response."""
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


SIMULATOR_KEY = web.AppKey("fredflow_simulator", FredSimulator)


def build_app(config: SimConfig) -> web.Application:
    """The simulator as an aiohttp application (state in ``app[SIMULATOR_KEY]``)."""
    sim = FredSimulator(config)
    app = web.Application()
    app[SIMULATOR_KEY] = sim
    app.router.add_get("/fred/{endpoint:.+}", sim.handle_fred)
    app.router.add_get("/_sim/health", sim.handle_health)
    app.router.add_get("/_sim/stats", sim.handle_stats)
    app.router.add_post("/_sim/reset", sim.handle_reset)
    app.router.add_post("/_sim/advance", sim.handle_advance)
    return app


async def serve(
    config: SimConfig,
    host: str = "127.0.0.1",
    port: int = 8000,
    on_ready: Callable[[str], None] | None = None,
) -> None:
    """Serve until SIGINT or SIGTERM; ``on_ready(base_url)`` once listening.

    ``port=0`` picks a free port (reported through ``on_ready``).  In-flight
    requests (e.g. hanging faults) get one second to finish on shutdown.
    """
    runner = web.AppRunner(build_app(config), access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port, backlog=1024)
        await site.start()
        bound_port = runner.addresses[0][1]
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        if on_ready is not None:
            on_ready(f"http://{host}:{bound_port}/fred")
        await stop.wait()
    finally:
        await runner.cleanup()


def run(config: SimConfig, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Serve in the foreground; prints one "listening" line when ready."""

    def announce(url: str) -> None:
        print(f"fredflow sim listening on {url} ({config.describe()})", flush=True)

    asyncio.run(serve(config, host, port, on_ready=announce))
