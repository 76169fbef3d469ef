"""``fredflow show``: read series out of a fredflow database without Python.

    fredflow show --db data/fred.duckdb --series GDP,UNRATE [--asof D | --first-release]
                  [--freq q --agg avg] [--units pch] [--start D --end D] [--long]
                  [--format table|csv|json|parquet] [--out FILE]

Wide by default (``date`` plus one column per series, as :meth:`Warehouse.panel`); ``--long`` gives
``series_id, date, value`` rows.  The default format is a rich table on a terminal and CSV when
stdout is piped or ``--out`` names a file (its extension, ``.csv``/``.json``/``.parquet``, decides).
Missing values are empty in CSV, ``null`` in JSON and ``.`` (FRED's) in the table.
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
from datetime import date
from pathlib import Path

import orjson
import pyarrow as pa

from fredflow.errors import UsageError
from fredflow.warehouse.reader import Warehouse
from fredflow.warehouse.transforms import AGGREGATIONS, FREQUENCIES, UNITS

__all__ = ["add_show_parser", "cmd_show"]

FORMATS = ("table", "csv", "json", "parquet")


def add_show_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``show`` command to ``fredflow``'s sub-commands."""
    show = subparsers.add_parser("show", help="print series from the database (a local FRED/ALFRED)",
                                 description="Print series from a fredflow database: current values, as published "
                                             "on a date (--asof) or as first published (--first-release), "
                                             "optionally aggregated (--freq/--agg) and transformed (--units).")
    show.add_argument("--db", type=Path, required=True, help="DuckDB file written by fredflow ingest")
    show.add_argument("--series", required=True, help="comma-separated series ids, e.g. GDP,UNRATE (any case)")
    which = show.add_mutually_exclusive_group()
    which.add_argument("--asof", metavar="YYYY-MM-DD", help="values as published on this date (needs --vintages data)")
    which.add_argument("--first-release", action="store_true", help="values as first published (ALFRED output_type=4)")
    show.add_argument("--freq", choices=FREQUENCIES, help="aggregate to this lower frequency (FRED codes)")
    show.add_argument("--agg", choices=AGGREGATIONS, default="avg", help="aggregation with --freq (default avg)")
    show.add_argument("--units", choices=UNITS, default="lin", help="FRED units transformation (default lin)")
    show.add_argument("--start", metavar="YYYY-MM-DD", help="first observation date shown")
    show.add_argument("--end", metavar="YYYY-MM-DD", help="last observation date shown")
    show.add_argument("--long", action="store_true", help="series_id,date,value rows instead of one column per series")
    show.add_argument("--format", choices=FORMATS, help="default: table on a terminal, else csv (or --out's extension)")
    show.add_argument("--out", type=Path, help="write to this file instead of stdout")
    show.add_argument("--lock-timeout", type=float, default=30.0, metavar="S",
                      help="seconds to wait for a database locked by a writer (default 30)")
    show.set_defaults(func=cmd_show)
    return show


def _fetch(args: argparse.Namespace) -> pa.Table:
    wh = Warehouse(args.db, lock_timeout=args.lock_timeout)
    kind = "first" if args.first_release else ("asof" if args.asof else "current")
    options = dict(freq=args.freq, agg=args.agg, units=args.units)
    asof = None
    if args.asof:
        from fredflow.warehouse.reader import _to_date

        asof = _to_date(args.asof, "--asof")
    if args.long:
        return wh._long(kind, args.series, args.start, args.end, asof=asof, **options)
    return wh._panel(kind, args.series, args.start, args.end, asof=asof, **options)


def _format_for(args: argparse.Namespace) -> str:
    if args.format:
        return args.format
    if args.out is not None:
        suffix = args.out.suffix.lower().lstrip(".")
        return suffix if suffix in ("csv", "json", "parquet") else "csv"
    return "table" if sys.stdout.isatty() else "csv"


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        text = repr(value)
        return text[:-2] if text.endswith(".0") else text
    if isinstance(value, date):
        return value.isoformat()
    return str(value)


def _csv(table: pa.Table) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(table.column_names)
    for row in zip(*(table[c].to_pylist() for c in table.column_names)):
        writer.writerow([_cell(v) for v in row])
    return buffer.getvalue()


def _json(table: pa.Table) -> bytes:
    return orjson.dumps(table.to_pylist(), option=orjson.OPT_SERIALIZE_NUMPY) + b"\n"


def _print_table(table: pa.Table, title: str, file) -> None:
    from rich.console import Console
    from rich.table import Table

    shown = Table(*table.column_names, title=title)
    for column in shown.columns[1:]:
        column.justify = "right"
    for row in zip(*(table[c].to_pylist() for c in table.column_names)):
        shown.add_row(*(_cell(v) if v is not None else "." for v in row))
    console = Console(file=file, width=None if getattr(file, "isatty", lambda: False)() else 200)
    console.print(shown)


def cmd_show(args: argparse.Namespace) -> int:
    """Run ``fredflow show``; a usage error raises :class:`UsageError` (one line, exit 2)."""
    fmt = _format_for(args)
    if fmt == "parquet" and args.out is None:
        raise UsageError("--format parquet needs --out FILE (Parquet is binary)")
    table = _fetch(args)
    if fmt == "parquet":
        import pyarrow.parquet as pq

        pq.write_table(table, args.out)
        return 0
    if fmt == "table":
        title = ("first release" if args.first_release else f"as of {args.asof}" if args.asof else "current values")
        title += f", units {args.units}" + (f", {args.agg} to {args.freq}" if args.freq else "")
        if args.out is not None:
            with open(args.out, "w") as handle:
                _print_table(table, title, handle)
        else:
            _print_table(table, title, sys.stdout)
        return 0
    data = _csv(table).encode() if fmt == "csv" else _json(table)
    if args.out is not None:
        args.out.write_bytes(data)
    else:
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
    return 0
