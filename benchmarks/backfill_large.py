"""Large backfill benchmark: 20 million rows through `fredflow backfill`, rows/s and peak memory.

    uv run python benchmarks/backfill_large.py                 # 2,000 series x 10,000 observations = 20M rows
    uv run python benchmarks/backfill_large.py --series 200    # 2M rows, a quick look
    uv run python benchmarks/backfill_large.py --runners asyncio dask

The simulator (its own process, no rate limit, no latency: the point is
fredflow's throughput and memory, not FRED's rate) serves N series of exactly
10,000 observations each. `fredflow backfill --start 1600-01-01 --window 100y`
runs in a child process as a user would run it: every window x series batch
is fetched, parsed to Arrow, staged as Parquet, and the whole run is merged
into DuckDB in one transaction. The harness samples, every 50 ms, the resident
memory of the fredflow process plus all its descendants (Dask workers, the
temporary Prefect server), never the simulator's, and reports the peak.

Target (issue 5): peak RSS under 1.5 GB for 20 million rows on this 2-core machine.
Results go to benchmarks/results/backfill_large-<timestamp>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from datetime import date, datetime, timezone
from pathlib import Path

import duckdb
import psutil

from fredflow.run.batches import windows
from fredflow.sim.process import SimProcess
from fredflow.sim.server import DEMO_API_KEY

RESULTS = Path(__file__).parent / "results"
OBS_PER_SERIES = 10_000
RUNNER_FLAGS = {"asyncio": [], "thread": ["--thread-slots", "4"], "dask": ["--workers", "2", "--threads-per-worker", "2"]}


class PeakRss:
    """Peak of the summed RSS of a process and its descendants, sampled every ``every`` seconds."""

    def __init__(self, pid: int, every: float = 0.05) -> None:
        self.root = psutil.Process(pid)
        self.every = every
        self.peak = 0
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._t0 = time.monotonic()

    def __enter__(self) -> "PeakRss":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _poll(self) -> None:
        while not self._stop.is_set():
            total = 0
            try:
                procs = [self.root, *self.root.children(recursive=True)]
            except psutil.Error:
                return
            for proc in procs:
                try:
                    total += proc.memory_info().rss
                except psutil.Error:
                    pass
            self.peak = max(self.peak, total)
            self.samples.append((round(time.monotonic() - self._t0, 2), total))
            self._stop.wait(self.every)


def measure(runner: str, sim: SimProcess, n_series: int, workdir: Path) -> dict:
    db = workdir / f"{runner}.duckdb"
    cmd = [sys.executable, "-m", "fredflow.cli", "backfill", "--db", str(db), "--release", "1",
           "--start", "1600-01-01", "--window", "100y", "--api-url", sim.url, "--rate", "100000",
           "--concurrency", "16", "--runner", runner, *RUNNER_FLAGS[runner], "--json", "--quiet"]
    env = {**os.environ, "FRED_API_KEY": DEMO_API_KEY}
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    with PeakRss(proc.pid) as rss:
        out, err = proc.communicate()
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"{runner}: backfill failed ({proc.returncode}): {err.strip().splitlines()[-1:]}")
    summary = json.loads(out)
    con = duckdb.connect(str(db), read_only=True)
    try:
        rows, distinct = con.execute(
            "SELECT count(*), count(DISTINCT (series_id, date)) FROM observations").fetchall()[0]
    finally:
        con.close()
    expected = n_series * OBS_PER_SERIES
    assert rows == distinct == expected == summary["n_rows"], (rows, distinct, expected, summary["n_rows"])
    db_bytes = db.stat().st_size
    db.unlink()
    return {
        "runner": runner, "rows": rows, "series": n_series,
        "windows": len(windows(date(1600, 1, 1), date.today(), "100y")), "requests": summary["requests"],
        "run_seconds": summary["seconds"], "wall_seconds": round(wall, 2),
        "rows_per_second": round(rows / summary["seconds"]), "peak_rss_bytes": rss.peak,
        "peak_rss_gib": round(rss.peak / 2**30, 3), "db_bytes": db_bytes,
        "rss_timeline": rss.samples[:: max(1, len(rss.samples) // 200)],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", type=int, default=2000, help="series of 10,000 observations (default 2000)")
    parser.add_argument("--runners", nargs="+", default=["asyncio"], choices=sorted(RUNNER_FLAGS))
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    results = []
    with tempfile.TemporaryDirectory(prefix="fredflow-backfill-") as tmp, \
            SimProcess(n_series=args.series, seed=3, obs_per_series=OBS_PER_SERIES, long_series=0,
                       cache_mb=64) as sim:
        for runner in args.runners:
            print(f"{runner}: backfilling {args.series:,} series x {OBS_PER_SERIES:,} observations …", flush=True)
            result = measure(runner, sim, args.series, Path(tmp))
            results.append(result)
            print(f"  {result['rows']:,} rows in {result['run_seconds']:.1f} s = {result['rows_per_second']:,} rows/s; "
                  f"peak RSS {result['peak_rss_gib']:.2f} GiB; {result['requests']:,} requests", flush=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"backfill_large-{stamp}.json"
    path.write_text(json.dumps({
        "benchmark": "backfill_large", "created": stamp, "target_peak_rss_gib": 1.5,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "memory_gib": round(psutil.virtual_memory().total / 2**30, 1)},
        "results": results,
    }, indent=1))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
