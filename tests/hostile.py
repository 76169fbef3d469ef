"""A hostile or broken upstream: the simulator's answers behind a small aiohttp server that misbehaves
on purpose (one ``mode`` per server), plus an "evil" server on another host name that records every
request sent to it (a cross-host redirect must never reach it with the key)."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import orjson
from aiohttp import web

from fredflow.sim.server import DEMO_API_KEY, FredSimulator, SimConfig

#: A well-formed FRED key (32 lower-case alphanumerics) no test output may ever contain.
HOSTILE_KEY = "sekritsekritsekritsekritsekrit42"

MODES = ("echo502", "echo403", "retry_after_huge", "retry_after_inf", "endless", "absurd_count",
         "empty_pages", "empty_listing", "redirect")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class HostileServer:
    mode: str
    n_series: int = 4
    requests: Counter = field(default_factory=Counter)
    first_request_at: float | None = None  # time.monotonic() of the first request (after start-up)
    evil_requests: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.sim = FredSimulator(SimConfig(n_series=self.n_series, seed=3, obs_per_series=40, long_series=0))
        self.series_ids = list(self.sim.catalog.series_ids[: self.n_series])
        self.port, self.evil_port = _free_port(), _free_port()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/fred"

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> "HostileServer":
        self._thread.start()
        assert self._ready.wait(10), "hostile server did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        app, evil = web.Application(), web.Application()
        app.router.add_get("/fred/{endpoint:.+}", self._handle)
        evil.router.add_get("/{tail:.*}", self._evil)
        runners = [web.AppRunner(app, access_log=None), web.AppRunner(evil, access_log=None)]
        for runner in runners:
            self._loop.run_until_complete(runner.setup())
        self._loop.run_until_complete(web.TCPSite(runners[0], "127.0.0.1", self.port).start())
        self._loop.run_until_complete(web.TCPSite(runners[1], "127.0.0.1", self.evil_port).start())
        self._ready.set()
        self._loop.run_forever()
        for runner in runners:
            self._loop.run_until_complete(runner.cleanup())

    # ------------------------------------------------------------------ answers

    def _answer(self, endpoint: str, query) -> tuple[int, bytes]:
        """The simulator's answer, as if the hostile key were registered."""
        fixed = {**query, "api_key": DEMO_API_KEY}
        return self.sim.answer(endpoint, fixed)

    async def _evil(self, request: web.Request) -> web.Response:
        self.evil_requests.append(str(request.rel_url))
        return web.Response(status=200, text="{}")

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        endpoint, mode, query = request.match_info["endpoint"], self.mode, request.query
        self.requests[endpoint] += 1
        if self.first_request_at is None:
            self.first_request_at = time.monotonic()
        assert query.get("api_key") == HOSTILE_KEY
        echo = f"<html><body><h1>ERROR</h1><p>While trying to retrieve the URL: {request.url}</p>" \
               f"<p>query api_key={query.get('api_key')}</p></body></html>"
        observations = endpoint == "series/observations"
        if mode == "echo502" and observations:
            return web.Response(status=502, text=echo, content_type="text/html")
        if mode == "echo403":
            return web.Response(status=403, text=echo, content_type="text/html")
        if mode in ("retry_after_huge", "retry_after_inf") and observations:
            wait = "100000" if mode == "retry_after_huge" else "inf"
            return web.Response(status=429, headers={"Retry-After": wait},
                                body=orjson.dumps({"error_code": 429, "error_message": f"Too Many Requests {request.url}"}),
                                content_type="application/json")
        if mode == "endless" and observations:
            response = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
            await response.prepare(request)
            await response.write(b'{"count": 1, "observations": [')
            chunk = b" " * 65536
            try:
                while True:
                    await response.write(chunk)
            except (ConnectionError, asyncio.CancelledError):
                return response
        if mode == "redirect" and observations:
            target = f"http://localhost:{self.evil_port}/fred/{endpoint}?{request.query_string}"
            raise web.HTTPFound(target)
        status, body = self._answer(endpoint, query)
        if status == 200 and observations and mode in ("absurd_count", "empty_pages"):
            doc = orjson.loads(body)
            if mode == "absurd_count":
                doc["count"] = 10**12
            else:  # the first page is real, every later one is empty, the count promises 5 million
                doc["count"] = 5_000_000
                if int(query.get("offset", "0")) > 0:
                    doc["observations"] = []
            body = orjson.dumps(doc)
        if status == 200 and mode == "empty_listing" and endpoint == "release/series":
            doc = orjson.loads(body)
            doc["count"] = 50_000
            if int(query.get("offset", "0")) > 0:
                doc["seriess"] = []
            body = orjson.dumps(doc)
        return web.Response(status=status, body=body, content_type="application/json")
