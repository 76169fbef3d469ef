"""How a :class:`~fredflow.sources.fred.client.FredClient` reaches FRED: one GET, one :class:`Response`.

* :class:`AiohttpTransport` (the default): an :class:`aiohttp.ClientSession`. Network failures
  (timeouts, resets, cut bodies) become :class:`~fredflow.errors.TransientError` here, with the
  request URL (which holds the api key) stripped from their text.
* :class:`HandlerTransport`: answers from a plain function ``(endpoint, query) -> (status, body)``,
  in this process: the simulator's pure request handler (``FredSimulator.answer``). Tests of
  retries, paging, error classes and vintage stitching run on it with no server, port or timing;
  ``faults`` injects failures ahead of answers.

Like httpx's transports: the client decides what a request means, the transport only carries it.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Protocol

import aiohttp
from yarl import URL

from ...errors import FatalRunError, FredError, TransientError
from ...redact import redact

#: Redirects followed per request (same host only).
MAX_REDIRECTS = 5
#: Default cap on a response body (see ``Settings.max_body_bytes``).
MAX_BODY_BYTES = 64 * 1024 * 1024


class CrossHostRedirect(FredError, FatalRunError):
    """The upstream redirected to another host: the api key is never sent there, the run stops."""


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    body: bytes
    headers: Mapping[str, str] = field(default_factory=dict)


class Transport(Protocol):
    async def get(self, url: str, params: Mapping[str, str]) -> Response: ...

    async def aclose(self) -> None: ...


def strip_url(exc: BaseException) -> str:
    """aiohttp errors can embed the request URL, whose query holds the api key: drop it (and redact the rest)."""
    text = str(exc)
    return redact(text.split("?", 1)[0] if "?" in text else text)


def _origin(url: URL) -> tuple[str, str | None, int | None]:
    return url.scheme, (url.host or "").lower(), url.port


class AiohttpTransport:
    """GETs through one :class:`aiohttp.ClientSession` (owned when built by :meth:`open`)."""

    __slots__ = ("session", "_owned", "_timeout", "_max_body")

    def __init__(self, session: aiohttp.ClientSession, *, owned: bool = False, timeout: float | None = None,
                 max_body: int = MAX_BODY_BYTES) -> None:
        self.session = session
        self._owned = owned
        self._timeout = timeout
        self._max_body = max_body

    @classmethod
    def open(cls, timeout: float, concurrency: int, max_body: int = MAX_BODY_BYTES) -> "AiohttpTransport":
        return cls(new_session(timeout, concurrency), owned=True, timeout=timeout, max_body=max_body)

    async def get(self, url: str, params: Mapping[str, str]) -> Response:
        """One GET. Redirects are followed by hand, to the same scheme, host and port only: a redirect to
        another host raises :class:`CrossHostRedirect` before anything (the key) is sent there. A body
        longer than ``max_body`` bytes is a format error (:class:`TransientError`), read no further."""
        target, query = URL(url), dict(params)
        try:
            for _ in range(MAX_REDIRECTS + 1):
                async with self.session.get(target, params=query, allow_redirects=False) as response:
                    if response.status in (301, 302, 303, 307, 308) and "Location" in response.headers:
                        location = target.join(URL(response.headers["Location"]))
                        if _origin(location) != _origin(target):
                            raise CrossHostRedirect(
                                f"the API at {target.origin()} redirected to another host ({location.origin()}): "
                                "refusing to send the api key there; if that host is FRED, pass it as --api-url")
                        target, query = (location, {}) if location.query_string else (location.with_query(None),
                                                                                      query)
                        continue
                    return Response(response.status, await self._read(response), response.headers)
            raise TransientError(f"more than {MAX_REDIRECTS} redirects")
        except asyncio.TimeoutError:
            seconds = self._timeout or self.session.timeout.total
            raise TransientError(f"timed out after {seconds:g}s") from None
        except aiohttp.ClientPayloadError as exc:
            raise TransientError(f"truncated response: {type(exc).__name__}") from None
        except aiohttp.ClientError as exc:
            raise TransientError(f"connection error: {type(exc).__name__}: {strip_url(exc)}") from None

    async def _read(self, response: aiohttp.ClientResponse) -> bytes:
        cap = self._max_body
        if response.content_length is not None and response.content_length > cap:
            raise TransientError(f"bad response body: {response.content_length:,} bytes announced, "
                                 f"more than max_body_bytes {cap:,}")
        chunks, size = [], 0
        async for chunk in response.content.iter_chunked(1 << 16):
            size += len(chunk)
            if size > cap:
                raise TransientError(f"bad response body: longer than max_body_bytes {cap:,}")
            chunks.append(chunk)
        return b"".join(chunks)

    async def aclose(self) -> None:
        if self._owned:
            await self.session.close()


class HandlerTransport:
    """Answers in-process from ``handler(endpoint, query) -> (status, body)``; ``endpoint`` is the URL path
    after the base URL (``series/observations``). ``faults`` (optional) are consumed one per request before
    the handler is asked: ``None`` passes, an exception is raised, a :class:`Response` is returned as is."""

    def __init__(self, handler: Callable[[str, Mapping[str, str]], tuple[int, bytes]], *,
                 faults: Iterable[BaseException | Response | None] = ()) -> None:
        self._handler = handler
        self._faults = list(faults)
        self.requests: list[tuple[str, dict[str, str]]] = []

    async def get(self, url: str, params: Mapping[str, str]) -> Response:
        endpoint = url.split("/fred/", 1)[-1] if "/fred/" in url else url.rsplit("/", 1)[-1]
        self.requests.append((endpoint, dict(params)))
        await asyncio.sleep(0)  # a real await point, as on the network
        if self._faults:
            fault = self._faults.pop(0)
            if isinstance(fault, BaseException):
                raise fault
            if isinstance(fault, Response):
                return fault
        status, body = self._handler(endpoint, params)
        return Response(status, body, {"Content-Type": "application/json"})

    async def aclose(self) -> None:
        pass


#: A whole request (pool wait, connect, every read) is bounded at this many times ``timeout``.
TOTAL_TIMEOUT_FACTOR = 4


def new_session(timeout: float, concurrency: int) -> aiohttp.ClientSession:
    """An aiohttp session with at most ``concurrency`` connections.

    ``timeout`` bounds connecting and each wait for the server's next bytes: a server that hangs
    times out after ``timeout``. Waiting for a free connection of the pool does not count against it
    (a request queued behind slow ones must not time out unsent, or just after sending, while FRED
    counts it), but the whole request is still bounded, at :data:`TOTAL_TIMEOUT_FACTOR` × ``timeout``.
    """
    return aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=TOTAL_TIMEOUT_FACTOR * timeout, sock_connect=timeout,
                                      sock_read=timeout),
        connector=aiohttp.TCPConnector(limit=concurrency, ttl_dns_cache=300),
        raise_for_status=False,
    )


__all__: list[Any] = ["AiohttpTransport", "CrossHostRedirect", "HandlerTransport", "Response", "Transport", "new_session", "strip_url"]
