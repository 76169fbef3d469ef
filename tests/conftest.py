"""Shared fixtures: real simulator processes on 127.0.0.1, temporary DuckDB files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
#: Real FRED responses recorded by public projects, kept in the repository with their provenance
#: (each X.json has X.meta.txt beside it; see tests/data/fred-samples/README.md).
SAMPLES = Path(os.environ.get("FRED_SAMPLES", REPO / "tests" / "data" / "fred-samples"))


@pytest.fixture(scope="session")
def sim():
    """A plain simulator process (no rate limit, no faults), shared by tests that only read from it."""
    from fredflow.sim.process import SimProcess

    with SimProcess(n_series=120, seed=7, withdrawn=2, long_series=1) as process:
        yield process


@pytest.fixture(scope="module")
def slow_sim():
    """Every request takes 0.05 s: with --concurrency 2 a run of 40 series lasts ~2 s, long enough to kill."""
    from fredflow.sim.process import SimProcess

    with SimProcess(n_series=60, seed=11, obs_per_series=200, long_series=0, latency=0.05) as process:
        yield process


@pytest.fixture
def settings_for():
    """Settings pointing at a simulator, fast retries (tests should not sleep for seconds)."""
    from fredflow.settings import Settings
    from fredflow.sim.server import DEMO_API_KEY

    def make(process, **overrides):
        values = dict(api_url=process.url, api_key=DEMO_API_KEY, rate=1000, burst=50, concurrency=16,
                      backoff_base=0.01, backoff_max=0.05, timeout=10)
        values.update(overrides)
        return Settings(**values)

    return make


@pytest.fixture(autouse=True)
def _isolated_key_budgets(tmp_path_factory, monkeypatch):
    """Each test's runs share a key's budget (fredflow.ratelimit.budget) only among themselves: a test that
    provoked 429s must not slow the next one on the same simulator and key."""
    monkeypatch.setenv("FREDFLOW_BUDGET_DIR", str(tmp_path_factory.mktemp("budgets")))


@pytest.fixture(scope="session", autouse=True)
def _isolated_prefect_home(tmp_path_factory):
    """Prefect's files (its run database) go to a temporary PREFECT_HOME, never ~/.prefect."""
    home = tmp_path_factory.mktemp("prefect-home")
    previous = os.environ.get("PREFECT_HOME")
    os.environ["PREFECT_HOME"] = str(home)
    os.environ.pop("PREFECT_API_URL", None)
    yield home
    if previous is None:
        os.environ.pop("PREFECT_HOME", None)
    else:
        os.environ["PREFECT_HOME"] = previous
    # Prefect's event shipper of this process still points at temporary servers the
    # runner tests started and stopped; at interpreter exit it would log connection
    # errors to an already closed stderr after pytest's summary line. Silence it.
    import logging

    for name in ("prefect", "prefect.events", "prefect.events.clients"):
        logging.getLogger(name).setLevel(logging.CRITICAL + 1)
    logging.raiseExceptions = False
