"""``make demo``: start the simulator, ingest a few hundred series into data/demo.duckdb, advance the
simulator a day and run the daily incremental ingest, show the result.

Everything is real: the simulator is a separate process speaking FRED's API on
127.0.0.1, the ingest goes through aiohttp under the rate limiter, and the
result is an ordinary DuckDB file you can open afterwards.
"""

from __future__ import annotations

import logging
import sys
import textwrap
from pathlib import Path

import duckdb

from .api import ingest
from .progress import for_terminal
from .sources.fred.catalog import CatalogSpec
from .settings import Settings
from .sim.process import SimProcess
from .sim.server import DEMO_API_KEY
from .warehouse import Warehouse

DB = Path("data/demo.duckdb")
N_SERIES = 300


def _has_pandas() -> bool:
    try:
        import pandas  # noqa: F401 - a dev dependency; without it the Arrow table is printed
    except ImportError:
        return False
    return True


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    # a fresh warehouse each time: the simulator starts again at its day 0
    for stale in (DB, DB.with_name(DB.name + ".wal"), DB.with_name(DB.name + ".lock")):
        stale.unlink(missing_ok=True)
    print(f"starting the FRED simulator ({N_SERIES} series, 40 req/s limit) …", flush=True)
    with SimProcess(n_series=N_SERIES, seed=42, rate=40, burst=4) as sim:
        settings = Settings(api_url=sim.url, api_key=DEMO_API_KEY, rate=35, burst=4, concurrency=16)
        print(f"ingesting release 1 ({N_SERIES} series) from {sim.url} into {DB} …", flush=True)
        summary = ingest(DB, CatalogSpec(release=1), settings=settings, progress=for_terminal())
        print()
        for key, value in summary.to_dict().items():
            if key != "failed":
                print(f"  {key:>15}: {value}")
        changed = sim.advance(days=1, changed=6)
        print(f"\nthe simulator moves one day on: {len(changed)} series get a new observation and revisions; "
              "a daily incremental run fetches only those …", flush=True)
        daily = ingest(DB, CatalogSpec(release=1), settings=settings, mode="incremental", progress=for_terminal())
        print(f"  incremental run: {daily.n_series} of {daily.n_catalog} series fetched whole, {daily.requests} requests, "
              f"{daily.n_rows:,} rows in {daily.seconds:.1f}s: {daily.n_revised} values revised, "
              f"{daily.n_deleted} deleted, {daily.n_added} added (see 'fredflow changes --db {DB}')")
    con = duckdb.connect(str(DB), read_only=True)
    try:
        print("\nlargest series in the warehouse:")
        query = textwrap.dedent("""\
            SELECT o.series_id, s.frequency, count(*) AS observations, count(o.value) AS non_null,
                   min(o.date) AS first, max(o.date) AS last, round(avg(o.value), 3) AS mean
            FROM observations o JOIN series s USING (series_id)
            GROUP BY ALL ORDER BY observations DESC LIMIT 8""")
        print(textwrap.indent(query, "  "))
        con.sql(query).show()
        print("runs so far:")
        con.sql("SELECT run_id, mode, status, n_series, n_rows, requests, round(seconds, 1) AS seconds "
                "FROM ingest_runs ORDER BY started_at DESC LIMIT 5").show()
    finally:
        con.close()
    monthly = [sid for sid in Warehouse(DB).series().to_pylist() if sid["frequency_short"] == "M"][:3]
    if monthly:
        ids = [row["series_id"] for row in monthly]
        print(f"reading it back: Warehouse('{DB}').panel({ids}, start='2020-01-01', freq='q', units='pc1')")
        print(Warehouse(DB).panel(ids, start="2020-01-01", freq="q", units="pc1").to_pandas().tail(4).to_string(index=False)
              if _has_pandas() else Warehouse(DB).panel(ids, start="2020-01-01", freq="q", units="pc1").slice(-4))
    print(f"open it yourself:  uv run python -c \"import duckdb; print(duckdb.connect('{DB}').sql('FROM series LIMIT 5'))\"")
    return summary.exit_code or daily.exit_code


if __name__ == "__main__":
    sys.exit(main())
