"""FredClient over the in-process transport: the simulator's pure request handler, no server, no port, no timing.

Retries, paging, error classes and vintage stitching run here in milliseconds; the same client over
aiohttp against a real simulator process is tested in test_fred.py and test_vintages.py.
"""

from __future__ import annotations

from datetime import date

import pyarrow as pa
import pytest

from fredflow.errors import BadApiKey, CatalogNotFound, SeriesNotFound, TransientError
from fredflow.ratelimit.service import ScheduleLimiter
from fredflow.settings import Settings
from fredflow.sim import DEMO_API_KEY, UNREGISTERED_KEY, SimConfig
from fredflow.sim.server import FredSimulator
from fredflow.sources.fred.client import FredClient, RequestStats
from fredflow.sources.fred.transport import HandlerTransport, Response


@pytest.fixture(scope="module")
def simulator():
    return FredSimulator(SimConfig(n_series=12, seed=5, withdrawn=1, long_series=1))


def _client(simulator, *, faults=(), key=DEMO_API_KEY, **settings) -> tuple[FredClient, HandlerTransport]:
    values = dict(api_url="http://sim.invalid/fred", api_key=key, rate=10_000, burst=100, backoff_base=0.0,
                  backoff_max=0.0, max_attempts=3)
    values.update(settings)
    config = Settings(**values)
    transport = HandlerTransport(simulator.answer, faults=faults)
    return FredClient(transport, config, ScheduleLimiter.at(config.rate, config.burst), stats=RequestStats()), transport


async def test_observations_page_at_the_limit_and_equal_the_truth(simulator):
    catalog = simulator.catalog
    long_id = max(catalog.series_ids, key=lambda sid: catalog.observations(sid).num_rows)
    truth = catalog.observations(long_id)
    client, transport = _client(simulator, page_limit=max(1, truth.num_rows // 3))
    table = await client.observations(long_id)
    assert table.num_rows == truth.num_rows
    assert table.column("date").equals(truth.column("date")) and table.column("value").equals(truth.column("value"))
    offsets = sorted(int(params["offset"]) for endpoint, params in transport.requests)
    assert len(offsets) == -(-truth.num_rows // max(1, truth.num_rows // 3))  # ceil: one request per page
    assert client.stats.requests == len(offsets) and client.stats.retries == 0


async def test_transient_faults_are_retried_then_succeed_or_give_up(simulator):
    sid = simulator.catalog.series_ids[0]
    faults = [TransientError("timed out after 30s"), Response(502, b"<html>Bad Gateway</html>")]
    client, _ = _client(simulator, faults=faults)
    table = await client.observations(sid)
    assert table.num_rows == simulator.catalog.observations(sid).num_rows
    assert (client.stats.requests, client.stats.retries) == (3, 2)

    client, _ = _client(simulator, faults=[Response(500, b'{"error_code":500,"error_message":"Internal"}')] * 3)
    with pytest.raises(TransientError, match="HTTP 500") as failed:
        await client.observations(sid)
    assert failed.value.attempts == 3 and client.stats.requests == 3


async def test_a_truncated_body_is_transient(simulator):
    sid = simulator.catalog.series_ids[1]
    status, body = simulator.answer("series/observations", {"series_id": sid, "file_type": "json",
                                                             "api_key": DEMO_API_KEY})
    client, _ = _client(simulator, faults=[Response(200, body[: len(body) // 2])])
    table = await client.observations(sid)
    assert table.num_rows == simulator.catalog.observations(sid).num_rows and client.stats.retries == 1


async def test_error_classes_from_the_simulators_answers(simulator):
    client, _ = _client(simulator)
    with pytest.raises(SeriesNotFound):
        await client.observations(simulator.catalog.withdrawn_ids[0])
    with pytest.raises(CatalogNotFound):
        await client.release_series(424242)
    client, transport = _client(simulator, key=UNREGISTERED_KEY)
    with pytest.raises(BadApiKey):
        await client.series(simulator.catalog.series_ids[0])
    assert len(transport.requests) == 1  # a refused key is never retried


async def test_vintages_stitch_across_ranges_in_process(simulator):
    catalog = simulator.catalog
    sid = next(s for s in catalog.series_ids if len(catalog.vintage_dates(s)) > 30)
    client, _ = _client(simulator)
    whole = await client.vintages(sid, date(1776, 7, 4), date(9999, 12, 31), max_vintage_dates=2000)
    pieces = await client.vintages(sid, date(1776, 7, 4), date(9999, 12, 31), max_vintage_dates=7)
    assert pieces.num_rows == whole.num_rows
    for name in whole.column_names:
        assert pieces.column(name).equals(whole.column(name)), name
    assert isinstance(whole, pa.Table) and whole.num_rows > len(catalog.vintage_dates(sid))
