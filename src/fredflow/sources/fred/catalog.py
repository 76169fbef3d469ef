"""Catalog: what the user asked for → the list of series ids (and their metadata when a listing gives it).

Exactly one source: explicit ids, a file of ids, a FRED release or a FRED
category. Ids are de-duplicated keeping their first position; a release or
category listing already carries every series' metadata, so no per-series
``series`` request is needed for those.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from pydantic import BaseModel, ConfigDict, model_validator

from ...errors import FatalRunError, FredError, UsageError
from .client import FredClient
from .parse import SERIES_SCHEMA

_SPLIT = re.compile(r"[\s,]+")


class CatalogSpec(BaseModel):
    """Which series a run covers: exactly one of explicit ids, a file of ids, a release or a category."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    series: tuple[str, ...] | None = None
    series_file: Path | None = None
    release: int | None = None
    category: int | None = None

    def __init__(self, series=None, series_file=None, release=None, category=None, **extra) -> None:  # noqa: ANN001
        # positional use, as the dataclass it was: CatalogSpec(("GDP",))
        super().__init__(series=series, series_file=series_file, release=release, category=category, **extra)

    @model_validator(mode="after")
    def _exactly_one(self) -> "CatalogSpec":
        given = [name for name in ("series", "series_file", "release", "category") if getattr(self, name) is not None]
        if len(given) != 1:
            flags = "--series, --series-file, --release or --category"
            raise UsageError(f"give exactly one of {flags}" + (f" (got {', '.join(given)})" if given else ""))
        return self

    def describe(self) -> dict[str, object]:
        if self.series is not None:
            return {"series": list(self.series)}
        if self.series_file is not None:
            return {"series_file": str(self.series_file)}
        return {"release": self.release} if self.release is not None else {"category": self.category}


@dataclass(frozen=True, slots=True)
class Catalog:
    series_ids: list[str]
    metadata: pa.Table | None  # from a listing; None when ids were given explicitly


def parse_ids(text: str) -> list[str]:
    """``"GDP, CPIAUCSL\\nUNRATE"`` → ids; ``#`` starts a comment; duplicates dropped, order kept."""
    ids: list[str] = []
    for line in text.splitlines():
        ids += [token for token in _SPLIT.split(line.split("#", 1)[0]) if token]
    return list(dict.fromkeys(ids))


def read_series_file(path: Path) -> list[str]:
    try:
        text = Path(path).read_text(encoding="utf-8-sig")  # a byte-order mark (Notepad, Excel) is not an id
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read series file {path}: {getattr(exc, 'strerror', None) or exc}") from None
    ids = parse_ids(text)
    if not ids:
        raise UsageError(f"series file {path} lists no series ids (one id per line, # for comments)")
    return ids


def explicit_ids(spec: CatalogSpec) -> list[str] | None:
    """Ids known without asking FRED, or None for a release/category."""
    if spec.series is not None:
        ids = list(dict.fromkeys(s.strip() for s in spec.series if s.strip()))
        if not ids:
            raise UsageError("--series lists no series ids")
        return ids
    if spec.series_file is not None:
        return read_series_file(spec.series_file)
    return None


async def resolve(spec: CatalogSpec, client: FredClient) -> Catalog:
    """Expand the spec into series ids; a listing is paged 1000 at a time."""
    ids = explicit_ids(spec)
    if ids is not None:
        return Catalog(ids, None)
    listing = await (client.release_series(spec.release) if spec.release is not None
                     else client.category_series(spec.category))
    ids = list(dict.fromkeys(listing.column("series_id").to_pylist()))
    return Catalog(ids, listing)


async def with_metadata(catalog: Catalog, client: FredClient, concurrency: int = 8) -> Catalog:
    """The catalog with every series' metadata: the listing's, or one ``series`` request per explicit id
    (``concurrency`` at a time, under the client's limiter). An id whose request fails is left out of
    the metadata; it fails, and is recorded, when its batch is fetched."""
    if catalog.metadata is not None:
        return catalog
    slots = asyncio.Semaphore(concurrency)

    async def one(series_id: str) -> pa.Table | None:
        async with slots:
            try:
                return await client.series(series_id)
            except FatalRunError:
                raise
            except FredError:
                return None

    tables = [t for t in await asyncio.gather(*(one(sid) for sid in catalog.series_ids)) if t is not None]
    return Catalog(catalog.series_ids, pa.concat_tables(tables) if tables else SERIES_SCHEMA.empty_table())
