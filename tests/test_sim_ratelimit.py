"""The simulator's rate-limit model: FRED's per-key minute window with x-rate-limit headers,
the per-second token bucket, their scopes, and the throttling fault kinds.

Controllable clocks (in-process aiohttp server) so no test waits a minute;
one test over a real subprocess with a 2-second window.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer

from fredflow.sim import DEMO_API_KEY, SimConfig, SimProcess
from fredflow.sim.cli import config_to_argv, parse_args
from fredflow.sim.ratelimit import RateLimiter
from fredflow.sim.server import build_app

OTHER_KEY = "z" * 32
RATE_LIMITED = b'{"error_code":429,"error_message":"Too Many Requests.  Exceeded Rate Limit"}'


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_limiter_window_counts_down_and_resets() -> None:
    wall = Clock(600.0)  # a window boundary
    limiter = RateLimiter(None, 2, 120, 60.0, "key", wall=wall)
    remaining = []
    for _ in range(120):
        admission = limiter.admit(DEMO_API_KEY)
        assert admission.ok and admission.headers["x-rate-limit-limit"] == "120"
        remaining.append(int(admission.headers["x-rate-limit-remaining"]))
    assert remaining == list(range(120, 0, -1))  # as recorded: 120 on the first, 1 on the 120th
    assert limiter.admit(DEMO_API_KEY) == (rejected := limiter.admit(DEMO_API_KEY))
    assert not rejected.ok and rejected.headers == {}
    assert limiter.admit(OTHER_KEY).ok  # per key
    wall.now = 659.9
    assert not limiter.admit(DEMO_API_KEY).ok
    wall.now = 660.0  # the next clock minute
    assert limiter.admit(DEMO_API_KEY).headers["x-rate-limit-remaining"] == "120"


@pytest.mark.parametrize(("scope", "shared_by_keys", "shared_by_addresses"), [
    ("key", False, True), ("address", True, False), ("key+address", False, False), ("server", True, True),
])
def test_limiter_scopes(scope: str, shared_by_keys: bool, shared_by_addresses: bool) -> None:
    limiter = RateLimiter(None, 2, 1, 60.0, scope, wall=Clock())
    assert limiter.admit("a" * 32, "10.0.0.1").ok
    assert limiter.admit("b" * 32, "10.0.0.1").ok is not shared_by_keys
    assert limiter.admit("a" * 32, "10.0.0.2").ok is not shared_by_addresses


def test_limiter_bucket_is_a_second_rule_and_rejects_consume_nothing() -> None:
    mono, wall = Clock(0.0), Clock(0.0)
    limiter = RateLimiter(1.0, 2, 5, 60.0, "key", monotonic=mono, wall=wall)
    assert [limiter.admit("k").ok for _ in range(3)] == [True, True, False]  # the bucket (burst 2)
    mono.now = 1.0
    assert limiter.admit("k").headers["x-rate-limit-remaining"] == "3"  # the bucket's reject took no slot
    mono.now = 10.0
    assert [limiter.admit("k").ok for _ in range(3)] == [True, True, False]  # the window (5)
    assert limiter.admit("other").ok


async def _client(config: SimConfig, **clocks: Callable[[], float]) -> TestClient:
    client = TestClient(TestServer(build_app(config, **clocks)))
    await client.start_server()
    return client


async def _get(client: TestClient, key: str = DEMO_API_KEY, **params: Any) -> tuple[int, Any, bytes]:
    query = {k: v for k, v in {"api_key": key, "series_id": "SIM000001", **params}.items() if v is not None}
    async with client.get("/fred/series", params=query) as resp:
        return resp.status, resp.headers, await resp.read()


async def test_http_window_headers_and_429() -> None:
    wall = Clock(6000.0)
    client = await _client(SimConfig(n_series=3, per_minute=120), wall=wall)
    try:
        seen = []
        for i in range(120):
            status, headers, _ = await _get(client, file_type="json" if i % 2 else None)
            assert status == 200 and headers["x-rate-limit-limit"] == "120"
            seen.append(int(headers["x-rate-limit-remaining"]))
        assert seen == list(range(120, 0, -1))
        status, headers, body = await _get(client, file_type="json")
        assert (status, body) == (429, RATE_LIMITED)
        assert "x-rate-limit-limit" not in headers and "Retry-After" not in headers
        assert headers["Content-Type"] == "application/json; charset=UTF-8"
        status, headers, body = await _get(client)  # FRED's default file type: the 429 in XML
        assert status == 429 and body.endswith(b'<error code="429" message="Too Many Requests.  Exceeded Rate Limit"/>')
        assert headers["Content-Type"] == "text/xml; charset=UTF-8"
        status, headers, _ = await _get(client, key=OTHER_KEY)
        assert status == 200 and headers["x-rate-limit-remaining"] == "120"
        # errors count too, and carry the headers
        status, headers, _ = await _get(client, key=OTHER_KEY, series_id="NOPE")
        assert status == 400 and headers["x-rate-limit-remaining"] == "119"
        wall.now += 60
        status, headers, _ = await _get(client)
        assert status == 200 and headers["x-rate-limit-remaining"] == "120"
        stats = (await (await client.get("/_sim/stats")).json())
        assert stats["throttled"] == 2
    finally:
        await client.close()


async def test_http_bucket_per_key_keeps_rate_and_burst() -> None:
    mono = Clock(0.0)
    client = await _client(SimConfig(n_series=3, rate=2.0, burst=3), monotonic=mono)
    try:
        assert [(await _get(client, file_type="json"))[0] for _ in range(4)] == [200, 200, 200, 429]
        assert (await _get(client, key=OTHER_KEY))[0] == 200
        _, headers, _ = await _get(client)
        assert "x-rate-limit-limit" not in headers  # no window configured: no headers
        mono.now = 0.5  # one token back
        assert [(await _get(client))[0] for _ in range(2)] == [200, 429]
    finally:
        await client.close()


async def test_http_server_scope_shares_one_bucket() -> None:
    client = await _client(SimConfig(n_series=3, rate=1.0, burst=1, rate_scope="server"), monotonic=Clock(0.0))
    try:
        assert (await _get(client))[0] == 200
        assert (await _get(client, key=OTHER_KEY))[0] == 429
    finally:
        await client.close()


def test_cli_round_trip_of_rate_limit_options() -> None:
    config, _, _ = parse_args(["--per-minute", "--rate-window", "2", "--rate-scope", "key+address",
                               "--rate", "3", "--background-updates", "50"])
    assert (config.per_minute, config.rate_window, config.rate_scope, config.rate) == (120, 2.0, "key+address", 3.0)
    assert parse_args(config_to_argv(config))[0] == config
    assert parse_args(["--per-minute", "30"])[0].per_minute == 30
    assert SimConfig().per_minute is None and SimConfig().rate_scope == "key"


async def test_real_process_window_with_short_window() -> None:
    with SimProcess(n_series=3, per_minute=3, rate_window=2.0) as proc:
        async with aiohttp.ClientSession() as session:
            while time.time() % 2.0 > 0.5:  # start early in a window
                time.sleep(0.05)
            got = []
            for _ in range(4):
                params = {"api_key": DEMO_API_KEY, "series_id": "SIM000001", "file_type": "json"}
                async with session.get(f"{proc.url}/series", params=params) as resp:
                    got.append((resp.status, resp.headers.get("x-rate-limit-remaining")))
            assert got == [(200, "3"), (200, "2"), (200, "1"), (429, None)]
            time.sleep(2.0 - time.time() % 2.0 + 0.05)
            async with session.get(f"{proc.url}/series", params=params) as resp:
                assert resp.status == 200 and resp.headers["x-rate-limit-remaining"] == "3"


@pytest.mark.parametrize("kind", ["403", "unregistered"])
async def test_throttling_fault_kinds(kind: str) -> None:
    with SimProcess(n_series=3, fault_rate=1.0, fault_kinds=(kind,)) as proc:
        async with aiohttp.ClientSession() as session:
            params = {"api_key": DEMO_API_KEY, "series_id": "SIM000001", "file_type": "json"}
            async with session.get(f"{proc.url}/series", params=params) as resp:
                status, body, headers = resp.status, await resp.read(), resp.headers
        assert proc.stats()["faults"] == {kind: 1}
    if kind == "403":
        assert status == 403 and headers["Content-Type"].startswith("text/html") and b"403 Forbidden" in body
    else:
        assert status == 400 and orjson.loads(body)["error_message"].startswith(
            "Bad Request.  The value for variable api_key is not registered.")


def test_extra_fault_kinds_are_opt_in() -> None:
    assert "403" not in SimConfig().fault_kinds and "unregistered" not in SimConfig().fault_kinds
    with pytest.raises(ValueError, match="fault_kinds"):
        SimConfig(fault_kinds=("teapot",))
