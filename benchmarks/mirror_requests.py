"""Requests ÷ the minimum FRED needs, per job and runner, with the database checked against the simulator.

    uv run python benchmarks/mirror_requests.py                      # every runner, 300 series
    uv run python benchmarks/mirror_requests.py --runners asyncio --series 1000

Jobs, each against its own simulator process (no rate limit; requests counted AT THE SIMULATOR):

* ``initial``: the first ``--mode incremental`` run of ``--release 1`` into an empty database;
* ``daily``: the simulator advances one day (1 % of the series change: a new observation, the
  last three and one older value revised, sometimes one removed) and the next incremental run;
* ``backfill``: ``fredflow backfill --release 1 --start 1600-01-01`` into an empty database;
* ``vintages-initial``: ``--vintages`` (full real-time history) of a small release;
* ``vintages-daily``: after a simulated day (1 % of the series change, each gaining a vintage),
  ``--vintages --mode incremental``: only the changed series, from their newest stored vintage.

The minimum is computed from the simulator's own data, independently of fredflow: a listing
page per 1,000 series, then for each series fetched one ``series/observations`` request per
100,000 rows; for vintages, ``series/vintagedates`` pages (10,000 dates each) plus, for each
real-time range of at most 2,000 vintage dates (FRED's limit; fredflow asks 1,999), one request per
100,000 rows it holds (an incremental vintage run: only from each series' newest stored vintage). After each
job the database is compared with the simulator row by row (``observations``; ``vintages`` for
vintage jobs). Results go to ``benchmarks/results/mirror_requests-<timestamp>.json``.
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
from datetime import date, datetime, timezone
from pathlib import Path

import duckdb
import numpy as np

from fredflow import CatalogSpec, Settings
from fredflow.api import backfill, ingest
from fredflow.sim.process import SimProcess
from fredflow.sim.server import DEMO_API_KEY
from fredflow.sources.fred.limits import (LIST_PAGE_LIMIT, MAX_VINTAGE_DATES, OBSERVATIONS_PAGE_LIMIT,
                                          VINTAGE_DATES_PAGE_LIMIT)

RESULTS = Path(__file__).parent / "results"


def observation_pages(catalog, ids) -> int:
    return sum(max(1, math.ceil(catalog.observations(s).num_rows / OBSERVATIONS_PAGE_LIMIT)) for s in ids)


def vintage_requests(catalog, ids, since: dict[str, date] | None = None) -> int:
    """series/vintagedates pages + per range of <= 2000 vintage dates, its pages of rows; with ``since``
    (series -> newest vintage date already stored), only from that date on."""
    total = 0
    end_max = (date(9999, 12, 31) - date(1970, 1, 1)).days
    for sid in ids:
        data = catalog.vintage_data(sid)
        first = (since[sid] if since and sid in since else date(1776, 7, 4)) - date(1970, 1, 1)
        days = data.vintage_days[data.vintage_days >= first.days]
        total += max(1, math.ceil(len(days) / VINTAGE_DATES_PAGE_LIMIT))
        firsts = days[MAX_VINTAGE_DATES::MAX_VINTAGE_DATES]
        starts = [first.days, *firsts.tolist()]
        ends = [d - 1 for d in firsts.tolist()] + [end_max]
        for lo, hi in zip(starts, ends):
            rows = int(np.count_nonzero((data.start_days <= hi) & (data.end_days >= lo)))
            total += max(1, math.ceil(rows / OBSERVATIONS_PAGE_LIMIT))
    return total


def listing(n: int) -> int:
    return max(1, math.ceil(n / LIST_PAGE_LIMIT))


def observations_match(db: Path, catalog, ids) -> bool:
    con = duckdb.connect(str(db), read_only=True)
    try:
        got = con.sql("SELECT series_id, date, value FROM observations ORDER BY series_id, date").fetchall()
    finally:
        con.close()
    want = [(sid, r["date"], r["value"]) for sid in sorted(ids) for r in catalog.observations(sid).to_pylist()]
    return got == want


def vintages_match(db: Path, catalog, ids) -> bool:
    con = duckdb.connect(str(db), read_only=True)
    try:
        got = con.sql("SELECT series_id, date, realtime_start, realtime_end, value FROM vintages "
                      "ORDER BY series_id, date, realtime_start").fetchall()
    finally:
        con.close()
    want = [(sid, r["date"], r["realtime_start"], r["realtime_end"], r["value"])
            for sid in sorted(ids) for r in catalog.vintage_rows(sid).to_pylist()]
    return got == want


def settings_for(sim: SimProcess) -> Settings:
    return Settings(api_url=sim.url, api_key=DEMO_API_KEY, rate=100_000, burst=100, concurrency=16)


def row(job: str, runner: str, summary, server: dict, minimum: int, exact: bool, seconds: float) -> dict:
    return {"job": job, "runner": runner, "requests": summary.requests, "server_requests": server["requests"],
            "retries": summary.retries,  # a request retried (timeout on a loaded machine) counts twice
            "minimum": minimum, "ratio": round(server["requests"] / minimum, 4), "series": summary.n_series,
            "rows": summary.n_rows, "n_revised": summary.n_revised, "n_deleted": summary.n_deleted,
            "n_added": summary.n_added, "seconds": round(seconds, 2), "db_equals_simulator": exact}


def timed(fn):
    started = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - started


def observation_jobs(runner: str, n_series: int, workdir: Path) -> list[dict]:
    out = []
    with SimProcess(n_series=n_series, seed=31, long_series=2) as sim:
        settings, spec = settings_for(sim), CatalogSpec(release=1)
        catalog = sim.catalog
        ids = catalog.series_ids
        db = workdir / f"{runner}-daily.duckdb"
        sim.reset_stats()
        summary, seconds = timed(lambda: ingest(db, spec, settings=settings, mode="incremental", runner=runner))
        out.append(row("initial", runner, summary, sim.stats(), listing(len(ids)) + observation_pages(catalog, ids),
                       observations_match(db, catalog, ids), seconds))
        changed = sim.advance(days=1, changed=max(1, n_series // 100))
        sim.reset_stats()
        summary, seconds = timed(lambda: ingest(db, spec, settings=settings, mode="incremental", runner=runner))
        out.append(row("daily", runner, summary, sim.stats(),
                       listing(len(ids)) + observation_pages(sim.catalog, changed),
                       observations_match(db, sim.catalog, ids), seconds))
        db = workdir / f"{runner}-backfill.duckdb"
        sim.reset_stats()
        summary, seconds = timed(lambda: backfill(db, spec, start=date(1600, 1, 1), settings=settings, runner=runner))
        out.append(row("backfill", runner, summary, sim.stats(),
                       listing(len(ids)) + observation_pages(sim.catalog, ids),
                       observations_match(db, sim.catalog, ids), seconds))
    return out


def vintage_jobs(runner: str, n_series: int, workdir: Path) -> list[dict]:
    out = []
    with SimProcess(n_series=n_series, seed=32, long_series=0) as sim:
        settings, spec = settings_for(sim), CatalogSpec(release=1)
        ids = sim.catalog.series_ids
        db = workdir / f"{runner}-vintages.duckdb"
        for job in ("vintages-initial", "vintages-daily"):
            if job == "vintages-daily":
                stored = {s: sim.catalog.vintage_dates(s)[-1] for s in ids}
                changed = sim.advance(days=1, changed=max(1, n_series // 100))
                minimum = listing(len(ids)) + vintage_requests(sim.catalog, changed,
                                                               stored if INCREMENTAL_VINTAGES else None)
            else:
                minimum = listing(len(ids)) + vintage_requests(sim.catalog, ids)
            sim.reset_stats()
            mode = "incremental" if job == "vintages-daily" and INCREMENTAL_VINTAGES else "full"
            summary, seconds = timed(lambda: ingest(db, spec, settings=settings, vintages=True, mode=mode,
                                                    runner=runner))
            out.append(row(job, runner, summary, sim.stats(), minimum, vintages_match(db, sim.catalog, ids),
                           seconds))
    return out


def _incremental_vintages() -> bool:
    from fredflow.errors import UsageError
    from fredflow.options import RunOptions

    try:
        RunOptions.build(db="x.duckdb", catalog=CatalogSpec(release=1), vintages=True, mode="incremental")
        return True
    except UsageError:
        return False


INCREMENTAL_VINTAGES = _incremental_vintages()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", type=int, default=300, help="series of the observation jobs (default 300)")
    parser.add_argument("--vintage-series", type=int, default=30, help="series of the vintage jobs (default 30)")
    parser.add_argument("--runners", default="asyncio,thread,dask")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    results = []
    with tempfile.TemporaryDirectory(prefix="fredflow-mirror-") as tmp:
        for runner in args.runners.split(","):
            for r in [*observation_jobs(runner, args.series, Path(tmp)),
                      *vintage_jobs(runner, args.vintage_series, Path(tmp))]:
                results.append(r)
                print(f"{r['runner']:>8} {r['job']:<17} {r['server_requests']:>6} requests, minimum {r['minimum']:>6}"
                      f" -> {r['ratio']:.2f}; db = simulator: {r['db_equals_simulator']}; {r['seconds']:.1f} s",
                      flush=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"mirror_requests-{stamp}.json"
    path.write_text(json.dumps({"benchmark": "mirror_requests", "created": stamp,
                                "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
                                "incremental_vintages": INCREMENTAL_VINTAGES,
                                "parameters": {"series": args.series, "vintage_series": args.vintage_series},
                                "results": results}, indent=1, default=str))
    print(f"wrote {path}")
    return 0 if all(r["db_equals_simulator"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
