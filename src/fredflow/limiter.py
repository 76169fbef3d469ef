"""Request pacing for one event loop: a token bucket that backs off on 429s.

:class:`AdaptiveLimiter` wraps :class:`aiolimiter.AsyncLimiter` configured as a
bucket of capacity ``burst`` draining at ``rate`` per second, so over any
interval of ``t`` seconds at most ``burst + rate * t`` acquisitions pass.

On a 429 (:meth:`AdaptiveLimiter.throttled`) every request sharing the limiter
pauses briefly (long enough for a server bucket of ``burst`` to refill;
doubling for 429 episodes in quick succession, up to 30 s) and the rate drops
to ``DECREASE`` × itself, or ``DECREASE_AGAIN`` × itself when the previous
episode was moments ago (never below ``min_rate``). Afterwards successes
(:meth:`AdaptiveLimiter.succeeded`) let it climb back linearly, by
``INCREASE_PER_S`` × the configured rate per second, up to the configured rate
(AIMD). A real limit lower than configured therefore settles into a sawtooth
between ~0.8× and 1× that limit, with a few 429s per tooth, not a storm.

One instance belongs to one event loop (aiolimiter warns when reused across
loops): runners that fan out to other threads or processes build one per task.
"""

from __future__ import annotations

import asyncio
import random
import time

from aiolimiter import AsyncLimiter

DECREASE = 0.8
DECREASE_AGAIN = 0.5
INCREASE_PER_S = 0.05
MAX_PAUSE_S = 30.0


class AdaptiveLimiter:
    """At most ``burst + rate·t`` requests in any ``t`` seconds; slows down on 429s, recovers on successes."""

    __slots__ = ("target_rate", "rate", "burst", "min_rate", "_bucket", "_paused_until", "_pause",
                 "_last_change", "throttle_events")

    def __init__(self, rate: float, burst: int = 2, *, min_rate: float | None = None) -> None:
        if rate <= 0:
            raise ValueError("rate must be > 0 requests/s")
        self.target_rate = float(rate)
        self.rate = float(rate)
        self.burst = max(1, int(burst))
        self.min_rate = min_rate if min_rate is not None else max(self.target_rate / 64, 0.05)
        self._bucket = AsyncLimiter(self.burst, self.burst / self.rate)
        self._paused_until = 0.0
        self._pause = 0.0
        self._last_change = 0.0
        self.throttle_events = 0

    def _set_rate(self, rate: float) -> None:
        self.rate = min(self.target_rate, max(self.min_rate, rate))
        # aiolimiter keeps its drain rate in two attributes; change both so
        # waiters already queued feel the new pace.
        self._bucket.time_period = self.burst / self.rate
        self._bucket._rate_per_sec = self.rate  # noqa: SLF001 - see above

    async def acquire(self) -> None:
        """Wait for a pause (after a 429) to end, then for a token."""
        while (delay := self._paused_until - time.monotonic()) > 0:
            await asyncio.sleep(delay)
        await self._bucket.acquire()

    def throttled(self, retry_after: float | None = None) -> float:
        """Record a 429: pause every request and slow down. Returns how long the caller should wait.

        429s answered before the current pause ends belong to the same episode
        (requests already in flight) and do not slow down again.
        """
        now = time.monotonic()
        if now >= self._paused_until:
            self.throttle_events += 1
            refill = self.burst / self.rate
            recent = now - self._paused_until < 10 * refill
            # a 429 soon after the last one means we are far above the real limit: cut harder
            self._set_rate(self.rate * (DECREASE_AGAIN if recent else DECREASE))
            self._last_change = now
            self._pause = min(MAX_PAUSE_S, self._pause * 2) if recent and self._pause else refill
            pause = retry_after if retry_after is not None else self._pause * random.uniform(0.9, 1.1)
            self._paused_until = now + pause
        return max(0.0, self._paused_until - now)

    def succeeded(self) -> None:
        """Record a success: regain rate linearly in time."""
        if self.rate < self.target_rate:
            now = time.monotonic()
            self._set_rate(self.rate + INCREASE_PER_S * self.target_rate * (now - self._last_change))
            self._last_change = now
