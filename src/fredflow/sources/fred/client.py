"""Async FRED client: endpoints, paging, retries, error classes. No Prefect, no DuckDB.

Where requests go (real FRED, the simulator) is configuration
(``Settings.api_url``), not a code path; how they get there is a
:mod:`~fredflow.sources.fred.transport` (aiohttp, or in-process for tests). Every request:

1. waits on the run's limiter (:mod:`fredflow.ratelimit`: rate and 429 back-off),
2. is sent with ``api_key`` and ``file_type=json``,
3. is classified by :func:`classify` into success or one of the error types,
4. is retried when transient (5xx, timeout, reset, truncated/invalid JSON) up to
   ``max_attempts`` with exponential backoff and jitter, or on 429 up to
   ``max_throttled_attempts`` after the limiter's run-wide pause.

The api key is sent but never logged: errors carry the endpoint and series,
never the URL with its query string, and any text from a response passes through
:func:`fredflow.redact.redact` (in the error types). The transport caps bodies
(``max_body_bytes``) and refuses redirects to another host; ``max_retry_after``
caps a 429's wait and ``max_count`` an announced row count.
"""

from __future__ import annotations

import asyncio
import math
import random
import re
import time
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any, AsyncIterator, Callable, TypeVar

import aiohttp
import pyarrow as pa
import pyarrow.compute as pc

from ...errors import (
    BadApiKey,
    BadRequest,
    CatalogNotFound,
    FredError,
    RateLimited,
    SeriesNotFound,
    TransientError,
)
from ...ratelimit.local import Limiter
from ...settings import Settings
from .limits import LIST_PAGE_LIMIT, MAX_VINTAGE_DATES, VINTAGE_DATES_PAGE_LIMIT
from .parse import (
    OBSERVATION_SCHEMA,
    VINTAGE_DATES_SCHEMA,
    VINTAGE_SCHEMA,
    Page,
    ResponseFormatError,
    concat,
    decode,
    parse_observations,
    parse_series_list,
    parse_vintage_dates,
    parse_vintage_observations,
    stitch_vintages,
)
from .transport import AiohttpTransport, Transport, new_session as _new_session

T = TypeVar("T")


@dataclass
class RequestStats:
    """What one client sent: every HTTP attempt counts as a request."""

    requests: int = 0
    retries: int = 0
    throttled: int = 0
    first_request_at: float | None = None  # wall clock (time.time()) of the first and last send
    last_request_at: float | None = None

    def sent(self) -> None:
        now = time.time()
        self.requests += 1
        if self.first_request_at is None:
            self.first_request_at = now
        self.last_request_at = now


def _error_message(body: bytes) -> str:
    try:
        doc = decode(body)
        if isinstance(doc, dict) and "error_message" in doc:
            return str(doc["error_message"])
    except ResponseFormatError:
        pass
    text = body[:200].decode("utf-8", "replace").strip()
    return " ".join(text.split()) or "(empty body)"


_ECHOED_KEY = re.compile(r"api_key\s*(=|%3d)\S*")


def classify(status: int, body: bytes, *, retry_after: str | None = None) -> FredError:
    """Map a non-200 answer to the error type that decides its handling.

    The message is redacted by the error itself (:class:`~fredflow.errors.FredflowError`); an error
    page that echoes the request URL (proxies do) is not mistaken for a refused key.
    ``Retry-After`` is seconds (``inf`` kept as such; :meth:`FredClient._request` caps it)."""
    message = _error_message(body)
    lowered = _ECHOED_KEY.sub("", message.lower())
    if status == 429:
        seconds = None
        if retry_after:
            try:
                seconds = float(retry_after)
            except ValueError:
                seconds = None
            if seconds is not None:
                seconds = math.inf if math.isnan(seconds) else max(0.0, seconds)
        return RateLimited(message, retry_after=seconds)
    if status >= 500:
        return TransientError(f"HTTP {status}: {message}", http_status=status)
    if "api_key" in lowered:
        return BadApiKey(message, http_status=status)
    if "series does not exist" in lowered:
        return SeriesNotFound(message, http_status=status)
    if ("release" in lowered or "category" in lowered) and ("not exist" in lowered or "not registered" in lowered):
        return CatalogNotFound(message, http_status=status)
    if status == 408:
        return TransientError(f"HTTP {status}: {message}", http_status=status)
    return BadRequest(message, http_status=status)


class FredClient:
    """A narrow async API over one :class:`~fredflow.sources.fred.transport.Transport`.

    ``transport`` is a transport, or an :class:`aiohttp.ClientSession` (wrapped in an
    :class:`~fredflow.sources.fred.transport.AiohttpTransport`). ``limiter`` paces
    requests and is shared by everything running on the same event loop in this
    run; ``stats`` counts requests, retries and 429s.
    """

    def __init__(
        self,
        transport: Transport | aiohttp.ClientSession,
        settings: Settings,
        limiter: Limiter,
        *,
        stats: RequestStats | None = None,
        sleep: Callable[[float], Any] = asyncio.sleep,
    ) -> None:
        if isinstance(transport, aiohttp.ClientSession):
            transport = AiohttpTransport(transport, timeout=settings.timeout, max_body=settings.max_body_bytes)
        self._transport = transport
        self._settings = settings
        self._limiter = limiter
        self._sleep = sleep
        self.stats = stats if stats is not None else RequestStats()

    # -- transport ---------------------------------------------------------------

    async def _get_once(self, endpoint: str, params: dict[str, Any]) -> bytes:
        query = {k: str(v) for k, v in params.items() if v is not None}
        query["api_key"] = self._settings.api_key.get_secret_value()
        query["file_type"] = "json"
        await self._limiter.acquire()
        self.stats.sent()
        response = await self._transport.get(f"{self._settings.base_url}/{endpoint}", query)
        if response.status == 200:
            return response.body
        raise classify(response.status, response.body, retry_after=response.headers.get("Retry-After"))

    def _backoff(self, attempt: int) -> float:
        s = self._settings
        return min(s.backoff_max, s.backoff_base * 2 ** (attempt - 1)) * random.uniform(0.5, 1.5)

    async def _request(self, endpoint: str, params: dict[str, Any], decode_body: Callable[[bytes], T]) -> T:
        """One logical request: send, decode, classify; retry what is worth retrying."""
        failures = throttles = capped = 0  # capped: 429s whose Retry-After exceeded max_retry_after
        while True:
            try:
                body = await self._get_once(endpoint, params)
                try:
                    result = decode_body(body)
                except ResponseFormatError as exc:
                    raise TransientError(f"bad response body: {exc}") from None
                self._limiter.succeeded()
                return result
            except RateLimited as exc:
                throttles += 1
                self.stats.throttled += 1
                cap = self._settings.max_retry_after
                excessive = exc.retry_after is not None and exc.retry_after > cap
                if excessive:
                    # a Retry-After beyond the cap (hours, inf) is not FRED pacing us: wait the cap, and
                    # count it against max_attempts, so a hostile upstream bounds the run's time
                    capped += 1
                    exc.retry_after = cap
                if throttles >= self._settings.max_throttled_attempts or (
                        excessive and failures + capped >= self._settings.max_attempts):
                    exc.attempts = failures + throttles
                    raise
                self.stats.retries += 1
                await self._sleep(min(cap, self._limiter.throttled(exc.retry_after)))
            except TransientError as exc:
                failures += 1
                if failures + capped >= self._settings.max_attempts:
                    exc.attempts = failures + throttles
                    raise
                self.stats.retries += 1
                await self._sleep(self._backoff(failures))
            except FredError as exc:  # permanent: no retry
                exc.attempts = failures + throttles + 1
                raise

    # -- endpoints ---------------------------------------------------------------

    async def series(self, series_id: str) -> pa.Table:
        """``series``: one row of series metadata."""
        page = await self._request("series", {"series_id": series_id}, parse_series_list)
        return page.table

    async def observations(self, series_id: str, start: date | None = None, end: date | None = None) -> pa.Table:
        """``series/observations`` for one series, every page (``limit``/``offset``) until ``count`` rows are read.

        The first page tells ``count``; the remaining pages are fetched concurrently.
        """
        params = {
            "series_id": series_id,
            "observation_start": start.isoformat() if start else None,
            "observation_end": end.isoformat() if end else None,
        }
        table = await self._all_pages("series/observations", params, parse_observations, OBSERVATION_SCHEMA,
                                      self._settings.page_limit, series_id)
        if table.num_rows > 1:
            # pages read while FRED revised the series could overlap; a run must never stage a date twice
            dates = table.column("date").combine_chunks()
            if not pc.all(pc.greater(dates.slice(1), dates.slice(0, len(dates) - 1))).as_py():
                raise TransientError(f"{series_id}: observation dates out of order or repeated across pages")
        return table

    def _check_count(self, page: Page, what: str) -> None:
        if page.count > self._settings.max_count:
            raise TransientError(f"{what}: FRED announced {page.count:,} rows, more than max_count "
                                 f"{self._settings.max_count:,}: refusing to page through it")

    async def _all_pages(self, endpoint: str, params: dict[str, Any], parse: Callable[[bytes], Page],
                         schema: pa.Schema, limit: int, what: str) -> pa.Table:
        """Every page of a ``limit``/``offset`` endpoint: the first tells ``count``, the rest follow with at
        most ``page_concurrency`` in flight (pages are requested lazily: an absurd ``count`` costs nothing
        until it is refused by ``max_count``), stopping at the first empty page.
        Fewer rows than announced (a page lost or cut) is a :class:`TransientError`."""
        first: Page = await self._request(endpoint, {**params, "limit": limit, "offset": 0}, parse)
        self._check_count(first, what)
        pages = [first]
        if first.count > first.table.num_rows and first.table.num_rows:
            offsets = iter(range(first.table.num_rows, first.count, limit))
            window = self._settings.page_concurrency
            in_flight: list[asyncio.Task[Page]] = []
            try:
                while True:
                    while len(in_flight) < window and (offset := next(offsets, None)) is not None:
                        in_flight.append(asyncio.ensure_future(
                            self._request(endpoint, {**params, "limit": limit, "offset": offset}, parse)))
                    if not in_flight:
                        break
                    page = await in_flight.pop(0)  # in offset order
                    pages.append(page)
                    if page.table.num_rows == 0:
                        break  # FRED has nothing more, whatever it announced
            finally:
                for task in in_flight:
                    task.cancel()
                if in_flight:
                    await asyncio.gather(*in_flight, return_exceptions=True)
        table = concat([p.table for p in pages], schema)
        if table.num_rows != first.count:
            raise TransientError(f"{what}: read {table.num_rows} rows, FRED announced {first.count}")
        return table

    async def _listing(self, endpoint: str, params: dict[str, Any]) -> pa.Table:
        """Every page of a release or category listing, one at a time, up to the first empty page."""
        first = await self._request(endpoint, {**params, "limit": LIST_PAGE_LIMIT, "offset": 0}, parse_series_list)
        self._check_count(first, endpoint)
        pages = [first]
        for offset in range(LIST_PAGE_LIMIT, first.count, LIST_PAGE_LIMIT):
            if pages[-1].table.num_rows == 0:
                break  # later pages empty: stop, as series/updates does
            pages.append(
                await self._request(endpoint, {**params, "limit": LIST_PAGE_LIMIT, "offset": offset}, parse_series_list)
            )
        return pa.concat_tables([p.table for p in pages])

    async def release_series(self, release_id: int) -> pa.Table:
        """``release/series``: metadata of every series in a release (pages of 1000)."""
        return await self._listing("release/series", {"release_id": release_id})

    async def category_series(self, category_id: int) -> pa.Table:
        """``category/series``: metadata of every series in a category (pages of 1000)."""
        return await self._listing("category/series", {"category_id": category_id})

    async def series_updates(self, *, filter_value: str = "all") -> AsyncIterator[Page]:
        """``series/updates``: series metadata, most recently updated first, one page (1000) at a time.

        A generator so the caller stops paging as soon as it reaches updates it
        has already seen: a daily run reads a page or two, not FRED's whole list.
        """
        offset, count = 0, None
        while count is None or offset < count:
            page = await self._request(
                "series/updates",
                {"filter_value": filter_value, "limit": LIST_PAGE_LIMIT, "offset": offset},
                parse_series_list,
            )
            count = page.count
            yield page
            if page.table.num_rows == 0:
                return
            offset += page.table.num_rows

    # -- vintages (ALFRED) -------------------------------------------------------

    async def vintage_dates(
        self, series_id: str, realtime_start: date | None = None, realtime_end: date | None = None
    ) -> list[date]:
        """``series/vintagedates``: the dates the series' data changed on, ascending (pages of 10000)."""
        params = {
            "series_id": series_id,
            "realtime_start": realtime_start.isoformat() if realtime_start else None,
            "realtime_end": realtime_end.isoformat() if realtime_end else None,
        }
        table = await self._all_pages("series/vintagedates", params, parse_vintage_dates, VINTAGE_DATES_SCHEMA,
                                      VINTAGE_DATES_PAGE_LIMIT, f"{series_id} vintage dates")
        return table.column("vintage_date").to_pylist()

    async def vintages(
        self,
        series_id: str,
        realtime_start: date,
        realtime_end: date,
        *,
        observation_start: date | None = None,
        observation_end: date | None = None,
        max_vintage_dates: int = MAX_VINTAGE_DATES,
    ) -> pa.Table:
        """Every real-time period of the series' observations that intersects
        ``[realtime_start, realtime_end]``, clipped to it, as one request without
        FRED's vintage-date limit would return it (:data:`~fredflow.parse.VINTAGE_SCHEMA`,
        sorted by date, realtime_start).

        FRED refuses a request whose real-time period holds more than 2000 vintage
        dates, so the period is split (:func:`vintage_ranges`, from ``series/vintagedates``)
        into consecutive ranges of at most ``max_vintage_dates``; the ranges are fetched
        concurrently, each paged like :meth:`observations`, and a period FRED cut at a
        range boundary is joined again (:func:`~fredflow.parse.stitch_vintages`).
        """
        vintage_dates = await self.vintage_dates(series_id, realtime_start, realtime_end)
        ranges = vintage_ranges(vintage_dates, realtime_start, realtime_end, max_vintage_dates)
        tables = await asyncio.gather(
            *(self._vintage_range(series_id, start, end, observation_start, observation_end) for start, end in ranges)
        )
        return stitch_vintages(list(tables), [end for _, end in ranges[:-1]])

    async def _vintage_range(
        self, series_id: str, realtime_start: date, realtime_end: date,
        observation_start: date | None, observation_end: date | None,
    ) -> pa.Table:
        """One real-time range of ``series/observations``, every page."""
        params = {
            "series_id": series_id,
            "realtime_start": realtime_start.isoformat(),
            "realtime_end": realtime_end.isoformat(),
            "observation_start": observation_start.isoformat() if observation_start else None,
            "observation_end": observation_end.isoformat() if observation_end else None,
        }
        return await self._all_pages("series/observations", params, parse_vintage_observations, VINTAGE_SCHEMA,
                                     self._settings.page_limit, f"{series_id} {realtime_start}..{realtime_end}")


def vintage_ranges(
    vintage_dates: list[date], realtime_start: date, realtime_end: date, max_vintage_dates: int = MAX_VINTAGE_DATES
) -> list[tuple[date, date]]:
    """Split ``[realtime_start, realtime_end]`` into consecutive ranges holding at most
    ``max_vintage_dates`` of ``vintage_dates`` each.

    Range i starts on its first vintage date (range 0 on ``realtime_start``) and ends the
    day before the next range's first vintage date (the last range on ``realtime_end``),
    so the ranges tile the period without gap or overlap.
    """
    if max_vintage_dates < 1:
        raise ValueError("max_vintage_dates must be >= 1")
    if realtime_start > realtime_end:
        raise ValueError("realtime_start is after realtime_end")
    inside = sorted(d for d in set(vintage_dates) if realtime_start <= d <= realtime_end)
    firsts = inside[max_vintage_dates::max_vintage_dates]
    starts = [realtime_start, *firsts]
    ends = [d - timedelta(days=1) for d in firsts] + [realtime_end]
    return list(zip(starts, ends))


def new_session(settings: Settings, concurrency: int) -> aiohttp.ClientSession:
    """One session per batch (or per run in the asyncio runner), at most ``concurrency`` connections."""
    return _new_session(settings.timeout, concurrency)


__all__ = ["FredClient", "RequestStats", "classify", "new_session"]
