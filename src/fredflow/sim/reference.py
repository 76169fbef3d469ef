"""Releases, categories, tags and search over a :class:`SimCatalog` (all derived, deterministic).

- **Releases**: the catalog's ``releases`` (release 1 lists every id, the
  others partition them).  A release's dates are the union of the vintage
  dates of its servable series plus every simulated day on which one of them
  changed.  ``series/release`` of a series is its partition release.
- **Categories**: a tree ``0`` ("Categories") -> group categories
  ``1..4`` -> the catalog's leaf categories (``100`` ...), which hold the
  series; ``series/categories`` is the series' leaf.
- **Tags**: each series carries the tags of its frequency, seasonal
  adjustment, units, plus ``usa``, ``nation`` and ``sim``; ``series_count``
  counts the servable series carrying the tag.
- **Search**: ``full_text`` matches every word of ``search_text`` (split on
  spaces and ``+``) in the title, case-insensitive; ``series_id`` matches the
  id against the text with ``*`` wildcards.  ``search_rank`` is the number of
  words matched in the title's concept part, ties by popularity.
"""

from __future__ import annotations

import fnmatch
import functools
import re
from datetime import date, timedelta
from typing import Any

import numpy as np

from fredflow.sim.catalog import SimCatalog

__all__ = ["Reference"]

_EPOCH = date(1970, 1, 1)

_RELEASE_NAMES = {
    1: "Simulated Economic Data (all series)",
    10: "Consumer Price Index",
    13: "G.17 Industrial Production and Capacity Utilization",
    18: "H.15 Selected Interest Rates",
    21: "H.6 Money Stock Measures",
    46: "Producer Price Index",
    50: "Employment Situation",
    53: "Gross Domestic Product",
    86: "Commercial Paper",
}
_GROUP_NAMES = (
    "Money, Banking, & Finance",
    "Population, Employment, & Labor Markets",
    "National Accounts",
    "Prices",
)
_LEAF_NAMES = (
    "Interest Rates", "Exchange Rates", "Monetary Data", "Financial Indicators", "Banking",
    "Business Lending", "Current Population Survey", "Current Employment Statistics", "Unemployment Insurance",
    "Productivity & Costs", "Job Openings & Labor Turnover", "National Income & Product Accounts",
    "Federal Government Debt", "U.S. Trade & International Transactions", "Flow of Funds",
    "Consumer Price Indexes (CPI and PCE)", "Producer Price Indexes (PPI)", "Commodities",
    "House Price Indexes", "Trade Indexes",
)
_TAG_CREATED = "2012-02-27 10:18:19-06"
_TAG_GROUPS = {"freq": "Frequency", "seas": "Seasonal Adjustment", "gen": "General or Concept",
               "geo": "Geography", "geot": "Geography Type", "src": "Source"}
_WORD = re.compile(r"[^\s+]+")


def _tag_name(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", " ", text.lower()).strip()


class Reference:
    """The derived listings of one catalog (cached; build a new one when the catalog changes)."""

    def __init__(self, catalog: SimCatalog) -> None:
        self.catalog = catalog
        self.realtime = catalog.realtime
        self.leaf_parent = {c: 1 + i % min(len(_GROUP_NAMES), len(catalog.categories))
                            for i, c in enumerate(sorted(catalog.categories))}
        self.groups = sorted(set(self.leaf_parent.values()))
        self._category_of = {sid: c for c, ids in catalog.categories.items() for sid in ids}
        self._release_of = {sid: r for r, ids in catalog.releases.items() if r != 1 for sid in ids}

    # ---------------------------------------------------------------- releases

    def release(self, release_id: int) -> dict[str, Any]:
        return {
            "id": release_id,
            "realtime_start": self.realtime,
            "realtime_end": self.realtime,
            "name": _RELEASE_NAMES.get(release_id, f"Simulated Release {release_id}"),
            "press_release": release_id != 1,
            "link": f"https://fred.stlouisfed.org/release?rid={release_id}",
        }

    def release_ids(self) -> list[int]:
        return sorted(self.catalog.releases)

    def release_of(self, series_id: str) -> int:
        return self._release_of.get(series_id, 1)

    @functools.cache  # noqa: B019 -- one Reference per catalog
    def release_days(self, release_id: int) -> np.ndarray:
        """Sorted unique release dates (int days since 1970-01-01) of a release."""
        cat = self.catalog
        ids = [s for s in cat.releases[release_id] if cat.is_servable(s)]
        parts = [cat.vintage_days(s) for s in ids]
        members = set(ids)
        changed = [
            (cat.base_today + timedelta(days=t) - _EPOCH).days
            for t in range(1, cat.day + 1)
            if members.intersection(cat.changed_on(t))
        ]
        parts.append(np.array(changed, dtype=np.int32))
        return np.unique(np.concatenate(parts)) if parts else np.zeros(0, np.int32)

    # -------------------------------------------------------------- categories

    def category(self, category_id: int) -> dict[str, Any] | None:
        if category_id == 0:
            return {"id": 0, "name": "Categories", "parent_id": 0}
        if category_id in self.groups:
            return {"id": category_id, "name": _GROUP_NAMES[category_id - 1], "parent_id": 0}
        if category_id in self.leaf_parent:
            name = _LEAF_NAMES[(category_id - 100) % len(_LEAF_NAMES)]
            return {"id": category_id, "name": name, "parent_id": self.leaf_parent[category_id]}
        return None

    def children(self, category_id: int) -> list[dict[str, Any]]:
        if category_id == 0:
            ids = self.groups
        elif category_id in self.groups:
            ids = [c for c, p in sorted(self.leaf_parent.items()) if p == category_id]
        else:
            ids = []
        return [self.category(c) for c in ids]  # type: ignore[misc]

    def category_series(self, category_id: int) -> list[str]:
        return self.catalog.categories.get(category_id, [])

    def category_of(self, series_id: str) -> int:
        return self._category_of[series_id]

    # -------------------------------------------------------------------- tags

    def series_tags(self, series_id: str) -> list[tuple[str, str]]:
        """``(name, group_id)`` of a series' tags."""
        meta = self.catalog.meta(series_id)
        return [
            (_tag_name(meta["frequency"].split(",")[0]), "freq"),
            (meta["seasonal_adjustment_short"].lower(), "seas"),
            (_tag_name(meta["units"]), "gen"),
            ("usa", "geo"),
            ("nation", "geot"),
            ("sim", "src"),
        ]

    @functools.cached_property
    def tag_counts(self) -> dict[tuple[str, str], int]:
        counts: dict[tuple[str, str], int] = {}
        for sid in self.catalog.series_ids:
            for tag in self.series_tags(sid):
                counts[tag] = counts.get(tag, 0) + 1
        return counts

    def tag(self, name: str, group_id: str) -> dict[str, Any]:
        count = self.tag_counts.get((name, group_id), 0)
        total = max(1, self.catalog.n_series)
        return {
            "name": name,
            "group_id": group_id,
            "notes": _TAG_GROUPS[group_id] if group_id != "geo" else "United States of America",
            "created": _TAG_CREATED,
            "popularity": min(100, 40 + 60 * count // total),
            "series_count": count,
        }

    def has_tags(self, series_id: str, wanted: set[str], excluded: set[str]) -> bool:
        if not self.catalog.is_servable(series_id):
            return not wanted
        names = {n for n, _ in self.series_tags(series_id)}
        return wanted <= names and not (excluded & names)

    # ------------------------------------------------------------------ search

    @functools.cache  # noqa: B019 -- one Reference per catalog
    def search(self, text: str, search_type: str) -> list[tuple[str, int]]:
        """``(series_id, search_rank)`` of the servable series matching ``text``."""
        cat = self.catalog
        if search_type == "series_id":
            pattern = text.upper()
            return [(s, 1) for s in cat.series_ids if fnmatch.fnmatchcase(s, pattern)]
        words = [w.lower() for w in _WORD.findall(text)]
        if not words:
            return []
        hits = []
        for sid in cat.series_ids:
            title = cat.meta(sid)["title"].lower()
            if all(w in title for w in words):
                hits.append((sid, sum(title.count(w) for w in words)))
        return hits
