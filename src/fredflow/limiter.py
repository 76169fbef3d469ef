"""Request pacing: how fast a run may send, and how it backs off on 429s.

Two pieces:

* :class:`AimdPolicy` — the rate a run should use right now. It starts at the
  configured rate. On a 429 it starts an *episode*: every request of the run
  pauses (long enough for a server bucket of ``burst`` to refill, doubling for
  episodes in quick succession, up to 30 s) and the rate drops to ``DECREASE``
  × itself (``DECREASE_AGAIN`` × when the previous episode was moments ago),
  never below ``min_rate``. 429s that arrive during the pause are requests
  already in flight: same episode, no further cut. Successes let the rate climb
  back linearly by ``INCREASE_PER_S`` × the configured rate per second, up to
  the configured rate. A real limit lower than configured therefore settles into
  a sawtooth between ~0.9× and 1× that limit, a few 429s per tooth, no storm.
* :class:`AdaptiveLimiter` — the policy applied on one event loop with an
  :class:`aiolimiter.AsyncLimiter` bucket of capacity ``burst`` draining at the
  policy's rate: over any ``t`` seconds at most ``burst + rate·t`` requests pass.

The run-wide limiter for several threads, processes or machines
(:mod:`fredflow.quota`) runs the same policy in one place and leases send times.
One :class:`AdaptiveLimiter` belongs to one event loop (aiolimiter warns when
reused across loops).
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import Protocol

from aiolimiter import AsyncLimiter

DECREASE = 0.9
DECREASE_AGAIN = 0.5
INCREASE_PER_S = 0.1
MAX_PAUSE_S = 30.0
MIN_PAUSE_S = 0.25  # long enough for a server's bucket to refill a few tokens at any rate we use


class Limiter(Protocol):
    """What :class:`fredflow.fred.FredClient` needs from a limiter."""

    async def acquire(self) -> None: ...

    def throttled(self, retry_after: float | None = None) -> float: ...

    def succeeded(self) -> None: ...


class AimdPolicy:
    """The rate to use now: configured rate, cut on 429 episodes, regained linearly on successes."""

    __slots__ = ("target_rate", "rate", "burst", "min_rate", "paused_until", "_pause", "_last_change",
                 "episodes")

    def __init__(self, rate: float, burst: int = 1, *, min_rate: float | None = None) -> None:
        if rate <= 0:
            raise ValueError("rate must be > 0 requests/s")
        self.target_rate = float(rate)
        self.rate = float(rate)
        self.burst = max(1, int(burst))
        self.min_rate = min_rate if min_rate is not None else max(self.target_rate / 64, 0.05)
        self.paused_until = 0.0
        self._pause = 0.0
        self._last_change = 0.0
        self.episodes = 0

    def on_throttled(self, now: float, retry_after: float | None = None) -> bool:
        """Record a 429 answered at ``now``; True when it starts a new episode (the rate changed)."""
        if now < self.paused_until:
            return False
        self.episodes += 1
        refill = self.burst / self.rate
        recent = now - self.paused_until < 2 * refill
        self.rate = max(self.min_rate, self.rate * (DECREASE_AGAIN if recent else DECREASE))
        self._last_change = now
        self._pause = min(MAX_PAUSE_S, self._pause * 2) if recent and self._pause else max(MIN_PAUSE_S, refill)
        pause = retry_after if retry_after is not None else self._pause * random.uniform(0.9, 1.1)
        self.paused_until = now + pause
        return True

    def on_success(self, now: float) -> bool:
        """Record successes up to ``now``; True when the rate changed."""
        if self.rate >= self.target_rate:
            return False
        self.rate = min(self.target_rate, self.rate + INCREASE_PER_S * self.target_rate * (now - self._last_change))
        self._last_change = now
        return True


class AdaptiveLimiter:
    """:class:`AimdPolicy` on one event loop: at most ``burst + rate·t`` requests in any ``t`` seconds."""

    __slots__ = ("policy", "_bucket")

    def __init__(self, rate: float, burst: int = 1, *, min_rate: float | None = None) -> None:
        self.policy = AimdPolicy(rate, burst, min_rate=min_rate)
        self._bucket = AsyncLimiter(self.policy.burst, self.policy.burst / self.policy.rate)

    @property
    def rate(self) -> float:
        return self.policy.rate

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
