"""Catalog: what the user asked for → series ids (and the listing's metadata)."""

from __future__ import annotations

import pytest

from fredflow import CatalogSpec, UsageError
from fredflow.ratelimit.service import ScheduleLimiter
from fredflow.settings import Settings
from fredflow.sim import DEMO_API_KEY, SimConfig
from fredflow.sim.server import FredSimulator
from fredflow.sources.fred.catalog import parse_ids, read_series_file, resolve, with_metadata
from fredflow.sources.fred.client import FredClient
from fredflow.sources.fred.transport import HandlerTransport


@pytest.fixture(scope="module")
def simulator():
    return FredSimulator(SimConfig(n_series=30, seed=9, withdrawn=1))


def _client(simulator) -> tuple[FredClient, HandlerTransport]:
    settings = Settings(api_url="http://sim.invalid/fred", api_key=DEMO_API_KEY, rate=10_000, burst=100)
    transport = HandlerTransport(simulator.answer)
    return FredClient(transport, settings, ScheduleLimiter.at(10_000, 100)), transport


def test_parse_ids_splits_comments_and_dedupes_in_order():
    assert parse_ids("GDP, CPIAUCSL\nUNRATE GDP # a comment, NOTME\n\n# all comment\nDGS10") == [
        "GDP", "CPIAUCSL", "UNRATE", "DGS10"]


def test_series_file_errors_are_one_usage_line(tmp_path):
    with pytest.raises(UsageError, match="cannot read series file"):
        read_series_file(tmp_path / "missing.txt")
    (tmp_path / "empty.txt").write_text("# nothing\n")
    with pytest.raises(UsageError, match="lists no series ids"):
        read_series_file(tmp_path / "empty.txt")
    (tmp_path / "ids.txt").write_text("A\nB\nA\n")
    assert read_series_file(tmp_path / "ids.txt") == ["A", "B"]


async def test_explicit_ids_need_no_request(simulator):
    client, transport = _client(simulator)
    catalog = await resolve(CatalogSpec(series=(" GDP", "GDP", "UNRATE ")), client)
    assert catalog.series_ids == ["GDP", "UNRATE"] and catalog.metadata is None and transport.requests == []


async def test_a_release_listing_carries_metadata_for_every_series(simulator):
    release_id, members = next(iter(simulator.catalog.releases.items()))
    client, transport = _client(simulator)
    catalog = await resolve(CatalogSpec(release=release_id), client)
    assert catalog.series_ids == list(dict.fromkeys(members))
    assert catalog.metadata.column("series_id").to_pylist() == catalog.series_ids
    pages = -(-len(members) // 1000)
    assert len(transport.requests) == pages  # one listing page per 1000 series, no per-series request
    again = await with_metadata(catalog, client)
    assert again is catalog and len(transport.requests) == pages


async def test_with_metadata_asks_once_per_explicit_id_and_leaves_failures_out(simulator):
    ids = [*simulator.catalog.series_ids[:3], simulator.catalog.withdrawn_ids[0]]
    client, transport = _client(simulator)
    catalog = await with_metadata(await resolve(CatalogSpec(series=tuple(ids)), client), client)
    assert sorted(catalog.metadata.column("series_id").to_pylist()) == sorted(ids[:3])
    assert sorted(p["series_id"] for e, p in transport.requests if e == "series") == sorted(ids)
