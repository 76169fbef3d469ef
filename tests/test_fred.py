"""fred.py against the real error bodies and a real simulator process over aiohttp."""

from __future__ import annotations

import asyncio
import time

import pyarrow as pa
import pytest

from conftest import SAMPLES
from fredflow.errors import (
    BadApiKey, BadRequest, CatalogNotFound, RateLimited, SeriesNotFound, TransientError,
)
from fredflow.sources.fred.client import FredClient, RequestStats, classify, new_session
from fredflow.ratelimit.service import ScheduleLimiter
from fredflow.sim.process import SimProcess
from fredflow.sim.server import UNREGISTERED_KEY


def _error_sample(status: int, fragment: str) -> bytes:
    for path in sorted((SAMPLES / "errors").glob(f"*HTTP{status}.json")):
        if fragment in path.name:
            return path.read_bytes()
    raise AssertionError(f"no HTTP{status} sample matching {fragment}")


def test_classify_real_error_bodies():
    err = classify(429, _error_sample(429, "related_tags"))
    assert isinstance(err, RateLimited) and err.message == "Too Many Requests.  Exceeded Rate Limit"
    assert err.retry_after is None  # FRED sends no Retry-After
    assert isinstance(classify(500, _error_sample(500, "geoseries")), TransientError)
    bad = classify(400, _error_sample(400, "get_series_json"))
    assert isinstance(bad, BadRequest) and not isinstance(bad, SeriesNotFound)
    assert bad.message == "Bad Request.  Variable series_id has not been set."
    assert isinstance(classify(400, b'{"error_code":400,"error_message":"Bad Request.  The series does not exist."}'), SeriesNotFound)
    assert isinstance(classify(404, b'{"error_code":404,"error_message":"Not Found.  The series does not exist."}'), SeriesNotFound)
    key = classify(400, b'{"error_code":400,"error_message":"Bad Request.  The value for variable api_key is not registered.  Read https://fred.stlouisfed.org/docs/api/api_key.html for more information."}')
    assert isinstance(key, BadApiKey)
    assert isinstance(classify(502, b"<html><h1>502 Bad Gateway</h1></html>"), TransientError)
    assert isinstance(classify(429, b"{}", retry_after="7"), RateLimited)
    assert classify(429, b"{}", retry_after="7").retry_after == 7.0
    assert isinstance(classify(400, b'{"error_code":400,"error_message":"Bad Request.  The release does not exist."}'), CatalogNotFound)


async def _with_client(process, settings, body):
    stats = RequestStats()
    async with new_session(settings, settings.concurrency) as session:
        client = FredClient(session, settings, ScheduleLimiter.at(settings.rate, settings.burst), stats=stats)
        return await body(client), stats


async def test_observations_match_the_catalog_row_by_row(sim, settings_for):
    sid = sim.catalog.series_ids[3]
    table, stats = await _with_client(sim, settings_for(sim), lambda c: c.observations(sid))
    truth = sim.catalog.observations(sid)
    assert table.column("date").to_pylist() == truth.column("date").to_pylist()
    assert table.column("value").to_pylist() == truth.column("value").to_pylist()
    assert table.column("value").null_count == truth.column("value").null_count
    assert stats.requests == 1 and stats.retries == 0


async def test_paging_across_the_100000_limit(sim, settings_for):
    long_id = sim.catalog.long_series_ids[0]
    truth = sim.catalog.observations(long_id)
    assert truth.num_rows > 100_000
    table, stats = await _with_client(sim, settings_for(sim), lambda c: c.observations(long_id))
    assert stats.requests == 2  # offset 0 and offset 100000
    assert table.num_rows == truth.num_rows
    assert table.column("date").equals(truth.column("date"))
    assert table.column("value").to_pylist() == truth.column("value").to_pylist()


async def test_small_pages_and_date_window(sim, settings_for):
    from datetime import date

    sid = sim.catalog.series_ids[10]
    settings = settings_for(sim, page_limit=7)
    start, end = date(2000, 1, 1), date(2003, 12, 31)
    table, stats = await _with_client(sim, settings, lambda c: c.observations(sid, start, end))
    truth = sim.catalog.observations(sid)
    mask = [start <= d <= end for d in truth.column("date").to_pylist()]
    expected = truth.filter(pa.array(mask))
    assert table.num_rows == expected.num_rows > 7
    assert stats.requests == -(-expected.num_rows // 7)
    assert table.column("value").to_pylist() == expected.column("value").to_pylist()


async def test_series_metadata(sim, settings_for):
    sid = sim.catalog.series_ids[0]
    table, _ = await _with_client(sim, settings_for(sim), lambda c: c.series(sid))
    row = table.to_pylist()[0]
    meta = sim.catalog.meta(sid)
    assert row["series_id"] == sid and row["title"] == meta["title"] and row["frequency"] == meta["frequency"]


async def test_release_listing_pages_of_1000(settings_for):
    with SimProcess(n_series=1500, seed=3) as big:
        table, stats = await _with_client(big, settings_for(big), lambda c: c.release_series(1))
        assert table.column("series_id").to_pylist() == big.catalog.releases[1]
        assert stats.requests == 2


async def test_unknown_and_withdrawn_series(sim, settings_for):
    with pytest.raises(SeriesNotFound) as unknown:
        await _with_client(sim, settings_for(sim), lambda c: c.observations("NOSUCHSERIES"))
    assert unknown.value.http_status == 400 and unknown.value.attempts == 1
    with pytest.raises(SeriesNotFound) as withdrawn:
        await _with_client(sim, settings_for(sim), lambda c: c.observations(sim.catalog.withdrawn_ids[0]))
    assert withdrawn.value.http_status == 404


@pytest.mark.parametrize("key,fragment", [
    (UNREGISTERED_KEY, "is not registered"),
    ("NOT-A-KEY", "32 character alpha-numeric"),
])
async def test_bad_api_key_is_fatal_without_retries(sim, settings_for, key, fragment):
    with pytest.raises(BadApiKey, match=fragment) as err:
        await _with_client(sim, settings_for(sim, api_key=key), lambda c: c.observations(sim.catalog.series_ids[0]))
    assert err.value.attempts == 1
    assert key not in str(err.value)


async def test_unknown_release_is_catalog_not_found(sim, settings_for):
    with pytest.raises(CatalogNotFound, match="release does not exist"):
        await _with_client(sim, settings_for(sim), lambda c: c.release_series(999999))


@pytest.mark.parametrize("kind", ["500", "502", "504", "truncate", "reset"])
async def test_persistent_faults_are_retried_then_fail(settings_for, kind):
    with SimProcess(n_series=5, seed=1, fault_rate=1.0, fault_kinds=(kind,)) as faulty:
        settings = settings_for(faulty, max_attempts=3)
        with pytest.raises(TransientError) as err:
            await _with_client(faulty, settings, lambda c: c.observations(faulty.catalog.series_ids[0]))
        assert err.value.attempts == 3


async def test_hang_times_out_and_is_retried(settings_for):
    with SimProcess(n_series=5, seed=1, fault_rate=1.0, fault_kinds=("hang",), hang_seconds=5) as hanging:
        settings = settings_for(hanging, max_attempts=2, timeout=0.5)
        started = time.monotonic()
        with pytest.raises(TransientError, match="timed out"):
            await _with_client(hanging, settings, lambda c: c.observations(hanging.catalog.series_ids[0]))
        assert time.monotonic() - started < 4


async def test_intermittent_faults_recover_exactly(settings_for):
    with SimProcess(n_series=20, seed=2, fault_rate=0.3, fault_kinds=("500", "truncate", "504")) as flaky:
        settings = settings_for(flaky, max_attempts=10)

        async def all_series(client):
            return await asyncio.gather(*(client.observations(s) for s in flaky.catalog.series_ids))

        tables, stats = await _with_client(flaky, settings, all_series)
        for sid, table in zip(flaky.catalog.series_ids, tables):
            assert table.column("value").to_pylist() == flaky.catalog.observations(sid).column("value").to_pylist()
        assert stats.retries > 0 and stats.requests == 20 + stats.retries


async def test_429_backs_off_the_whole_client_and_recovers(settings_for):
    # the server admits 5 req/s; the client is told 20: 429s must slow it down, not fail series
    with SimProcess(n_series=30, seed=4, rate=5, burst=2) as strict:
        settings = settings_for(strict, rate=20, burst=2, concurrency=8)

        async def all_series(client):
            return await asyncio.gather(*(client.observations(s) for s in strict.catalog.series_ids))

        tables, stats = await _with_client(strict, settings, all_series)
        assert len(tables) == 30
        assert stats.throttled > 0 and stats.requests == 30 + stats.throttled
        server = strict.stats()
        assert server["throttled"] == stats.throttled
        # the back-off keeps 429s a minority even though the client asked for 4x the real limit
        assert stats.throttled < 30
