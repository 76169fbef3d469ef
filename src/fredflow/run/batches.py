"""The generator that splits a catalog into batches, and how big a batch should be.

A batch is the unit every runner schedules: one asyncio task group, one Prefect
mapped task. Its size trades per-task overhead (each runner states its own:
≈25 ms per mapped task on Prefect's thread pool, ≈65 ms on Dask, measured here)
against keeping every worker busy until the end of the run.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Iterator, Sequence

from ..options import Span

MAX_BATCH_SIZE = 500
EXPECTED_MAX_THROUGHPUT = 300.0  # requests/s one run sustains when the rate is not the limit


@dataclass(frozen=True, slots=True)
class Batch:
    """Series to fetch together over one time range; ``index`` is unique within a run.

    ``starts`` (parallel to ``series_ids``) overrides ``start`` per series: an
    incremental run re-fetches each changed series from its own last
    observation minus the revision window. ``vintages`` asks for the revision
    history over ``[realtime_start, realtime_end]`` instead of current values.
    """

    index: int
    series_ids: tuple[str, ...]
    start: date | None = None
    end: date | None = None
    fetch_metadata: bool = True
    starts: tuple[date | None, ...] | None = None
    vintages: bool = False
    realtime_start: date | None = None
    realtime_end: date | None = None
    realtime_starts: tuple[date | None, ...] | None = None  # incremental vintages: each series' newest stored vintage

    def __len__(self) -> int:
        return len(self.series_ids)

    def start_of(self, position: int) -> date | None:
        """Observation start for the series at ``position``: its own start if set, never before ``start``."""
        own = self.starts[position] if self.starts is not None else None
        if own is None:
            return self.start
        return max(own, self.start) if self.start else own

    def realtime_start_of(self, position: int) -> date | None:
        """First vintage date to fetch for the series at ``position``: its own (incremental) or the batch's."""
        own = self.realtime_starts[position] if self.realtime_starts is not None else None
        return own or self.realtime_start

    @property
    def key(self) -> str:
        """A digest of what the batch fetches: a staged manifest is reused on resume only if it matches."""
        return hashlib.sha1(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]

    def to_dict(self) -> dict:
        return {
            "index": self.index, "series_ids": list(self.series_ids),
            "start": iso_or_none(self.start), "end": iso_or_none(self.end), "fetch_metadata": self.fetch_metadata,
            "starts": [iso_or_none(d) for d in self.starts] if self.starts is not None else None,
            "vintages": self.vintages, "realtime_start": iso_or_none(self.realtime_start),
            "realtime_end": iso_or_none(self.realtime_end),
            **({"realtime_starts": [iso_or_none(d) for d in self.realtime_starts]}
               if self.realtime_starts is not None else {}),
        }



#: Observations a year, by FRED ``frequency_short`` (``Daily, 7-Day`` is told apart by its long name).
PERIODS_PER_YEAR = {"D": 261.0, "W": 52.18, "BW": 26.09, "M": 12.0, "Q": 4.0, "SA": 2.0, "A": 1.0}


def expected_pages(frequency: str | None, frequency_short: str | None, first: date | None, last: date | None,
                   *, start: date | None = None, end: date | None = None, page_limit: int = 100_000) -> int:
    """Requests ``series/observations`` needs for one series' ``[start, end]``: its rows estimated from its
    observed range (``observation_start/end``) and frequency, in pages of ``page_limit`` (at least 1).
    An estimate for planning only: the client reads FRED's ``count`` from the first page and fetches
    exactly the pages it announces."""
    per_year = 365.25 if (frequency or "").startswith("Daily, 7") else PERIODS_PER_YEAR.get(frequency_short or "")
    if per_year is None or first is None or last is None:
        return 1
    lo, hi = max(first, start) if start else first, min(last, end) if end else last
    if hi < lo:
        return 1
    rows = (hi - lo).days / 365.25 * per_year + 1
    return max(1, math.ceil(rows / page_limit))


def iso_or_none(day: date | None) -> str | None:
    return day.isoformat() if day else None


def date_or_none(text: str | None) -> date | None:
    return date.fromisoformat(text) if text else None


def iter_batches(
    series_ids: Sequence[str],
    batch_size: int,
    *,
    start: date | None = None,
    end: date | None = None,
    fetch_metadata: bool = True,
    starts: Sequence[date | None] | None = None,
    windows: Sequence[tuple[date | None, date | None]] | None = None,
    spans: Sequence[tuple[date | None, date | None] | None] | None = None,
    first_index: int = 0,
    vintages: bool = False,
    realtime_start: date | None = None,
    realtime_end: date | None = None,
    realtime_starts: Sequence[date | None] | None = None,
) -> Iterator[Batch]:
    """Yield consecutive batches of at most ``batch_size`` ids, lazily.

    With ``windows`` (a backfill), every window × every chunk of series is one
    batch: window-major, so the first window's batches go out first; only the
    first window's batches fetch series metadata. ``spans`` (parallel to
    ``series_ids``: each series' first and last observation, from its metadata)
    leaves a series out of the windows its history does not reach, except an
    open last window (``end`` None), which every series gets so that a backfill
    always reads through the latest observation.
    ``starts`` gives each series its own observation start (parallel to ``series_ids``).
    """
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    if spans is not None and fetch_metadata:
        raise ValueError("spans come from metadata already fetched: fetch_metadata must be False")
    index = first_index
    for window_number, (window_start, window_end) in enumerate(windows or [(start, end)]):
        positions = [i for i in range(len(series_ids))
                     if spans is None or window_end is None or _reaches(spans[i], window_start, window_end)]
        for offset in range(0, len(positions), batch_size):
            chosen = positions[offset:offset + batch_size]
            chunk = tuple(series_ids[i] for i in chosen)
            chunk_starts = tuple(starts[i] for i in chosen) if starts is not None else None
            chunk_realtime = tuple(realtime_starts[i] for i in chosen) if realtime_starts is not None else None
            # metadata once per series: with the first window's batch
            yield Batch(index, chunk, window_start, window_end, fetch_metadata and window_number == 0, chunk_starts,
                        vintages, realtime_start, realtime_end, chunk_realtime)
            index += 1


def _reaches(span: tuple[date | None, date | None] | None, window_start: date | None, window_end: date) -> bool:
    """Whether a series observed over ``span`` has observations in ``[window_start, window_end]``."""
    if span is None:
        return True  # unknown (its metadata failed): let the fetch tell
    first, last = span
    return (first is None or first <= window_end) and (last is None or window_start is None or last >= window_start)


def windows(start: date, end: date, span: Span | str | int) -> list[tuple[date, date]]:
    """``[start, end]`` cut into consecutive, non-overlapping windows of ``span`` (``"10y"``, or years as an int).

    Every day of ``[start, end]`` is in exactly one window; the last one may be shorter.
    """
    span = Span.parse(span)
    out = []
    cursor = start
    while cursor <= end:
        window_end = min(end, span.shift(cursor) - timedelta(days=1))
        out.append((cursor, window_end))
        cursor = window_end + timedelta(days=1)
    return out


def auto_batch_size(n_series: int, *, slots: int, rate: float, task_overhead: float = 0.0,
                    requests_per_series: float = 1.0) -> int:
    """Batch size that makes a task's work dwarf its overhead and still feeds every slot to the end.

    * Work of a batch of ``b`` series when the run is rate-bound: each of the
      ``slots`` concurrent tasks gets ``rate / slots`` requests/s, so the batch
      takes ``b · requests_per_series · slots / rate`` seconds. Asking that to be
      ≥ 20 × the runner's per-task overhead (``task_overhead``, seconds) gives the lower bound.
    * Up to 4 batches per slot keep every worker busy through the tail.
    The overhead bound wins when the two disagree, except that there are never
    fewer batches than slots (an idle worker costs more than the overhead).
    The result is within [1, 500].
    """
    if n_series <= 0:
        return 1
    slots = max(1, slots)
    # Unthrottled runs are bound by latency and parsing, not by ``rate``: a few
    # hundred series/s is what this machine sustains, so cap the estimate there.
    rate = min(rate, EXPECTED_MAX_THROUGHPUT)
    overhead = task_overhead
    min_size = math.ceil(20 * overhead * rate / (slots * max(requests_per_series, 1e-9))) if overhead else 1
    tail_size = math.ceil(n_series / (4 * slots))
    size = min(max(min_size, tail_size), math.ceil(n_series / slots))
    return max(1, min(MAX_BATCH_SIZE, size))
