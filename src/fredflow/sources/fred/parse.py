"""FRED JSON → Arrow. Pure functions, no I/O.

FRED sends every value as a string, ``"."`` for a missing one, dates as ISO
strings and ``last_updated`` as ``"2024-10-28 15:23:53-05"``. Observation
pages are decoded with orjson and turned into Arrow arrays column by column
(Arrow's C++ casts do the string → date/double work), which parses ~2M
observations/s on one core here.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timezone
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

OBSERVATION_SCHEMA = pa.schema(
    [
        ("date", pa.date32()),
        ("value", pa.float64()),
        ("realtime_start", pa.date32()),
        ("realtime_end", pa.date32()),
    ]
)

#: Staged observation rows: one file per batch holds many series.
STAGED_OBSERVATION_SCHEMA = pa.schema([("series_id", pa.string()), *OBSERVATION_SCHEMA])

SERIES_SCHEMA = pa.schema(
    [
        ("series_id", pa.string()),
        ("title", pa.string()),
        ("frequency", pa.string()),
        ("frequency_short", pa.string()),
        ("units", pa.string()),
        ("units_short", pa.string()),
        ("seasonal_adjustment", pa.string()),
        ("seasonal_adjustment_short", pa.string()),
        ("last_updated", pa.timestamp("us", tz="UTC")),
        ("observation_start", pa.date32()),
        ("observation_end", pa.date32()),
        ("popularity", pa.int32()),
        ("notes", pa.string()),
    ]
)

_EPOCH = date(1970, 1, 1)


class ResponseFormatError(ValueError):
    """The body is not the JSON FRED sends (truncated, invalid, or wrong shape)."""


@dataclass(frozen=True, slots=True)
class Page:
    """One page of a paged FRED listing: its position and the rows it holds."""

    count: int
    offset: int
    limit: int
    table: pa.Table

    @property
    def is_last(self) -> bool:
        return self.offset + self.limit >= self.count or self.table.num_rows == 0


def decode(body: bytes | str) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ResponseFormatError(f"invalid JSON ({len(body)} bytes): {exc}") from None


def _date_column(strings: list[str]) -> pa.Array:
    # Outside vintage requests every row carries the same realtime dates: build
    # those columns from one parsed value instead of parsing n strings.
    if strings and strings.count(strings[0]) == len(strings):
        days = (date.fromisoformat(strings[0]) - _EPOCH).days
        return pa.array(np.full(len(strings), days, dtype=np.int32), pa.date32())
    return pa.array(strings, pa.string()).cast(pa.date32())


def observations_table(rows: list[dict[str, str]]) -> pa.Table:
    """The ``observations`` array → Arrow (date, value, realtime_start, realtime_end); "." → NULL."""
    try:
        dates = pa.array([row["date"] for row in rows], pa.string()).cast(pa.date32())
        values = pa.array([None if (v := row["value"]) == "." else v for row in rows], pa.string())
        realtime_start = _date_column([row["realtime_start"] for row in rows])
        realtime_end = _date_column([row["realtime_end"] for row in rows])
        values = values.cast(pa.float64())
    except (KeyError, TypeError, pa.ArrowInvalid) as exc:
        raise ResponseFormatError(f"unexpected observation row: {exc}") from None
    return pa.Table.from_arrays([dates, values, realtime_start, realtime_end], schema=OBSERVATION_SCHEMA)


def parse_observations(body: bytes | str | dict | list) -> Page:
    """A ``series/observations`` response (or its bare ``observations`` array) → :class:`Page`."""
    doc = decode(body) if isinstance(body, (bytes, str)) else body
    if isinstance(doc, list):  # bare array, as some archives keep it
        table = observations_table(doc)
        return Page(count=table.num_rows, offset=0, limit=max(table.num_rows, 1), table=table)
    try:
        rows = doc["observations"]
        count, offset, limit = int(doc["count"]), int(doc["offset"]), int(doc["limit"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ResponseFormatError(f"not an observations response: missing {exc}") from None
    return Page(count=count, offset=offset, limit=limit, table=observations_table(rows))


def parse_last_updated(text: str | None) -> datetime | None:
    """``"2024-10-28 15:23:53-05"`` → aware UTC datetime."""
    if not text:
        return None
    stamp = datetime.strptime(text + "00" if len(text.rsplit("-", 1)[-1]) == 2 else text, "%Y-%m-%d %H:%M:%S%z")
    return stamp.astimezone(timezone.utc)


def series_table(seriess: list[dict[str, Any]]) -> pa.Table:
    """FRED ``seriess`` entries → Arrow rows of the ``series`` table."""
    try:
        columns: dict[str, list[Any]] = {
            "series_id": [s["id"] for s in seriess],
            "last_updated": [parse_last_updated(s.get("last_updated")) for s in seriess],
            "observation_start": [s.get("observation_start") for s in seriess],
            "observation_end": [s.get("observation_end") for s in seriess],
            "popularity": [s.get("popularity") for s in seriess],
        }
    except (KeyError, TypeError, ValueError) as exc:
        raise ResponseFormatError(f"unexpected series entry: {exc}") from None
    for name in ("title", "frequency", "frequency_short", "units", "units_short",
                 "seasonal_adjustment", "seasonal_adjustment_short", "notes"):
        columns[name] = [s.get(name) for s in seriess]
    arrays = []
    for field in SERIES_SCHEMA:
        values = columns[field.name]
        if pa.types.is_date32(field.type):
            arrays.append(pa.array(values, pa.string()).cast(pa.date32()))
        else:
            arrays.append(pa.array(values, field.type))
    return pa.Table.from_arrays(arrays, schema=SERIES_SCHEMA)


def parse_series_list(body: bytes | str | dict) -> Page:
    """``series``, ``release/series``, ``category/series`` or ``series/updates`` → :class:`Page` of series rows.

    ``series`` (one id) has no paging fields; it is a page of one.
    """
    doc = decode(body) if isinstance(body, (bytes, str)) else body
    try:
        seriess = doc["seriess"]
    except (KeyError, TypeError):
        raise ResponseFormatError("not a series listing: no 'seriess'") from None
    table = series_table(seriess)
    count = int(doc.get("count", table.num_rows))
    return Page(count=count, offset=int(doc.get("offset", 0)), limit=int(doc.get("limit", max(count, 1))), table=table)


def with_series_id(series_id: str, observations: pa.Table) -> pa.Table:
    """Prefix an observations table with its ``series_id`` column (the staged layout)."""
    return observations.add_column(0, "series_id", pa.array([series_id] * observations.num_rows, pa.string()))


def concat(tables: list[pa.Table], schema: pa.Schema) -> pa.Table:
    return pa.concat_tables(tables) if tables else schema.empty_table()


# -- vintages (ALFRED) -------------------------------------------------------------

VINTAGE_SCHEMA = pa.schema(
    [
        ("date", pa.date32()),
        ("realtime_start", pa.date32()),
        ("realtime_end", pa.date32()),
        ("value", pa.float64()),
    ]
)
"""Real-time observation rows: ``value`` of ``date`` as known from ``realtime_start`` to ``realtime_end``."""

STAGED_VINTAGE_SCHEMA = pa.schema([("series_id", pa.string()), *VINTAGE_SCHEMA])

VINTAGE_DATES_SCHEMA = pa.schema([("vintage_date", pa.date32())])


def parse_vintage_observations(body: bytes | str | dict) -> Page:
    """A real-time ``series/observations`` response (``realtime_start``/``realtime_end``
    given, any ``output_type`` of rows) → :class:`Page` of :data:`VINTAGE_SCHEMA` rows."""
    page = parse_observations(body)
    return Page(count=page.count, offset=page.offset, limit=page.limit, table=page.table.select(VINTAGE_SCHEMA.names))


def parse_vintage_dates(body: bytes | str | dict) -> Page:
    """A ``series/vintagedates`` response → :class:`Page` of :data:`VINTAGE_DATES_SCHEMA` rows."""
    doc = decode(body) if isinstance(body, (bytes, str)) else body
    try:
        dates = doc["vintage_dates"]
        count, offset, limit = int(doc["count"]), int(doc["offset"]), int(doc["limit"])
        column = pa.array(dates, pa.string()).cast(pa.date32())
    except (KeyError, TypeError, ValueError, pa.ArrowInvalid) as exc:
        raise ResponseFormatError(f"not a vintagedates response: {exc}") from None
    table = pa.Table.from_arrays([column], schema=VINTAGE_DATES_SCHEMA)
    return Page(count=count, offset=offset, limit=limit, table=table)


def stitch_vintages(tables: list[pa.Table], boundaries: list[date]) -> pa.Table:
    """Join real-time rows fetched over consecutive real-time ranges into one history.

    ``tables`` hold :data:`VINTAGE_SCHEMA` rows of consecutive ranges whose ends
    (all but the last) are ``boundaries``. FRED clips every period to the range
    asked for, so a period crossing a boundary arrives as two rows: one ending
    on the boundary and one starting the next day, same date, same value (NULL
    equal to NULL). Exactly those pairs are joined (repeatedly, for periods
    spanning several ranges). Result sorted by date, realtime_start.
    """
    table = concat(tables, VINTAGE_SCHEMA)
    if table.num_rows == 0:
        return table
    table = table.combine_chunks()
    table = table.take(pc.sort_indices(table, sort_keys=[("date", "ascending"), ("realtime_start", "ascending")]))
    day = np.asarray(table.column("date").cast(pa.int32()))
    start = np.asarray(table.column("realtime_start").cast(pa.int32()))
    end = np.asarray(table.column("realtime_end").cast(pa.int32()))
    value = table.column("value")
    valid = np.asarray(value.is_valid())
    numbers = np.asarray(value.fill_null(0.0))
    ends_on_boundary = np.isin(end[:-1], np.array([(b - _EPOCH).days for b in boundaries], dtype=np.int32))
    continues = (
        (day[1:] == day[:-1])
        & (start[1:] == end[:-1] + 1)
        & ends_on_boundary
        & (valid[1:] == valid[:-1])
        & (~valid[1:] | (numbers[1:] == numbers[:-1]))
    )
    first = np.flatnonzero(np.concatenate([[True], ~continues]))
    last = np.concatenate([first[1:] - 1, [table.num_rows - 1]])
    joined = table.take(pa.array(first))
    return joined.set_column(2, "realtime_end", pa.array(end[last], pa.int32()).cast(pa.date32()))

