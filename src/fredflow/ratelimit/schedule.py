"""The run's send schedule: :class:`Schedule`, plain and synchronous (time passed in), the one code path
every runner paces through -- in process for the asyncio runner, behind the
:class:`~fredflow.ratelimit.service.TokenService` for the thread and Dask runners.

Guarantees (GCRA): slots are handed out ``1/rate`` apart, and never more than
``burst`` ahead of "now", so in any interval of ``t`` seconds at most
``burst + rate·t`` send times fall (plus network jitter between the lease and
the server). Slots are leased on demand -- a caller asks only for as many as it
has requests waiting -- so whoever has work uses the whole quota, to the last
request of the run. A 429 on any slot slows the whole schedule: to the rate the
server was measured to admit over the last few seconds (its real limit, when a
key's quota is shared or lower than configured), or by a plain AIMD cut until
there is enough to measure; successes let it probe back up (see
:mod:`fredflow.ratelimit.policy`).

:meth:`Schedule.state` / :meth:`Schedule.from_state` turn it into plain data, so
:class:`~fredflow.ratelimit.budget.SharedSchedule` can keep one per api key in a
file that several processes lease from (:mod:`fredflow.ratelimit.budget`).
"""

from __future__ import annotations

import bisect
import math
import threading
import time
from collections import deque
from typing import Any, Iterable

from .policy import AimdPolicy

#: The schedule is never handed out more than this far ahead of "now", over
#: all tasks together: slots granted before a 429 cut the rate (and that go on
#: at the old pace) are bounded by it.
HORIZON_SECONDS = 0.25

#: Slots are spaced for (1 - margin) × rate. Tasks wake up for their slots a
#: few milliseconds late, unevenly (busy event loops, the GIL), so two sends can
#: land closer than 1/rate; a server's token bucket refilled at exactly ``rate``
#: drifts empty under that jitter and starts answering 429. Slots more than a
#: quarter interval late are given up (SlotLimiter), and a 429 now sets the rate
#: to what the server admitted, so 1 % of headroom is enough (benchmarks/shared_key.py,
#: --rate = limit = 2 req/s: asyncio 1.00, thread 0.98 of the limit, no 429; 4 % cost 0.04 of it).
JITTER_MARGIN = 0.01

#: After a 429 the schedule measures what the server admitted over this many
#: seconds of slots, or this many slots at the configured rate when that is
#: longer (FRED's 2 req/s: 15 s). A longer window averages out the server's
#: burst and the tasks' reporting lag; a shorter one follows a changing limit sooner …
ESTIMATE_WINDOW_S = 3.0
ESTIMATE_WINDOW_SLOTS = 30
#: … but only once the run has sent this many seconds of slots and has answers: until then a 429 cuts blindly.
ESTIMATE_MIN_SPAN_S = 1.0
ESTIMATE_MIN_ANSWERS = 10
#: A gap between slots counts for at most this many intervals: a server's bucket saves up no more
#: than its burst while we pause or idle (2 is also how long the pause after a measured cut is).
MEASURE_GAP_INTERVALS = 2
#: Under this share of 429s among the window's answers, the server admitted nearly all we sent: gaps in our
#: own sending are not counted as time (see :meth:`Schedule.admitted_rate`).
ESTIMATE_REFUSED_SHARE = 0.05
#: The measurement keeps at most this many recent slots (a shared schedule writes them on every lease):
#: at rates above ~500 req/s the window holds under a second of slots, and a 429 cuts blindly.
MAX_MEASURED_SLOTS = 512
#: With permits from outside (a Prefect global concurrency limit) and none in hand, ask again this much later.
PERMIT_POLL_S = 0.02

_PENDING, _OK, _THROTTLED, _DROPPED = range(4)  # a slot's state, as its task reported it


class Schedule:
    """The run's send schedule (served over HTTP by :class:`~fredflow.ratelimit.service.TokenService`).

    Every slot has a number (consecutive, from 0). :meth:`answer` (``n=k, ok=[..],
    throttled=[..], dropped=[..]``) takes, by slot number, the caller's slots that
    were admitted, answered 429, or given up unsent since its last lease, and
    returns ``{"delays": [...], "first": s, "epoch": e, "retry_in": r}``: for each
    of up to ``k`` requests, in seconds from now, when it may be sent (slot numbers
    ``s``, ``s+1``, …). When the schedule is already handed out up to the horizon,
    ``delays`` is empty and the caller asks again in ``r`` s. The
    :class:`~fredflow.ratelimit.service.TokenService` serves exactly this as ``POST /lease``.

    The epoch counts 429 episodes. A 429 on a slot leased before the last cut (an
    older epoch) says nothing about the new pace and is ignored, however late its
    report arrives.

    A 429 in the current epoch starts an episode. The schedule first measures the
    rate the server admitted over the last few seconds of slots (``window``)
    (admitted slots, counting the ones not reported yet in the proportion of
    those that are): when we were sending faster than the server's real limit,
    that *is* the limit, and the policy sets the rate just to it instead of
    cutting blindly (see :class:`~fredflow.ratelimit.policy.AimdPolicy`). The new pace
    starts after the slots already handed out, plus a short pause for the
    server's bucket to regain a token or two.
    """

    #: where permits come from besides the schedule (a Prefect global concurrency limit), or None
    permits: Any = None

    def __init__(self, rate: float, burst: int = 1) -> None:
        self.policy = AimdPolicy(rate, burst)
        self._tat = 0.0  # theoretical arrival time of the next slot (monotonic clock)
        self._next_slot = 0  # number of the next slot handed out
        self._epoch_starts: list[int] = []  # first slot number of epochs 1, 2, …
        # recent slots, for the measurement: numbers _window_base, _window_base+1, …
        self._window_base = 0
        self._slot_times: deque[float] = deque()
        self._slot_states: deque[int] = deque()
        self._slot_intervals: deque[float] = deque()
        self.granted = 0
        self.reported_ok = 0
        self.reported_throttled = 0
        self.reported_dropped = 0
        self.leases = 0
        self.last_measurement: float | None = None
        self.window = max(ESTIMATE_WINDOW_S, ESTIMATE_WINDOW_SLOTS / self.policy.target_rate)
        self._answer_lock = threading.Lock()

    @property
    def epoch(self) -> int:
        return self.policy.episodes

    def epoch_of(self, slot: int) -> int:
        """The epoch a slot was handed out in."""
        return bisect.bisect_right(self._epoch_starts, slot)

    def _record(self, slots: Iterable[int], state: int) -> None:
        for slot in slots:
            i = slot - self._window_base
            if 0 <= i < len(self._slot_states) and self._slot_states[i] == _PENDING:
                self._slot_states[i] = state

    def admitted_rate(self, now: float) -> float | None:
        """Requests per second the server admitted over the last ``window`` seconds of slots, or None.

        Two ways to count the time, chosen by the share of answers that were 429s:

        * **Refused often** (``ESTIMATE_REFUSED_SHARE`` or more): we were sending above the server's
          limit, and what it admitted per second of the window *is* that limit. A gap between sends counts
          as the time it lasted, up to ``MEASURE_GAP_INTERVALS`` intervals (a pause after a cut, slots given
          up): a server's bucket saves up no more than its burst while we pause.
        * **Refused rarely**: the server admitted nearly all we sent, and a 429 here is two sends bunched by
          network or scheduling jitter, not a limit. Then every slot sent stands for its own interval and
          a gap for none: the measurement is our pace times the share admitted. Gaps in our sending (tasks
          starting up, slots given up by tasks that woke late) are ours, not the server's: counted, they
          once read a Dask run's start-up ramp at 20 req/s as a limit of 15 req/s and held the rate there.

        When we send faster than the limit the two agree. A server's bucket saves up a few tokens in our
        gaps, so the measurement may err high, which the next 429 corrects within seconds, while a low one
        would hold the rate down until the probe climbs back. None when there is too little to go on
        (under ``ESTIMATE_MIN_SPAN_S`` of slots, or fewer than ``ESTIMATE_MIN_ANSWERS`` answers reported).
        """
        times, states, intervals = self._slot_times, self._slot_states, self._slot_intervals
        counts = [0, 0, 0, 0]
        spans = [0.0, 0.0, 0.0, 0.0]  # the intervals of the slots in each state
        wall = 0.0
        later: tuple[float, float] | None = None  # (time, interval) of the next newer slot sent
        lo = now - self.window
        for i in range(len(times) - 1, -1, -1):  # newest first
            t, state = times[i], states[i]
            if t > now:  # not sent yet
                continue
            if t < lo:
                break
            counts[state] += 1
            spans[state] += intervals[i]
            if state == _DROPPED:  # not sent: its time is a gap, like a pause
                continue
            if later is not None:
                # the time the newer slot stands for: the gap since this one, capped (see above)
                wall += min(later[0] - t, MEASURE_GAP_INTERVALS * later[1])
            later = (t, intervals[i])
        # The oldest slot sent stands for no time before it: the server's bucket may have been full then.
        pending, ok, throttled, dropped = counts
        answered = ok + throttled + dropped
        if ok + throttled < ESTIMATE_MIN_ANSWERS:
            return None
        if throttled >= ESTIMATE_REFUSED_SHARE * (ok + throttled):
            span = wall
        else:  # pending slots: sent in the proportion of those answered
            span = spans[_OK] + spans[_THROTTLED] + spans[_PENDING] * (ok + throttled) / answered
        if span < ESTIMATE_MIN_SPAN_S:
            return None
        # slots not answered yet: admitted in the proportion of those that were (some will be given up)
        admitted = ok + pending * ok / answered
        return admitted / span

    def lease(self, n: int, *, ok: int | Iterable[int] = 0, throttled: int | Iterable[int] = (),
              dropped: Iterable[int] = (), now: float | None = None) -> list[float]:
        """Send times (seconds from ``now``) for up to ``n`` requests; ``[]`` when the horizon is full."""
        return self.lease_slots(n, ok=ok, throttled=throttled, dropped=dropped, now=now)[1]

    def lease_slots(self, n: int, *, ok: int | Iterable[int] = 0, throttled: int | Iterable[int] = (),
                    dropped: Iterable[int] = (), now: float | None = None) -> tuple[int, list[float]]:
        """Like :meth:`lease`, with the number of the first slot handed out.

        ``ok``, ``throttled``, ``dropped``: the caller's slots (numbers) that were
        admitted, answered 429, or not sent since its last lease. Plain counts
        (``ok=k``, ``throttled=k``: answers in the current epoch, slots unknown) are
        accepted too; they pace the policy but are not measured.
        """
        now = time.monotonic() if now is None else now
        self.leases += 1
        if isinstance(ok, int):
            n_ok = ok
        else:
            ok = list(ok)
            n_ok = len(ok)
            self._record(ok, _OK)
        if isinstance(throttled, int):
            current = throttled
            n_throttled = throttled
        else:
            throttled = list(throttled)
            n_throttled = len(throttled)
            current = sum(1 for slot in throttled if self.epoch_of(slot) >= self.epoch)
            self._record(throttled, _THROTTLED)
        dropped = list(dropped)
        self._record(dropped, _DROPPED)
        self.reported_ok += n_ok
        self.reported_throttled += n_throttled
        self.reported_dropped += len(dropped)
        policy = self.policy
        if current and now >= policy.paused_until:
            measured = self.admitted_rate(now)
            if policy.on_throttled(now, admitted_rate=measured):
                self.last_measurement = measured
                self._epoch_starts.append(self._next_slot)
                # the new pace starts once the slots already handed out (old pace) are done, after the pause
                policy.paused_until = max(self._tat, now) + policy.pause
                self._tat = policy.paused_until
        elif n_ok:
            policy.on_success(now)
        interval = 1.0 / (policy.rate * (1 - JITTER_MARGIN))
        # GCRA: the schedule may lag "now" by at most burst-1 intervals (that is the burst)
        start = max(self._tat, now - (policy.burst - 1) * interval, policy.paused_until)
        horizon = max(now, policy.paused_until) + HORIZON_SECONDS
        n = min(n, math.floor((horizon - start) / interval) + 1) if start <= horizon else 0
        first = self._next_slot
        if n <= 0:
            return first, []
        slots = [start + i * interval for i in range(n)]
        self._tat = start + n * interval
        self.granted += n
        self._next_slot += n
        self._slot_times.extend(slots)
        self._slot_states.extend([_PENDING] * n)
        self._slot_intervals.extend([interval] * n)
        while self._slot_times and (self._slot_times[0] < now - 2 * self.window
                                    or len(self._slot_times) > MAX_MEASURED_SLOTS):
            self._slot_times.popleft()
            self._slot_states.popleft()
            self._slot_intervals.popleft()
            self._window_base += 1
        return first, [max(0.0, slot - now) for slot in slots]

    def stats(self) -> dict[str, Any]:
        return {"rate": self.policy.rate, "target_rate": self.policy.target_rate, "granted": self.granted,
                "leases": self.leases, "ok": self.reported_ok, "throttled": self.reported_throttled,
                "dropped": self.reported_dropped, "episodes": self.policy.episodes,
                "measured_limit": self.policy.measured_limit, "last_measurement": self.last_measurement}


    def retry_in(self, now: float | None = None) -> float:
        """Seconds until the next slot falls inside the horizon."""
        now = time.monotonic() if now is None else now
        return self._tat - (max(now, self.policy.paused_until) + HORIZON_SECONDS)

    def answer(self, n: int, *, ok: int | Iterable[int] = (), throttled: int | Iterable[int] = (),
               dropped: Iterable[int] = (), now: float | None = None) -> dict[str, Any]:
        """One lease as plain data (what ``POST /lease`` answers): slots, their epoch, when to ask again.

        Thread-safe: the run's token service answers its tasks over HTTP on its own thread, and callers in
        its process (the head start, the thread runner's tasks) lease here directly."""
        with self._answer_lock:
            return self._answer(n, ok=ok, throttled=throttled, dropped=dropped, now=now)

    def try_answer(self, n: int, *, ok: int | Iterable[int] = (), throttled: int | Iterable[int] = (),
                   dropped: Iterable[int] = (), now: float | None = None) -> dict[str, Any] | None:
        """:meth:`answer`, or None when it would have to wait (a schedule shared with other processes)."""
        return self.answer(n, ok=ok, throttled=throttled, dropped=dropped, now=now)

    def _answer(self, n: int, *, ok: int | Iterable[int], throttled: int | Iterable[int], dropped: Iterable[int],
                now: float | None) -> dict[str, Any]:
        now = time.monotonic() if now is None else now
        permits = self.permits
        wanted = n
        if permits is not None:
            n = permits.take(n)
        first, delays = self.lease_slots(n, ok=ok, throttled=throttled, dropped=dropped, now=now)
        if permits is not None:
            permits.give_back(n - len(delays))
        retry_in = 0.0 if delays else max(0.001, self.retry_in(now))
        if wanted and not n:  # no permit in hand: the permits' thread is drawing a block
            retry_in = max(retry_in, PERMIT_POLL_S)
        return {"delays": delays, "first": first, "epoch": self.epoch, "retry_in": retry_in,
                "rate": self.policy.rate}

    def close(self) -> None:
        if self.permits is not None:
            self.permits.close()

    # -- as plain data, for a schedule several processes share (fredflow.ratelimit.budget) --------

    #: every attribute that makes up the state (what a shared schedule loads before each lease)
    STATE = ("policy", "_tat", "_next_slot", "_epoch_starts", "_window_base", "_slot_times", "_slot_states",
             "_slot_intervals", "granted", "reported_ok", "reported_throttled", "reported_dropped", "leases",
             "last_measurement", "window")
    _FIELDS = ("_tat", "_next_slot", "_epoch_starts", "_window_base", "granted", "reported_ok",
               "reported_throttled", "reported_dropped", "leases", "last_measurement", "window")

    def state(self) -> dict[str, Any]:
        """Everything the schedule knows, as JSON-able data (epoch starts older than the window's slots dropped)."""
        state = {name: getattr(self, name) for name in self._FIELDS}
        state["_epoch_starts"] = self._epoch_starts[-64:]
        state["epochs_dropped"] = len(self._epoch_starts) - len(state["_epoch_starts"])
        state["slots"] = [list(self._slot_times), list(self._slot_states), list(self._slot_intervals)]
        state["policy"] = self.policy.state()
        return state

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> "Schedule":
        policy = AimdPolicy.from_state(state["policy"])
        schedule = cls(policy.target_rate, policy.burst)
        schedule.policy = policy
        for name in cls._FIELDS:
            setattr(schedule, name, state[name])
        # the epochs before the ones kept: placeholders at slot 0 (their slots have left the window anyway)
        schedule._epoch_starts = [0] * state.get("epochs_dropped", 0) + list(state["_epoch_starts"])
        times, states, intervals = state["slots"]
        schedule._slot_times, schedule._slot_states = deque(times), deque(states)
        schedule._slot_intervals = deque(intervals)
        return schedule

    def configure(self, rate: float, burst: int) -> None:
        """Adopt a caller's configured rate and burst (another run on the same key may have asked for others)."""
        policy = self.policy
        if policy.target_rate != rate or policy.burst != burst:
            policy.target_rate, policy.burst = float(rate), max(1, int(burst))
            policy.rate = min(policy.rate, policy.target_rate)
            self.window = max(ESTIMATE_WINDOW_S, ESTIMATE_WINDOW_SLOTS / policy.target_rate)
