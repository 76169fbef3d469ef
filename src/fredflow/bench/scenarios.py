"""Named, parameterised workloads: what the simulator serves and how the ingester is configured.

A :class:`Scenario` is plain data. ``sizes`` holds one series count, or several
for ``scale`` (one simulator and one group of runs per size). Three sets:

* default -- what ``fredflow bench`` runs (sized to finish in minutes on 2 cores);
* ``--quick`` -- tiny sizes, seconds per run (tests);
* ``--full`` -- ``scale`` up to 10,000 series, every runner on it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from ..sim.server import FAULT_KINDS

#: Every runner the harness knows: the baseline first, then fredflow's runners.
RUNNERS = ("sequential", "asyncio", "thread", "dask")
FREDFLOW_RUNNERS = ("asyncio", "thread", "dask")
PREFECT_RUNNERS = ("thread", "dask")

#: ``Settings.rate`` for scenarios without a rate limit: far above anything reachable.
UNLIMITED_CLIENT_RATE = 1_000_000.0

#: release/series pages are 1000 series each (FRED's maximum).
LISTING_PAGE = 1000


@dataclass(frozen=True)
class Scenario:
    """One workload.

    Simulator side: ``sizes`` (series counts), ``obs_per_series``, ``latency``
    (s per request), ``rate``/``burst`` (the server's token bucket; ``None`` =
    no limit), ``fault_rate``/``fault_kinds``/``hang_seconds``.
    Client side: ``concurrency`` (requests in flight for the run),
    ``client_rate`` (``Settings.rate``; default: the server's limit, or
    unlimited), ``client_burst``, ``timeout``, fast ``backoff_base``.
    ``baseline_reps`` caps the repetitions of the (slow) sequential baseline;
    ``warmup`` runs one unrecorded asyncio ingest first so the simulator's body
    cache is hot for every measured run.
    """

    name: str
    description: str
    sizes: tuple[int, ...]
    obs_per_series: int
    latency: float = 0.0
    rate: float | None = None
    burst: int = 2
    fault_rate: float = 0.0
    fault_kinds: tuple[str, ...] = FAULT_KINDS
    hang_seconds: float = 30.0
    concurrency: int = 64
    client_rate: float | None = None
    client_burst: int = 1
    timeout: float = 30.0
    backoff_base: float = 0.5
    max_attempts: int = 5
    runners: tuple[str, ...] = RUNNERS
    baseline_reps: int | None = None
    warmup: bool = True
    seed: int = 1

    @property
    def effective_client_rate(self) -> float:
        if self.client_rate is not None:
            return self.client_rate
        return self.rate if self.rate else UNLIMITED_CLIENT_RATE

    def requests_min(self, n_series: int) -> int:
        """Requests a perfect run needs: the release listing's pages, then one observations page per series."""
        return math.ceil(n_series / LISTING_PAGE) + n_series

    def sim_config(self, n_series: int) -> dict[str, Any]:
        """Keyword arguments of :class:`fredflow.sim.SimProcess` for one size."""
        return dict(
            n_series=n_series, seed=self.seed, obs_per_series=self.obs_per_series, long_series=0,
            rate=self.rate, burst=self.burst, latency=self.latency, fault_rate=self.fault_rate,
            fault_kinds=tuple(self.fault_kinds), hang_seconds=self.hang_seconds,
            # every rendered body stays cached: the simulator's CPU is not what we measure
            cache_mb=max(256.0, n_series * self.obs_per_series * 110 / 2**20 * 1.5),
        )

    def settings(self, api_url: str, api_key: str) -> dict[str, Any]:
        """:class:`fredflow.settings.Settings` fields for every fredflow runner."""
        return dict(
            api_url=api_url, api_key=api_key, rate=self.effective_client_rate, burst=self.client_burst,
            concurrency=self.concurrency, timeout=self.timeout, max_attempts=self.max_attempts,
            backoff_base=self.backoff_base, backoff_max=max(4 * self.backoff_base, 1.0),
        )

    def describe(self) -> dict[str, Any]:
        d = asdict(self)
        d["sizes"] = list(self.sizes)
        d["fault_kinds"] = list(self.fault_kinds)
        d["runners"] = list(self.runners)
        d["client_rate"] = self.effective_client_rate
        return d

    def with_overrides(self, **overrides: Any) -> "Scenario":
        given = {k: v for k, v in overrides.items() if v is not None}
        return replace(self, **given) if given else self


def _default() -> dict[str, Scenario]:
    return {
        "daily": Scenario(
            name="daily",
            description="rate-limited like FRED (120 req/min, ~200 ms), time scaled 20x: 40 req/s, 10 ms; "
                        "200 series x 250 observations",
            sizes=(200,), obs_per_series=250, latency=0.01, rate=40.0, burst=2, warmup=False,
        ),
        "backfill": Scenario(
            name="backfill",
            description="no rate limit, 50 ms latency, concurrency 64: 2,000 series x 1,000 observations",
            sizes=(2000,), obs_per_series=1000, latency=0.05, baseline_reps=1,
        ),
        "faults": Scenario(
            name="faults",
            description="5 % of requests fail (500/502/504, hang 4 s, truncated body, reset); timeout 2 s; "
                        "300 series x 500 observations, 20 ms",
            sizes=(300,), obs_per_series=500, latency=0.02, fault_rate=0.05, hang_seconds=4.0, timeout=2.0,
            backoff_base=0.25, baseline_reps=1,
        ),
        "scale": Scenario(
            name="scale",
            description="how time and memory grow with N: N series x 500 observations, 50 ms, no limit",
            sizes=(100, 1000, 3000), obs_per_series=500, latency=0.05, runners=("asyncio", "thread"),
        ),
    }


def _quick() -> dict[str, Scenario]:
    d = _default()
    return {
        "daily": replace(d["daily"], sizes=(24,), obs_per_series=40, rate=60.0),
        "backfill": replace(d["backfill"], sizes=(60,), obs_per_series=200, latency=0.02),
        "faults": replace(d["faults"], sizes=(40,), obs_per_series=40, fault_rate=0.1, hang_seconds=0.6,
                          timeout=0.4, backoff_base=0.05, latency=0.005),
        "scale": replace(d["scale"], sizes=(10, 30), obs_per_series=40, latency=0.005,
                         runners=("asyncio",), warmup=False),
    }


def _full() -> dict[str, Scenario]:
    d = _default()
    d["scale"] = replace(d["scale"], sizes=(100, 300, 1000, 3000, 10000), runners=FREDFLOW_RUNNERS)
    return d


DEFAULT_ORDER = ("daily", "backfill", "faults", "scale")


def scenarios(mode: str = "default") -> dict[str, Scenario]:
    """The named scenarios of a mode: ``default``, ``quick`` or ``full``."""
    try:
        return {"default": _default, "quick": _quick, "full": _full}[mode]()
    except KeyError:
        raise ValueError(f"unknown mode {mode!r}") from None


@dataclass
class Plan:
    """What a bench invocation will run (after CLI filters and overrides)."""

    scenarios: list[Scenario]
    reps: int
    mode: str
    runners_filter: tuple[str, ...] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def runners_of(self, scenario: Scenario) -> tuple[str, ...]:
        if self.runners_filter is None:
            return scenario.runners
        return tuple(r for r in scenario.runners if r in self.runners_filter)

    def reps_of(self, scenario: Scenario, runner: str) -> int:
        if runner == "sequential" and scenario.baseline_reps is not None:
            return min(self.reps, scenario.baseline_reps)
        return self.reps

    def n_runs(self) -> int:
        return sum(self.reps_of(s, r) * len(s.sizes) for s in self.scenarios for r in self.runners_of(s))

    def prefect_runners(self) -> tuple[str, ...]:
        used = {r for s in self.scenarios for r in self.runners_of(s)}
        return tuple(r for r in PREFECT_RUNNERS if r in used)
