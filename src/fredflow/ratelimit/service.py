"""One rate limit for a whole run, across threads, worker processes and machines.

A per-process limiter in each of N Dask workers lets N× the quota through, and
a static split of the rate over tasks leaves most of it unused at the tail.
Instead the run's flow process hosts a :class:`TokenService`: a tiny HTTP
service (its own thread and event loop) that owns the run's single send
schedule and the :class:`~fredflow.ratelimit.policy.AimdPolicy` reacting to 429s. Every
task talks to it through a :class:`RemoteLimiter`.

Guarantees of the schedule (GCRA): slots are handed out ``1/rate`` apart, and
never more than ``burst`` ahead of "now", so in any interval of ``t`` seconds
at most ``burst + rate·t`` send times fall (plus network jitter between the
lease and the server). Slots are leased on demand — a task asks only for as
many as it has requests waiting — so whoever has work uses the whole quota, to
the last request of the run. A 429 reported by any task slows the whole
schedule: to the rate the server was measured to admit over the last few
seconds (its real limit, when a key's quota is shared or lower than
configured), or by a plain AIMD cut until there is enough to measure;
successes let it probe back up (see :mod:`fredflow.ratelimit.policy`).
"""

from __future__ import annotations

import asyncio
import bisect
import contextvars
import math
import socket
import threading
import time
from collections import deque
from typing import Any, Iterable
from urllib.parse import urlparse

import aiohttp
import orjson
from aiohttp import web
from aiolimiter import AsyncLimiter

from .policy import AimdPolicy

#: The schedule is never handed out more than this far ahead of "now", over
#: all tasks together: slots granted before a 429 cut the rate (and that go on
#: at the old pace) are bounded by it.
HORIZON_SECONDS = 0.25

#: Slots are spaced for (1 - margin) × rate. Tasks wake up for their slots a
#: few milliseconds late, unevenly (busy event loops, the GIL), so two sends can
#: land closer than 1/rate; a server's token bucket refilled at exactly ``rate``
#: drifts empty under that jitter and starts answering 429. 4% of headroom
#: keeps it full (measured with 8 threads at 20 req/s: 4.7% 429s at 0%, none at 4%).
JITTER_MARGIN = 0.04

#: After a 429 the service measures what the server admitted over this many
#: seconds of slots, or this many slots at the configured rate when that is
#: longer (FRED's 2 req/s: 15 s). A longer window averages out the server's
#: burst and the tasks' reporting lag; a shorter one follows a changing limit sooner …
ESTIMATE_WINDOW_S = 3.0
ESTIMATE_WINDOW_SLOTS = 30
#: … but only once the run has this many seconds of slots and answers: until then a 429 cuts blindly.
ESTIMATE_MIN_SPAN_S = 1.0
ESTIMATE_MIN_ANSWERS = 10
#: A gap between slots counts for at most this many intervals: a server's bucket saves up no more
#: than its burst while we pause or idle (2 is also how long the pause after a measured cut is).
MEASURE_GAP_INTERVALS = 2

_PENDING, _OK, _THROTTLED, _DROPPED = range(4)  # a slot's state, as its task reported it


class TokenService:
    """The run's send schedule, served over HTTP (``POST /lease``, ``GET /stats``).

    Every slot has a number (consecutive, from 0). ``POST /lease`` with
    ``{"n": k, "ok": [..], "throttled": [..], "dropped": [..]}`` reports, by slot
    number, the caller's slots that were admitted, answered 429, or given up
    unsent since its last lease, and returns ``{"delays": [...], "first": s,
    "epoch": e, "retry_in": r}``: for each of up to ``k`` requests, in seconds
    from now, when it may be sent (slot numbers ``s``, ``s+1``, …). When the
    schedule is already handed out up to the horizon, ``delays`` is empty and the
    caller asks again in ``r`` s.

    The epoch counts 429 episodes. A 429 on a slot leased before the last cut (an
    older epoch) says nothing about the new pace and is ignored, however late its
    report arrives.

    A 429 in the current epoch starts an episode. The service first measures the
    rate the server admitted over the last few seconds of slots (``window``)
    (admitted slots, counting the ones not reported yet in the proportion of
    those that are): when we were sending faster than the server's real limit,
    that *is* the limit, and the policy sets the rate just to it instead of
    cutting blindly (see :class:`~fredflow.ratelimit.policy.AimdPolicy`). The new pace
    starts after the slots already handed out, plus a short pause for the
    server's bucket to regain a token or two.
    """

    def __init__(self, rate: float, burst: int = 1, *, host: str = "127.0.0.1", port: int = 0,
                 advertise: str | None = None) -> None:
        self.policy = AimdPolicy(rate, burst)
        self.host, self.port = host, port
        self.advertise = advertise  # the host tasks reach it at, when not the bound one (NAT, tunnel)
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
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None

    # -- the schedule (plain, synchronous: tested directly) -----------------------

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

        None when there is too little to go on (under ``ESTIMATE_MIN_SPAN_S`` of
        slots, or fewer than ``ESTIMATE_MIN_ANSWERS`` answers reported).
        """
        times, states, intervals = self._slot_times, self._slot_states, self._slot_intervals
        counts = [0, 0, 0, 0]
        span = 0.0
        later: tuple[float, float] | None = None  # (time, interval) of the next newer slot sent
        lo = now - self.window
        for i in range(len(times) - 1, -1, -1):  # newest first
            t, state = times[i], states[i]
            if t > now:  # not sent yet
                continue
            if t < lo:
                break
            counts[state] += 1
            if state == _DROPPED:  # not sent: its time is a gap, like a pause
                continue
            if later is not None:
                # the time the newer slot stands for: the gap since this one, but no more than the
                # server's bucket can save up in a gap (a pause, slots given up, idle tasks)
                span += min(later[0] - t, MEASURE_GAP_INTERVALS * later[1])
            later = (t, intervals[i])
        if later is not None:  # the oldest slot sent in the window: what it stands for, up to the window's edge
            span += min(later[0] - lo, MEASURE_GAP_INTERVALS * later[1])
        pending, ok, throttled, dropped = counts
        if span < ESTIMATE_MIN_SPAN_S or ok + throttled < ESTIMATE_MIN_ANSWERS:
            return None
        # slots not answered yet: admitted in the proportion of those that were (some will be given up)
        admitted = ok + pending * ok / (ok + throttled + dropped)
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
        while self._slot_times and self._slot_times[0] < now - 2 * self.window:
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

    # -- HTTP ---------------------------------------------------------------------

    async def _handle_lease(self, request: web.Request) -> web.Response:
        body = orjson.loads(await request.read() or b"{}")
        first, delays = self.lease_slots(int(body.get("n", 1)), ok=_slots_or_count(body.get("ok", [])),
                                         throttled=_slots_or_count(body.get("throttled", [])),
                                         dropped=[int(s) for s in body.get("dropped", [])])
        retry_in = 0.0 if delays else max(0.001, self.retry_in())
        return web.Response(body=orjson.dumps({"delays": delays, "first": first, "epoch": self.epoch,
                                               "retry_in": retry_in, "rate": self.policy.rate}),
                            content_type="application/json")

    def retry_in(self, now: float | None = None) -> float:
        """Seconds until the next slot falls inside the horizon."""
        now = time.monotonic() if now is None else now
        return self._tat - (max(now, self.policy.paused_until) + HORIZON_SECONDS)

    async def _handle_stats(self, request: web.Request) -> web.Response:
        return web.Response(body=orjson.dumps(self.stats()), content_type="application/json")

    def start(self) -> str:
        """Serve in a background thread; returns the URL tasks lease from."""
        ready = threading.Event()
        failure: list[BaseException] = []

        def serve() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            app = web.Application()
            app.router.add_post("/lease", self._handle_lease)
            app.router.add_get("/stats", self._handle_stats)
            self._runner = web.AppRunner(app, access_log=None)
            try:
                loop.run_until_complete(self._runner.setup())
                site = web.TCPSite(self._runner, self.host, self.port)
                loop.run_until_complete(site.start())
                self.port = site._server.sockets[0].getsockname()[1]  # noqa: SLF001 - the bound port
            except BaseException as exc:  # noqa: BLE001 - reported to the starting thread
                failure.append(exc)
                ready.set()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self._runner.cleanup())
            loop.close()

        self._thread = threading.Thread(target=serve, name="fredflow-token-service", daemon=True)
        self._thread.start()
        ready.wait(30)
        if failure:
            raise failure[0]
        return self.url

    @property
    def url(self) -> str:
        host = self.advertise or self.host
        return f"http://[{host}]:{self.port}" if ":" in host else f"http://{host}:{self.port}"

    def stop(self) -> None:
        if self._loop and self._thread:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
        self._thread = self._loop = None

    def __enter__(self) -> "TokenService":
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def _slots_or_count(value: Any) -> int | list[int]:
    return int(value) if isinstance(value, (int, float)) else [int(s) for s in value]


#: The slot (number, epoch) the current asyncio task is sending in (FredClient
#: acquires, sends and reports the answer within one task).
_current_slot: contextvars.ContextVar[tuple[int, int] | None] = contextvars.ContextVar("fredflow_slot", default=None)


class RemoteLimiter:
    """A task's view of the run-wide schedule: leases send times from a :class:`TokenService`.

    Same interface as :class:`~fredflow.ratelimit.local.AdaptiveLimiter`. Requests
    waiting at the same moment share one lease. Each answer (admitted or 429) is
    reported by slot number with the next lease, so the service can measure what
    the server admitted; a 429 also drops the slots held locally from the same
    epoch (they were leased at the pace that just failed) and the next lease comes
    from the new schedule. An aiolimiter bucket at the run's configured rate stays
    in front as the local smoother: one task never exceeds the run's rate.

    A slot is a permission to send *at* its time: when this task's event loop
    was busy (parsing, another thread holding the GIL) and wakes up more than
    ``tolerance`` late, the slot is given up and a fresh one leased, because
    sending late would bunch this request with other tasks' punctual ones and
    overrun the server's burst allowance.
    """

    def __init__(self, url: str, rate: float, burst: int = 1) -> None:
        self._url = url.rstrip("/") + "/lease"
        self._session: aiohttp.ClientSession | None = None  # opened on the first lease
        self._slots: deque[tuple[float, int, int]] = deque()  # (send at, slot number, epoch)
        self._lock = asyncio.Lock()
        self._waiting = 0
        self._ok: list[int] = []
        self._throttled: list[int] = []
        self._dropped: list[int] = []
        self._smoother = AsyncLimiter(max(1, burst), max(1, burst) / rate)
        self._tolerance = max(0.005, 0.25 / rate)
        self._last_slot: tuple[int, int] | None = None  # for a 429 reported outside the task that acquired

    async def _lease(self, n: int) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
        payload = {"n": n, "ok": self._ok, "throttled": self._throttled, "dropped": self._dropped}
        self._ok, self._throttled, self._dropped = [], [], []
        async with self._session.post(self._url, data=orjson.dumps(payload)) as response:
            response.raise_for_status()
            answer = orjson.loads(await response.read())
        now = time.monotonic()
        first, epoch = answer["first"], answer["epoch"]
        self._slots.extend((now + d, first + i, epoch) for i, d in enumerate(answer["delays"]))
        if not answer["delays"]:  # the run's schedule is handed out up to its horizon: ask again then
            await asyncio.sleep(answer["retry_in"])

    async def acquire(self) -> None:
        while True:
            self._waiting += 1
            try:
                async with self._lock:
                    while not self._slots:
                        await self._lease(self._waiting)
                    send_at, slot, epoch = self._slots.popleft()
            finally:
                self._waiting -= 1
            delay = send_at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            await self._smoother.acquire()
            late = time.monotonic() - send_at
            if late <= self._tolerance:
                _current_slot.set((slot, epoch))  # per asyncio task: the request about to be sent
                self._last_slot = (slot, epoch)
                return
            self._dropped.append(slot)

    def throttled(self, retry_after: float | None = None) -> float:
        # Slots held here from the same epoch were scheduled at the pace that just
        # failed: drop them; the next lease reports the 429 and, if it is news,
        # gets slots from the new, slower schedule.
        current = _current_slot.get() or self._last_slot
        if current is None:  # nothing was ever sent through this limiter
            return 0.0
        slot, epoch = current
        _current_slot.set(None)
        self._throttled.append(slot)
        kept = [s for s in self._slots if s[2] > epoch]
        self._dropped.extend(s[1] for s in self._slots if s[2] <= epoch)
        self._slots.clear()
        self._slots.extend(kept)
        return 0.0

    def succeeded(self) -> None:
        current = _current_slot.get()
        if current is not None:
            _current_slot.set(None)
            self._ok.append(current[0])

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


def reachable_host(dask_address: str | None) -> str:
    """The address of this machine that a Dask cluster's workers can reach (loopback for a local cluster)."""
    if not dask_address:
        return "127.0.0.1"
    host = urlparse(dask_address if "://" in dask_address else f"tcp://{dask_address}").hostname or "127.0.0.1"
    if host in ("127.0.0.1", "localhost"):
        return "127.0.0.1"
    if host == "::1":
        return "::1"
    family, _, _, _, address = socket.getaddrinfo(host, 9, type=socket.SOCK_DGRAM)[0]  # IPv4 or IPv6
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        probe.connect(address[:2] if family == socket.AF_INET else address)  # no packet is sent: picks the interface
        return probe.getsockname()[0]
