"""A local S3-compatible server for tests: moto's server mode as a subprocess (see ``moto_s3.py``)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class MotoServer:
    """``moto_server`` bound to ``host`` (loopback by default); :meth:`uri` gives a staging URI on it."""

    def __init__(self, host: str = "127.0.0.1", netns: str | None = None) -> None:
        self.host = host
        self.port = _free_port(host)
        self.proc: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def uri(self, bucket: str = "fredflow", prefix: str = "staging") -> str:
        return (f"s3://{bucket}/{prefix}?endpoint_override={self.endpoint}&scheme=http"
                "&allow_bucket_creation=true&region=us-east-1")

    def start(self) -> "MotoServer":
        script = Path(__file__).with_name("moto_s3.py")  # moto_server, with one answer fixed for pyarrow
        self.proc = subprocess.Popen([sys.executable, str(script), self.host, str(self.port)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, env={**os.environ, **CREDENTIALS})
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"moto_server exited: {self.proc.stderr.read().decode()[-2000:]}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError("moto_server did not start within 30 s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def __enter__(self) -> "MotoServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
