"""Incremental runs: which series of the catalog changed since the database last fetched them.

Input: the resolved catalog and each series' state (``series_state``: FRED's
``last_updated`` when we last fetched it, the last observation date stored,
and ``checked_through``, the newest update on FRED when that run was planned).
Output: the series to fetch and, for each, the date to re-fetch from.

* A series never fetched (no state) is fetched in full.
* A series is *changed* when FRED's ``last_updated`` is newer than its state.
  Where that comes from, cheapest first:

  - a release/category catalog: the listing already carries ``last_updated``
    (the listing pages were needed anyway to know the series);
  - explicit ids: ``series/updates``, newest first, read only until it
    reaches the oldest ``checked_through`` of the catalog's series (minus
    :data:`UPDATES_OVERLAP` for FRED publishing late). A daily run reads a page
    or two; a series that failed or was left out of earlier runs keeps an
    older ``checked_through``, so the next run reads back far enough for it.
  - a known series ``series/updates`` never listed although the list ran out
    first (FRED keeps about two weeks of updates): it is re-fetched, with its
    metadata, like a changed one; a failure there is the series' own.

* A changed series is re-fetched whole (one request per 100,000 rows) and the
  merge replaces its stored rows: a value revised anywhere in its history is
  updated, an observation FRED no longer serves is deleted. Only with the
  opt-in revision window is it re-fetched from its last stored observation
  minus that window (fewer bytes, the same requests, and a revision older than
  the window is never seen).
* ``checked_through`` of the run is the newest ``last_updated`` FRED shows at
  planning time (page 1 of ``series/updates``, or the listing): any update
  published after planning is newer, so the next run sees it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone

import pyarrow as pa

from ...options import Span
from ...state import SeriesState
from .catalog import Catalog
from .client import FredClient

log = logging.getLogger("fredflow")

#: Read ``series/updates`` this far past the newest update already seen.
UPDATES_OVERLAP = timedelta(hours=1)


@dataclass(slots=True)
class Selection:
    """What an incremental run fetches."""

    changed: list[str] = field(default_factory=list)  # known, newer last_updated: metadata in ``metadata``
    starts: list[date | None] = field(default_factory=list)  # parallel to ``changed``
    recheck: list[str] = field(default_factory=list)  # known, not listed by series/updates: fetch with metadata
    recheck_starts: list[date | None] = field(default_factory=list)
    new: list[str] = field(default_factory=list)  # never fetched: full history
    unchanged: list[str] = field(default_factory=list)
    metadata: pa.Table | None = None  # listing rows that carry the changed series' metadata
    checked_through: datetime | None = None


def _last_updated(table: pa.Table) -> dict[str, datetime | None]:
    out: dict[str, datetime | None] = {}
    for series_id, updated in zip(table.column("series_id").to_pylist(), table.column("last_updated").to_pylist()):
        out.setdefault(series_id, updated)  # first = newest in series/updates
    return out


def _newest(table: pa.Table) -> datetime | None:
    stamps = [u for u in table.column("last_updated").to_pylist() if u is not None]
    return max(stamps) if stamps else None


async def _updates_since(client: FredClient, wanted: set[str], watermark: datetime | None
                         ) -> tuple[dict[str, datetime | None], list[pa.Table], bool, datetime | None]:
    """``series/updates`` pages until one reaches ``watermark`` (None: the first page only).

    Returns the newest ``last_updated`` of each wanted id listed, the listed
    rows of wanted ids (their metadata), whether the watermark was reached
    (False: the list ran out first), and the newest update of all.
    """
    latest: dict[str, datetime | None] = {}
    pages: list[pa.Table] = []
    newest: datetime | None = None
    async for page in client.series_updates():
        table = page.table
        stamps = [u for u in table.column("last_updated").to_pylist() if u is not None]
        if not pages:  # the first page is the newest
            newest = max(stamps) if stamps else None
        mask = pa.array([sid in wanted for sid in table.column("series_id").to_pylist()], pa.bool_())
        pages.append(table.filter(mask))
        for series_id, updated in _last_updated(table).items():
            if series_id in wanted:
                latest.setdefault(series_id, updated)
        if watermark is None or (stamps and min(stamps) < watermark):
            return latest, pages, True, newest
    return latest, pages, False, newest


async def current_watermark(catalog: Catalog, client: FredClient) -> datetime | None:
    """The newest ``last_updated`` on FRED now: what a run that stores state is "checked through".
    Free for a listing; one ``series/updates`` page for explicit ids."""
    if catalog.metadata is not None:
        return _newest(catalog.metadata)
    *_, newest = await _updates_since(client, set(), None)
    return newest


async def select_changed(catalog: Catalog, state: dict[str, SeriesState], client: FredClient,
                         revision_window: Span | None = None) -> Selection:
    """Split the catalog into changed, recheck, new and unchanged series (see the module docstring)."""
    ids = catalog.series_ids
    known = [sid for sid in ids if sid in state]
    selection = Selection(new=[sid for sid in ids if sid not in state])
    latest: dict[str, datetime | None] = {}
    unlisted: set[str] = set()
    if catalog.metadata is not None:
        latest = _last_updated(catalog.metadata)
        selection.metadata = catalog.metadata
        selection.checked_through = _newest(catalog.metadata)
    else:
        marks = [state[sid].checked_through or state[sid].last_updated for sid in known]
        if known and all(m is not None for m in marks):
            watermark = min(marks) - UPDATES_OVERLAP
        else:
            watermark = None if not known else datetime.min.replace(tzinfo=timezone.utc)  # read it all
        latest, pages, reached, selection.checked_through = await _updates_since(client, set(known), watermark)
        if not reached:
            unlisted = {sid for sid in known if sid not in latest}
            if unlisted:
                log.info("series/updates does not reach back far enough for %d series; re-fetching them",
                         len(unlisted))
        selection.metadata = pa.concat_tables(pages) if pages else None
    for sid in known:
        seen, now = state[sid].last_updated, latest.get(sid)
        last = state[sid].last_observation_date
        start = revision_window.shift(last, -1) if last and revision_window is not None else None
        if sid in unlisted or (now is None and seen is None):
            selection.recheck.append(sid)
            selection.recheck_starts.append(start)
        elif now is not None and (seen is None or now > seen):
            selection.changed.append(sid)
            selection.starts.append(start)
        else:
            selection.unchanged.append(sid)
    return selection
