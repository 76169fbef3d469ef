"""Pacing on one event loop: the run's :class:`~fredflow.ratelimit.schedule.Schedule` leased in process.

The asyncio runner shares one limiter for the whole run; it is the same
:class:`~fredflow.ratelimit.service.SlotLimiter` the thread and Dask tasks use, leasing from the
schedule directly instead of over HTTP, so every runner paces with one
algorithm (GCRA slots, a measured limit after a 429, a probe above it). One
limiter belongs to one event loop (aiolimiter warns when reused across loops).
"""

from __future__ import annotations

from typing import Protocol



class Limiter(Protocol):
    """What :class:`fredflow.sources.fred.client.FredClient` needs from a limiter."""

    async def acquire(self) -> None: ...

    def throttled(self, retry_after: float | None = None) -> float: ...

    def succeeded(self) -> None: ...
