"""The temporary Prefect server of a run, launched before Prefect is even imported in this process.

Starting a Prefect server is mostly its own imports (FastAPI, SQLAlchemy, Prefect's schemas: ~8 s of CPU
on this project's 2-core machine). Prefect's ``SubprocessASGIServer`` needs ``prefect.server`` imported
in the *calling* process too (another ~4 s, spent before the server is even launched). This module
launches the same ``uvicorn prefect.server.api.server:create_app`` subprocess with the same environment
but imports nothing of Prefect, so the server boots while this process imports Prefect, plans the run
and starts sending (:mod:`~fredflow.runners.prefect.headstart`). Only the standard library is used.
"""

from __future__ import annotations

import atexit
import importlib.util
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

#: uvicorn's exit code when its port is taken (another process bound it first): launch again on another.
_PORT_IN_USE = 3


def prefect_home() -> Path:
    return Path(os.environ.get("PREFECT_HOME") or "~/.prefect").expanduser()


def database_url() -> str:
    """fredflow's own Prefect database under ``PREFECT_HOME``: kept between runs, so start-up skips the
    migrations, without contending with other Prefect servers for ``prefect.db``."""
    return f"sqlite+aiosqlite:///{prefect_home() / 'fredflow-runs.db'}"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _lower_priority() -> None:
    """In the server's process before it runs: it boots at a lower CPU priority than the run, which plans and
    sends meanwhile (on a 2-core machine the boot would otherwise take a core from the run's own start)."""
    try:
        os.nice(SERVER_NICE)
    except OSError:
        pass


#: How much lower the server's CPU priority is than the run's (``nice``): only its boot is CPU-heavy.
SERVER_NICE = 5


class EphemeralServer:
    """A temporary Prefect API server subprocess: :meth:`launch` returns at once, :meth:`wait_ready` blocks."""

    def __init__(self) -> None:
        self.port = 0
        self.process: subprocess.Popen | None = None
        self.watchdog: subprocess.Popen | None = None
        self._ready = False

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    def launch(self) -> "EphemeralServer":
        prefect_home().mkdir(parents=True, exist_ok=True)
        self._popen()
        atexit.register(self.stop)
        self.watchdog = watch_parent(self.process.pid if self.process else None)
        return self

    def _popen(self) -> None:
        spec = importlib.util.find_spec("prefect")
        app_dir = str(Path(spec.origin).parent.parent) if spec and spec.origin else "."
        self.port = _free_port()
        env = {
            **os.environ,
            "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1",
            "PREFECT_SERVER_DATABASE_CONNECTION_URL": database_url(),
        }
        env.pop("PREFECT_API_URL", None)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "--app-dir", app_dir, "--factory", "prefect.server.api.server:create_app",
             "--host", "127.0.0.1", "--port", str(self.port), "--log-level", "error", "--lifespan", "on"],
            env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, preexec_fn=_lower_priority)

    def poll_ready(self) -> bool:
        """One health check (no wait): True once the server answers. Raises if it exited."""
        if self._ready:
            return True
        if self.process is None:
            raise RuntimeError("the temporary Prefect server was stopped")
        code = self.process.poll()
        if code == _PORT_IN_USE:
            self._popen()
            return False
        if code is not None:
            raise RuntimeError(f"the temporary Prefect server exited with code {code} before it was ready")
        try:
            with urllib.request.urlopen(f"{self.api_url}/health", timeout=2) as response:
                self._ready = response.status == 200
        except (urllib.error.URLError, OSError):
            return False
        return self._ready

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not self.poll_ready():
            if time.monotonic() > deadline:
                raise RuntimeError(f"the temporary Prefect server was not ready after {timeout:g} s "
                                   "(PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS)")
            time.sleep(0.1)

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None:
            stop_process(process, timeout=5)
        watchdog, self.watchdog = self.watchdog, None
        if watchdog is not None:
            watchdog.kill()
            watchdog.wait()
        atexit.unregister(self.stop)


def stop_process(process: subprocess.Popen, *, timeout: float) -> None:
    """SIGTERM, then SIGKILL after ``timeout`` s; reaped either way."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def watch_parent(server_pid: int | None):  # noqa: ANN201 - subprocess.Popen | None
    """A :mod:`~fredflow.runners.prefect.watchdog` process: if this process dies without cleaning up
    (``kill -9``), it stops every process this one started (the temporary server, Dask workers)."""
    if server_pid is None:
        return None
    try:
        return subprocess.Popen([sys.executable, "-m", "fredflow.runners.prefect.watchdog", str(os.getpid())],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    except OSError:
        return None


def startup_timeout() -> float:
    return float(os.environ.get("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS") or 90)
