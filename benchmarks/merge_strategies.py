"""Merge strategies: upserting 20 million staged rows into DuckDB, time and peak memory.

    uv run python benchmarks/merge_strategies.py                 # 20M rows (~2 min)
    uv run python benchmarks/merge_strategies.py --series 200    # 2M rows

Why ``observations`` has no primary-key index and why the merge caps DuckDB's
memory (README "Schema"). The staged files are a real run's: ``fredflow backfill``
of 2,000 simulated series x 10,000 observations (as in backfill_large.py), frozen
at the ``after-staging`` checkpoint and killed, so its staging folder holds every
batch's Parquet files and nothing was merged. Those files are then merged in one
transaction into a fresh database, each case in its own process so that peak RSS
(sampled every 20 ms) is the case's alone:

* ``pk-upsert``: ``INSERT … ON CONFLICT DO UPDATE`` into a table with a primary key
  (the merge before this change);
* ``delete-insert``: ``DELETE … USING`` the staged keys, then ``INSERT`` (today's
  ``store._upsert``), uncapped and with ``SET memory_limit = '512MB'`` (today's default);
* ``…-remerge``: the same rows merged again over a table that already holds them,
  so every key is replaced.

Results go to benchmarks/results/merge_strategies-<timestamp>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
OBS_PER_SERIES = 10_000
COLUMNS = "series_id, date, value, realtime_start, realtime_end"
CASES = {
    "pk-upsert": ("pk", None, False),
    "delete-insert": ("plain", None, False),
    "delete-insert-512MB": ("plain", "512MB", False),
    "delete-insert-remerge": ("plain", None, True),
    "delete-insert-512MB-remerge": ("plain", "512MB", True),
}


def stage(folder: Path, n_series: int) -> list[str]:
    """The observation files a real backfill staged, stopped before its merge."""
    from fredflow.sim.process import SimProcess
    from fredflow.sim.server import DEMO_API_KEY

    marker = folder / "paused"
    env = {**os.environ, "FRED_API_KEY": DEMO_API_KEY, "FREDFLOW_PAUSE_AT": "after-staging",
           "FREDFLOW_PAUSE_FILE": str(marker)}
    with SimProcess(n_series=n_series, seed=3, obs_per_series=OBS_PER_SERIES, long_series=0, cache_mb=64) as sim:
        run = subprocess.Popen([sys.executable, "-m", "fredflow.cli", "backfill", "--db", str(folder / "run.duckdb"),
                                "--release", "1", "--start", "1600-01-01", "--window", "100y", "--api-url", sim.url,
                                "--rate", "100000", "--concurrency", "16", "--quiet"], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            while not marker.exists():
                if run.poll() is not None:
                    raise SystemExit(f"the backfill exited ({run.returncode}) before staging everything")
                time.sleep(0.2)
        finally:
            run.kill()
            run.wait()
    return sorted(str(p) for p in (folder / "run.staging").glob("*/batch-*.obs-*.parquet"))


def run_case(name: str, files: list[str], db: str) -> dict:
    """One case in this process; prints its result as JSON."""
    import duckdb
    import psutil

    schema, memory_limit, remerge = CASES[name]
    peak = [0]
    stop = threading.Event()

    def poll() -> None:
        me = psutil.Process()
        while not stop.is_set():
            peak[0] = max(peak[0], me.memory_info().rss)
            stop.wait(0.02)

    key = ", PRIMARY KEY (series_id, date)" if schema == "pk" else ""
    con = duckdb.connect(db)
    con.execute("CREATE TABLE observations (series_id VARCHAR NOT NULL, date DATE NOT NULL, value DOUBLE, "
                f"realtime_start DATE, realtime_end DATE{key})")
    if remerge:
        con.execute(f"INSERT INTO observations SELECT {COLUMNS} FROM read_parquet($files)", {"files": files})
    if memory_limit:
        con.execute(f"SET memory_limit = '{memory_limit}'")
    threading.Thread(target=poll, daemon=True).start()
    before = psutil.Process().memory_info().rss
    started = time.perf_counter()
    con.begin()
    if schema == "pk":
        con.execute(f"INSERT INTO observations SELECT {COLUMNS} FROM read_parquet($files) "
                    "ON CONFLICT (series_id, date) DO UPDATE SET value = excluded.value", {"files": files})
    else:
        con.execute("DELETE FROM observations t USING read_parquet($files) s "
                    "WHERE t.series_id = s.series_id AND t.date = s.date", {"files": files})
        con.execute(f"INSERT INTO observations ({COLUMNS}) SELECT {COLUMNS} FROM read_parquet($files)",
                    {"files": files})
    con.commit()
    seconds = time.perf_counter() - started
    stop.set()
    rows, distinct = con.execute(
        "SELECT count(*), count(DISTINCT (series_id, date)) FROM observations").fetchall()[0]
    con.close()
    return {"case": name, "seconds": round(seconds, 2), "peak_rss_gib": round(peak[0] / 2**30, 3),
            "rss_before_gib": round(before / 2**30, 3), "rows": rows, "distinct_keys": distinct}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", type=int, default=2000, help="series of 10,000 observations (default 2000)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--case", choices=sorted(CASES), help=argparse.SUPPRESS)  # internal: one case
    parser.add_argument("--files", help=argparse.SUPPRESS)
    parser.add_argument("--db", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.case:
        print(json.dumps(run_case(args.case, json.loads(args.files), args.db)))
        return 0

    results = []
    with tempfile.TemporaryDirectory(prefix="fredflow-merge-") as tmp:
        files = stage(Path(tmp), args.series)
        rows = args.series * OBS_PER_SERIES
        for name in CASES:
            db = str(Path(tmp) / f"{name}.duckdb")
            done = subprocess.run([sys.executable, __file__, "--case", name, "--files", json.dumps(files),
                                   "--db", db], capture_output=True, text=True, check=True)
            result = json.loads(done.stdout.strip().splitlines()[-1])
            assert result["rows"] == result["distinct_keys"] == rows, result
            results.append(result)
            print(f"{name:>28}: {result['seconds']:6.2f} s, peak RSS {result['peak_rss_gib']:.2f} GiB", flush=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"merge_strategies-{stamp}.json"
    path.write_text(json.dumps({"benchmark": "merge_strategies", "created": stamp, "rows": rows,
                                "staged_files": len(files), "machine": {"cpus": os.cpu_count()},
                                "results": results}, indent=1))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
