"""aiohttp server imitating the FRED API over a :class:`SimCatalog`.

Endpoints (GET, under ``/fred/``): ``series``, ``series/observations``,
``series/vintagedates``, ``series/updates``, ``series/search``,
``series/release``, ``series/categories``, ``series/tags``, ``release``,
``releases``, ``releases/dates``, ``release/dates``, ``release/series``,
``category``, ``category/children``, ``category/series``.  Bodies, key
order, value formats, error bodies, status codes and the ``Content-Type``
header are FRED's (see ``tests/data/fred-samples``), in both of FRED's
formats: ``file_type=json`` (like FRED's PHP encoder, ``/`` is escaped as
``\\/``) and ``file_type=xml``, FRED's default when ``file_type`` is absent
(see :mod:`fredflow.sim.render`).  Releases, categories, tags and search are
derived from the catalog (:mod:`fredflow.sim.reference`).

Per request on ``/fred/``, in this order:

1. rate limit (:mod:`fredflow.sim.ratelimit`) -- per client (``rate_scope``:
   the api_key by default, or the client address, both, or the whole
   server): a strict token bucket (``rate`` tokens/s, capacity ``burst``,
   starts full) and, with ``per_minute``, FRED's window of ``per_minute``
   requests per clock minute (``rate_window`` seconds), reported as
   ``x-rate-limit-limit``/``x-rate-limit-remaining`` headers.  A request
   finding no room gets FRED's 429 body, no ``Retry-After``, no rate-limit
   headers, and consumes nothing;
2. ``latency`` seconds of sleep;
3. with probability ``fault_rate`` (seeded, so the sequence of faults is
   deterministic in request-arrival order) one of ``fault_kinds``;
4. parameter validation and the response, rendered once and kept in an LRU
   cache of bodies (bounded by ``cache_mb``).

``series/observations`` with ``realtime_start``, ``realtime_end`` or
``vintage_dates`` serves the catalog's vintage rows (ALFRED): every real-time
period that intersects the requested one, clipped to it, sorted by date then
realtime_start; more than ``max_vintage_dates`` vintage dates in the requested
period is FRED's 400.  ``output_type`` 1-4 are supported there.
``series/updates`` lists servable series by ``last_updated`` descending
(plus ``background_updates`` a day of series outside the served catalog);
every served series counts as national, so ``filter_value=regional`` lists
only background ones.  Its ``start_time``/``end_time`` (``YYYYMMDDHhmm``) are
US Central times, both or neither, end minute included.

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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import date, datetime, timedelta, timezone
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
from aiohttp import web

from fredflow.sim import transforms
from fredflow.sim.catalog import DEFAULT_TODAY, SimCatalog, _central_offset, _stamp
from fredflow.sim.ratelimit import RATE_LIMIT_SCOPES, RateLimiter, TokenBucket
from fredflow.sim.reference import Reference
from fredflow.sim.render import error_body, fred_json, headers_for, render_document

__all__ = [
    "ALL_FAULT_KINDS",
    "DEMO_API_KEY",
    "FAULT_KINDS",
    "LISTING_MAX_LIMIT",
    "MAX_VINTAGE_DATES",
    "OBSERVATIONS_MAX_LIMIT",
    "RATE_LIMIT_SCOPES",
    "VINTAGE_DATES_MAX_LIMIT",
    "SIMULATOR_KEY",
    "UNREGISTERED_KEY",
    "FredError",
    "FredSimulator",
    "SimConfig",
    "TokenBucket",
    "build_app",
    "error_body",
    "fred_json",
    "load_keys",
    "run",
    "serve",
]

DEMO_API_KEY = "abcdefghijklmnopqrstuvwxyz012345"
"""A well-formed key, registered in every configuration."""
UNREGISTERED_KEY = "0" * 32
"""The one well-formed key the simulator treats as not registered (by default)."""
FAULT_KINDS = ("500", "502", "504", "hang", "truncate", "reset")
"""The default ``fault_kinds``."""
ALL_FAULT_KINDS = (*FAULT_KINDS, "403", "unregistered")
"""Also ``"403"`` (throttling as an HTML 403 Forbidden page) and ``"unregistered"``
(a transient "api_key is not registered" 400 for a registered key): opt-in."""

OBSERVATIONS_MAX_LIMIT = 100_000
"""FRED's maximum (and default) ``limit`` for series/observations."""
LISTING_MAX_LIMIT = 1000
"""FRED's maximum (and default) ``limit`` for series listings, releases, releases/dates and series/tags."""
VINTAGE_DATES_MAX_LIMIT = 10_000
"""FRED's maximum (and default) ``limit`` for series/vintagedates and release/dates."""
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
MSG_FILE_TYPE = "Bad Request.  Variable file_type is not one of the values: 'xml', 'json'."
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


def msg_one_of(name: str, values: Sequence[str]) -> str:
    """E.g. "Bad Request.  Variable sort_order is not one of the values: 'asc', 'desc'." (FRED's)."""
    return f"Bad Request.  Variable {name} is not one of the values: " + ", ".join(f"'{v}'" for v in values) + "."


def msg_realtime_end_after_today(today: str) -> str:
    """FRED's (recorded): realtime_end later than today and not 9999-12-31."""
    return (f"Bad Request.  Variable realtime_end can not be after today's date ({today}) "
            f"unless it's equal to the real-time max date {REALTIME_END_MAX}.")


def msg_realtime_start_after_today(today: str) -> str:
    return f"Bad Request.  Variable realtime_start can not be after today's date ({today})."


def msg_before_min(name: str) -> str:
    return f"Bad Request.  Variable {name} can not be before the real-time min date {REALTIME_START_MIN}."


MSG_OFFSET = "Bad Request.  Variable offset is not 0 or a positive integer."
MSG_DATE_ORDER = "Bad Request.  Variable observation_start can not be after observation_end."
MSG_REALTIME_ORDER = "Bad Request.  Variable realtime_start can not be after realtime_end."
MSG_FILTER_VALUE = msg_one_of("filter_value", ("macro", "regional", "all"))
MSG_OUTPUT_TYPE = msg_one_of("output_type", ("1", "2", "3", "4"))
MSG_SEARCH_TYPE = msg_one_of("search_type", ("full_text", "series_id"))
MSG_FILTER_VARIABLE = msg_one_of("filter_variable", ("frequency", "units", "seasonal_adjustment"))
MSG_VINTAGE_DATES = "Bad Request.  Variable vintage_dates is not a comma separated list of dates in YYYY-MM-DD format."


def msg_too_many_vintages(n: int, realtime_start: str, realtime_end: str, maximum: int) -> str:
    """FRED's answer when an observations request spans more than ``maximum`` vintage dates."""
    return (
        f"Bad Request.  There are {n} vintage dates in the specified real-time period: "
        f"{realtime_start} to {realtime_end}.  This exceeds the maximum number of vintage dates "
        f"allowed for this file type ({maximum})."
    )


def msg_bad_time(name: str) -> str:
    return f"Bad Request.  Variable {name} is not a valid time in YYYYMMDDHhmm format."


#: order_by values of the series listings (release/series, category/series, series/search adds search_rank)
SERIES_ORDERS = ("series_id", "title", "units", "frequency", "seasonal_adjustment", "realtime_start",
                 "realtime_end", "last_updated", "observation_start", "observation_end", "popularity",
                 "group_popularity")
RELEASE_ORDERS = ("release_id", "name", "press_release", "realtime_start", "realtime_end")
RELEASE_DATE_ORDERS = ("release_date", "release_id", "release_name")
TAG_ORDERS = ("series_count", "popularity", "created", "name", "group_id")

_JSON_HEADERS = headers_for("json")
_HTML_HEADERS = {"Content-Type": "text/html"}
_PROXY_PAGES = {
    502: b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    b"<center><h1>502 Bad Gateway</h1></center>\r\n</body>\r\n</html>\r\n",
    504: b"<html>\r\n<head><title>504 Gateway Time-out</title></head>\r\n<body>\r\n"
    b"<center><h1>504 Gateway Time-out</h1></center>\r\n</body>\r\n</html>\r\n",
    403: b"<html>\r\n<head><title>403 Forbidden</title></head>\r\n<body>\r\n"
    b"<center><h1>403 Forbidden</h1></center>\r\n</body>\r\n</html>\r\n",
}
_KEY_RE = re.compile(r"[a-z0-9]{32}")
_DATE_RE = re.compile(r"\d{4}-\d{2}-\d{2}")
_TIME_RE = re.compile(r"\d{12}")
_EPOCH = date(1970, 1, 1)


def load_keys(path: str) -> tuple[str, ...]:
    """Registered api keys from a file: one a line; blank lines and ``#`` comments ignored."""
    with open(path, encoding="utf-8") as fh:
        lines = (line.split("#", 1)[0].strip() for line in fh)
        return tuple(line for line in lines if line)


@dataclass(frozen=True)
class SimConfig:
    """Everything that defines a simulator instance.

    The first six fields and ``changes`` are :class:`SimCatalog`'s arguments
    (``POST /_sim/advance`` appends to ``changes``).  ``rate`` is in
    requests/s (``None`` or 0: unlimited) with bucket capacity ``burst``;
    ``per_minute`` (``None``: off; FRED: 120) is the per-window limit, windows
    of ``rate_window`` seconds; both apply per ``rate_scope`` client (one of
    ``"key"`` -- default --, ``"address"``, ``"key+address"``, ``"server"``).
    ``latency`` seconds are added to every admitted request; ``fault_rate``
    (0..1) of admitted requests fail as one of ``fault_kinds`` (a subset of
    :data:`ALL_FAULT_KINDS`); a ``"hang"`` sleeps ``hang_seconds`` before
    answering normally.  ``max_limit`` is the default and maximum ``limit``
    of series/observations.  ``keys`` is the key registry: ``None`` (default)
    registers every 32-character lower-case alphanumeric api_key, otherwise
    only these and :data:`DEMO_API_KEY`; keys in ``unregistered_keys`` are
    never registered.  ``cache_mb`` bounds the cache of rendered bodies.
    ``max_vintage_dates`` is the most vintage dates one real-time
    series/observations request may span (FRED: 2000).
    ``background_updates`` series outside the served catalog are updated
    each day (listed by series/updates only; FRED: thousands).
    ``updates_days`` (``None``: all) keeps only the updates of the last N
    days (today included) in series/updates, as FRED keeps about two weeks.
    ``new_series`` ids ``SIMN0001`` ... debut one a simulated day, each in release 1
    and one partition release (see :class:`SimCatalog`).
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
    keys: tuple[str, ...] | None = None
    per_minute: int | None = None
    rate_window: float = 60.0
    rate_scope: str = "key"
    background_updates: int = 0
    updates_days: int | None = None
    new_series: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "fault_kinds", tuple(self.fault_kinds))
        object.__setattr__(self, "unregistered_keys", tuple(self.unregistered_keys))
        object.__setattr__(self, "changes", tuple(int(k) for k in self.changes))
        if self.keys is not None:
            object.__setattr__(self, "keys", tuple(self.keys))
            bad = [k for k in self.keys if not _KEY_RE.fullmatch(k)]
            if bad:
                raise ValueError(f"keys must be 32-character lower-case alphanumeric strings: {bad[:3]}")
        if any(not 0 <= k <= self.n_series for k in self.changes):
            raise ValueError("every number of changed series must be in 0..n_series")
        if self.max_vintage_dates < 1:
            raise ValueError("max_vintage_dates must be >= 1")
        unknown = set(self.fault_kinds) - set(ALL_FAULT_KINDS)
        if unknown or not self.fault_kinds:
            raise ValueError(f"fault_kinds must be a non-empty subset of {ALL_FAULT_KINDS}")
        if self.rate is not None and self.rate < 0:
            raise ValueError("rate must be >= 0")
        if self.burst < 1:
            raise ValueError("burst must be >= 1")
        if self.per_minute is not None and self.per_minute < 1:
            raise ValueError("per_minute must be >= 1")
        if self.rate_window <= 0:
            raise ValueError("rate_window must be > 0")
        if self.rate_scope not in RATE_LIMIT_SCOPES:
            raise ValueError(f"rate_scope must be one of {RATE_LIMIT_SCOPES}")
        if self.updates_days is not None and self.updates_days < 1:
            raise ValueError("updates_days must be >= 1")
        if not 0 <= self.background_updates <= 1_000_000:
            raise ValueError("background_updates must be in 0..1000000")
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
            new_series=self.new_series,
        )

    def is_registered(self, key: str) -> bool:
        """Whether a well-formed api_key is registered."""
        if key in self.unregistered_keys:
            return False
        return self.keys is None or key == DEMO_API_KEY or key in self.keys

    def describe(self) -> str:
        """One-line summary, e.g. "500 series, rate 2/s burst 2"."""
        parts = [f"{self.n_series} series"]
        parts.append(f"rate {self.rate:g}/s burst {self.burst}" if self.rate else "rate unlimited")
        if self.per_minute:
            parts.append(f"{self.per_minute} per {self.rate_window:g}s")
        if self.rate or self.per_minute:
            parts.append(f"per {self.rate_scope}")
        if self.keys is not None:
            parts.append(f"{len(self.keys)} registered keys")
        if self.latency:
            parts.append(f"latency {self.latency:g}s")
        if self.fault_rate:
            parts.append(f"faults {self.fault_rate:g} of {','.join(self.fault_kinds)}")
        return ", ".join(parts)


class FredError(Exception):
    """A FRED error response (rendered by :func:`~fredflow.sim.render.error_body`)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


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
    ``monotonic``/``wall`` are the clocks of the token bucket and of the
    minute window (tests pass controllable ones).
    """

    def __init__(
        self,
        config: SimConfig,
        *,
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._use(config)
        self.limiter = RateLimiter(config.rate or None, config.burst, config.per_minute, config.rate_window,
                                   config.rate_scope, monotonic, wall)
        self.cache = BodyCache(int(config.cache_mb * 1024 * 1024))
        self.stats = SimStats()
        self._fault_rng = random.Random(config.seed)
        self._endpoints: dict[str, Callable[[Mapping[str, str], str], bytes]] = {
            "series": self._series,
            "series/observations": self._observations,
            "series/vintagedates": self._vintagedates,
            "series/updates": self._updates,
            "series/search": self._search,
            "series/release": self._series_release,
            "series/categories": self._series_categories,
            "series/tags": self._series_tags,
            "release": self._release,
            "releases": self._releases,
            "releases/dates": self._releases_dates,
            "release/dates": self._release_dates,
            "release/series": lambda q, ft: self._group_series(q, ft, "release"),
            "category": self._category,
            "category/children": self._category_children,
            "category/series": lambda q, ft: self._group_series(q, ft, "category"),
        }

    def _use(self, config: SimConfig) -> None:
        """Serve ``config``'s catalog from now on."""
        self.config = config
        self.catalog = config.catalog()
        self.reference = Reference(self.catalog)
        self.realtime = self.catalog.realtime
        self._sorted: OrderedDict[tuple[Any, ...], list[str]] = OrderedDict()

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
        query = request.query
        error_type = "json" if query.get("file_type") == "json" else "xml"
        admission = self.limiter.admit(query.get("api_key", ""), request.remote or "")
        if not admission.ok:
            return self._respond(429, error_body(429, MSG_RATE_LIMIT, error_type), headers_for(error_type))
        self.stats.admit()
        if self.config.latency:
            await asyncio.sleep(self.config.latency)

        fault = self._draw_fault()
        if fault is not None:
            self.stats.faults[fault] += 1
        if fault in ("502", "504", "403"):
            status = int(fault)
            return self._respond(status, _PROXY_PAGES[status], _HTML_HEADERS)
        if fault == "reset":
            _reset_connection(request)
            return web.Response()  # never sent: the connection is gone
        headers = {**headers_for(error_type), **admission.headers}
        if fault == "500":
            return self._respond(500, error_body(500, MSG_INTERNAL, error_type), headers)
        if fault == "unregistered":
            return self._respond(400, error_body(400, MSG_KEY_UNREGISTERED, error_type), headers)
        if fault == "hang":
            await asyncio.sleep(self.config.hang_seconds)

        status, body, file_type = self.answer_as(request.match_info["endpoint"], query)
        if fault == "truncate":
            body = body[: len(body) // 2]
        return self._respond(status, body, {**headers_for(file_type), **admission.headers})

    def answer(self, endpoint: str, query: Mapping[str, str]) -> tuple[int, bytes]:
        """Status and body FRED would send for ``GET /fred/<endpoint>?<query>``."""
        status, body, _ = self.answer_as(endpoint, query)
        return status, body

    def answer_as(self, endpoint: str, query: Mapping[str, str]) -> tuple[int, bytes, str]:
        """:meth:`answer` plus the body's file type (``"json"`` or ``"xml"``)."""
        file_type = query.get("file_type", "xml")
        error_type = "json" if file_type == "json" else "xml"
        handler = self._endpoints.get(endpoint)
        if handler is None:
            message = f"Not Found.  The simulator does not implement fred/{endpoint}."
            return 404, error_body(404, message, error_type), error_type
        try:
            self._check_common(query)
            return 200, handler(query, file_type), file_type
        except FredError as exc:
            return exc.status, error_body(exc.status, exc.message, error_type), error_type

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

    # ------------------------------------------------------------- validation

    def _check_common(self, query: Mapping[str, str]) -> None:
        key = query.get("api_key")
        if not key:
            raise FredError(400, MSG_KEY_MISSING)
        if not _KEY_RE.fullmatch(key):
            raise FredError(400, MSG_KEY_MALFORMED)
        if not self.config.is_registered(key):
            raise FredError(400, MSG_KEY_UNREGISTERED)
        if query.get("file_type", "xml") not in ("xml", "json"):
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

    def _realtime_period(self, query: Mapping[str, str], default_start: str | None = None,
                         default_end: str | None = None) -> tuple[str, str]:
        """``(realtime_start, realtime_end)``, FRED's bounds checked.

        Defaults (unless given): today for both when neither is set; else
        1776-07-04 and 9999-12-31 (as recorded: ``realtime_start=1776-07-04``
        alone answers ``"realtime_end":"9999-12-31"``)."""
        today = self.realtime
        if "realtime_start" in query or "realtime_end" in query:
            default_start, default_end = default_start or REALTIME_START_MIN, default_end or REALTIME_END_MAX
        realtime_start = _date_param(query, "realtime_start", default_start or today)
        realtime_end = _date_param(query, "realtime_end", default_end or today)
        if realtime_start < REALTIME_START_MIN:
            raise FredError(400, msg_before_min("realtime_start"))
        if realtime_end < REALTIME_START_MIN:
            raise FredError(400, msg_before_min("realtime_end"))
        if realtime_start > today:
            raise FredError(400, msg_realtime_start_after_today(today))
        if realtime_end > today and realtime_end != REALTIME_END_MAX:
            raise FredError(400, msg_realtime_end_after_today(today))
        if realtime_start > realtime_end:
            raise FredError(400, MSG_REALTIME_ORDER)
        return realtime_start, realtime_end

    @staticmethod
    def _choice(query: Mapping[str, str], name: str, values: Sequence[str], default: str) -> str:
        value = query.get(name, default)
        if value not in values:
            raise FredError(400, msg_one_of(name, values))
        return value

    def _sort_order(self, query: Mapping[str, str], default: str = "asc") -> str:
        return self._choice(query, "sort_order", ("asc", "desc"), default)

    def _group_id(self, query: Mapping[str, str], name: str, default: int | None = None) -> int:
        raw = query.get(name)
        if not raw:
            if default is None:
                raise FredError(400, msg_not_set(name))
            return default
        return _int_param(raw, name)

    def _release_id(self, query: Mapping[str, str]) -> int:
        release_id = self._group_id(query, "release_id")
        if release_id not in self.catalog.releases:
            raise FredError(400, MSG_RELEASE_UNKNOWN)
        return release_id

    def _category_id(self, query: Mapping[str, str]) -> int:
        category_id = self._group_id(query, "category_id", default=0)
        if self.reference.category(category_id) is None:
            raise FredError(400, MSG_CATEGORY_UNKNOWN)
        return category_id

    # ----------------------------------------------------------------- series

    def _series(self, query: Mapping[str, str], file_type: str) -> bytes:
        series_id = self._series_id(query)
        realtime_start, realtime_end = self._realtime_period(query)

        def render() -> bytes:
            meta = self.catalog.meta(series_id)
            meta["realtime_start"], meta["realtime_end"] = realtime_start, realtime_end
            envelope = {"realtime_start": realtime_start, "realtime_end": realtime_end}
            return render_document(file_type, "seriess", envelope, "series", [meta])

        return self.cache.get_or_render(("series", series_id, realtime_start, realtime_end, file_type), render)

    def _series_release(self, query: Mapping[str, str], file_type: str) -> bytes:
        series_id = self._series_id(query)
        realtime_start, realtime_end = self._realtime_period(query)
        release = self.reference.release(self.reference.release_of(series_id))
        release["realtime_start"], release["realtime_end"] = realtime_start, realtime_end
        envelope = {"realtime_start": realtime_start, "realtime_end": realtime_end}
        return render_document(file_type, "releases", envelope, "release", [release])

    def _series_categories(self, query: Mapping[str, str], file_type: str) -> bytes:
        series_id = self._series_id(query)
        self._realtime_period(query)
        category = self.reference.category(self.reference.category_of(series_id))
        return render_document(file_type, "categories", {}, "category", [category])

    def _series_tags(self, query: Mapping[str, str], file_type: str) -> bytes:
        series_id = self._series_id(query)
        realtime_start, realtime_end = self._realtime_period(query)
        order_by = self._choice(query, "order_by", TAG_ORDERS, "series_count")
        sort_order = self._sort_order(query)
        limit, offset = _paging(query, LISTING_MAX_LIMIT)
        tags = [self.reference.tag(name, group) for name, group in self.reference.series_tags(series_id)]
        wanted = _names(query.get("tag_names"))
        if wanted:
            tags = [t for t in tags if t["name"] in wanted]
        tags.sort(key=lambda t: t["name"])
        tags.sort(key=lambda t: t[order_by], reverse=sort_order == "desc")
        envelope = {"realtime_start": realtime_start, "realtime_end": realtime_end, "order_by": order_by,
                    "sort_order": sort_order, "count": len(tags), "offset": offset, "limit": limit}
        return render_document(file_type, "tags", envelope, "tag", tags[offset : offset + limit])

    # ----------------------------------------------------------- observations

    def _observations(self, query: Mapping[str, str], file_type: str) -> bytes:
        series_id = self._series_id(query)
        start = _date_param(query, "observation_start", "1600-01-01")
        end = _date_param(query, "observation_end", "9999-12-31")
        if start > end:
            raise FredError(400, MSG_DATE_ORDER)
        limit, offset = _paging(query, self.config.max_limit)
        sort_order = self._sort_order(query)
        if transforms.requested(query):  # units, frequency, aggregation_method: sim/transforms.py
            body = transforms.observations_body(self, query, file_type, series_id, start, end, limit, offset,
                                                sort_order)
            if body is not None:
                return body
        if "realtime_start" in query or "realtime_end" in query or "vintage_dates" in query:
            return self._vintage_observations(query, file_type, series_id, start, end, limit, offset, sort_order)
        output_type = self._choice(query, "output_type", ("1", "2", "3", "4"), "1")
        if output_type != "1":  # without a real-time period, every type is the current data
            return self._vintage_observations(query, file_type, series_id, start, end, limit, offset, sort_order)
        key = ("obs", series_id, start, end, limit, offset, sort_order, file_type)
        return self.cache.get_or_render(
            key, lambda: self._render_observations(series_id, start, end, limit, offset, sort_order, file_type)
        )

    def _render_observations(
        self, series_id: str, start: str, end: str, limit: int, offset: int, sort_order: str, file_type: str
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
        header = _observations_header(self.realtime, self.realtime, start, end, 1, sort_order, count, offset, limit,
                                      file_type)
        rows = _render_rows(file_type, self.realtime, self.realtime, pc.cast(dates, pa.string()), values)
        return _observations_body(file_type, header, rows)

    def _vintage_observations(
        self, query: Mapping[str, str], file_type: str, series_id: str, start: str, end: str, limit: int,
        offset: int, sort_order: str,
    ) -> bytes:
        output_type = self._choice(query, "output_type", ("1", "2", "3", "4"), "1")
        raw_vintages = query.get("vintage_dates")
        if raw_vintages is not None:
            vintages = _vintage_dates_param(raw_vintages, self.realtime)
            realtime_start, realtime_end = vintages[0], vintages[-1]
            n_vintages = len(vintages)
        else:
            realtime_start, realtime_end = self._realtime_period(query)
            vintages = None
            vintage_days = self.catalog.vintage_days(series_id)
            first, stop = np.searchsorted(vintage_days, [_days(realtime_start), _days(realtime_end) + 1])
            n_vintages = int(stop - first)
        if output_type != "4" and n_vintages > self.config.max_vintage_dates:
            raise FredError(400, msg_too_many_vintages(
                n_vintages, realtime_start, realtime_end, self.config.max_vintage_dates))
        key = ("vintages", series_id, start, end, realtime_start, realtime_end, raw_vintages, output_type, limit,
               offset, sort_order, file_type)
        return self.cache.get_or_render(
            key,
            lambda: self._render_vintages(
                series_id, start, end, realtime_start, realtime_end, vintages, int(output_type), limit, offset,
                sort_order, file_type,
            ),
        )

    def _render_vintages(
        self, series_id: str, start: str, end: str, realtime_start: str, realtime_end: str,
        vintages: list[str] | None, output_type: int, limit: int, offset: int, sort_order: str, file_type: str,
    ) -> bytes:
        data = self.catalog.vintage_data(series_id)
        in_range = (data.date_days >= _days(start)) & (data.date_days <= _days(end))
        if output_type in (2, 3):
            return self._render_wide(series_id, data, in_range, start, end, realtime_start, realtime_end, vintages,
                                     output_type, limit, offset, sort_order, file_type)
        rs, re_ = _days(realtime_start), _days(realtime_end)
        if vintages is not None:  # one row per vintage date and observation valid on it
            rows_list, at_list = [], []
            for v in sorted({_days(v) for v in vintages}):
                valid = np.flatnonzero(in_range & (data.start_days <= v) & (data.end_days >= v))
                if output_type == 4:
                    valid = valid[data.initial[valid]]
                rows_list.append(valid)
                at_list.append(np.full(len(valid), v, dtype=np.int32))
            rows = np.concatenate(rows_list) if rows_list else np.zeros(0, np.int64)
            at = np.concatenate(at_list) if at_list else np.zeros(0, np.int32)
            order = np.lexsort((at, data.date_days[rows]))
            rows, starts_days, ends_days = rows[order], at[order], at[order]
        else:
            selected = in_range & (data.start_days <= re_) & (data.end_days >= rs)
            if output_type == 4:  # the initial release of observations first released in the period
                selected &= data.initial & (data.start_days >= rs)
            rows = np.flatnonzero(selected)
            starts_days = np.maximum(data.start_days[rows], rs)
            ends_days = np.minimum(data.end_days[rows], re_)
        count = len(rows)
        page = slice(offset, offset + limit)
        if sort_order == "desc":
            rows, starts_days, ends_days = rows[::-1], starts_days[::-1], ends_days[::-1]
        rows, starts_days, ends_days = rows[page], starts_days[page], ends_days[page]
        header = _observations_header(realtime_start, realtime_end, start, end, output_type, sort_order,
                                      count, offset, limit, file_type)
        rendered = _render_rows(file_type, _date_strings(starts_days), _date_strings(ends_days),
                                _date_strings(data.date_days[rows]), data.text.take(pa.array(rows, pa.int64())))
        return _observations_body(file_type, header, rendered)

    def _render_wide(
        self, series_id: str, data: Any, in_range: np.ndarray, start: str, end: str, realtime_start: str,
        realtime_end: str, vintages: list[str] | None, output_type: int, limit: int, offset: int,
        sort_order: str, file_type: str,
    ) -> bytes:
        """output_type 2 (all observations) / 3 (new and revised only), one column per vintage date."""
        if vintages is None:
            days = self.catalog.vintage_days(series_id)
            lo, hi = np.searchsorted(days, [_days(realtime_start), _days(realtime_end) + 1])
            columns = [int(d) for d in days[lo:hi]]
        else:
            columns = sorted({_days(v) for v in vintages})
        rows = np.flatnonzero(in_range)
        dates = np.unique(data.date_days[rows])
        cells = np.full((len(dates), len(columns)), None, dtype=object)
        for j, v in enumerate(columns):
            valid = rows[(data.start_days[rows] <= v) & (data.end_days[rows] >= v)]
            pos = np.searchsorted(dates, data.date_days[valid])
            for p, r in zip(pos.tolist(), valid.tolist()):
                cells[p, j] = (r, data.text[r].as_py())
        names = [f"{series_id}_{(_EPOCH + timedelta(days=v)).strftime('%Y%m%d')}" for v in columns]
        items = []
        for i, d in enumerate(dates.tolist()):
            item: dict[str, Any] = {"date": (_EPOCH + timedelta(days=d)).isoformat()}
            previous = None
            shown = False
            for j, name in enumerate(names):
                cell = cells[i, j]
                value = "." if cell is None else cell[1]
                if output_type == 3:
                    is_new = cell is not None and (previous is None or previous[0] != cell[0])
                    previous = cell if cell is not None else previous
                    value = value if is_new else "."
                    shown |= is_new
                else:
                    shown |= cell is not None
                item[name] = value
            if shown:
                items.append(item)
        if sort_order == "desc":
            items.reverse()
        envelope = _observations_envelope(realtime_start, realtime_end, start, end, output_type, sort_order,
                                          len(items), offset, limit, file_type)
        return render_document(file_type, "observations", envelope, "observation", items[offset : offset + limit])

    def _vintagedates(self, query: Mapping[str, str], file_type: str) -> bytes:
        series_id = self._series_id(query)
        realtime_start, realtime_end = self._realtime_period(query, REALTIME_START_MIN, REALTIME_END_MAX)
        limit, offset = _paging(query, VINTAGE_DATES_MAX_LIMIT)
        sort_order = self._sort_order(query)

        def render() -> bytes:
            vintage_days = self.catalog.vintage_days(series_id)
            first, stop = np.searchsorted(vintage_days, [_days(realtime_start), _days(realtime_end) + 1])
            selected = vintage_days[first:stop]
            if sort_order == "desc":
                selected = selected[::-1]
            page = _date_strings(selected[offset : offset + limit]).to_pylist()
            envelope = {"realtime_start": realtime_start, "realtime_end": realtime_end, "order_by": "vintage_date",
                        "sort_order": sort_order, "count": int(stop - first), "offset": offset, "limit": limit}
            return render_document(file_type, "vintage_dates", envelope, "vintage_date", page, text_key="")

        key = ("vintagedates", series_id, realtime_start, realtime_end, limit, offset, sort_order, file_type)
        return self.cache.get_or_render(key, render)

    # --------------------------------------------------------- series listings

    def _listing_params(self, query: Mapping[str, str], orders: Sequence[str], default_order: str,
                        desc_by_default: Sequence[str] = ()) -> tuple[Any, ...]:
        """Validated ``(realtime_start, realtime_end, limit, offset, order_by, sort_order, filter, tags)``."""
        realtime_start, realtime_end = self._realtime_period(query)
        limit, offset = _paging(query, LISTING_MAX_LIMIT)
        order_by = self._choice(query, "order_by", orders, default_order)
        sort_order = self._sort_order(query, "desc" if order_by in desc_by_default else "asc")
        filter_variable = query.get("filter_variable")
        series_filter = None
        if filter_variable is not None:
            if filter_variable not in ("frequency", "units", "seasonal_adjustment"):
                raise FredError(400, MSG_FILTER_VARIABLE)
            if query.get("filter_value"):
                series_filter = (filter_variable, query["filter_value"])
        tags = (_names(query.get("tag_names")), _names(query.get("exclude_tag_names")))
        return realtime_start, realtime_end, limit, offset, order_by, sort_order, series_filter, tags

    def _sorted_ids(self, group: tuple[Any, ...], ids: Sequence[str], order_by: str, sort_order: str,
                    series_filter: tuple[str, str] | None, tags: tuple[frozenset[str], frozenset[str]],
                    ranks: Mapping[str, int] | None = None) -> list[str]:
        """``ids`` filtered and sorted (ties by id ascending); a few results kept for the next pages."""
        key = (group, order_by, sort_order, series_filter, tags)
        hit = self._sorted.get(key)
        if hit is not None:
            self._sorted.move_to_end(key)
            return hit
        catalog, reference = self.catalog, self.reference
        selected = sorted(ids)
        if series_filter is not None:
            name, value = series_filter
            selected = [s for s in selected if catalog.meta(s)[name] == value]
        if tags[0] or tags[1]:
            selected = [s for s in selected if reference.has_tags(s, set(tags[0]), set(tags[1]))]
        if order_by == "search_rank" and ranks is not None:
            popularity = {s: catalog.meta(s)["popularity"] for s in selected}
            sort_key: Callable[[str], Any] = lambda s: (ranks[s], popularity[s])  # noqa: E731
        elif order_by == "series_id":
            sort_key = lambda s: s  # noqa: E731
        elif order_by in ("realtime_start", "realtime_end"):
            sort_key = lambda s: 0  # noqa: E731
        elif order_by == "last_updated":
            sort_key = catalog.last_updated_at
        elif order_by == "group_popularity":
            sort_key = lambda s: catalog.listing_meta(s)["group_popularity"]  # noqa: E731
        else:
            sort_key = lambda s: catalog.meta(s)[order_by]  # noqa: E731
        selected.sort(key=sort_key, reverse=sort_order == "desc")
        self._sorted[key] = selected
        while len(self._sorted) > 32:
            self._sorted.popitem(last=False)
        return selected

    def _render_series_page(self, file_type: str, envelope: dict[str, Any], ids: Sequence[str],
                            realtime_start: str, realtime_end: str, listing: bool = True) -> bytes:
        items = []
        for sid in ids:
            meta = self.catalog.listing_meta(sid) if listing else self.catalog.meta(sid)
            if (realtime_start, realtime_end) != (self.realtime, self.realtime):
                meta["realtime_start"], meta["realtime_end"] = realtime_start, realtime_end
            items.append(meta)
        return render_document(file_type, "seriess", envelope, "series", items)

    def _series_listing(self, query: Mapping[str, str], file_type: str, group: tuple[Any, ...],
                        ids: Sequence[str], orders: Sequence[str] = SERIES_ORDERS, default_order: str = "series_id",
                        desc_by_default: Sequence[str] = (), ranks: Mapping[str, int] | None = None) -> bytes:
        params = self._listing_params(query, orders, default_order, desc_by_default)
        realtime_start, realtime_end, limit, offset, order_by, sort_order, series_filter, tags = params

        def render() -> bytes:
            selected = self._sorted_ids(group, ids, order_by, sort_order, series_filter, tags, ranks)
            envelope = {"realtime_start": realtime_start, "realtime_end": realtime_end, "order_by": order_by,
                        "sort_order": sort_order, "count": len(selected), "offset": offset, "limit": limit}
            return self._render_series_page(file_type, envelope, selected[offset : offset + limit],
                                            realtime_start, realtime_end)

        return self.cache.get_or_render((group, *params, file_type), render)

    def _group_series(self, query: Mapping[str, str], file_type: str, kind: str) -> bytes:
        if kind == "release":
            group_id = self._release_id(query)
            ids = self.catalog.releases[group_id]
        else:
            group_id = self._category_id(query)
            ids = self.reference.category_series(group_id)
        return self._series_listing(query, file_type, (kind, group_id), ids)

    def _search(self, query: Mapping[str, str], file_type: str) -> bytes:
        text = query.get("search_text")
        if not text:
            raise FredError(400, msg_not_set("search_text"))
        search_type = self._choice(query, "search_type", ("full_text", "series_id"), "full_text")
        default_order = "search_rank" if search_type == "full_text" else "series_id"
        hits = dict(self.reference.search(text, search_type))
        return self._series_listing(
            query, file_type, ("search", search_type, text), list(hits), ("search_rank", *SERIES_ORDERS),
            default_order, ("search_rank", "popularity"), hits,
        )

    # ---------------------------------------------------------- series/updates

    @property
    def _updates_order(self) -> list[tuple[float, str, bool]]:
        """``(timestamp, id, regional)`` of every listed update: ``last_updated`` descending, ties by id."""
        cached = self.__dict__.get("_updates_cache")
        if cached is not None and cached[0] is self.catalog:
            return cached[1]
        order = [(stamp.timestamp(), sid, False) for stamp, sid in self.catalog._updates_order]
        order += [(ts, sid, regional) for sid, (ts, _, _, regional) in self._background.items()]
        if self.config.updates_days is not None:
            first = self.catalog.today - timedelta(days=self.config.updates_days - 1)
            offset = timezone(timedelta(hours=int(_central_offset(first))))
            oldest = datetime(first.year, first.month, first.day, tzinfo=offset).timestamp()
            order = [item for item in order if item[0] >= oldest]
        order.sort(key=lambda item: (-item[0], item[1]))
        self.__dict__["_updates_cache"] = (self.catalog, order)
        return order

    @property
    def _background(self) -> dict[str, tuple[float, date, int, bool]]:
        """Series outside the catalog updated in the last 14 days (``background_updates`` a day):
        id -> (timestamp, day, second after 07:30 US Central, regional)."""
        cached = self.__dict__.get("_background_cache")
        if cached is not None and cached[0] is self.catalog:
            return cached[1]
        out: dict[str, tuple[float, date, int, bool]] = {}
        per_day = self.config.background_updates
        today = self.catalog.today
        for back in range(14 if per_day else 0):
            day = today - timedelta(days=back)
            number = (day - _EPOCH).days
            rng = np.random.default_rng([self.config.seed, number, 2**32 + 9])
            seconds = rng.integers(0, 3600, per_day).tolist()
            regional = (rng.random(per_day) < 0.8).tolist()
            offset = timezone(timedelta(hours=int(_central_offset(day))))
            base = datetime(day.year, day.month, day.day, 7, 30, tzinfo=offset).timestamp()
            for j in range(per_day):
                out[f"SIMB{number % 100000:05d}{j:06d}"] = (base + seconds[j], day, seconds[j], regional[j])
        self.__dict__["_background_cache"] = (self.catalog, out)
        return out

    def _background_meta(self, sid: str) -> dict[str, Any]:
        _, day, second, regional = self._background[sid]
        where = "in a simulated county" if regional else "in the United States"
        return {
            "id": sid, "realtime_start": self.realtime, "realtime_end": self.realtime,
            "title": f"Simulated Background Series {sid[4:]} {where}",
            "observation_start": "2000-01-01", "observation_end": (day - timedelta(days=1)).isoformat(),
            "frequency": "Daily", "frequency_short": "D", "units": "Percent", "units_short": "%",
            "seasonal_adjustment": "Not Seasonally Adjusted", "seasonal_adjustment_short": "NSA",
            "last_updated": _stamp(day, second), "popularity": 1,
        }

    def _updates(self, query: Mapping[str, str], file_type: str) -> bytes:
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
        realtime_start, realtime_end = self._realtime_period(query)
        limit, offset = _paging(query, LISTING_MAX_LIMIT)

        def render() -> bytes:
            listed = self._sorted.get(("updates", filter_value, raw_start, raw_end))
            if listed is None:
                lo = -np.inf if start_time is None else start_time.timestamp()
                hi = np.inf if end_time is None else (end_time + timedelta(minutes=1)).timestamp()
                listed = [
                    sid for ts, sid, regional in self._updates_order
                    if lo <= ts < hi and (filter_value == "all" or regional == (filter_value == "regional"))
                ]
                self._sorted[("updates", filter_value, raw_start, raw_end)] = listed
                while len(self._sorted) > 32:
                    self._sorted.popitem(last=False)
            envelope = {"realtime_start": realtime_start, "realtime_end": realtime_end,
                        "filter_variable": "geography", "filter_value": filter_value, "order_by": "last_updated",
                        "sort_order": "desc", "count": len(listed), "offset": offset, "limit": limit}
            background = self._background
            items = []
            for sid in listed[offset : offset + limit]:
                meta = self._background_meta(sid) if sid in background else self.catalog.meta(sid)
                if (realtime_start, realtime_end) != (self.realtime, self.realtime):
                    meta["realtime_start"], meta["realtime_end"] = realtime_start, realtime_end
                items.append(meta)
            return render_document(file_type, "seriess", envelope, "series", items)

        key = ("updates", filter_value, raw_start, raw_end, realtime_start, realtime_end, limit, offset, file_type)
        return self.cache.get_or_render(key, render)

    # --------------------------------------------------------------- releases

    def _release(self, query: Mapping[str, str], file_type: str) -> bytes:
        release_id = self._release_id(query)
        realtime_start, realtime_end = self._realtime_period(query)
        release = self.reference.release(release_id)
        release["realtime_start"], release["realtime_end"] = realtime_start, realtime_end
        envelope = {"realtime_start": realtime_start, "realtime_end": realtime_end}
        return render_document(file_type, "releases", envelope, "release", [release])

    def _releases(self, query: Mapping[str, str], file_type: str) -> bytes:
        realtime_start, realtime_end = self._realtime_period(query)
        limit, offset = _paging(query, LISTING_MAX_LIMIT)
        order_by = self._choice(query, "order_by", RELEASE_ORDERS, "release_id")
        sort_order = self._sort_order(query)
        releases = [self.reference.release(r) for r in self.reference.release_ids()]
        field = "id" if order_by == "release_id" else order_by
        releases.sort(key=lambda r: r[field], reverse=sort_order == "desc")
        for release in releases:
            release["realtime_start"], release["realtime_end"] = realtime_start, realtime_end
        envelope = {"realtime_start": realtime_start, "realtime_end": realtime_end, "order_by": order_by,
                    "sort_order": sort_order, "count": len(releases), "offset": offset, "limit": limit}
        return render_document(file_type, "releases", envelope, "release", releases[offset : offset + limit])

    def _dates_of(self, release_id: int, realtime_start: str, realtime_end: str) -> list[str]:
        days = self.reference.release_days(release_id)
        lo, hi = np.searchsorted(days, [_days(realtime_start), min(_days(realtime_end), _days(self.realtime)) + 1])
        return _date_strings(days[lo:hi]).to_pylist()

    def _releases_dates(self, query: Mapping[str, str], file_type: str) -> bytes:
        year_start = f"{self.realtime[:4]}-01-01"
        realtime_start, realtime_end = self._realtime_period(query, year_start, REALTIME_END_MAX)
        limit, offset = _paging(query, LISTING_MAX_LIMIT)
        order_by = self._choice(query, "order_by", RELEASE_DATE_ORDERS, "release_date")
        sort_order = self._sort_order(query, "desc")

        def render() -> bytes:
            rows = []
            for release_id in self.reference.release_ids():
                name = self.reference.release(release_id)["name"]
                for day in self._dates_of(release_id, realtime_start, realtime_end):
                    rows.append({"release_id": release_id, "release_name": name, "date": day})
            field = {"release_date": "date", "release_id": "release_id", "release_name": "release_name"}[order_by]
            rows.sort(key=lambda r: (r["date"], r["release_id"]))
            rows.sort(key=lambda r: r[field], reverse=sort_order == "desc")
            envelope = {"realtime_start": realtime_start, "realtime_end": realtime_end, "order_by": order_by,
                        "sort_order": sort_order, "count": len(rows), "offset": offset, "limit": limit}
            return render_document(file_type, "release_dates", envelope, "release_date",
                                   rows[offset : offset + limit], text_key="date")

        key = ("releases/dates", realtime_start, realtime_end, limit, offset, order_by, sort_order, file_type)
        return self.cache.get_or_render(key, render)

    def _release_dates(self, query: Mapping[str, str], file_type: str) -> bytes:
        release_id = self._release_id(query)
        realtime_start, realtime_end = self._realtime_period(query, REALTIME_START_MIN, REALTIME_END_MAX)
        limit, offset = _paging(query, VINTAGE_DATES_MAX_LIMIT)
        sort_order = self._sort_order(query)

        def render() -> bytes:
            dates = self._dates_of(release_id, realtime_start, realtime_end)
            if sort_order == "desc":
                dates.reverse()
            rows = [{"release_id": release_id, "date": d} for d in dates[offset : offset + limit]]
            envelope = {"realtime_start": realtime_start, "realtime_end": realtime_end, "order_by": "release_date",
                        "sort_order": sort_order, "count": len(dates), "offset": offset, "limit": limit}
            return render_document(file_type, "release_dates", envelope, "release_date", rows, text_key="date")

        key = ("release/dates", release_id, realtime_start, realtime_end, limit, offset, sort_order, file_type)
        return self.cache.get_or_render(key, render)

    # ------------------------------------------------------------- categories

    def _category(self, query: Mapping[str, str], file_type: str) -> bytes:
        category = self.reference.category(self._category_id(query))
        return render_document(file_type, "categories", {}, "category", [category])

    def _category_children(self, query: Mapping[str, str], file_type: str) -> bytes:
        category_id = self._category_id(query)
        self._realtime_period(query)
        return render_document(file_type, "categories", {}, "category", self.reference.children(category_id))


def _names(raw: str | None) -> frozenset[str]:
    """``tag_names``-style ``a;b;c`` -> names (lower case)."""
    return frozenset(n.strip().lower() for n in (raw or "").split(";") if n.strip())


def _vintage_dates_param(raw: str, today: str) -> list[str]:
    dates = [d.strip() for d in raw.split(",") if d.strip()]
    if not dates:
        raise FredError(400, MSG_VINTAGE_DATES)
    for d in dates:
        try:
            if not _DATE_RE.fullmatch(d):
                raise ValueError(d)
            date.fromisoformat(d)
        except ValueError:
            raise FredError(400, MSG_VINTAGE_DATES) from None
        if d < REALTIME_START_MIN:
            raise FredError(400, msg_before_min("vintage_dates"))
        if d > today:
            raise FredError(400, f"Bad Request.  Variable vintage_dates can not be after today's date ({today}).")
    return sorted(set(dates))


def _observations_envelope(realtime_start: str, realtime_end: str, start: str, end: str, output_type: int,
                           sort_order: str, count: int, offset: int, limit: int, file_type: str = "json"
                           ) -> dict[str, Any]:
    """The envelope of a ``series/observations`` answer, in FRED's key order."""
    return {
        "realtime_start": realtime_start,
        "realtime_end": realtime_end,
        "observation_start": start,
        "observation_end": end,
        "units": "lin",
        "output_type": output_type,
        "file_type": file_type,
        "order_by": "observation_date",
        "sort_order": sort_order,
        "count": count,
        "offset": offset,
        "limit": limit,
    }


def _observations_header(realtime_start: str, realtime_end: str, start: str, end: str, output_type: int,
                         sort_order: str, count: int, offset: int, limit: int, file_type: str = "json") -> bytes:
    """The envelope of a ``series/observations`` answer, rendered (rows are appended to it):
    JSON ``{...}`` (its closing brace is dropped by :func:`_observations_body`) or the XML root's start tag."""
    envelope = _observations_envelope(realtime_start, realtime_end, start, end, output_type, sort_order,
                                      count, offset, limit, file_type)
    if file_type == "json":
        return fred_json(envelope)
    return render_document("xml", "observations", envelope, None, None).rsplit(b"\n", 1)[0]


def _observations_body(file_type: str, header: bytes, rows: bytes) -> bytes:
    if file_type == "json":
        return header[:-1] + b',"observations":[' + rows + b"]}"
    return header + (b"\n" + rows if rows else b"") + b"\n</observations>"


_ROW_PARTS = {
    "json": ('{"realtime_start":"', '","realtime_end":"', '","date":"', '","value":"', '"}', ","),
    "xml": ('  <observation realtime_start="', '" realtime_end="', '" date="', '" value="', '"/>', "\n"),
}


def _render_rows(file_type: str, starts: Any, ends: Any, dates: pa.Array, values: pa.Array) -> bytes:
    """Observation rows (``starts``/``ends``: one string for every row, or arrays), built column-wise in Arrow."""
    if len(dates) == 0:
        return b""
    p_start, p_end, p_date, p_value, close, sep = _ROW_PARTS[file_type]
    rows = pc.binary_join_element_wise(p_start, starts, p_end, ends, p_date, dates, p_value, values, close, "")
    one_list = pa.ListArray.from_arrays(pa.array([0, len(rows)], pa.int32()), rows)
    return pc.binary_join(one_list, sep)[0].as_buffer().to_pybytes()


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


def build_app(config: SimConfig, **clocks: Callable[[], float]) -> web.Application:
    """The simulator as an aiohttp application (state in ``app[SIMULATOR_KEY]``);
    ``clocks``: ``monotonic``/``wall`` for :class:`FredSimulator` (tests)."""
    sim = FredSimulator(config, **clocks)
    if sim.catalog.series_ids:
        # Build one series' data now: the first build imports what pyarrow's conversions load lazily
        # (pandas, when installed: ~1-3 s). Done inside the first request, it would stall the event loop
        # and every request of the client's first second behind it (clients time out on 429s).
        sim.catalog.series_data(sim.catalog.series_ids[0])
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
