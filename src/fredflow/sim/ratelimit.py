"""The simulator's rate limits: a per-second token bucket and FRED's per-minute window.

FRED (``tests/data/fred-samples/rate-limit-headers-evidence.txt``) counts
requests per api_key in windows of one clock minute and reports the window on
every admitted answer as ``x-rate-limit-limit: 120`` and
``x-rate-limit-remaining: N`` (120 on the first request of a window, 1 on
the 120th); the 121st gets the 429 body, without those headers and without
``Retry-After``.

:class:`RateLimiter` applies both rules to one *client* -- the api_key, the
client address, both, or the whole server (``scope``): a request must find
room in the window *and* a token in the bucket; a rejected request consumes
neither.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["RATE_LIMIT_SCOPES", "Admission", "MinuteWindow", "RateLimiter", "TokenBucket"]

RATE_LIMIT_SCOPES = ("server", "key", "address", "key+address")


class TokenBucket:
    """Strict token bucket: capacity ``burst``, refilled at ``rate`` tokens/s.

    Starts full.  Over any interval of ``t`` seconds at most
    ``burst + rate * t`` acquisitions succeed.
    """

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._rate = rate
        self._burst = float(burst)
        self._clock = clock
        self._tokens = float(burst)
        self._last = clock()

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self._burst, self._tokens + (now - self._last) * self._rate)
        self._last = now

    def available(self) -> bool:
        self._refill()
        return self._tokens >= 1.0

    def try_acquire(self) -> bool:
        """Take one token if available; a failed attempt consumes nothing."""
        self._refill()
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False


class MinuteWindow:
    """At most ``limit`` requests per fixed window of ``seconds`` (aligned to
    multiples of ``seconds`` on ``clock``, i.e. clock minutes for wall time)."""

    def __init__(self, limit: int, seconds: float = 60.0, clock: Callable[[], float] = time.time) -> None:
        self.limit = limit
        self._seconds = seconds
        self._clock = clock
        self._window = -math.inf
        self.used = 0

    def _roll(self) -> None:
        window = math.floor(self._clock() / self._seconds)
        if window != self._window:
            self._window, self.used = window, 0

    def available(self) -> bool:
        self._roll()
        return self.used < self.limit

    def take(self) -> int:
        """Count one request (after :meth:`available`); returns the ``x-rate-limit-remaining`` to report."""
        remaining = self.limit - self.used
        self.used += 1
        return remaining


@dataclass(frozen=True)
class Admission:
    ok: bool
    headers: dict[str, str]


_NO_HEADERS: dict[str, str] = {}


class RateLimiter:
    """Per-client token bucket (``rate``/``burst``, optional) and minute window (``per_minute``, optional)."""

    def __init__(
        self,
        rate: float | None,
        burst: int,
        per_minute: int | None,
        window_seconds: float = 60.0,
        scope: str = "key",
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        if scope not in RATE_LIMIT_SCOPES:
            raise ValueError(f"scope must be one of {RATE_LIMIT_SCOPES}")
        self._rate, self._burst = rate, burst
        self._per_minute, self._window_seconds = per_minute, window_seconds
        self._scope = scope
        self._monotonic, self._wall = monotonic, wall
        self._buckets: dict[tuple[str, str], TokenBucket] = {}
        self._windows: dict[tuple[str, str], MinuteWindow] = {}

    @property
    def enabled(self) -> bool:
        return bool(self._rate) or bool(self._per_minute)

    def _client(self, api_key: str, address: str) -> tuple[str, str]:
        scope = self._scope
        return (api_key if "key" in scope else "", address if "address" in scope else "")

    def admit(self, api_key: str, address: str = "") -> Admission:
        """Admit (consuming a token and a window slot) or reject (consuming nothing) one request."""
        client = self._client(api_key, address)
        window = bucket = None
        if self._per_minute:
            window = self._windows.get(client)
            if window is None:
                window = self._windows[client] = MinuteWindow(self._per_minute, self._window_seconds, self._wall)
            if not window.available():
                return Admission(False, _NO_HEADERS)
        if self._rate:
            bucket = self._buckets.get(client)
            if bucket is None:
                bucket = self._buckets[client] = TokenBucket(self._rate, self._burst, self._monotonic)
            if not bucket.try_acquire():
                return Admission(False, _NO_HEADERS)
        if window is None:
            return Admission(True, _NO_HEADERS)
        remaining = window.take()
        return Admission(True, {"x-rate-limit-limit": str(window.limit), "x-rate-limit-remaining": str(remaining)})
