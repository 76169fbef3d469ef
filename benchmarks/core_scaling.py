"""How the backfill's wall time scales with cores: the bench's backfill scenario on 1 core
(``taskset -c 0``: every process of the run, the simulator's included) and on all of them.

    uv run python benchmarks/core_scaling.py                # asyncio and dask, 2 rounds each (~5 min on 2 cores)
    uv run python benchmarks/core_scaling.py --runners asyncio,thread,dask -k 3

With no machine with more cores at hand, this is how "dask is faster than asyncio with more cores" can be
judged here: fit ``wall = S + P / N`` (a serial part and a part spread over N cores) to the two
measurements per runner, and solve for the N where dask's line crosses asyncio's. That is an
extrapolation of two points, not a measurement: the JSON says so. Results:
``benchmarks/results/core_scaling-<UTC>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def bench(cores: list[int] | None, runners: str, reps: int) -> dict:
    out = Path(tempfile.mkdtemp(prefix="core-scaling-"))
    command = [sys.executable, "-m", "fredflow.cli", "bench", "backfill", "--runners", runners, "-k", str(reps),
               "--out", str(out), "--no-charts", "--no-progress", "--json"]
    if cores is not None:
        command = ["taskset", "-c", ",".join(map(str, cores)), *command]
    done = subprocess.run(command, capture_output=True, text=True, timeout=3600)
    if done.returncode not in (0, 1):  # 1: a bench target missed, the runs are still good
        raise SystemExit(f"fredflow bench exited {done.returncode}: {done.stderr[-2000:]}")
    summary = json.loads((out / "summary.json").read_text())
    shutil.rmtree(out, ignore_errors=True)
    groups = {g["runner"]: g for g in summary["groups"] if g["scenario"] == "backfill"}
    return {"command": " ".join(command), "cores": len(cores) if cores else os.cpu_count(),
            "runners": {r: {"runs": g["runs"], "rows_verified": g["rows_verified"], "wall_s": g["wall_s"]["median"],
                            "wall_s_min": g["wall_s"]["min"], "wall_s_max": g["wall_s"]["max"],
                            "cpu_s": g["cpu_s"]["median"], "efficiency": g["efficiency"]["median"]}
                        for r, g in groups.items()}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runners", default="asyncio,dask")
    parser.add_argument("-k", "--reps", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if shutil.which("taskset") is None:
        raise SystemExit("taskset (util-linux) is needed to run on one core")
    one, every = bench([0], args.runners, args.reps), bench(None, args.runners, args.reps)
    n = every["cores"]
    fit = {}
    for runner in one["runners"]:
        w1, wn = one["runners"][runner]["wall_s"], every["runners"][runner]["wall_s"]
        parallel = (w1 - wn) * n / (n - 1)  # w1 = S + P, wn = S + P / n
        fit[runner] = {"serial_s": round(w1 - parallel, 3), "parallel_s": round(parallel, 3)}
        print(f"{runner:8s} 1 core {w1:6.2f} s   {n} cores {wn:6.2f} s   fit: S {fit[runner]['serial_s']:.2f} s + "
              f"P {fit[runner]['parallel_s']:.2f} s / N")
    crossover = None
    if "asyncio" in fit and "dask" in fit:
        a, d = fit["asyncio"], fit["dask"]
        gap = a["serial_s"] - d["serial_s"]
        if gap > 0:
            crossover = round((d["parallel_s"] - a["parallel_s"]) / gap, 1)
        print(f"dask faster than asyncio from N = {crossover} cores by this fit" if crossover else
              "by this fit dask is never faster than asyncio (its serial part is larger)")
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"core_scaling-{stamp}.json"
    path.write_text(json.dumps({"benchmark": "core_scaling", "at": stamp, "command": " ".join(sys.argv),
                                "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0],
                                            "platform": platform.platform(), "load_average": os.getloadavg()},
                                "one_core": one, "all_cores": every, "fit": fit,
                                "dask_faster_from_cores": crossover,
                                "note": "the crossover is an extrapolation of two measurements, not a measurement"},
                               indent=1))
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
