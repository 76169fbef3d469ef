"""Daily incremental cost: requests sent on a 5,000-series catalog where 2% changed since yesterday.

    uv run python benchmarks/incremental_daily.py            # 5,000 series, 100 changed (2%)
    uv run python benchmarks/incremental_daily.py --series 1000 --changed 20

For each catalog form (explicit ids from a file; a FRED release), against the
simulator (its own process, no rate limit):

1. an initial load with ``--mode incremental`` on an empty database (every series is new);
2. the simulator advances one day: K series get a new observation, 3 revised
   values and a newer ``last_updated`` (``POST /_sim/advance``);
3. the daily run, ``--mode incremental``: requests counted by the simulator.

The minimum a daily run can send is one observations request per changed
series plus the pages that tell what changed (``series/updates`` pages for
explicit ids, the release listing's pages for a release). The run's database
is then compared with the simulator row by row. Results go to
benchmarks/results/incremental_daily-<timestamp>.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import duckdb

from fredflow import CatalogSpec, Settings, ingest
from fredflow.sim.process import SimProcess
from fredflow.sim.server import DEMO_API_KEY

RESULTS = Path(__file__).parent / "results"


def db_matches(db: Path, catalog, ids) -> bool:
    con = duckdb.connect(str(db), read_only=True)
    try:
        got = con.execute("SELECT series_id, date, value FROM observations ORDER BY series_id, date").fetchall()
    finally:
        con.close()
    want = [(sid, r["date"], r["value"]) for sid in sorted(ids) for r in catalog.observations(sid).to_pylist()]
    return got == want


def run_case(form: str, n_series: int, changed: int, workdir: Path) -> dict:
    with SimProcess(n_series=n_series, seed=8, obs_per_series=40, long_series=0) as sim:
        settings = Settings(api_url=sim.url, api_key=DEMO_API_KEY, rate=100_000, burst=100, concurrency=32)
        ids = sim.catalog.series_ids
        if form == "ids":
            ids_file = workdir / "ids.txt"
            ids_file.write_text("\n".join(ids))
            spec = CatalogSpec(series_file=ids_file)
        else:
            spec = CatalogSpec(release=1)
        db = workdir / f"{form}.duckdb"
        initial = ingest(db, spec, settings=settings, mode="incremental")
        changed_ids = sim.advance(days=1, changed=changed)
        sim.reset_stats()
        started = time.perf_counter()
        daily = ingest(db, spec, settings=settings, mode="incremental")
        seconds = time.perf_counter() - started
        server = sim.stats()
        listing_pages = math.ceil(n_series / 1000)
        # explicit ids: the updates pages the run needed (it reads until it reaches yesterday's last update)
        minimum = len(changed_ids) + (1 if form == "ids" else listing_pages)
        exact = db_matches(db, sim.catalog, ids)
    return {
        "catalog": form, "series": n_series, "changed": len(changed_ids),
        "initial": {"requests": initial.requests, "seconds": round(initial.seconds, 2), "rows": initial.n_rows},
        "daily": {
            "requests": daily.requests, "server_requests": server["requests"], "fetched_series": daily.n_series,
            "unchanged": daily.n_unchanged, "rows": daily.n_rows, "seconds": round(seconds, 2),
        },
        "minimum_requests": minimum,
        "requests_over_minimum": daily.requests - minimum,
        "full_refetch_requests": initial.requests,
        "db_matches_simulator": exact,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", type=int, default=5000)
    parser.add_argument("--changed", type=int, default=100)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    results = []
    with tempfile.TemporaryDirectory(prefix="fredflow-daily-") as tmp:
        for form in ("ids", "release"):
            result = run_case(form, args.series, args.changed, Path(tmp))
            results.append(result)
            d = result["daily"]
            print(f"{form:>8}: {result['changed']} of {result['series']} changed -> {d['requests']} requests "
                  f"(minimum {result['minimum_requests']}, full refetch {result['full_refetch_requests']}), "
                  f"{d['fetched_series']} series fetched in {d['seconds']:.1f} s; "
                  f"db matches simulator: {result['db_matches_simulator']}", flush=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"incremental_daily-{stamp}.json"
    path.write_text(json.dumps({"benchmark": "incremental_daily", "created": stamp,
                                "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
                                "results": results}, indent=1))
    print(f"wrote {path}")
    return 0 if all(r["db_matches_simulator"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
