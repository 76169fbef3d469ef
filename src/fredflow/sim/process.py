"""Run the simulator as a real subprocess (for tests, the demo and benchmarks)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import replace
from functools import cached_property
from typing import IO, Any

from fredflow.sim.catalog import SimCatalog
from fredflow.sim.cli import config_to_argv
from fredflow.sim.server import SimConfig

__all__ = ["SimProcess"]

_HOST = "127.0.0.1"
_PORT_ATTEMPTS = 3


class SimProcess:
    """``python -m fredflow.sim`` on a free 127.0.0.1 port, as a context manager.

    ``SimProcess(**fields)`` accepts every :class:`SimConfig` field.  Entering
    starts the subprocess and returns once ``/_sim/health`` answers (or raises
    ``RuntimeError`` with the subprocess's stderr if it dies or is not ready
    within ``startup_timeout`` seconds; a port lost to a race is retried).
    Leaving always terminates the process, killing it if it does not exit
    within 5 s.  Synchronous, so usable from sync and async tests alike.

    Attributes: ``url`` (``http://127.0.0.1:PORT/fred``, the client's base
    URL), ``port``, ``config`` and ``catalog`` (a :class:`SimCatalog` equal to
    the served one: the truth to compare against; :meth:`advance` keeps both
    in step with the server).
    """

    def __init__(self, *, startup_timeout: float = 20.0, **config: Any) -> None:
        self.config = SimConfig(**config)
        self.startup_timeout = startup_timeout
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._stderr: IO[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{_HOST}:{self.port}/fred"

    @property
    def pid(self) -> int | None:
        """Process id of the running simulator (e.g. to measure its CPU time)."""
        return self._proc.pid if self._proc is not None else None

    @property
    def root(self) -> str:
        return f"http://{_HOST}:{self.port}"

    @cached_property
    def catalog(self) -> SimCatalog:
        return self.config.catalog()

    def __enter__(self) -> SimProcess:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> None:
        """Start the subprocess and wait until it serves."""
        for attempt in range(_PORT_ATTEMPTS):
            self.port = _free_port()
            self._stderr = tempfile.TemporaryFile()
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "fredflow.sim", "--host", _HOST, "--port", str(self.port),
                 *config_to_argv(self.config)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=self._stderr,
            )
            try:
                self._wait_ready()
                return
            except RuntimeError as exc:
                self.stop()
                if attempt + 1 == _PORT_ATTEMPTS or "address already in use" not in str(exc).lower():
                    raise

    def stop(self) -> None:
        """Terminate (then kill) the subprocess; idempotent."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None

    def stats(self) -> dict[str, Any]:
        """The simulator's ``/_sim/stats`` (see :class:`fredflow.sim.server.SimStats`)."""
        with urllib.request.urlopen(f"{self.root}/_sim/stats", timeout=10) as resp:
            return json.load(resp)

    def reset_stats(self) -> None:
        """Zero the simulator's statistics (``POST /_sim/reset``)."""
        request = urllib.request.Request(f"{self.root}/_sim/reset", method="POST")
        with urllib.request.urlopen(request, timeout=10):
            pass

    def advance(self, days: int = 1, changed: int = 10) -> list[str]:
        """Simulate ``days`` more days with ``changed`` changed series each
        (``POST /_sim/advance``); returns the sorted ids changed in these days.

        ``config.changes`` and ``catalog`` then describe the advanced server.
        """
        query = urllib.parse.urlencode({"days": days, "changed": changed})
        request = urllib.request.Request(f"{self.root}/_sim/advance?{query}", method="POST")
        try:
            with urllib.request.urlopen(request, timeout=60) as resp:
                answer = json.load(resp)
        except urllib.error.HTTPError as exc:
            raise ValueError(json.load(exc).get("error", str(exc))) from None
        self.config = replace(self.config, changes=self.config.changes + (changed,) * days)
        self.__dict__.pop("catalog", None)  # rebuilt from the new config on next use
        return answer["changed"]

    def _wait_ready(self) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(
                    f"fredflow sim exited with code {self._proc.returncode}:\n{self._read_stderr()}"
                )
            try:
                with urllib.request.urlopen(f"{self.root}/_sim/health", timeout=1) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.05)
        raise RuntimeError(
            f"fredflow sim not ready within {self.startup_timeout} s:\n{self._read_stderr()}"
        )

    def _read_stderr(self) -> str:
        assert self._stderr is not None
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((_HOST, 0))
        return sock.getsockname()[1]
