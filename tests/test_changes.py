"""Incremental selection (fredflow.sources.fred.changes): which series changed since the database last
fetched them, decided from series/updates or the listing, at the fewest requests."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from fredflow import CatalogSpec, Span
from fredflow.ratelimit.service import ScheduleLimiter
from fredflow.settings import Settings
from fredflow.sim import DEMO_API_KEY, SimConfig
from fredflow.sim.server import FredSimulator
from fredflow.sources.fred.catalog import resolve
from fredflow.sources.fred.changes import select_changed
from fredflow.sources.fred.client import FredClient
from fredflow.sources.fred.transport import HandlerTransport
from fredflow.state import SeriesState


def _client(simulator) -> tuple[FredClient, HandlerTransport]:
    settings = Settings(api_url="http://sim.invalid/fred", api_key=DEMO_API_KEY, rate=10_000, burst=100)
    transport = HandlerTransport(simulator.answer)
    return FredClient(transport, settings, ScheduleLimiter.at(10_000, 100)), transport


def _state_now(simulator, ids) -> dict[str, SeriesState]:
    """What a database that fetched ``ids`` now would hold."""
    catalog = simulator.catalog
    through = max(catalog.last_updated_at(s) for s in catalog.series_ids)
    return {sid: SeriesState(catalog.last_updated_at(sid), catalog.observations(sid).column("date")[-1].as_py(),
                             through) for sid in ids}


@pytest.fixture
def simulator():
    return FredSimulator(SimConfig(n_series=40, seed=3, withdrawn=1))


async def test_explicit_ids_changed_new_and_unchanged_from_one_updates_page(simulator):
    ids = simulator.catalog.series_ids[:20]
    state = _state_now(simulator, ids[:16])  # the last 4 were never fetched
    changed_today = set(simulator.advance(days=1, changed=8))
    client, transport = _client(simulator)
    catalog = await resolve(CatalogSpec(series=tuple(ids)), client)
    selection = await select_changed(catalog, state, client, Span(2, "y"))
    expected = [sid for sid in ids[:16] if sid in changed_today]
    assert selection.changed == expected and expected
    assert selection.new == ids[16:]
    assert selection.unchanged == [sid for sid in ids[:16] if sid not in changed_today]
    assert selection.recheck == []
    assert selection.starts == [Span(2, "y").shift(state[sid].last_observation_date, -1) for sid in expected]
    assert [e for e, _ in transport.requests] == ["series/updates"]  # one page reaches back far enough
    newest = max(simulator.catalog.last_updated_at(s) for s in simulator.catalog.series_ids)
    assert selection.checked_through == newest


async def test_a_release_listing_decides_without_series_updates(simulator):
    release_id, members = next(iter(simulator.catalog.releases.items()))
    members = [m for m in members if simulator.catalog.is_servable(m)]
    state = _state_now(simulator, members)
    changed_today = set(simulator.advance(days=1, changed=10))
    client, transport = _client(simulator)
    catalog = await resolve(CatalogSpec(release=release_id), client)
    selection = await select_changed(catalog, state, client, Span(1, "y"))
    assert set(selection.changed) == changed_today & set(members)
    assert all(e == "release/series" for e, _ in transport.requests)


async def test_a_series_updates_no_longer_lists_is_rechecked(simulator):
    withdrawn = simulator.catalog.withdrawn_ids[0]
    ids = [*simulator.catalog.series_ids[:3], withdrawn]
    state = _state_now(simulator, ids[:3])
    state[withdrawn] = SeriesState(None, None, datetime(2000, 1, 1, tzinfo=timezone.utc))  # far behind: read it all
    client, _ = _client(simulator)
    catalog = await resolve(CatalogSpec(series=tuple(ids)), client)
    selection = await select_changed(catalog, state, client, Span(2, "y"))
    assert selection.recheck == [withdrawn] and selection.unchanged == ids[:3]
