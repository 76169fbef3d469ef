"""Request pacing for one event loop: a token bucket that backs off on 429s.

:class:`AdaptiveLimiter` wraps :class:`aiolimiter.AsyncLimiter` configured as a
bucket of capacity ``burst`` draining at ``rate`` per second, so over any
interval of ``t`` seconds at most ``burst + rate * t`` acquisitions pass.

On a 429 (:meth:`throttled`) the whole limiter, i.e. every request of the run
sharing it, pauses for a backoff delay and its rate is halved (never below
``min_rate``); every success afterwards (:meth:`succeeded`) adds back a
fraction of the configured rate until it is reached again (AIMD). A real limit
lower than configured therefore settles without a storm of 429s.

One instance belongs to one event loop (aiolimiter warns when reused across
loops): runners that fan out to other threads or processes build one per task.
"""

from __future__ import annotations

import asyncio
import random
import time

from aiolimiter import AsyncLimiter


class AdaptiveLimiter:
    """At most ``burst + rate·t`` requests in any ``t`` seconds; halves the rate on each 429 episode."""

    __slots__ = ("target_rate", "rate", "burst", "min_rate", "_bucket", "_paused_until",
                 "_backoff", "_increase", "throttle_events")

    def __init__(self, rate: float, burst: int = 2, *, min_rate: float | None = None) -> None:
        if rate <= 0:
            raise ValueError("rate must be > 0 requests/s")
        self.target_rate = float(rate)
        self.rate = float(rate)
        self.burst = max(1, int(burst))
        self.min_rate = min_rate if min_rate is not None else max(self.target_rate / 64, 0.05)
        self._bucket = AsyncLimiter(self.burst, self.burst / self.rate)
        self._paused_until = 0.0
        self._backoff = 0.0
        # additive increase: 20 successes regain the full rate after a halving
        self._increase = self.target_rate / 20
        self.throttle_events = 0

    def _set_rate(self, rate: float) -> None:
        self.rate = min(self.target_rate, max(self.min_rate, rate))
        # aiolimiter keeps its drain rate in two attributes; change both so
        # waiters already queued feel the new pace.
        self._bucket.time_period = self.burst / self.rate
        self._bucket._rate_per_sec = self.rate  # noqa: SLF001 - documented above

    async def acquire(self) -> None:
        """Wait for a pause (after a 429) to end, then for a token."""
        while (delay := self._paused_until - time.monotonic()) > 0:
            await asyncio.sleep(delay)
        await self._bucket.acquire()

    def throttled(self, retry_after: float | None = None) -> float:
        """Record a 429: pause every request and halve the rate. Returns the pause in seconds.

        429s answered for requests sent before the previous pause ended belong
        to the same episode and do not halve the rate again.
        """
        now = time.monotonic()
        if now >= self._paused_until:
            self.throttle_events += 1
            self._set_rate(self.rate / 2)
            self._backoff = min(30.0, max(1.0, self._backoff * 2 if self._backoff else 1.0))
            pause = retry_after if retry_after is not None else self._backoff * random.uniform(0.75, 1.25)
            self._paused_until = now + pause
        return max(0.0, self._paused_until - now)

    def succeeded(self) -> None:
        """Record a success: regain rate additively; forget backoff once back at full rate."""
        if self.rate < self.target_rate:
            self._set_rate(self.rate + self._increase)
        elif self._backoff:
            self._backoff = 0.0
