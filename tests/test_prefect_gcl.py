"""The opt-in Prefect budget against a real ``prefect server start`` (the fixture of test_prefect_server):
a global concurrency limit with slot decay that runs draw blocks of permits from, strictly."""

from __future__ import annotations

import math
import subprocess
import sys
import time

import pytest

from fredflow.errors import UsageError
from fredflow.ratelimit.budget import PrefectPermits
from fredflow.sim.process import SimProcess
from test_key_budget import _cli_env, run_two_on_one_key
from test_prefect_server import server  # noqa: F401 - the module's Prefect server fixture


@pytest.fixture(scope="module")
def limits(server):  # noqa: F811 - the fixture imported above
    server.cli("gcl", "create", "fred-api", "--limit", "2", "--slot-decay-per-second", "2")
    server.cli("gcl", "create", "fred-fast", "--limit", "6", "--slot-decay-per-second", "6")
    server.cli("gcl", "create", "fred-no-decay", "--limit", "2")
    return server


def test_permits_come_in_blocks_not_one_api_call_per_request(limits):
    permits = PrefectPermits("fred-fast")
    try:
        assert permits.block == 6
        got = 0
        for _ in range(2000):  # bounded: ~2 s of blocks at 6/s, polled like a schedule would
            got += permits.take(4)
            if got >= 15:
                break
            time.sleep(0.01)
        assert got >= 15
        # every permit was drawn from Prefect, a block per call: 15 permits took 3 or 4 calls, not 15
        assert permits.drawn >= got and permits.calls <= math.ceil(got / permits.block) + 1
    finally:
        permits.close()
    with limits.client() as client:
        limit = client.read_global_concurrency_limit_by_name("fred-fast")
    assert limit.active_slots <= limit.limit  # Prefect counted them (they decay at 6/s)


def test_a_missing_or_wrong_limit_is_a_one_line_error(limits, tmp_path):
    with pytest.raises(UsageError, match="no such Prefect global concurrency limit"):
        PrefectPermits("fred-apj")
    with pytest.raises(UsageError, match="no slot decay"):
        PrefectPermits("fred-no-decay")
    # the CLI: exit 2, one line, before any request (no simulator even runs here)
    env = _cli_env(tmp_path, PREFECT_API_URL=limits.url, PREFECT_HOME=str(limits.home))
    result = subprocess.run([sys.executable, "-m", "fredflow.cli", "ingest", "--db", str(tmp_path / "x.duckdb"),
                             "--series", "GDP", "--api-url", "http://127.0.0.1:9/fred", "--prefect-limit", "fred-apj"],
                            env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "no such Prefect global concurrency limit" in lines[0], result.stderr
    no_prefect = _cli_env(tmp_path)
    result = subprocess.run([sys.executable, "-m", "fredflow.cli", "ingest", "--db", str(tmp_path / "y.duckdb"),
                             "--series", "GDP", "--api-url", "http://127.0.0.1:9/fred", "--prefect-limit", "fred-api"],
                            env=no_prefect, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "needs PREFECT_API_URL" in result.stderr


def test_two_processes_drawing_from_one_gcl_share_the_keys_limit(limits, tmp_path):
    """Each run paces alone (--key-budget run) but draws every request from ``fred-api`` (2 slots, decaying
    at 2/s): together they stay within the server's 2 req/s bucket."""
    env = _cli_env(tmp_path / "budgets", PREFECT_API_URL=limits.url, PREFECT_HOME=str(limits.home))
    with SimProcess(n_series=16, seed=37, rate=2, burst=2, obs_per_series=50, long_series=0) as sim:
        summaries = run_two_on_one_key(sim, tmp_path, env, "--key-budget", "run", "--prefect-limit", "fred-api")
        stats = sim.stats()
    assert [s["n_series"] - s["n_failed"] for s in summaries] == [16, 16]
    assert all(s["achieved_rps"] <= 1.5 for s in summaries), summaries  # they split it
    assert stats["requests"] >= 2 * 17
    assert stats["throttled"] <= max(1, 0.01 * stats["requests"])
    assert not (tmp_path / "budgets").exists()  # --key-budget run: no shared file
