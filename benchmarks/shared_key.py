"""Rate limit through the default CLI path, per runner, and one key's budget shared by two concurrent runs.

    uv run python benchmarks/shared_key.py                  # everything below (~15 min on 2 cores)
    uv run python benchmarks/shared_key.py --quick          # 2 req/s only, 30 series, no dask
    uv run python benchmarks/shared_key.py --limits 2 --runners asyncio --cases over-limit --out /tmp/sk

Every run is a ``fredflow ingest`` subprocess exactly as a user types it (no ``PREFECT_API_URL``: the
thread and dask runners start their temporary Prefect server), against the simulator's strict
token bucket (rate R, burst 2, per key), counted on the server's side:

* ``at-limit``: ``--rate R``. Target: utilization >= 0.97, 429s <= 1 %.
* ``over-limit``: ``--rate 1.25 R`` (the key's real limit is lower than configured).
  Target: utilization >= 0.9 of the real limit, 429s <= 5 %.
* ``two-runs``: two runs at once on one key (both on the same runner), each ``--rate R`` and half the
  series, sharing the key's budget (the default ``--key-budget machine``). Target: combined utilization >= 0.95, 429s <= 1 %.

R = 2 req/s (FRED's own limit) with 60 series, and R = 20 req/s with 400 series. Utilization is
what the server admitted / (R x seconds of the fetch phase): the longest run of seconds with admitted
requests (``fetch_phase`` in rate_limit.py) minus two more seconds at each end, in which planning ends
or the last requests finish part-way (at 20 req/s a half-empty first second alone costs 0.025 of a
20 s phase). ``server_utilization_rate_limit_py`` is rate_limit.py's figure (one second off each end).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from rate_limit import fetch_phase  # noqa: E402 - the benchmarks folder is not a package

from fredflow.sim.process import SimProcess  # noqa: E402
from fredflow.sim.server import DEMO_API_KEY  # noqa: E402

RESULTS = Path(__file__).parent / "results"
SERIES = {2.0: 60, 20.0: 400}
TARGETS = {"at-limit": (0.97, 1.0), "over-limit": (0.9, 5.0), "two-runs": (0.95, 1.0)}
RUNNER_FLAGS = {"asyncio": [], "thread": ["--runner", "thread"], "dask": ["--runner", "dask"]}


def _env(budget_dir: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FRED_", "PREFECT_API_URL"))}
    env.update(FRED_API_KEY=DEMO_API_KEY, FREDFLOW_BUDGET_DIR=budget_dir)
    return env


def measure(case: str, runner: str, *, limit: float, n_series: int, workdir: Path) -> dict:
    client_rate = limit * (1.25 if case == "over-limit" else 1.0)
    runs = 2 if case == "two-runs" else 1
    budget_dir = tempfile.mkdtemp(prefix="budgets-", dir=workdir)  # a fresh key budget per measurement
    with SimProcess(n_series=n_series, seed=20, rate=limit, burst=2, obs_per_series=100, long_series=0) as sim:
        started = time.perf_counter()
        procs = []
        for i in range(runs):
            # two runs: each takes half of the release's series (a daily run and a backfill, say)
            catalog = ["--release", "1"] if runs == 1 else ["--series", ",".join(sim.catalog.series_ids[i::2])]
            db = workdir / f"{case}-{runner}-{limit:g}-{i}-{time.time_ns()}.duckdb"
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "fredflow.cli", "ingest", "--db", str(db), *catalog, "--api-url", sim.url,
                 "--rate", repr(client_rate), "--concurrency", "32", "--json", *RUNNER_FLAGS[runner]],
                env=_env(budget_dir), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        summaries = []
        for proc in procs:
            out, err = proc.communicate(timeout=1800)
            if proc.returncode not in (0, 3):
                raise SystemExit(f"fredflow ingest exited {proc.returncode}: {err[-2000:]}")
            summaries.append(json.loads(out))
        wall = time.perf_counter() - started
        stats = sim.stats()
    admitted = stats["admitted_per_second"]
    inner = fetch_phase(admitted)
    utilization_one_off = sum(inner) / (len(inner) * limit) if inner else 0.0
    inner = inner[1:-1] if len(inner) > 4 else inner
    utilization = sum(inner) / (len(inner) * limit) if inner else 0.0
    throttled_pct = 100 * stats["throttled"] / max(stats["requests"], 1)
    min_util, max_429 = TARGETS[case]
    return {
        "case": case, "runner": runner, "server_rate": limit, "server_burst": 2, "client_rate": client_rate,
        "runs": runs, "n_series": n_series, "series_landed": sum(s["n_series"] - s["n_failed"] for s in summaries),
        "requests": stats["requests"], "throttled_429": stats["throttled"], "throttled_pct": round(throttled_pct, 3),
        "max_admitted_in_a_second": max(admitted), "server_utilization": round(utilization, 4),
        "server_utilization_rate_limit_py": round(utilization_one_off, 4),
        "wall_seconds": round(wall, 2), "meets_target": utilization >= min_util and throttled_pct <= max_429,
        "admitted_per_second": admitted,
    }


def table(rows: list[dict]) -> str:
    lines = ["| R req/s | series | case | runner | utilization | 429s | max/s | wall s | target |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        min_util, max_429 = TARGETS[r["case"]]
        lines.append(f"| {r['server_rate']:g} | {r['n_series']} | {r['case']} | {r['runner']} | "
                     f"{r['server_utilization']:.3f} | {r['throttled_429']} ({r['throttled_pct']:.1f} %) | "
                     f"{r['max_admitted_in_a_second']} | {r['wall_seconds']:.0f} | "
                     f"{'ok' if r['meets_target'] else 'MISSED'} (>= {min_util}, <= {max_429:g} %) |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limits", default="2,20", help="the server's real limits R, req/s (default 2,20)")
    parser.add_argument("--runners", default="asyncio,thread,dask")
    parser.add_argument("--cases", default="at-limit,over-limit,two-runs")
    parser.add_argument("--quick", action="store_true", help="R=2 only, 30 series, asyncio and thread")
    parser.add_argument("--series", type=int, help="series per measurement (default 60 at 2 req/s, 400 at 20)")
    parser.add_argument("--out", type=Path, default=RESULTS,
                        help="directory for the results JSON (default benchmarks/results; another while iterating)")
    args = parser.parse_args()
    limits = [2.0] if args.quick else [float(x) for x in args.limits.split(",")]
    runners = ["asyncio", "thread"] if args.quick and args.runners == "asyncio,thread,dask" else \
        args.runners.split(",")
    workdir = Path("data/bench-shared-key")
    workdir.mkdir(parents=True, exist_ok=True)
    rows = []
    for limit in limits:
        n_series = args.series or (30 if args.quick else SERIES.get(limit, 60))
        for case in args.cases.split(","):
            for runner in runners:
                row = measure(case, runner, limit=limit, n_series=n_series, workdir=workdir)
                rows.append(row)
                print(table([row]).splitlines()[-1], flush=True)
    print()
    print(table(rows))
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / f"shared_key-{stamp}.json"
    out.write_text(json.dumps({"benchmark": "shared_key", "at": stamp, "command": " ".join(sys.argv),
                               "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0],
                                           "platform": platform.platform(),
                                           "load_average": os.getloadavg()},
                               "runs": rows}, indent=1))
    print(f"results: {out}")
    return 0 if all(r["meets_target"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
