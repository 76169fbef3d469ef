"""The one rate-limit algorithm every runner uses: :class:`AimdPolicy`, the rate a run should send at now.

It starts at the configured rate. On a 429 it starts an *episode*: every request of the run
pauses (long enough for a server bucket of ``burst`` to refill, doubling for
episodes in quick succession, up to 30 s) and the rate drops to ``DECREASE``
× itself (``DECREASE_AGAIN`` × when the previous episode was moments ago),
never below ``min_rate``. 429s that arrive during the pause are requests
already in flight: same episode, no further cut. Successes let the rate climb
back linearly by ``INCREASE_PER_S`` × the configured rate per second, up to
the configured rate. A real limit lower than configured therefore settles into
a sawtooth between ~0.9× and 1× that limit, a few 429s per tooth, no storm.

When the caller can measure the rate the server *admitted* just before the
429 (``on_throttled(..., admitted_rate=r)``; the run-wide
:class:`~fredflow.ratelimit.service.TokenService` does, from the slots its tasks report),
the episode instead sets the rate to that measurement — the server's real
limit, when we were sending above it — bounded to ``[DECREASE_AGAIN, DECREASE_MEASURED]``
× the current rate. The pause is then only long enough for the server's bucket
to regain a couple of tokens, and above the measured limit the rate is probed
upwards slowly (``PROBE_PER_S``) instead of regained at ``INCREASE_PER_S``: a
real limit below the configured rate is used at ~0.95, not sawtoothed around.

The policy is plain and synchronous (time is passed in), so it is tested on a controlled clock;
:mod:`~fredflow.ratelimit.local` applies it on one event loop, :mod:`~fredflow.ratelimit.service`
to a whole run across processes.
"""

from __future__ import annotations

import random

DECREASE = 0.9
DECREASE_AGAIN = 0.5
INCREASE_PER_S = 0.1
MAX_PAUSE_S = 30.0
MIN_PAUSE_S = 0.25  # long enough for a server's bucket to refill a few tokens at any rate we use

# With a measured admitted rate (see AimdPolicy.on_throttled):
DECREASE_MEASURED = 0.97  # each episode cuts at least this much, however high the measurement
PROBE_PER_S = 0.02  # × the measured limit per second: the climb above it
PROBE_BAND = 0.25  # above measured × (1 + band) the measurement is stale: regain at INCREASE_PER_S again
MEASURED_PAUSE_TOKENS = 2  # pause for this many (at least ``burst``) intervals at the new rate


class AimdPolicy:
    """The rate to use now: configured rate, cut on 429 episodes, regained linearly on successes."""

    __slots__ = ("target_rate", "rate", "burst", "min_rate", "paused_until", "pause", "_pause", "_last_change",
                 "episodes", "measured_limit")

    def __init__(self, rate: float, burst: int = 1, *, min_rate: float | None = None) -> None:
        if rate <= 0:
            raise ValueError("rate must be > 0 requests/s")
        self.target_rate = float(rate)
        self.rate = float(rate)
        self.burst = max(1, int(burst))
        self.min_rate = min_rate if min_rate is not None else max(self.target_rate / 64, 0.05)
        self.paused_until = 0.0
        self.pause = 0.0  # the last episode's pause, in seconds
        self._pause = 0.0
        self._last_change = 0.0
        self.episodes = 0
        self.measured_limit: float | None = None  # the rate set from the last measurement

    def on_throttled(self, now: float, retry_after: float | None = None, *,
                     admitted_rate: float | None = None) -> bool:
        """Record a 429 answered at ``now``; True when it starts a new episode (the rate changed).

        ``admitted_rate``: the rate the server admitted over the last few seconds,
        when the caller measured it; the new rate is that (see the module docstring).
        """
        if now < self.paused_until:
            return False
        self.episodes += 1
        if admitted_rate is not None:
            self.rate = max(self.min_rate, self.rate * DECREASE_AGAIN,
                            min(admitted_rate, self.rate * DECREASE_MEASURED))
            self.measured_limit = self.rate
            self._last_change = now
            self._pause = 0.0  # the next unmeasured episode starts from a plain pause again
            self.pause = retry_after if retry_after is not None else \
                max(self.burst, MEASURED_PAUSE_TOKENS) / self.rate
            self.paused_until = now + self.pause
            return True
        self.measured_limit = None
        refill = self.burst / self.rate
        recent = now - self.paused_until < 2 * refill
        self.rate = max(self.min_rate, self.rate * (DECREASE_AGAIN if recent else DECREASE))
        self._last_change = now
        self._pause = min(MAX_PAUSE_S, self._pause * 2) if recent and self._pause else max(MIN_PAUSE_S, refill)
        self.pause = retry_after if retry_after is not None else self._pause * random.uniform(0.9, 1.1)
        self.paused_until = now + self.pause
        return True

    def on_success(self, now: float) -> bool:
        """Record successes up to ``now``; True when the rate changed."""
        if self.rate >= self.target_rate:
            return False
        slope = INCREASE_PER_S * self.target_rate
        if self.measured_limit is not None:
            if self.rate < self.measured_limit * (1 + PROBE_BAND):
                slope = PROBE_PER_S * self.measured_limit  # just above what the server admitted: probe gently
            else:
                self.measured_limit = None  # probed well past it without a 429: the limit has gone up
        self.rate = min(self.target_rate, self.rate + slope * (now - self._last_change))
        self._last_change = now
        return True
