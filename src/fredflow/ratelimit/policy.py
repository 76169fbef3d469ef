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
:class:`~fredflow.ratelimit.schedule.Schedule` does, from the slots its callers report),
the episode instead sets the rate to that measurement — the server's real
limit, when we were sending above it — bounded to ``[DECREASE_AGAIN, DECREASE_MEASURED]``
× the current rate. The pause is then only long enough for the server's bucket
to regain a couple of tokens, and above the measured limit the rate is probed
upwards instead of regained at ``INCREASE_PER_S``: a real limit below the
configured rate is used at ~0.95, not sawtoothed around. The probe accelerates
the longer no 429 is seen: ``rate = measured × (1 + PROBE_GAIN × s²)`` where
``s = measured × seconds since the cut`` is the number of requests the server
has admitted at that pace since. Counting in requests, not seconds, makes it
as cautious at FRED's 2 req/s as at 20 req/s (a server's burst is a number of
requests): ~1 % above the measurement after 35 requests, 4 % after 70, and
``PROBE_BAND`` (25 %) -- the limit has gone back up, regain at
``INCREASE_PER_S`` -- after 175 requests (90 s at 2 req/s, 12 s at 15 req/s).

The policy is plain and synchronous (time is passed in), so it is tested on a controlled clock;
:mod:`~fredflow.ratelimit.schedule` applies it to the send schedule every runner leases from.
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
PROBE_GAIN = 0.25 / 175**2  # the probe above the measured limit: + PROBE_GAIN × (requests since the cut)²
PROBE_BAND = 0.25  # above measured × (1 + band) the measurement is stale: regain at INCREASE_PER_S again
MEASURED_PAUSE_TOKENS = 2  # pause for this many (at least ``burst``) intervals at the new rate


class AimdPolicy:
    """The rate to use now: configured rate, cut on 429 episodes, regained linearly on successes."""

    __slots__ = ("target_rate", "rate", "burst", "min_rate", "paused_until", "pause", "_pause", "_last_change",
                 "episodes", "measured_limit", "_measured_at")

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
        self._measured_at = 0.0  # when it was set: the probe above it starts then

    def state(self) -> dict:
        """The policy as plain data (a schedule shared by several processes keeps it in a file)."""
        return {name: getattr(self, name) for name in self.__slots__}

    @classmethod
    def from_state(cls, state: dict) -> "AimdPolicy":
        policy = cls(state["target_rate"], state["burst"], min_rate=state["min_rate"])
        for name in cls.__slots__:
            setattr(policy, name, state[name])
        return policy

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
            self._last_change = self._measured_at = now
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
        measured = self.measured_limit
        if measured is not None:
            if self.rate < measured * (1 + PROBE_BAND):  # above what the server admitted: probe, faster and faster
                admitted_since = measured * max(0.0, now - self._measured_at)
                self.rate = min(self.target_rate, max(self.rate, measured * (1 + PROBE_GAIN * admitted_since**2)))
                self._last_change = now
                return True
            self.measured_limit = None  # probed well past it without a 429: the limit has gone up
        slope = INCREASE_PER_S * self.target_rate
        self.rate = min(self.target_rate, self.rate + slope * (now - self._last_change))
        self._last_change = now
        return True
