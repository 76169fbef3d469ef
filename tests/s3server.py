"""A local S3-compatible server for tests: moto's server mode in a subprocess (see ``moto_s3.py``).

Every wait is bounded: the server reports its port within :data:`START_TIMEOUT_S` or the test fails
with its stderr; stopping waits at most 10 s before SIGKILL.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import subprocess
import sys
import tempfile
from pathlib import Path

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
START_TIMEOUT_S = 60


@contextlib.contextmanager
def aws_credentials():
    """:data:`CREDENTIALS` in ``os.environ`` (processes started meanwhile, Dask workers, inherit them), then
    the previous values back."""
    saved = {k: os.environ.get(k) for k in CREDENTIALS}
    os.environ.update(CREDENTIALS)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def staged_batches(uri: str) -> set[int]:
    """The indexes of the batches with a manifest in every run folder under the staging ``uri``."""
    from fredflow.staging import run_folders

    return {int(name.split(".")[0].split("-")[1]) for run in run_folders(uri) for name in run.manifest_names()}


class MotoServer:
    """moto's S3 server bound to ``host`` (loopback by default); :meth:`uri` gives a staging URI on it."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port: int | None = None
        self.proc: subprocess.Popen | None = None
        self._stderr = None

    @property
    def endpoint(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def uri(self, bucket: str = "fredflow", prefix: str = "staging") -> str:
        return (f"s3://{bucket}/{prefix}?endpoint_override={self.endpoint}&scheme=http"
                "&allow_bucket_creation=true&region=us-east-1")

    def start(self) -> "MotoServer":
        script = Path(__file__).with_name("moto_s3.py")
        self._stderr = tempfile.TemporaryFile()  # a file, never a pipe nobody drains (see moto_s3.py)
        self.proc = subprocess.Popen([sys.executable, str(script), self.host], stdout=subprocess.PIPE,
                                     stderr=self._stderr, env={**os.environ, **CREDENTIALS})
        with selectors.DefaultSelector() as selector:
            selector.register(self.proc.stdout, selectors.EVENT_READ)
            ready = selector.select(timeout=START_TIMEOUT_S)
        line = self.proc.stdout.readline().strip() if ready else b""
        if not line.isdigit():
            self.stop()
            raise RuntimeError(f"moto's server did not report its port within {START_TIMEOUT_S} s: {self.errors()}")
        self.port = int(line)
        return self

    def errors(self) -> str:
        """The tail of the server's stderr (tracebacks of failed requests)."""
        if self._stderr is None:
            return ""
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace")[-3000:]

    def stop(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(10)
            self.proc.stdout.close()
        self.proc = None
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None

    def __enter__(self) -> "MotoServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
