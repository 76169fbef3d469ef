"""Async FRED client: endpoints, paging, retries, error classes. No Prefect, no DuckDB.

Where requests go (real FRED, the simulator) is configuration
(``Settings.api_url``), not a code path. Every request:

1. waits on the run's :class:`~fredflow.limiter.AdaptiveLimiter` (rate and 429 back-off),
2. is sent with ``api_key`` and ``file_type=json``,
3. is classified by :func:`classify` into success or one of the error types,
4. is retried when transient (5xx, timeout, reset, truncated/invalid JSON) up to
   ``max_attempts`` with exponential backoff and jitter, or on 429 up to
   ``max_throttled_attempts`` after the limiter's run-wide pause.

The api key is sent but never logged: errors carry the endpoint and series,
never the URL with its query string.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass
from datetime import date
from typing import Any, Callable, TypeVar

import aiohttp
import pyarrow as pa

from .errors import (
    BadApiKey,
    BadRequest,
    CatalogNotFound,
    FredError,
    RateLimited,
    SeriesNotFound,
    TransientError,
)
from .limiter import Limiter
from .parse import OBSERVATION_SCHEMA, Page, ResponseFormatError, concat, decode, parse_observations, parse_series_list
from .settings import Settings

T = TypeVar("T")

LIST_PAGE_LIMIT = 1000  # FRED's maximum for release/category/updates listings


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


def classify(status: int, body: bytes, *, retry_after: str | None = None) -> FredError:
    """Map a non-200 answer to the error type that decides its handling."""
    message = _error_message(body)
    lowered = message.lower()
    if status == 429:
        seconds = None
        if retry_after:
            try:
                seconds = max(0.0, float(retry_after))
            except ValueError:
                seconds = None
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
    """A narrow async API over one :class:`aiohttp.ClientSession`.

    ``limiter`` paces requests and is shared by everything running on the same
    event loop in this run; ``stats`` counts requests, retries and 429s.
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        settings: Settings,
        limiter: Limiter,
        *,
        stats: RequestStats | None = None,
        sleep: Callable[[float], Any] = asyncio.sleep,
    ) -> None:
        self._session = session
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
        try:
            async with self._session.get(f"{self._settings.base_url}/{endpoint}", params=query) as response:
                body = await response.read()
                if response.status == 200:
                    return body
                raise classify(response.status, body, retry_after=response.headers.get("Retry-After"))
        except FredError:
            raise
        except asyncio.TimeoutError:
            raise TransientError(f"timed out after {self._settings.timeout:g}s") from None
        except aiohttp.ClientPayloadError as exc:
            raise TransientError(f"truncated response: {type(exc).__name__}") from None
        except aiohttp.ClientError as exc:
            raise TransientError(f"connection error: {type(exc).__name__}: {_strip_url(exc)}") from None

    def _backoff(self, attempt: int) -> float:
        s = self._settings
        return min(s.backoff_max, s.backoff_base * 2 ** (attempt - 1)) * random.uniform(0.5, 1.5)

    async def _request(self, endpoint: str, params: dict[str, Any], decode_body: Callable[[bytes], T]) -> T:
        """One logical request: send, decode, classify; retry what is worth retrying."""
        failures = throttles = 0
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
                if throttles >= self._settings.max_throttled_attempts:
                    exc.attempts = failures + throttles
                    raise
                self.stats.retries += 1
                await self._sleep(self._limiter.throttled(exc.retry_after))
            except TransientError as exc:
                failures += 1
                if failures >= self._settings.max_attempts:
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
        limit = self._settings.page_limit
        params = {
            "series_id": series_id,
            "observation_start": start.isoformat() if start else None,
            "observation_end": end.isoformat() if end else None,
            "limit": limit,
        }
        first: Page = await self._request("series/observations", {**params, "offset": 0}, parse_observations)
        pages = [first]
        if first.count > first.table.num_rows:
            offsets = range(first.table.num_rows, first.count, limit)
            pages += await asyncio.gather(
                *(self._request("series/observations", {**params, "offset": o}, parse_observations) for o in offsets)
            )
        table = concat([p.table for p in pages], OBSERVATION_SCHEMA)
        if table.num_rows != first.count:
            raise TransientError(f"{series_id}: read {table.num_rows} rows, FRED announced {first.count}")
        return table

    async def _listing(self, endpoint: str, params: dict[str, Any]) -> pa.Table:
        first = await self._request(endpoint, {**params, "limit": LIST_PAGE_LIMIT, "offset": 0}, parse_series_list)
        pages = [first]
        for offset in range(LIST_PAGE_LIMIT, first.count, LIST_PAGE_LIMIT):
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


def _strip_url(exc: BaseException) -> str:
    """aiohttp errors can embed the request URL, whose query holds the api key: drop it."""
    text = str(exc)
    return text.split("?", 1)[0] if "?" in text else text


def new_session(settings: Settings, concurrency: int) -> aiohttp.ClientSession:
    """One session per batch (or per run in the asyncio runner), at most ``concurrency`` connections."""
    return aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=settings.timeout),
        connector=aiohttp.TCPConnector(limit=concurrency, ttl_dns_cache=300),
        raise_for_status=False,
    )


__all__ = ["FredClient", "RequestStats", "classify", "new_session"]
