"""The run lock of a staging folder on object storage (``s3://…``, ``gs://…``): a lease object.

Object storage has no ``flock``, so a run there is held by a ``run.lease`` object: who holds it
(host, pid, a random owner id) and until when. :meth:`StagingLease.acquire` refuses a lease
another owner holds and that has not expired, writes its own, then reads it back (a writer that
reads back another owner backs off). This narrows a race, it does not close it: two processes that
both find the lease free and both read back before the other's PUT lands (one write latency
apart) would both hold it; pyarrow offers no create-only PUT (``If-None-Match``). Starting the same
``fredflow resume`` twice at once is the only way to get there. A thread renews it every
``ttl / 3`` seconds while the run lives; :meth:`release` deletes it. A run killed with ``kill -9``
leaves a lease that counts as free at once on the same host (its pid is gone) and after ``ttl``
(default 60 s) from any other: ``fredflow resume`` works then.

Same interface as :class:`~fredflow.staging.PidLock` (``acquire``, ``release``, ``held``,
``is_locked``; :class:`~fredflow.staging.LockHeld` when held elsewhere). Expiry compares wall
clocks of different machines: keep them in sync (NTP), or raise ``ttl`` above any skew.
"""

from __future__ import annotations

import os
import secrets
import socket
import threading
import time

import orjson
import pyarrow.fs as pafs

LEASE_SECONDS = 60.0


class StagingLease:
    __slots__ = ("fs", "path", "ttl", "owner", "_stop", "_thread")

    def __init__(self, fs: pafs.FileSystem, path: str, ttl: float = LEASE_SECONDS) -> None:
        self.fs, self.path, self.ttl = fs, path, ttl
        self.owner = secrets.token_hex(8)
        self._stop: threading.Event | None = None
        self._thread: threading.Thread | None = None

    def _read(self) -> dict | None:
        """The lease document, None if there is none (or it is not one). Any other storage error
        propagates: an unreadable lease is not a free one."""
        try:
            with self.fs.open_input_stream(self.path) as stream:
                doc = orjson.loads(stream.read())
        except (FileNotFoundError, orjson.JSONDecodeError):
            return None
        return doc if isinstance(doc, dict) else None

    def _write(self) -> None:
        doc = {"owner": self.owner, "holder": f"{os.getpid()} on {socket.gethostname()}",
               "host": socket.gethostname(), "pid": os.getpid(), "expires_at": time.time() + self.ttl}
        with self.fs.open_output_stream(self.path) as out:  # one PUT: the object appears whole
            out.write(orjson.dumps(doc))

    def _live_other(self) -> dict | None:
        doc = self._read()
        if doc and doc.get("owner") != self.owner and _alive(doc):
            return doc
        return None

    def acquire(self) -> None:
        from .staging import LockHeld

        other = self._live_other()
        if other is None:
            self._write()
            other = self._live_other()  # read back: a concurrent writer may have won
        if other is not None:
            raise LockHeld(str(other.get("holder", "")))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._renew, args=(self._stop,), name="fredflow-staging-lease",
                                        daemon=True)
        self._thread.start()

    def _renew(self, stop: threading.Event) -> None:
        while not stop.wait(self.ttl / 3):
            try:
                self._write()
            except OSError:  # storage unreachable for a moment: the next renewal tries again
                pass

    def release(self) -> None:
        if self._stop is None:
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        self._stop = self._thread = None
        try:
            doc = self._read()
            if doc and doc.get("owner") == self.owner:
                self.fs.delete_file(self.path)
        except OSError:  # storage unreachable: the lease expires after ttl
            pass

    @property
    def held(self) -> bool:
        return self._stop is not None

    def is_locked(self) -> bool:
        """Held by some live owner (this one included) whose lease has not expired."""
        if self.held:
            return True
        doc = self._read()
        return bool(doc) and _alive(doc)


def _alive(doc: dict) -> bool:
    """A lease not expired, whose holder is not a dead process of this machine (a killed run on this
    host is resumable at once; one on another host after ``ttl``)."""
    if float(doc.get("expires_at", 0)) <= time.time():
        return False
    if doc.get("host") == socket.gethostname() and isinstance(doc.get("pid"), int):
        try:
            os.kill(doc["pid"], 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
    return True
