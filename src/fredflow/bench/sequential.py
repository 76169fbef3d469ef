"""The sequential baseline: one blocking request at a time, the way fredapi-style scripts work.

``urllib.request.urlopen`` per request (a new connection each time, as
fredapi does), ``json.loads`` of the body, Python lists of rows, and one
``INSERT`` of all rows into DuckDB at the end. It lists the catalog the same
way fredflow does (``release/series``, pages of 1000) so both do the same
requests, and is given the same knowledge of the rate limit (a minimum gap
between requests) and a plain retry policy (429, 5xx, timeouts, resets, bad
JSON: sleep and retry), so it finishes every scenario. It imports neither
fredflow's client nor aiohttp, Prefect or Dask.
"""

from __future__ import annotations

import http.client
import json
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

LISTING_PAGE = 1000


class _Failed(Exception):
    def __init__(self, status: int | None, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class SequentialStats:
    requests: int = 0
    retries: int = 0
    throttled: int = 0
    failed: list[str] = field(default_factory=list)


class SequentialClient:
    """A blocking FRED client: pacing (``rate``) and sleep-and-retry, nothing concurrent."""

    def __init__(self, api_url: str, api_key: str, *, rate: float | None = None, timeout: float = 30.0,
                 max_attempts: int = 5, max_throttled: int = 30, backoff_base: float = 0.5,
                 backoff_max: float = 8.0) -> None:
        self.base = api_url.rstrip("/")
        self.api_key = api_key
        self.gap = 1.0 / rate if rate else 0.0
        self.timeout = timeout
        self.max_attempts, self.max_throttled = max_attempts, max_throttled
        self.backoff_base, self.backoff_max = backoff_base, backoff_max
        self.stats = SequentialStats()
        self._last = 0.0

    def _pace(self) -> None:
        if self.gap:
            wait = self._last + self.gap - time.monotonic()
            if wait > 0:
                time.sleep(wait)
        self._last = time.monotonic()

    def get(self, endpoint: str, **params: Any) -> Any:
        query = urllib.parse.urlencode({**params, "api_key": self.api_key, "file_type": "json"})
        url = f"{self.base}/{endpoint}?{query}"
        failures = throttles = 0
        while True:
            self._pace()
            self.stats.requests += 1
            try:
                with urllib.request.urlopen(url, timeout=self.timeout) as response:
                    return json.loads(response.read())
            except urllib.error.HTTPError as exc:
                status = exc.code
                body = exc.read()
                if status == 429:
                    throttles += 1
                    self.stats.throttled += 1
                    if throttles >= self.max_throttled:
                        raise _Failed(status, "rate limited") from None
                    self.stats.retries += 1
                    time.sleep(min(self.backoff_max, self.backoff_base * 2 ** min(throttles - 1, 6)))
                    continue
                if status < 500:
                    raise _Failed(status, body[:200].decode("utf-8", "replace")) from None
                error: str = f"HTTP {status}"
            except (urllib.error.URLError, http.client.HTTPException, ConnectionError, socket.timeout,
                    TimeoutError, ValueError) as exc:  # ValueError: bad/truncated JSON
                error = f"{type(exc).__name__}"
            failures += 1
            if failures >= self.max_attempts:
                raise _Failed(None, error)
            self.stats.retries += 1
            time.sleep(min(self.backoff_max, self.backoff_base * 2 ** (failures - 1)))


def list_release(client: SequentialClient, release_id: int) -> list[str]:
    ids: list[str] = []
    offset = 0
    while True:
        doc = client.get("release/series", release_id=release_id, limit=LISTING_PAGE, offset=offset)
        ids += [s["id"] for s in doc["seriess"]]
        offset += LISTING_PAGE
        if offset >= int(doc["count"]):
            return ids


def observations(client: SequentialClient, series_id: str, page_limit: int = 100_000) -> list[dict[str, str]]:
    rows: list[dict[str, str]] = []
    offset = 0
    while True:
        doc = client.get("series/observations", series_id=series_id, limit=page_limit, offset=offset)
        rows += doc["observations"]
        offset += page_limit
        if offset >= int(doc["count"]):
            return rows


def run_sequential(db: str | Path, api_url: str, api_key: str, *, release: int = 1, rate: float | None = None,
                   timeout: float = 30.0, max_attempts: int = 5, backoff_base: float = 0.5,
                   progress: Callable[[int, int, int], None] | None = None,
                   phase: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Fetch every series of ``release`` one request at a time, then write all rows to ``db``.

    Returns a summary shaped like fredflow's ``RunSummary.to_dict()``.
    ``progress(done, total, rows)`` is called after each series, ``phase(name)``
    when the fetch starts and ends.
    """
    import duckdb
    import pyarrow as pa

    started = time.perf_counter()
    client = SequentialClient(api_url, api_key, rate=rate, timeout=timeout, max_attempts=max_attempts,
                              backoff_base=backoff_base)
    ids = list_release(client, release)
    if phase:
        phase("fetch")
    sid_col: list[str] = []
    date_col: list[str] = []
    value_col: list[float | None] = []
    for done, series_id in enumerate(ids, 1):
        try:
            rows = observations(client, series_id)
        except _Failed:
            client.stats.failed.append(series_id)
            continue
        for row in rows:
            value = row["value"]
            sid_col.append(series_id)
            date_col.append(row["date"])
            value_col.append(None if value == "." else float(value))
        if progress:
            progress(done, len(ids), len(sid_col))
    if phase:
        phase("merge")
    table = pa.table({"series_id": pa.array(sid_col, pa.string()),
                      "date": pa.array(date_col, pa.string()).cast(pa.date32()),
                      "value": pa.array(value_col, pa.float64())})
    del sid_col, date_col, value_col
    con = duckdb.connect(str(db))
    try:
        con.execute("CREATE TABLE IF NOT EXISTS observations (series_id VARCHAR NOT NULL, date DATE NOT NULL, "
                    "value DOUBLE, PRIMARY KEY (series_id, date))")
        con.register("fetched", table)
        con.execute("INSERT INTO observations SELECT series_id, date, value FROM fetched "
                    "ON CONFLICT (series_id, date) DO UPDATE SET value = excluded.value")
    finally:
        con.close()
    seconds = time.perf_counter() - started
    stats = client.stats
    return {
        "run_id": "sequential", "status": "succeeded" if not stats.failed else "partial",
        "n_series": len(ids), "n_failed": len(stats.failed), "n_rows": table.num_rows, "seconds": round(seconds, 3),
        "requests": stats.requests, "retries": stats.retries, "failed": stats.failed, "throttled": stats.throttled,
        "achieved_rps": round(stats.requests / seconds, 3) if seconds else 0.0, "runner": "sequential", "db": str(db),
    }
