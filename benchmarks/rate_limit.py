"""Rate-limit benchmark: one run-wide limit across every runner, measured on the server's side.

    uv run python benchmarks/rate_limit.py            # R=20 req/s, 1,000 series, all runners (~6 min)
    uv run python benchmarks/rate_limit.py --quick    # 200 series
    uv run python benchmarks/rate_limit.py --runners thread --cases over-limit --out /tmp/rl   # one case, scratch output

For each runner (asyncio; Prefect thread pool; Prefect on Dask, 2 worker
processes x 4 threads) the simulator enforces a strict token bucket (rate R,
burst 2) and counts what it admitted per second:

* ``at-limit``: fredflow's --rate equals the server's R.
  Target: utilization >= 0.95, 429s <= 0.5% of requests, no second admitting more than R + burst.
* ``over-limit``: --rate is 25% above the server's real R (a key shared with another job).
  Target: every series lands, at >= 0.85 of the server's real limit.

Utilization = requests the server admitted / (R x seconds of the fetch phase). The
fetch phase is the run of consecutive seconds in which the server admitted requests
(the catalog listing, sent before a Dask cluster has started, stands apart and is
left out), minus its first and last second, which are partial.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from fredflow import CatalogSpec, Settings, ingest
from fredflow.sim.process import SimProcess
from fredflow.sim.server import DEMO_API_KEY

RESULTS = Path(__file__).parent / "results"
RUNNERS = {
    "asyncio": {},
    "thread": {"thread_slots": 8},
    "dask": {"workers": 2, "threads_per_worker": 4},
}


def fetch_phase(admitted: list[int]) -> list[int]:
    """The longest run of consecutive seconds with admitted requests, without its two partial edges."""
    best: list[int] = []
    current: list[int] = []
    for count in admitted + [0]:
        if count:
            current.append(count)
        else:
            if len(current) > len(best):
                best = current
            current = []
    return best[1:-1] if len(best) > 2 else best


def measure(runner: str, *, n_series: int, server_rate: float, client_rate: float, workdir: Path) -> dict:
    burst = 2
    with SimProcess(n_series=n_series, seed=20, rate=server_rate, burst=burst, obs_per_series=100,
                    long_series=0) as sim:
        settings = Settings(api_url=sim.url, api_key=DEMO_API_KEY, rate=client_rate, burst=1, concurrency=32)
        db = workdir / f"{runner}-{client_rate:g}.duckdb"
        started = time.perf_counter()
        summary = ingest(db, CatalogSpec(release=1), settings=settings, runner=runner, runner_options=RUNNERS[runner])
        wall = time.perf_counter() - started
        stats = sim.stats()
    admitted = stats["admitted_per_second"]
    inner = fetch_phase(admitted)
    utilization = sum(inner) / (len(inner) * server_rate) if inner else 0.0
    return {
        "runner": runner, "n_series": n_series, "server_rate": server_rate, "server_burst": burst,
        "client_rate": client_rate, "series_landed": summary.n_series - summary.n_failed,
        "n_failed": summary.n_failed, "requests": stats["requests"], "throttled_429": stats["throttled"],
        "throttled_pct": round(100 * stats["throttled"] / max(stats["requests"], 1), 3),
        "max_admitted_in_a_second": max(admitted), "limit_per_second": server_rate + burst,
        "server_utilization": round(utilization, 4), "client_reported_utilization": round(summary.utilization, 4),
        "client_achieved_rps": round(summary.achieved_rps, 3), "wall_seconds": round(wall, 2),
        "admitted_per_second": admitted,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=20.0, help="the server's real limit R (req/s)")
    parser.add_argument("--quick", action="store_true", help="200 series")
    parser.add_argument("--runners", default="asyncio,thread,dask")
    parser.add_argument("--cases", default="at-limit,over-limit")
    parser.add_argument("--out", type=Path, default=RESULTS,
                        help="directory for the results JSON (default: benchmarks/results; use another while iterating)")
    args = parser.parse_args()
    n_series = 200 if args.quick else args.series
    workdir = Path("data/bench-rate-limit")
    workdir.mkdir(parents=True, exist_ok=True)
    rows = []
    cases = {"at-limit": args.rate, "over-limit": args.rate * 1.25}
    for case in args.cases.split(","):
        client_rate = cases[case]
        for runner in args.runners.split(","):
            row = {"case": case, **measure(runner, n_series=n_series, server_rate=args.rate,
                                            client_rate=client_rate, workdir=workdir)}
            rows.append(row)
            print(f"{case:10} {runner:8} util {row['server_utilization']:.3f}  429s {row['throttled_429']:4d} "
                  f"({row['throttled_pct']:.2f}%)  max/s {row['max_admitted_in_a_second']}  "
                  f"landed {row['series_landed']}/{n_series}  {row['wall_seconds']:.0f}s", flush=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out = args.out / f"rate_limit-{stamp}.json"
    args.out.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"benchmark": "rate_limit", "at": stamp, "machine": {
        "cpus": __import__("os").cpu_count(), "python": sys.version.split()[0], "platform": platform.platform()},
        "runs": rows}, indent=1))
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
