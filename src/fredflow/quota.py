"""One rate limit for a whole run, across threads, worker processes and machines.

A per-process limiter in each of N Dask workers lets N× the quota through, and
a static split of the rate over tasks leaves most of it unused at the tail.
Instead the run's flow process hosts a :class:`TokenService`: a tiny HTTP
service (its own thread and event loop) that owns the run's single send
schedule and the :class:`~fredflow.limiter.AimdPolicy` reacting to 429s. Every
task talks to it through a :class:`RemoteLimiter`.

Guarantees of the schedule (GCRA): slots are handed out ``1/rate`` apart, and
never more than ``burst`` ahead of "now", so in any interval of ``t`` seconds
at most ``burst + rate·t`` send times fall (plus network jitter between the
lease and the server). Slots are leased on demand — a task asks only for as
many as it has requests waiting — so whoever has work uses the whole quota, to
the last request of the run. A 429 reported by any task pauses and slows the
whole schedule; successes let it recover (AIMD, see :mod:`fredflow.limiter`).
"""

from __future__ import annotations

import asyncio
import contextvars
import math
import socket
import threading
import time
from collections import deque
from typing import Any
from urllib.parse import urlparse

import aiohttp
import orjson
from aiohttp import web
from aiolimiter import AsyncLimiter

from .limiter import AimdPolicy

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


class TokenService:
    """The run's send schedule, served over HTTP (``POST /lease``, ``GET /stats``).

    ``POST /lease`` with ``{"n": k, "ok": s, "throttled": [e, …]}`` reports
    ``s`` successes and one entry per 429 since the caller's last lease, and
    returns ``{"delays": [...], "epoch": e, "retry_in": r}``: for each of up to
    ``k`` requests, in seconds from now, when it may be sent. When the schedule
    is already handed out up to the horizon, ``delays`` is empty and the caller
    asks again in ``r`` s.

    The epoch counts 429 episodes. Each 429 is reported with the epoch of the
    slot it was sent in: one sent before the last cut (an older epoch) says
    nothing about the new pace and is ignored, however late its report arrives.
    """

    def __init__(self, rate: float, burst: int = 1, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.policy = AimdPolicy(rate, burst)
        self.host, self.port = host, port
        self._tat = 0.0  # theoretical arrival time of the next slot (monotonic clock)
        self.granted = 0
        self.reported_ok = 0
        self.reported_throttled = 0
        self.leases = 0
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None

    # -- the schedule (plain, synchronous: tested directly) -----------------------

    @property
    def epoch(self) -> int:
        return self.policy.episodes

    def lease(self, n: int, *, ok: int = 0, throttled: list[int] | int = (), now: float | None = None) -> list[float]:
        """Send times (seconds from ``now``) for up to ``n`` requests; ``[]`` when the horizon is full.

        ``throttled``: the epochs of the slots that got a 429 (an int ``t`` means
        ``t`` 429s in the current epoch).
        """
        now = time.monotonic() if now is None else now
        epochs = [self.epoch] * throttled if isinstance(throttled, int) else list(throttled)
        self.leases += 1
        self.reported_ok += ok
        self.reported_throttled += len(epochs)
        policy = self.policy
        current = [e for e in epochs if e >= self.epoch]
        if current and policy.on_throttled(now):
            self._tat = policy.paused_until  # the new, slower schedule starts after the pause
        elif ok:
            policy.on_success(now)
        interval = 1.0 / (policy.rate * (1 - JITTER_MARGIN))
        # GCRA: the schedule may lag "now" by at most burst-1 intervals (that is the burst)
        start = max(self._tat, now - (policy.burst - 1) * interval, policy.paused_until)
        horizon = max(now, policy.paused_until) + HORIZON_SECONDS
        n = min(n, math.floor((horizon - start) / interval) + 1) if start <= horizon else 0
        if n <= 0:
            return []
        slots = [start + i * interval for i in range(n)]
        self._tat = start + n * interval
        self.granted += n
        return [max(0.0, slot - now) for slot in slots]

    def stats(self) -> dict[str, Any]:
        return {"rate": self.policy.rate, "target_rate": self.policy.target_rate, "granted": self.granted,
                "leases": self.leases, "ok": self.reported_ok, "throttled": self.reported_throttled,
                "episodes": self.policy.episodes}

    # -- HTTP ---------------------------------------------------------------------

    async def _handle_lease(self, request: web.Request) -> web.Response:
        body = orjson.loads(await request.read() or b"{}")
        delays = self.lease(int(body.get("n", 1)), ok=int(body.get("ok", 0)),
                            throttled=[int(e) for e in body.get("throttled", [])])
        retry_in = 0.0 if delays else max(0.001, self.retry_in())
        return web.Response(body=orjson.dumps({"delays": delays, "epoch": self.epoch, "retry_in": retry_in,
                                               "rate": self.policy.rate}), content_type="application/json")

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
        return f"http://{self.host}:{self.port}"

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


#: The epoch of the slot the current asyncio task is sending in (FredClient
#: acquires, sends and reports a 429 within one task).
_slot_epoch: contextvars.ContextVar[int] = contextvars.ContextVar("fredflow_slot_epoch", default=0)


class RemoteLimiter:
    """A task's view of the run-wide schedule: leases send times from a :class:`TokenService`.

    Same interface as :class:`~fredflow.limiter.AdaptiveLimiter`. Requests
    waiting at the same moment share one lease; a 429 drops the slots held
    locally and is reported with the next lease, which then comes from the
    slowed-down schedule. An aiolimiter bucket at the run's configured rate
    stays in front as the local smoother: one task never exceeds the run's rate.

    A slot is a permission to send *at* its time: when this task's event loop
    was busy (parsing, another thread holding the GIL) and wakes up more than
    ``tolerance`` late, the slot is given up and a fresh one leased, because
    sending late would bunch this request with other tasks' punctual ones and
    overrun the server's burst allowance.
    """

    def __init__(self, url: str, rate: float, burst: int = 1) -> None:
        self._url = url.rstrip("/") + "/lease"
        self._session: aiohttp.ClientSession | None = None  # opened on the first lease
        self._slots: deque[tuple[float, int]] = deque()  # (send at, epoch)
        self._lock = asyncio.Lock()
        self._waiting = 0
        self._ok = 0
        self._throttled: list[int] = []
        self._smoother = AsyncLimiter(max(1, burst), max(1, burst) / rate)
        self._tolerance = max(0.005, 0.25 / rate)
        self.stale_slots = 0

    async def _lease(self, n: int) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
        payload = {"n": n, "ok": self._ok, "throttled": self._throttled}
        self._ok, self._throttled = 0, []
        async with self._session.post(self._url, data=orjson.dumps(payload)) as response:
            response.raise_for_status()
            answer = orjson.loads(await response.read())
        now = time.monotonic()
        self._slots.extend((now + d, answer["epoch"]) for d in answer["delays"])
        if not answer["delays"]:  # the run's schedule is handed out up to its horizon: ask again then
            await asyncio.sleep(answer["retry_in"])

    async def acquire(self) -> None:
        while True:
            self._waiting += 1
            try:
                async with self._lock:
                    while not self._slots:
                        await self._lease(self._waiting)
                    send_at, epoch = self._slots.popleft()
            finally:
                self._waiting -= 1
            delay = send_at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            await self._smoother.acquire()
            late = time.monotonic() - send_at
            if late <= self._tolerance:
                _slot_epoch.set(epoch)  # per asyncio task: the request about to be sent
                return
            self.stale_slots += 1

    def throttled(self, retry_after: float | None = None) -> float:
        # Slots held here were scheduled at the old pace: drop them; the next
        # lease reports the 429 and gets slots from the paused, slower schedule.
        self._throttled.append(_slot_epoch.get())
        self._slots.clear()
        return 0.0

    def succeeded(self) -> None:
        self._ok += 1

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


def reachable_host(dask_address: str | None) -> str:
    """The address of this machine that a Dask cluster's workers can reach (loopback for a local cluster)."""
    if not dask_address:
        return "127.0.0.1"
    host = urlparse(dask_address if "://" in dask_address else f"tcp://{dask_address}").hostname or "127.0.0.1"
    if host in ("127.0.0.1", "localhost", "::1"):
        return "127.0.0.1"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect((host, 9))  # no packet is sent: this only picks the outgoing interface
        return probe.getsockname()[0]
