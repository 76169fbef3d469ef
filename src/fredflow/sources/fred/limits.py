"""FRED's limits, in one place. Each is FRED's documented (or recorded) number unless it says otherwise."""

from __future__ import annotations

from datetime import date

#: ``series/observations``: rows per request (``limit`` ≤ 100000).
OBSERVATIONS_PAGE_LIMIT = 100_000
#: ``release/series``, ``category/series``, ``series/updates``: rows per request.
LIST_PAGE_LIMIT = 1000
#: ``series/vintagedates``: dates per request.
VINTAGE_DATES_PAGE_LIMIT = 10_000
#: A real-time ``series/observations`` request spanning more vintage dates is refused (400).
MAX_VINTAGE_DATES = 2000
#: What fredflow asks per real-time range: whether FRED also counts the vintage in effect at
#: ``realtime_start`` is not documented, and one of margin costs nothing.
VINTAGES_PER_REQUEST = MAX_VINTAGE_DATES - 1
#: ALFRED's real-time bounds: the earliest ``realtime_start`` and the "still current" ``realtime_end``.
VINTAGE_EARLIEST = date(1776, 7, 4)
VINTAGE_LATEST = date(9999, 12, 31)
#: About what one key may send (FRED: 120 requests a minute).
DEFAULT_RATE = 2.0
