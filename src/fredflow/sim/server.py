"""aiohttp server imitating the FRED API over a :class:`SimCatalog`.

Endpoints (GET, under ``/fred/``): ``series``, ``series/observations``,
``release/series``, ``category/series``.  Bodies, key order, value formats,
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

Test hooks, not rate limited, not counted: ``GET /_sim/health``,
``GET /_sim/stats``, ``POST /_sim/reset``.
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
from dataclasses import dataclass
from datetime import date
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
from aiohttp import web

from fredflow.sim.catalog import DEFAULT_TODAY, SimCatalog

__all__ = [
    "DEMO_API_KEY",
    "FAULT_KINDS",
    "LISTING_MAX_LIMIT",
    "OBSERVATIONS_MAX_LIMIT",
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
"""FRED's maximum (and default) ``limit`` for release/series and category/series."""

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
_EPOCH = date(1970, 1, 1)


@dataclass(frozen=True)
class SimConfig:
    """Everything that defines a simulator instance.

    The first six fields are :class:`SimCatalog`'s arguments.  ``rate`` is in
    requests/s (``None`` or 0: unlimited) with bucket capacity ``burst``;
    ``latency`` seconds are added to every admitted request; ``fault_rate``
    (0..1) of admitted requests fail as one of ``fault_kinds``; a ``"hang"``
    sleeps ``hang_seconds`` before answering normally.  ``max_limit`` is the
    default and maximum ``limit`` of series/observations.  Every
    32-character lower-case alphanumeric api_key is registered except those in
    ``unregistered_keys``.  ``cache_mb`` bounds the cache of rendered bodies.
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

    def __post_init__(self) -> None:
        object.__setattr__(self, "fault_kinds", tuple(self.fault_kinds))
        object.__setattr__(self, "unregistered_keys", tuple(self.unregistered_keys))
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
        self.config = config
        self.catalog = config.catalog()
        self.realtime = self.catalog.realtime
        self.bucket = TokenBucket(config.rate, config.burst) if config.rate else None
        self.cache = BodyCache(int(config.cache_mb * 1024 * 1024))
        self.stats = SimStats()
        self._fault_rng = random.Random(config.seed)
        self._unregistered = frozenset(config.unregistered_keys)
        self._endpoints: dict[str, Callable[[Mapping[str, str]], bytes]] = {
            "series": self._series,
            "series/observations": self._observations,
            "release/series": lambda q: self._listing(q, "release", self.catalog.releases),
            "category/series": lambda q: self._listing(q, "category", self.catalog.categories),
        }
        self._row_prefix = f'{{"realtime_start":"{self.realtime}","realtime_end":"{self.realtime}","date":"'

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
        header = fred_json(
            {
                "realtime_start": self.realtime,
                "realtime_end": self.realtime,
                "observation_start": start,
                "observation_end": end,
                "units": "lin",
                "output_type": 1,
                "file_type": "json",
                "order_by": "observation_date",
                "sort_order": sort_order,
                "count": count,
                "offset": offset,
                "limit": limit,
            }
        )
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
