"""Staging modes on an existing Dask cluster: hand-back vs object storage vs a shared filesystem.

    uv run python benchmarks/staging_modes.py                       # 200 series x 5,000 observations
    uv run python benchmarks/staging_modes.py --series 1000 --obs 10000

A real ``dask scheduler`` and two ``dask worker`` processes (2 threads each) on 127.0.0.1, a
simulator (no rate limit, no latency: the point is the cost of moving staged bytes), and for each
mode one ``fredflow backfill --runner dask --dask-address …`` in a child process, as a user runs it:

* ``handback``: local ``--staging-dir`` (the default with ``--dask-address``): each batch's Parquet
  bytes come back through Dask and the flow writes them into its run folder;
* ``s3``: ``--staging-dir s3://…`` on moto's S3 server (tests/moto_s3.py) on 127.0.0.1: workers
  PUT, the merge reads through Arrow;
* ``shared``: ``--no-handback`` with a local folder every worker sees (here the same disk: what an
  NFS/EFS/Filestore mount gives a real cluster, minus its network).

Reported per mode: rows/s over the whole run (plan + fetch + merge, the summary's ``seconds``) and
the peak RSS of the flow process itself (sampled every 20 ms; its Prefect server and the workers
not included). Results: benchmarks/results/staging_modes-<timestamp>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import psutil

from fredflow.sim.process import SimProcess
from fredflow.sim.server import DEMO_API_KEY

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results"
BIN = Path(sys.executable).parent
sys.path.insert(0, str(ROOT / "tests"))
from s3server import CREDENTIALS, MotoServer  # noqa: E402


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def peak_rss(pid: int, stop: threading.Event, out: list[int]) -> None:
    proc, peak = psutil.Process(pid), 0
    while not stop.is_set():
        try:
            peak = max(peak, proc.memory_info().rss)
        except psutil.Error:
            break
        time.sleep(0.02)
    out.append(peak)


def run_mode(mode: str, tmp: Path, sim, address: str, moto) -> dict:
    db = tmp / f"{mode}.duckdb"
    staging = {"handback": [], "shared": ["--no-handback", "--staging-dir", str(tmp / "shared-staging")],
               "s3": ["--staging-dir", moto.uri(prefix=f"bench-{time.time_ns()}")]}[mode]
    cmd = [sys.executable, "-m", "fredflow.cli", "backfill", "--db", str(db), "--release", "1", "--start",
           "1600-01-01", "--window", "100y", "--api-url", sim.url, "--api-key", DEMO_API_KEY, "--rate", "100000",
           "--concurrency", "32", "--runner", "dask", "--dask-address", address, "--json", "--quiet", *staging]
    env = {**os.environ, **CREDENTIALS}
    env.pop("PREFECT_API_URL", None)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    stop, peak = threading.Event(), []
    sampler = threading.Thread(target=peak_rss, args=(proc.pid, stop, peak), daemon=True)
    sampler.start()
    out, err = proc.communicate(timeout=3600)
    stop.set()
    sampler.join(5)
    if proc.returncode != 0:
        raise SystemExit(f"{mode}: failed ({proc.returncode}): {err.strip().splitlines()[-3:]}")
    summary = json.loads(out)
    return {"mode": mode, "rows": summary["n_rows"], "seconds": summary["seconds"],
            "rows_per_s": round(summary["n_rows"] / summary["seconds"]), "requests": summary["requests"],
            "peak_rss_flow_mib": round(peak[0] / 2**20, 1) if peak else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", type=int, default=200)
    parser.add_argument("--obs", type=int, default=5000)
    parser.add_argument("--modes", nargs="+", default=["handback", "s3", "shared"])
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    os.environ.update(CREDENTIALS)
    results = []
    with tempfile.TemporaryDirectory(prefix="fredflow-staging-modes-") as tmp, \
            SimProcess(n_series=args.series, seed=3, obs_per_series=args.obs, long_series=0, withdrawn=0) as sim, \
            MotoServer() as moto:
        from fredflow.staging import filesystem_for

        filesystem_for(moto.uri())[0].create_dir("fredflow")
        port = _port()
        address = f"tcp://127.0.0.1:{port}"
        procs = [subprocess.Popen([str(BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port", str(port),
                                   "--dashboard-address", ":0", "--no-show"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
        try:
            for _ in range(2):
                procs.append(subprocess.Popen([str(BIN / "dask"), "worker", address, "--nthreads", "2",
                                               "--no-dashboard", "--memory-limit", "0"],
                                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            from distributed import Client

            with Client(address, timeout=60) as client:
                client.wait_for_workers(2, timeout=120)
            for mode in args.modes:
                print(f"{mode}: backfilling {args.series:,} series x {args.obs:,} observations …", flush=True)
                results.append(run_mode(mode, Path(tmp), sim, address, moto))
                print(f"  {results[-1]}", flush=True)
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"staging_modes-{stamp}.json"
    path.write_text(json.dumps({
        "benchmark": "staging_modes", "created": stamp, "series": args.series, "obs_per_series": args.obs,
        "cluster": "dask scheduler + 2 dask workers x 2 threads on 127.0.0.1",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "load_average_at_end": os.getloadavg()},
        "results": results,
    }, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
