"""Addresses the run's services are bound to and advertised at, so every Dask worker can reach them.

The token service binds the interface that routes to the scheduler by default
(:func:`fredflow.ratelimit.service.reachable_host`). Behind NAT, through a tunnel or port-forward,
the address workers must use differs from the one the flow machine has: ``--quota-address
HOST:PORT`` (the ``quota_address`` setting, env ``FREDFLOW_QUOTA_ADDRESS``) is advertised to the
workers; the service binds that address when it is one of this machine's, else every interface
(``0.0.0.0`` / ``::``) on that port. IPv6 literals are written ``[::1]:PORT``.
"""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlparse

from ...errors import UsageError
from ...ratelimit.schedule import Schedule
from ...ratelimit.service import TokenService


def split_host_port(text: str, flag: str = "--quota-address") -> tuple[str, int]:
    """``HOST:PORT``, ``[v6]:PORT``, ``HOST`` (port 0: any) → (host, port); one-line :class:`UsageError` otherwise."""
    text = text.strip()
    parsed = urlparse(f"//{text}")
    try:
        host, port = parsed.hostname, parsed.port or 0
    except ValueError:
        host, port = None, 0
    if not host:
        try:  # a bare IPv6 literal without brackets
            return str(ipaddress.IPv6Address(text)), 0
        except ValueError:
            raise UsageError(f"{flag} {text!r}: use HOST:PORT, [IPv6]:PORT or HOST") from None
    return host, port


def url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _is_local(host: str) -> bool:
    try:
        infos = socket.getaddrinfo(host, 0, type=socket.SOCK_STREAM)
    except socket.gaierror:
        return False
    family, _, _, _, address = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((address[0], 0))
        except OSError:
            return False
    return True


def token_service_for(rate: float, burst: int, default_host: str, quota_address: str | None, *,
                      schedule: Schedule | None = None) -> TokenService:
    """The run's :class:`TokenService`: on ``default_host`` (port any), or bound/advertised per ``quota_address``;
    serving ``schedule`` (the key's budget, :func:`fredflow.ratelimit.budget.schedule_for`) or one of its own."""
    if not quota_address:
        return TokenService(rate, burst, schedule=schedule, host=default_host)
    host, port = split_host_port(quota_address)
    if _is_local(host):
        return TokenService(rate, burst, schedule=schedule, host=host, port=port)
    bind = "::" if ":" in host else "0.0.0.0"
    return TokenService(rate, burst, schedule=schedule, host=bind, port=port, advertise=host)
