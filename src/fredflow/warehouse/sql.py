"""DuckDB macros of the read side: the as-of and first-release views and FRED's period labels.

Every :class:`~fredflow.warehouse.Warehouse` call creates them as TEMP macros in its own short
read-only connection (nothing is written to the database).  :func:`install_macros` writes them
into the database for good, for users of the duckdb CLI or another client; it needs the database
unlocked for one short write transaction.  ``python -m fredflow.warehouse.sql`` prints the SQL
(paste it into any session), ``python -m fredflow.warehouse.sql --install DB`` installs it.

Macros (all read the fredflow tables ``vintages`` / ``observations`` of the database they run in):

``fredflow_asof(v)`` (table)
    ``series_id, date, value``: every observation as published on date ``v``, i.e. the vintage row
    with ``realtime_start <= v <= realtime_end`` (ALFRED ``realtime_start = realtime_end = v``).
``fredflow_first_release()`` (table)
    ``series_id, date, value, realtime_start``: each observation's value in the vintage that first
    published it, for the dates ALFRED's ``output_type=4`` covers (see :data:`FIRST_RELEASE_RULE`).
``fredflow_period(d, freq)`` (scalar)
    the label of the period of FRED frequency code ``freq`` (``'m'``, ``'q'``, ``'wef'``...) holding
    date ``d``: the first day of a month/quarter/half/year, the end day of a week or biweek.
``fredflow_obs_per_year(freq)`` (scalar)
    FRED's ``n_obs_per_yr`` of a frequency code (or of a ``frequency_short``: D, W, BW, M, Q, SA, A).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

__all__ = ["FIRST_RELEASE_RULE", "MACRO_NAMES", "install_macros", "macro_sql"]

FIRST_RELEASE_RULE = (
    "ALFRED's initial release (output_type=4) lists an observation only if it was published after the "
    "series' first vintage and, when first published, was later than every date published before "
    "(real GDP: the 131 quarters of its first vintage, 1991-12-04, and the 52 quarters 1946-1958 "
    "added back by a 1992 benchmark revision are not listed)."
)

MACRO_NAMES = ("fredflow_asof", "fredflow_first_release", "fredflow_period", "fredflow_obs_per_year")

# Biweekly periods (FRED does not document their phase): they end on 1970-01-07 + 14k (Wednesday,
# 'bw'/'bwew') or 1970-01-05 + 14k (Monday, 'bwem').
_MACROS = r"""
CREATE OR REPLACE {temp} MACRO fredflow_asof(v) AS TABLE
    SELECT series_id, date, value
    FROM vintages
    WHERE realtime_start <= CAST(v AS DATE) AND CAST(v AS DATE) <= realtime_end;

CREATE OR REPLACE {temp} MACRO fredflow_first_release() AS TABLE
    WITH firsts AS (
        SELECT series_id, date, value, realtime_start
        FROM vintages
        QUALIFY row_number() OVER (PARTITION BY series_id, date ORDER BY realtime_start) = 1
    ), marked AS (
        SELECT *,
               min(realtime_start) OVER (PARTITION BY series_id) AS first_vintage,
               min(realtime_start) OVER (PARTITION BY series_id ORDER BY date
                                         ROWS BETWEEN 1 FOLLOWING AND UNBOUNDED FOLLOWING) AS later_min
        FROM firsts
    )
    SELECT series_id, date, value, realtime_start
    FROM marked
    WHERE realtime_start > first_vintage AND (later_min IS NULL OR realtime_start <= later_min);

CREATE OR REPLACE {temp} MACRO fredflow_period(d, freq) AS
    CASE lower(freq)
        WHEN 'd' THEN CAST(d AS DATE)
        WHEN 'm' THEN CAST(date_trunc('month', d) AS DATE)
        WHEN 'q' THEN CAST(date_trunc('quarter', d) AS DATE)
        WHEN 'sa' THEN make_date(year(d), CASE WHEN month(d) <= 6 THEN 1 ELSE 7 END, 1)
        WHEN 'a' THEN CAST(date_trunc('year', d) AS DATE)
        WHEN 'bw' THEN CAST(d AS DATE) + CAST(((DATE '1970-01-07' - CAST(d AS DATE)) % 14 + 14) % 14 AS INTEGER)
        WHEN 'bwew' THEN CAST(d AS DATE) + CAST(((DATE '1970-01-07' - CAST(d AS DATE)) % 14 + 14) % 14 AS INTEGER)
        WHEN 'bwem' THEN CAST(d AS DATE) + CAST(((DATE '1970-01-05' - CAST(d AS DATE)) % 14 + 14) % 14 AS INTEGER)
        ELSE CAST(d AS DATE) + CAST((
            CASE lower(freq) WHEN 'w' THEN 5 WHEN 'wef' THEN 5 WHEN 'weth' THEN 4 WHEN 'wew' THEN 3
                             WHEN 'wetu' THEN 2 WHEN 'wem' THEN 1 WHEN 'wesu' THEN 7 WHEN 'wesa' THEN 6 END
            - isodow(d) + 7) % 7 AS INTEGER)
    END;

CREATE OR REPLACE {temp} MACRO fredflow_obs_per_year(freq) AS
    CASE
        WHEN lower(freq) = 'd' THEN 260
        WHEN lower(freq) IN ('w', 'wef', 'weth', 'wew', 'wetu', 'wem', 'wesu', 'wesa') THEN 52
        WHEN lower(freq) IN ('bw', 'bwew', 'bwem') THEN 26
        WHEN lower(freq) = 'm' THEN 12
        WHEN lower(freq) = 'q' THEN 4
        WHEN lower(freq) = 'sa' THEN 2
        WHEN lower(freq) = 'a' THEN 1
    END;
"""


def macro_sql(*, temporary: bool = True) -> str:
    """The ``CREATE OR REPLACE [TEMP] MACRO`` statements."""
    return _MACROS.format(temp="TEMP" if temporary else "").strip() + "\n"


def install_macros(db_path: str | Path) -> None:
    """Create the macros in the database for good (one short read-write connection)."""
    import duckdb

    from fredflow.errors import StoreBusy, UsageError

    if not Path(db_path).exists():
        raise UsageError(f"no database at {db_path}")
    try:
        con = duckdb.connect(str(db_path))
    except duckdb.IOException as exc:
        if "lock" in str(exc).lower():
            raise StoreBusy(f"{db_path} is locked by another process; install the macros when it is free") from None
        raise
    try:
        con.execute(macro_sql(temporary=False))
    finally:
        con.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fredflow.warehouse.sql",
                                     description="print (or install) the fredflow read-side DuckDB macros")
    parser.add_argument("--install", metavar="DB", type=Path, help="create them in this database for good")
    args = parser.parse_args(argv)
    if args.install is None:
        sys.stdout.write(macro_sql(temporary=False))
        return 0
    from fredflow.errors import FredflowError

    try:
        install_macros(args.install)
    except FredflowError as exc:
        sys.stderr.write(f"fredflow: error: {exc}\n")
        return 2
    sys.stdout.write(f"installed {', '.join(MACRO_NAMES)} in {args.install}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
