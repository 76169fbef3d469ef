"""Pacing on one event loop: the run's :class:`~fredflow.ratelimit.schedule.Schedule` leased in process.

The asyncio runner shares one limiter for the whole run; it is the same
:class:`~fredflow.ratelimit.service.SlotLimiter` the thread and Dask tasks use, leasing from the
schedule directly instead of over HTTP, so every runner paces with one
algorithm (GCRA slots, a measured limit after a 429, a probe above it). One
limiter belongs to one event loop (aiolimiter warns when reused across loops).
"""

from __future__ import annotations

from typing import Protocol

from .schedule import Schedule
from .service import ScheduleLimiter


class Limiter(Protocol):
    """What :class:`fredflow.sources.fred.client.FredClient` needs from a limiter."""

    async def acquire(self) -> None: ...

    def throttled(self, retry_after: float | None = None) -> float: ...

    def succeeded(self) -> None: ...


class AdaptiveLimiter(ScheduleLimiter):
    """A schedule of its own at ``rate``/``burst``: at most ``burst + rate·t`` requests in any ``t`` seconds."""

    def __init__(self, rate: float, burst: int = 1) -> None:
        super().__init__(Schedule(rate, burst))
