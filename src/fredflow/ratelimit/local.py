"""Pacing on one event loop: :class:`AdaptiveLimiter`, the :class:`~fredflow.ratelimit.policy.AimdPolicy`
over an :class:`aiolimiter.AsyncLimiter` bucket of capacity ``burst`` draining at the policy's rate:
over any ``t`` seconds at most ``burst + rate·t`` requests pass.

The asyncio runner shares one for the whole run. The run-wide limiter for several threads,
processes or machines (:mod:`fredflow.ratelimit.service`) runs the same policy in one place and
leases send times. One :class:`AdaptiveLimiter` belongs to one event loop (aiolimiter warns when
reused across loops).
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol

from aiolimiter import AsyncLimiter

from .policy import AimdPolicy


class Limiter(Protocol):
    """What :class:`fredflow.sources.fred.client.FredClient` needs from a limiter."""

    async def acquire(self) -> None: ...

    def throttled(self, retry_after: float | None = None) -> float: ...

    def succeeded(self) -> None: ...


class AdaptiveLimiter:
    """:class:`AimdPolicy` on one event loop: at most ``burst + rate·t`` requests in any ``t`` seconds."""

    __slots__ = ("policy", "_bucket")

    def __init__(self, rate: float, burst: int = 1, *, min_rate: float | None = None) -> None:
        self.policy = AimdPolicy(rate, burst, min_rate=min_rate)
        self._bucket = AsyncLimiter(self.policy.burst, self.policy.burst / self.policy.rate)

    def _sync_bucket(self) -> None:
        # aiolimiter keeps its drain rate in two attributes; change both so
        # waiters already queued feel the new pace.
        self._bucket.time_period = self.policy.burst / self.policy.rate
        self._bucket._rate_per_sec = self.policy.rate  # noqa: SLF001 - see above

    async def acquire(self) -> None:
        """Wait for a pause (after a 429) to end, then for a token."""
        while (delay := self.policy.paused_until - time.monotonic()) > 0:
            await asyncio.sleep(delay)
        await self._bucket.acquire()

    def throttled(self, retry_after: float | None = None) -> float:
        """Record a 429: pause every request sharing this limiter and slow down. Returns the wait in seconds."""
        now = time.monotonic()
        if self.policy.on_throttled(now, retry_after):
            self._sync_bucket()
        return max(0.0, self.policy.paused_until - now)

    def succeeded(self) -> None:
        if self.policy.on_success(time.monotonic()):
            self._sync_bucket()
