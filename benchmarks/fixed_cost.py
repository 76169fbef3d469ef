"""Fixed cost per runner: the wall time of a whole ``fredflow ingest`` command beyond what the rate allows.

    uv run python benchmarks/fixed_cost.py                  # 60 series at 2 req/s, asyncio/thread/dask, 1 round
    uv run python benchmarks/fixed_cost.py -k 3             # 3 interleaved rounds (order rotated), medians
    uv run python benchmarks/fixed_cost.py --runners thread --out /tmp/fc   # scratch output

Each run is the CLI as a user types it, in its own subprocess with default settings (no
``PREFECT_API_URL``: the thread and dask runners start their temporary Prefect server, dask its
LocalCluster), against the simulator's strict token bucket (2 req/s, burst 2 - FRED's numbers):

    fredflow ingest --db RUN.duckdb --release 1 --api-url SIM --runner R --json

The lower bound of a run is what the bucket allows for the requests the simulator counted:
``(requests - burst) / rate`` seconds. *Fixed cost* = wall time - that bound: interpreter and
imports, the Prefect server and Dask cluster start-up, idle slots in the bucket, the merge and the
shutdown. Targets (2-core machine): thread <= asyncio + 5 s, dask <= asyncio + 10 s.
Results: a table on stdout, a JSON in ``benchmarks/results/fixed_cost-<UTC>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from fredflow.sim.process import SimProcess
from fredflow.sim.server import DEMO_API_KEY

RESULTS = Path(__file__).parent / "results"
RUNNERS = ("asyncio", "thread", "dask")
TARGET_OVER_ASYNCIO = {"thread": 5.0, "dask": 10.0}


def run_once(runner: str, sim: SimProcess, workdir: Path, *, rate: float, burst: int, round_: int) -> dict:
    db = workdir / f"{runner}-{round_}.duckdb"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API_")}
    env["FRED_API_KEY"] = DEMO_API_KEY
    cmd = [sys.executable, "-m", "fredflow.cli", "ingest", "--db", str(db), "--release", "1",
           "--api-url", sim.url, "--runner", runner, "--rate", f"{rate:g}", "--json", "--quiet"]
    sim.reset_stats()
    started = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    wall = time.perf_counter() - started
    stats = sim.stats()
    if proc.returncode != 0:
        raise SystemExit(f"{runner}: exit {proc.returncode}\n{proc.stderr[-3000:]}")
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    requests = stats["requests"]
    admitted = requests - stats["throttled"]
    bound = max(0.0, (admitted - burst) / rate)
    per_second = stats["admitted_per_second"]
    busy = [i for i, n in enumerate(per_second) if n]
    first, last = (busy[0], busy[-1]) if busy else (0, 0)
    return {
        "runner": runner, "round": round_, "wall_seconds": round(wall, 2), "requests": requests,
        "throttled_429": stats["throttled"], "rate_bound_seconds": round(bound, 2),
        "fixed_cost_seconds": round(wall - bound, 2), "n_series": summary["n_series"],
        "n_failed": summary["n_failed"], "run_seconds": summary["seconds"],
        "client_utilization": summary["utilization"],
        # where the fixed cost goes, as the server saw it (whole seconds since the command started)
        "first_request_second": first, "after_last_request_seconds": round(wall - (last + 1), 2),
        "idle_seconds_between": sum(1 for n in per_second[first:last + 1] if n == 0),
        "admitted_per_second": per_second,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", type=int, default=60)
    parser.add_argument("--rate", type=float, default=2.0)
    parser.add_argument("--burst", type=int, default=2)
    parser.add_argument("-k", "--reps", type=int, default=1, help="interleaved rounds (default 1)")
    parser.add_argument("--runners", default=",".join(RUNNERS))
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    runners = [r.strip() for r in args.runners.split(",") if r.strip()]

    records: list[dict] = []
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="fredflow-fixedcost-") as tmp, \
            SimProcess(n_series=args.series, seed=20, rate=args.rate, burst=args.burst, obs_per_series=100,
                       long_series=0) as sim:
        for round_ in range(args.reps):
            order = runners[round_ % len(runners):] + runners[:round_ % len(runners)]
            for runner in order:
                record = run_once(runner, sim, Path(tmp), rate=args.rate, burst=args.burst, round_=round_)
                records.append(record)
                print(f"  round {round_} {runner:8s} wall {record['wall_seconds']:6.2f} s, "
                      f"fixed cost {record['fixed_cost_seconds']:6.2f} s (first request at {record['first_request_second']} s, "
                      f"{record['idle_seconds_between']} idle s, {record['after_last_request_seconds']:.1f} s after the last)",
                      file=sys.stderr, flush=True)

    medians = {}
    for runner in runners:
        mine = [r for r in records if r["runner"] == runner]
        medians[runner] = {
            "wall_seconds": round(statistics.median(r["wall_seconds"] for r in mine), 2),
            "fixed_cost_seconds": round(statistics.median(r["fixed_cost_seconds"] for r in mine), 2),
            "rate_bound_seconds": round(statistics.median(r["rate_bound_seconds"] for r in mine), 2),
            "requests": mine[0]["requests"], "throttled_429": sum(r["throttled_429"] for r in mine),
        }
    base = medians.get("asyncio", {}).get("wall_seconds")
    print(f"\n{args.series} series at {args.rate:g} req/s (simulator bucket burst {args.burst}), "
          f"median of {args.reps}")
    print("| runner | wall s | rate bound s | fixed cost s | over asyncio s | target |")
    print("|---|---|---|---|---|---|")
    for runner, m in medians.items():
        over = m["wall_seconds"] - base if base is not None and runner != "asyncio" else None
        target = TARGET_OVER_ASYNCIO.get(runner)
        if over is not None:
            m["over_asyncio_seconds"] = round(over, 2)
            m["meets_target"] = target is None or over <= target
        print(f"| {runner} | {m['wall_seconds']:.2f} | {m['rate_bound_seconds']:.2f} | {m['fixed_cost_seconds']:.2f} | "
              f"{'' if over is None else f'{over:+.2f}'} | {'' if target is None else f'<= +{target:g}'} |")

    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"fixed_cost-{stamp}.json"
    path.write_text(json.dumps({
        "benchmark": "fixed_cost", "recorded_at": stamp, "series": args.series, "rate": args.rate,
        "burst": args.burst, "reps": args.reps, "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                                                             "loadavg_1m_before": round(load_before, 2)},
        "targets_over_asyncio_seconds": TARGET_OVER_ASYNCIO, "medians": medians, "runs": records,
    }, indent=2) + "\n")
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
