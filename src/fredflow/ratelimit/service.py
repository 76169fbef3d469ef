"""One rate limit for a whole run, across threads, worker processes and machines.

A per-process limiter in each of N Dask workers lets N× the quota through, and
a static split of the rate over tasks leaves most of it unused at the tail.
Instead the run's flow process hosts a :class:`TokenService`: a tiny HTTP
service (its own thread and event loop) that owns the run's single send
schedule and the :class:`~fredflow.ratelimit.policy.AimdPolicy` reacting to 429s. Every
task talks to it through a :class:`RemoteLimiter`.

The schedule itself (GCRA slots, the measurement after a 429, the policy) is
:class:`~fredflow.ratelimit.schedule.Schedule`; the asyncio runner leases from
one in process (:class:`ScheduleLimiter`), through the same :class:`SlotLimiter`
code as the tasks here: one algorithm, one code path.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
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

from .policy import AimdPolicy
from .schedule import Schedule


#: The token services running in this process, by URL: a caller here leases from the schedule itself
#: (:func:`local_schedule`), without an HTTP round trip.
_IN_PROCESS: dict[str, "TokenService"] = {}
_IN_PROCESS_LOCK = threading.Lock()


def local_schedule(url: str) -> Schedule | None:
    """The schedule behind the token service at ``url`` when it runs in this process, else None.

    The head start and the thread runner's tasks run in the process that hosts the run's token service:
    a lease over loopback HTTP there costs two hand-overs of the GIL to and from the service's thread,
    which a process busy importing Prefect or starting a cluster turns into ~10 ms per lease, lost to
    the schedule. Dask workers, in their own processes, lease over HTTP."""
    with _IN_PROCESS_LOCK:
        service = _IN_PROCESS.get(url.rstrip("/"))
    return service.schedule if service is not None else None


async def answer_on_loop(schedule: Schedule, n: int, reports: dict[str, Any]) -> dict[str, Any]:
    """:meth:`Schedule.answer` from an event loop: here when it need not wait, else (a schedule shared with
    other processes, its file lock taken) in a thread, so the loop never blocks on another process."""
    answer = schedule.try_answer(n, **reports)
    if answer is None:
        answer = await asyncio.to_thread(functools.partial(schedule.answer, n, **reports))
    return answer


class TokenService:
    """A :class:`~fredflow.ratelimit.schedule.Schedule` served over HTTP (``POST /lease``, ``GET /stats``).

    ``POST /lease`` takes ``{"n": k, "ok": [..], "throttled": [..], "dropped": [..]}`` and answers
    :meth:`Schedule.answer <fredflow.ratelimit.schedule.Schedule.answer>`. The schedule is the run's own
    (``rate``, ``burst``) or one given: a per-key budget several runs share
    (:func:`fredflow.ratelimit.budget.schedule_for`).
    """

    def __init__(self, rate: float = 0.0, burst: int = 1, *, schedule: Schedule | None = None,
                 host: str = "127.0.0.1", port: int = 0, advertise: str | None = None) -> None:
        self.schedule = schedule if schedule is not None else Schedule(rate, burst)
        self.host, self.port = host, port
        self.advertise = advertise  # the host tasks reach it at, when not the bound one (NAT, tunnel)
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self.http_leases = 0  # leases served over HTTP (callers in this process lease directly)

    @property
    def policy(self) -> AimdPolicy:
        return self.schedule.policy

    def stats(self) -> dict[str, Any]:
        return self.schedule.stats()

    # -- HTTP ---------------------------------------------------------------------

    async def _handle_lease(self, request: web.Request) -> web.Response:
        self.http_leases += 1
        body = orjson.loads(await request.read() or b"{}")
        n, reports = int(body.get("n", 1)), dict(ok=_slots_or_count(body.get("ok", [])),
                                                  throttled=_slots_or_count(body.get("throttled", [])),
                                                  dropped=[int(s) for s in body.get("dropped", [])])
        answer = await answer_on_loop(self.schedule, n, reports)
        return web.Response(body=orjson.dumps(answer), content_type="application/json")

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
        with _IN_PROCESS_LOCK:
            _IN_PROCESS[self.url] = self
        return self.url

    @property
    def url(self) -> str:
        host = self.advertise or self.host
        return f"http://[{host}]:{self.port}" if ":" in host else f"http://{host}:{self.port}"

    def stop(self) -> None:
        with _IN_PROCESS_LOCK:
            if _IN_PROCESS.get(self.url) is self:
                del _IN_PROCESS[self.url]
        if self._loop and self._thread:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
        self._thread = self._loop = None
        self.schedule.close()

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


#: The local smoother (aiolimiter) admits this many seconds' worth of requests at once, at least 2, so a task
#: leases slots ahead: with room for one only, each request leased alone, after the smoother's own 1/rate
#: wait, and every lease's round trip was lost to the schedule for good -- at 20 req/s a head start in a
#: busy CLI process sent 15-17 req/s (benchmarks/shared_key.py). Over time it still admits no more than the
#: configured rate; the schedule's slots space the sends.
SMOOTHER_WINDOW_S = 0.5


class SlotLimiter:
    """A caller's view of a :class:`~fredflow.ratelimit.schedule.Schedule`: sends each request in a leased slot.

    Requests waiting at the same moment share one lease. Each answer (admitted
    or 429) is reported by slot number with the next lease, so the schedule can
    measure what the server admitted; a 429 also drops the slots held locally
    from the same epoch (they were leased at the pace that just failed) and the
    next lease comes from the new schedule. An aiolimiter bucket at the
    configured rate stays in front as the local smoother: one caller never
    exceeds the run's rate.

    A slot is a permission to send *at* its time: when this event loop was busy
    (parsing, another thread holding the GIL) and wakes up more than
    ``tolerance`` late, the slot is given up and a fresh one leased, because
    sending late would bunch this request with other callers' punctual ones and
    overrun the server's burst allowance.

    Subclasses say where the lease comes from (:meth:`_ask`): the schedule itself, in this process
    (:class:`ScheduleLimiter`), or a :class:`TokenService` over HTTP (:class:`RemoteLimiter`).
    """

    def __init__(self, rate: float, burst: int = 1, *, smoother: bool = True, tolerance: float | None = None) -> None:
        self._slots: deque[tuple[float, int, int]] = deque()  # (send at, slot number, epoch)
        self._lock = asyncio.Lock()
        self._waiting = 0
        self._ok: list[int] = []
        self._throttled: list[int] = []
        self._dropped: list[int] = []
        capacity = max(2, burst, math.ceil(rate * SMOOTHER_WINDOW_S))
        self._smoother = AsyncLimiter(capacity, capacity / rate) if smoother else None
        self._tolerance = max(0.005, 0.25 / rate) if tolerance is None else tolerance
        self._last_slot: tuple[int, int] | None = None  # for a 429 reported outside the task that acquired

    async def _ask(self, payload: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError

    async def _lease(self, n: int) -> None:
        payload = {"n": n, "ok": self._ok, "throttled": self._throttled, "dropped": self._dropped}
        self._ok, self._throttled, self._dropped = [], [], []
        answer = await self._ask(payload)
        now = time.monotonic()
        first, epoch = answer["first"], answer["epoch"]
        self._slots.extend((now + d, first + i, epoch) for i, d in enumerate(answer["delays"]))
        if not answer["delays"]:  # the schedule is handed out up to its horizon: ask again then
            await asyncio.sleep(answer["retry_in"])

    async def acquire(self) -> None:
        while True:
            if self._smoother is not None:
                # before the slot is taken, never between it and its send time: a queue of waiters in the
                # smoother would make every slot late, each dropped slot re-queued behind the others (a livelock)
                await self._smoother.acquire()
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
        pass


class ScheduleLimiter(SlotLimiter):
    """Leases from a :class:`~fredflow.ratelimit.schedule.Schedule` in this process: the asyncio runner's one
    limiter, and, with the smoother, each head-start or thread-runner task's when the run's token service
    runs in this process (:func:`local_schedule`).

    The schedule may be shared with other processes (a per-key budget): then a lease that would wait for
    their file lock runs off the event loop (:func:`answer_on_loop`).

    The asyncio runner's limiter has no smoother in front: it is its process's only caller, so the
    schedule already spaces its sends. The event loop also parses, so a slot may be used up to half an
    interval (at least 50 ms) late: at most one request bunched with the next, which a server's burst
    absorbs; later, it is given up (a loop that far behind would otherwise send a burst)."""

    def __init__(self, schedule: Schedule, *, smoother: bool = False) -> None:
        rate = schedule.policy.target_rate
        super().__init__(rate, schedule.policy.burst, smoother=smoother, tolerance=max(0.05, 0.5 / rate))
        self.schedule = schedule

    @classmethod
    def at(cls, rate: float, burst: int = 1) -> "ScheduleLimiter":
        """A schedule of its own at ``rate``/``burst``: at most ``burst + rate·t`` requests in any ``t`` seconds."""
        return cls(Schedule(rate, burst))

    @property
    def policy(self) -> AimdPolicy:
        return self.schedule.policy

    async def _ask(self, payload: dict[str, Any]) -> dict[str, Any]:
        n = payload.pop("n")
        return await answer_on_loop(self.schedule, n, payload)


class RemoteLimiter(SlotLimiter):
    """Leases from the run's :class:`TokenService` over HTTP (a task of the thread or Dask runner)."""

    def __init__(self, url: str, rate: float, burst: int = 1) -> None:
        super().__init__(rate, burst)
        self._url = url.rstrip("/") + "/lease"
        self._session: aiohttp.ClientSession | None = None  # opened on the first lease

    async def _ask(self, payload: dict[str, Any]) -> dict[str, Any]:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
        async with self._session.post(self._url, data=orjson.dumps(payload)) as response:
            response.raise_for_status()
            return orjson.loads(await response.read())

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
