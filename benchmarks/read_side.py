"""Read side: how long Warehouse calls take on a real ingest (not a timed test; targets well under 1 s).

    uv run --frozen python benchmarks/read_side.py            # ~1 min: ingest, then the timings
    uv run --frozen python benchmarks/read_side.py -k 15      # more repetitions

A simulator of 720 series x 600 observations each (about 50 years of a monthly series) is ingested
through the public API twice: current values (``observations``, ~430k rows) and every vintage
(``vintages=True``, ~1.1M rows).  Then each case is timed ``k`` times (each call opens its own
read-only connection, runs, closes: that cost is in the figures):

* ``panel-20-monthly-*``: ``Warehouse.panel`` of 20 monthly series over 50 years, as levels, with
  ``units`` only, and with ``freq`` + ``agg`` + ``units``;
* ``asof-*``: ``Warehouse.asof`` on the ~1M-row vintages table, for 20 series and for every series;
* ``panel-asof-20-monthly-q-pch``: the as-of panel with a transform;
* ``first-release-20``: ``Warehouse.first_release`` of 20 series.

Results go to benchmarks/results/read_side-<UTC timestamp>.json (median, min, max, first call).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
N_SERIES = 720
OBS_PER_SERIES = 600


def build(folder: Path) -> tuple[Path, Path, list[str], list[str]]:
    from fredflow import CatalogSpec, Settings, ingest
    from fredflow.sim import DEMO_API_KEY, SimCatalog, SimProcess

    catalog = SimCatalog(n_series=N_SERIES, seed=1, obs_per_series=OBS_PER_SERIES, long_series=0)
    monthly = [s for s in catalog.series_ids if catalog.meta(s)["frequency_short"] == "M"][:20]
    assert len(monthly) == 20
    current, vintages = folder / "current.duckdb", folder / "vintages.duckdb"
    with SimProcess(n_series=N_SERIES, seed=1, obs_per_series=OBS_PER_SERIES, long_series=0) as sim:
        settings = Settings(api_url=sim.url, api_key=DEMO_API_KEY, rate=5000, burst=200, concurrency=16)
        spec = CatalogSpec(release=1)
        for db, kw in ((current, {}), (vintages, {"vintages": True})):
            t0 = time.perf_counter()
            summary = ingest(db, spec, settings=settings, **kw)
            assert summary.exit_code == 0, summary
            print(f"ingested {db.name}: {summary.n_rows:,} rows in {time.perf_counter() - t0:.1f} s", flush=True)
    return current, vintages, monthly, list(catalog.series_ids)


def timed(fn, k: int) -> dict:
    times, rows = [], None
    for _ in range(k):
        t0 = time.perf_counter()
        table = fn()
        times.append(time.perf_counter() - t0)
        rows = table.num_rows
    return {"rows": rows, "first_s": round(times[0], 4), "median_s": round(statistics.median(times), 4),
            "min_s": round(min(times), 4), "max_s": round(max(times), 4), "k": k}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-k", type=int, default=9, help="repetitions of each case (default 9)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    import duckdb

    from fredflow import Warehouse

    with tempfile.TemporaryDirectory(prefix="read-side-") as tmp:
        current_db, vintage_db, monthly, every = build(Path(tmp))
        current, vintages = Warehouse(current_db), Warehouse(vintage_db)
        con = duckdb.connect(str(vintage_db), read_only=True)
        n_vintage_rows = con.execute("SELECT count(*) FROM vintages").fetchone()[0]
        on = con.execute("SELECT max(realtime_start) - INTERVAL 3650 DAY FROM vintages").fetchone()[0].date()
        # every series has vintages by then (the daily ones of 600 observations start two years back)
        on_all = con.execute("SELECT max(first) FROM (SELECT min(realtime_start) AS first FROM vintages "
                             "GROUP BY series_id)").fetchone()[0]
        con.close()
        con = duckdb.connect(str(current_db), read_only=True)
        n_observation_rows = con.execute("SELECT count(*) FROM observations").fetchone()[0]
        con.close()
        print(f"observations {n_observation_rows:,} rows, vintages {n_vintage_rows:,} rows; asof {on} / {on_all}",
              flush=True)

        cases = {
            "panel-20-monthly-lin": lambda: current.panel(monthly),
            "panel-20-monthly-pc1": lambda: current.panel(monthly, units="pc1"),
            "panel-20-monthly-q-avg-pch": lambda: current.panel(monthly, freq="q", agg="avg", units="pch"),
            "panel-20-monthly-a-eop-pc1": lambda: current.panel(monthly, freq="a", agg="eop", units="pc1"),
            "asof-20-series": lambda: vintages.asof(monthly, on),
            "asof-every-series": lambda: vintages.asof(every, on_all),
            "panel-asof-20-monthly-q-pch": lambda: vintages.panel(monthly, freq="q", units="pch", asof=on),
            "first-release-20": lambda: vintages.first_release(monthly),
        }
        results = []
        for name, fn in cases.items():
            result = {"case": name, **timed(fn, args.k)}
            results.append(result)
            print(f"{name:30s} rows {result['rows']:>8,}  median {result['median_s'] * 1000:7.1f} ms  "
                  f"min {result['min_s'] * 1000:7.1f} ms  first {result['first_s'] * 1000:7.1f} ms", flush=True)

    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"read_side-{stamp}.json"
    path.write_text(json.dumps({
        "benchmark": "read_side", "created": stamp, "n_series": N_SERIES, "obs_per_series": OBS_PER_SERIES,
        "observation_rows": n_observation_rows, "vintage_rows": n_vintage_rows, "asof": on.isoformat(),
        "asof_every_series": on_all.isoformat(),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "duckdb": duckdb.__version__},
        "results": results}, indent=1))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
