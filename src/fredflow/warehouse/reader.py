"""The read side of a fredflow database: a local FRED/ALFRED over DuckDB, returning Arrow tables.

Every call opens its own short read-only connection, runs one query, and closes it, so reading never
holds the database between calls and never gets in an ingest's way for long.  A database locked by a
writer (DuckDB: "Could not set lock on file") is retried with a bounded wait (``lock_timeout``).
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import date, datetime
from pathlib import Path

import duckdb
import pyarrow as pa

from fredflow.errors import StoreBusy, UsageError
from fredflow.warehouse.sql import macro_sql
from fredflow.warehouse.transforms import NATIVE_LEVEL, check_options, plan_for, transform_sql

__all__ = ["Warehouse"]

_LONG_SCHEMA = pa.schema([("series_id", pa.string()), ("date", pa.date32()), ("value", pa.float64())])
_ID_RE = re.compile(r"[A-Za-z0-9_.\-]{1,64}")

# Sources of (series_id, date, value), series_id upper-cased: {ids} is a SQL list of upper-case ids.
_CURRENT = "SELECT upper(series_id) AS series_id, date, value FROM observations WHERE upper(series_id) IN ({ids})"
_ASOF = ("SELECT upper(series_id) AS series_id, date, value FROM vintages "
         "WHERE upper(series_id) IN ({ids}) AND realtime_start <= DATE '{asof}' AND DATE '{asof}' <= realtime_end")
_FIRST = ("SELECT upper(series_id) AS series_id, date, value FROM fredflow_first_release() "
          "WHERE upper(series_id) IN ({ids})")


def _to_date(value: date | str | None, name: str) -> date | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    if isinstance(value, str):
        try:
            return date.fromisoformat(value.strip())
        except ValueError:
            pass
    raise UsageError(f"{name} {value!r} is not a date: use a datetime.date or YYYY-MM-DD")


def _normalise_ids(ids: str | Iterable[str] | None) -> list[str]:
    if ids is None:
        raise UsageError("no series ids given")
    if isinstance(ids, str):
        ids = ids.split(",")
    out: list[str] = []
    for raw in ids:
        if not isinstance(raw, str):
            raise UsageError(f"series id {raw!r} is not a string")
        sid = raw.strip().upper()
        if not sid:
            continue
        if not _ID_RE.fullmatch(sid):
            raise UsageError(f"series id {raw!r} is not a FRED series id")
        if sid not in out:
            out.append(sid)
    if not out:
        raise UsageError("no series ids given")
    return out


def _names(items: list[str], most: int = 10) -> str:
    """``A, B, C`` -- at most ``most`` of them, then how many there are in all (errors stay one short line)."""
    shown = ", ".join(items[:most])
    return shown if len(items) <= most else f"{shown}, ... ({len(items)} in all)"


def _sql_list(ids: list[str]) -> str:
    return ", ".join("'" + sid.replace("'", "''") + "'" for sid in ids)


class Warehouse:
    """Read a fredflow DuckDB database like FRED and ALFRED answer.

    ``Warehouse("data/fred.duckdb")`` holds nothing open.  Every method returns a
    :class:`pyarrow.Table` (``.to_pandas()``, ``polars.from_arrow(...)``).  Series ids are
    case-insensitive (returned upper-case, as FRED spells them); dates are ``datetime.date`` or
    ISO strings.  Unknown ids, an ``asof`` for series without stored vintages or before their first
    stored vintage raise one :class:`~fredflow.errors.UsageError` naming the ids.

    ``lock_timeout`` (seconds) bounds the wait for a database locked by a writer; then
    :class:`~fredflow.errors.StoreBusy` (one line) is raised.
    """

    def __init__(self, path: str | Path, *, lock_timeout: float = 30.0, retry_interval: float = 0.05) -> None:
        self.path = Path(path)
        self.lock_timeout = float(lock_timeout)
        self.retry_interval = float(retry_interval)
        if not self.path.exists():
            raise UsageError(f"no database at {self.path}")

    def __repr__(self) -> str:
        return f"Warehouse({str(self.path)!r})"

    # ------------------------------------------------------------ connection

    @contextmanager
    def connect(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A short read-only connection with the read-side TEMP macros; closed on exit."""
        deadline = time.monotonic() + self.lock_timeout
        while True:
            try:
                con = duckdb.connect(str(self.path), read_only=True)
                break
            except (duckdb.IOException, duckdb.ConnectionException) as exc:
                text = str(exc)
                busy = "lock" in text.lower() or "different configuration" in text
                if not busy:
                    raise UsageError(f"cannot read {self.path}: {text.splitlines()[0]}") from None
                if time.monotonic() >= deadline:
                    if "different configuration" in text:  # DuckDB: a read-write connection of this process
                        raise StoreBusy(f"{self.path} is open read-write in this process (an ingest, or a duckdb "
                                        f"connection you hold?) for more than {self.lock_timeout:g} s; close it "
                                        "and retry") from None
                    raise StoreBusy(f"{self.path} is locked by a writer (an ingest?) for more than "
                                    f"{self.lock_timeout:g} s; retry when it is done") from None
                time.sleep(self.retry_interval)
        try:
            tables = {r[0] for r in con.execute(
                "SELECT table_name FROM duckdb_tables() WHERE database_name = current_database()").fetchall()}
            if "vintages" not in tables:  # a database from before vintages existed: read it as empty
                con.execute("CREATE TEMP TABLE vintages (series_id VARCHAR, date DATE, realtime_start DATE, "
                            "realtime_end DATE, value DOUBLE)")
            for name in ("observations", "series"):
                if name not in tables:
                    raise UsageError(f"{self.path} is not a fredflow database (no {name} table)")
            con.execute(macro_sql(temporary=True))
            yield con
        finally:
            con.close()

    def _arrow(self, con: duckdb.DuckDBPyConnection, query: str) -> pa.Table:
        return con.sql(query).to_arrow_table()

    # -------------------------------------------------------------- metadata

    def series(self, ids: str | Iterable[str] | None = None) -> pa.Table:
        """Rows of the ``series`` table (FRED's metadata) for ``ids`` (``None``: every series)."""
        with self.connect() as con:
            if ids is None:
                return self._arrow(con, "SELECT * FROM series ORDER BY series_id")
            wanted = _normalise_ids(ids)
            table = self._arrow(con, f"""
                SELECT s.* EXCLUDE (series_id), upper(s.series_id) AS series_id, w.pos
                FROM series s JOIN (VALUES {", ".join(f"({_sql_list([sid])}, {i})" for i, sid in enumerate(wanted))})
                  AS w(sid, pos) ON upper(s.series_id) = w.sid
                ORDER BY w.pos""")
        found = set(table["series_id"].to_pylist())
        missing = [sid for sid in wanted if sid not in found]
        if missing:
            raise UsageError(f"no metadata stored for {_names(missing)} (not in the series table)")
        names = ["series_id"] + [n for n in table.column_names if n not in ("series_id", "pos")]
        return table.select(names)

    # ------------------------------------------------------------- long data

    def observations(self, ids: str | Iterable[str], start: date | str | None = None,
                     end: date | str | None = None, *, freq: str | None = None, agg: str = "avg",
                     units: str = "lin") -> pa.Table:
        """Current values (``observations``): long ``series_id, date, value`` (NULL = FRED's ".")."""
        return self._long("current", ids, start, end, freq, agg, units, None)

    def asof(self, ids: str | Iterable[str], asof: date | str, start: date | str | None = None,
             end: date | str | None = None, *, freq: str | None = None, agg: str = "avg",
             units: str = "lin") -> pa.Table:
        """Values as published on ``asof`` (ALFRED ``realtime_start = realtime_end = asof``): for each
        observation date, the vintage in effect that day; dates not yet published are absent."""
        if asof is None:
            raise UsageError("asof needs a date")
        return self._long("asof", ids, start, end, freq, agg, units, _to_date(asof, "asof"))

    def first_release(self, ids: str | Iterable[str], start: date | str | None = None,
                      end: date | str | None = None, *, freq: str | None = None, agg: str = "avg",
                      units: str = "lin") -> pa.Table:
        """Each observation's value as first published (ALFRED ``output_type=4``, same dates)."""
        return self._long("first", ids, start, end, freq, agg, units, None)

    def vintages(self, ids: str | Iterable[str], realtime_start: date | str | None = None,
                 realtime_end: date | str | None = None) -> pa.Table:
        """ALFRED's answer for a real-time period: ``series_id, date, realtime_start, realtime_end, value``,
        every stored vintage row that intersects ``[realtime_start, realtime_end]`` (default: all
        history), clipped to it, by series, date, realtime_start."""
        wanted = _normalise_ids(ids)
        rs = _to_date(realtime_start, "realtime_start") or date(1776, 7, 4)
        re_ = _to_date(realtime_end, "realtime_end") or date(9999, 12, 31)
        if rs > re_:
            raise UsageError(f"realtime_start {rs} is after realtime_end {re_}")
        id_list = _sql_list(wanted)
        order = ", ".join(f"({_sql_list([sid])}, {i})" for i, sid in enumerate(wanted))
        with self.connect() as con:
            present = {r[0] for r in con.execute(
                f"SELECT DISTINCT upper(series_id) FROM vintages WHERE upper(series_id) IN ({id_list})").fetchall()}
            missing = [sid for sid in wanted if sid not in present]
            if missing:
                raise UsageError(f"no vintages stored for {_names(missing)} (ingest them with --vintages)")
            table = self._arrow(con, f"""
                SELECT upper(v.series_id) AS series_id, v.date,
                       greatest(v.realtime_start, DATE '{rs}') AS realtime_start,
                       least(v.realtime_end, DATE '{re_}') AS realtime_end, v.value
                FROM vintages v JOIN (VALUES {order}) AS w(sid, pos) ON upper(v.series_id) = w.sid
                WHERE v.realtime_start <= DATE '{re_}' AND v.realtime_end >= DATE '{rs}'
                ORDER BY w.pos, v.date, v.realtime_start""")
        return table.cast(pa.schema([("series_id", pa.string()), ("date", pa.date32()),
                                     ("realtime_start", pa.date32()), ("realtime_end", pa.date32()),
                                     ("value", pa.float64())]))

    def panel(self, ids: str | Iterable[str], start: date | str | None = None, end: date | str | None = None,
              freq: str | None = None, agg: str = "avg", units: str = "lin",
              asof: date | str | None = None) -> pa.Table:
        """Wide: ``date`` plus one column per series (named by its upper-case id, in the given order),
        on the union of their dates; aggregated to ``freq`` with ``agg`` first, then ``units``; the
        values as published on ``asof`` if given."""
        kind = "current" if asof is None else "asof"
        return self._panel(kind, ids, start, end, freq, agg, units, _to_date(asof, "asof"))

    # -------------------------------------------------------------- internals

    def _panel(self, kind: str, ids, start, end, freq, agg, units, asof: date | None) -> pa.Table:
        wanted = _normalise_ids(ids)
        return self._long(kind, wanted, start, end, freq, agg, units, asof, wide=True)

    def _long(self, kind: str, ids, start, end, freq, agg, units, asof: date | None, *,
              wide: bool = False) -> pa.Table:
        """The long answer (``series_id, date, value``), or with ``wide`` the panel: ``date`` plus one
        column per series on the union of their dates (pivoted in the same query)."""
        wanted = _normalise_ids(ids)
        start_d, end_d = _to_date(start, "start"), _to_date(end, "end")
        if start_d and end_d and start_d > end_d:
            raise UsageError(f"start {start_d} is after end {end_d}")
        freq, agg, units = check_options(freq, agg, units)
        id_list = _sql_list(wanted)
        with self.connect() as con:
            table = "observations" if kind == "current" else "vintages"
            present = dict(con.execute(
                f"SELECT upper(series_id), min(realtime_start) FROM {table} WHERE upper(series_id) IN ({id_list}) "
                "GROUP BY ALL" if table == "vintages" else
                f"SELECT DISTINCT upper(series_id), NULL FROM {table} WHERE upper(series_id) IN ({id_list})"
            ).fetchall())
            self._check_present(con, kind, wanted, present, asof)
            if kind == "current":
                source = _CURRENT.format(ids=id_list)
            elif kind == "asof":
                source = _ASOF.format(ids=id_list, asof=asof.isoformat())
            else:
                source = _FIRST.format(ids=id_list)
            levels = self._native_levels(con, wanted, table) if (freq or units != "lin") else {s: 0 for s in wanted}
            plans = plan_for(levels, freq)
            query = transform_sql(source, plans, freq, agg, units)
            where = []
            if start_d:
                where.append(f"date >= DATE '{start_d.isoformat()}'")
            if end_d:
                where.append(f"date <= DATE '{end_d.isoformat()}'")
            clause = ("WHERE " + " AND ".join(where)) if where else ""
            long = f"SELECT series_id, date, value, pos FROM ({query}) {clause}"
            if not wide:
                return self._arrow(con, f"SELECT series_id, date, value FROM ({long}) ORDER BY pos, date"
                                   ).cast(_LONG_SCHEMA)
            columns = ", ".join(f"any_value(value) FILTER (WHERE series_id = {_sql_list([sid])}) AS \"{sid}\""
                                for sid in wanted)
            return self._arrow(con, f"SELECT date, {columns} FROM ({long}) GROUP BY date ORDER BY date")

    def _check_present(self, con, kind: str, wanted: list[str], present: dict, asof: date | None) -> None:
        missing = [sid for sid in wanted if sid not in present]
        problems = []
        if missing:
            if kind == "current":
                other = {r[0] for r in con.execute(
                    f"SELECT DISTINCT upper(series_id) FROM vintages WHERE upper(series_id) IN ({_sql_list(missing)})"
                ).fetchall()}
                only_vintages = [s for s in missing if s in other]
                unknown = [s for s in missing if s not in other]
                if unknown:
                    problems.append(f"unknown series (nothing stored): {_names(unknown)}")
                if only_vintages:
                    problems.append(f"no current observations stored for {_names(only_vintages)} "
                                    "(only vintages: use asof or first_release)")
            else:
                problems.append(f"no vintages stored for {_names(missing)} (ingest them with --vintages)")
        if kind == "asof" and asof is not None:
            early = [f"{sid} (first stored vintage {present[sid]})" for sid in wanted
                     if sid in present and present[sid] is not None and asof < present[sid]]
            if early:
                problems.append(f"asof {asof} is before the first stored vintage of {_names(early)}")
        if problems:
            raise UsageError("; ".join(problems))

    def _native_levels(self, con, wanted: list[str], table: str) -> dict[str, int]:
        """Native frequency level of each series: ``series.frequency_short``, else guessed from the
        median spacing of its stored dates."""
        known = dict(con.execute(
            f"SELECT upper(series_id), upper(frequency_short) FROM series WHERE upper(series_id) IN ({_sql_list(wanted)})"
        ).fetchall())
        levels: dict[str, int] = {}
        guess = [sid for sid in wanted if known.get(sid) not in NATIVE_LEVEL]
        spacing: dict[str, float] = {}
        if guess:
            spacing = dict(con.execute(f"""
                SELECT sid, median(gap) FROM (
                    SELECT upper(series_id) AS sid, date - lag(date) OVER (PARTITION BY series_id ORDER BY date) AS gap
                    FROM (SELECT DISTINCT series_id, date FROM {table} WHERE upper(series_id) IN ({_sql_list(guess)})))
                WHERE gap IS NOT NULL GROUP BY sid""").fetchall())
        for sid in wanted:
            if known.get(sid) in NATIVE_LEVEL:
                levels[sid] = NATIVE_LEVEL[known[sid]]
                continue
            gap = spacing.get(sid)
            if gap is None:
                levels[sid] = 0
            else:
                bounds = ((5, 0), (10, 1), (20, 2), (45, 3), (135, 4), (270, 5))
                levels[sid] = next((level for bound, level in bounds if gap < bound), 6)
        return levels
