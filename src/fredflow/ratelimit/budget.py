"""One budget per api key: a run's schedule shared with every other run on the same key.

FRED's limit (~2 req/s) is per api key, not per run: a daily run and a
backfill on one key, each pacing at the whole limit, send twice what FRED
admits and learn it from 429s. Two ways to share it:

* **This machine** (the default, ``key_budget="machine"``): the key's
  :class:`~fredflow.ratelimit.schedule.Schedule` -- GCRA slots, the measured limit,
  the policy -- lives in a small file, ``<budget dir>/<sha256(url, key)>.json``
  (the key itself is never written), and every lease of every process reads,
  advances and writes it under an ``fcntl`` lock (:class:`SharedSchedule`). The
  lock is held for a read and a write, tens of microseconds (a header's generation
  number spares the read when this process wrote last); the kernel drops
  it when its process dies, so a killed run blocks no one. Slots a killed run had
  leased are simply never reported; they leave the measurement window in seconds.
  A file not written for :data:`STALE_AFTER_S` (or written before the last boot:
  monotonic clocks restart) is started afresh. Waiting for the lock is bounded
  (:data:`LOCK_TIMEOUT_S`); past it (a process stopped while holding it), the
  run goes on with its last copy of the schedule and says so once.
* **Prefect** (opt-in, ``prefect_limit="NAME"``): a Prefect global concurrency
  limit with slot decay (``prefect gcl create NAME --limit B --slot-decay-per-second R``)
  admits R requests per second over every run, on any machine, that draws from
  it. The schedule draws *blocks* of slots from it (:class:`PrefectPermits`:
  one Prefect API call per ``ceil(R)`` requests, on a thread of its own) and hands
  out no slot it holds no permit for. Strict: a name that does not exist, or a
  limit without slot decay, is a one-line error at the start of the run, not a
  silently unlimited run.
"""

from __future__ import annotations

import contextvars
import fcntl
import hashlib
import logging
import math
import os
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

import orjson

from ..errors import UsageError
from .schedule import Schedule

if TYPE_CHECKING:
    from ..settings import Settings

log = logging.getLogger("fredflow.ratelimit")

BUDGET_DIR_ENV = "FREDFLOW_BUDGET_DIR"
#: Longest wait for another process's lock on the key's file before going on alone.
LOCK_TIMEOUT_S = 2.0
#: A key's file untouched for this long is started afresh (its slots and measurements are history).
STALE_AFTER_S = 120.0
#: Blocks drawn from a Prefect global concurrency limit: about this many seconds of slots at its decay rate.
PERMIT_BLOCK_S = 1.0
#: Longest single wait for a block (then the next attempt; the run ends it by closing the permits).
PERMIT_WAIT_S = 2.0


def budget_dir(settings: "Settings") -> Path:
    """Where per-key files live: ``settings.budget_dir``, ``$FREDFLOW_BUDGET_DIR``, ``$XDG_RUNTIME_DIR/fredflow``
    or ``~/.cache/fredflow/budgets`` (per user; created 0700)."""
    if settings.budget_dir:
        return Path(settings.budget_dir)
    if os.environ.get(BUDGET_DIR_ENV):
        return Path(os.environ[BUDGET_DIR_ENV])
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isdir(runtime):
        return Path(runtime) / "fredflow"
    return Path.home() / ".cache" / "fredflow" / "budgets"


def key_file(settings: "Settings") -> Path:
    """The key's file: named by a hash of the api url and key, never the key."""
    digest = hashlib.sha256(f"{settings.base_url}\n{settings.api_key.get_secret_value()}".encode()).hexdigest()
    return budget_dir(settings) / f"{digest[:32]}.json"


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


class SharedSchedule(Schedule):
    """A :class:`Schedule` whose state lives in ``path``, shared by every process leasing from it.

    Each :meth:`answer` locks the file, loads the schedule, leases, writes it back and unlocks. The caller's
    ``rate``/``burst`` are adopted (the last run to lease sets them). Counters are the key's, over all runs.

    The file starts with a fixed-width header line holding a generation number, bumped by every write: a
    process that finds the generation it wrote last skips reading and decoding the rest (one run alone on
    its key, the usual case, pays for a write per lease only). The state holds at most
    :data:`~fredflow.ratelimit.schedule.MAX_MEASURED_SLOTS` slots, so a lease costs tens of microseconds
    at any rate (at an unlimited rate the file once grew to 450 KB and every lease to 1.4 ms:
    an unlimited backfill lost a third of its speed to it).
    """

    def __init__(self, path: Path, rate: float, burst: int = 1) -> None:
        super().__init__(rate, burst)
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))  # fails now, not mid-run, when not writable
        self._configured = (rate, max(1, int(burst)))
        self._boot = _boot_id()
        self._warned = False
        self._mutex = threading.Lock()  # one lease at a time from this process's threads, too
        self._generation: int | None = None  # what this process wrote last, and when
        self._saved_at = -1e18

    def _lock(self, *, wait: bool = True) -> int | None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        deadline = time.monotonic() + LOCK_TIMEOUT_S
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return fd
            except BlockingIOError:
                if not wait:
                    os.close(fd)
                    return None
                if time.monotonic() >= deadline:
                    os.close(fd)
                    if not self._warned:
                        self._warned = True
                        log.warning("the key's shared budget %s stayed locked for %.0f s: pacing alone meanwhile",
                                    self.path, LOCK_TIMEOUT_S)
                    return None
                time.sleep(0.002)

    def _load(self, fd: int, now: float) -> None:
        header = os.pread(fd, _HEADER_BYTES, 0)
        generation = _generation_of(header)
        if generation is not None and generation[0] == self._generation and \
                0 <= now - self._saved_at <= STALE_AFTER_S:
            return  # nobody wrote since this process did: its copy is the schedule
        try:
            raw = os.pread(fd, generation[1], _HEADER_BYTES) if generation is not None else b""
            state = orjson.loads(raw) if raw else None
            fresh = (state is None or state.get("boot") != self._boot
                     or not 0 <= now - state.get("saved_at", -1e18) <= STALE_AFTER_S)
            shared = Schedule(*self._configured) if fresh else Schedule.from_state(state)
        except (ValueError, KeyError, TypeError, OSError):  # a torn or foreign file: start afresh
            shared = Schedule(*self._configured)
        shared.configure(*self._configured)
        for name in Schedule.STATE:
            setattr(self, name, getattr(shared, name))
        self._generation = generation[0] if generation is not None else None

    def _lease_locked(self, fd: int, n: int, ok: int | Iterable[int], throttled: int | Iterable[int],
                      dropped: Iterable[int], now: float | None) -> dict[str, Any]:
        try:
            now = time.monotonic() if now is None else now
            self._load(fd, now)
            answer = super().answer(n, ok=ok, throttled=throttled, dropped=dropped, now=now)
            generation = (self._generation or 0) + 1
            data = orjson.dumps({**self.state(), "boot": self._boot, "saved_at": now})
            # no truncation (a slow call on some filesystems): the header says how long the state is
            os.pwrite(fd, _header(generation, len(data)) + data, 0)
            self._generation, self._saved_at = generation, now
            return answer
        finally:
            os.close(fd)  # releases the lock

    def answer(self, n: int, *, ok: int | Iterable[int] = (), throttled: int | Iterable[int] = (),
               dropped: Iterable[int] = (), now: float | None = None) -> dict[str, Any]:
        with self._mutex:
            fd = self._lock()
            if fd is None:  # locked too long: this process's last copy
                return super().answer(n, ok=ok, throttled=throttled, dropped=dropped, now=now)
            return self._lease_locked(fd, n, ok, throttled, dropped, now)

    def try_answer(self, n: int, *, ok: int | Iterable[int] = (), throttled: int | Iterable[int] = (),
                   dropped: Iterable[int] = (), now: float | None = None) -> dict[str, Any] | None:
        """:meth:`answer` if the file's lock is free now, else None (then call :meth:`answer` off the event
        loop): a run alone on its key leases without a thread hop."""
        if not self._mutex.acquire(blocking=False):
            return None
        try:
            fd = self._lock(wait=False)
            if fd is None:
                return None
            return self._lease_locked(fd, n, ok, throttled, dropped, now)
        finally:
            self._mutex.release()


def read_state(path: Path) -> dict[str, Any] | None:
    """The schedule a key's file holds, as :meth:`Schedule.state` data (None: empty, torn or another format)."""
    raw = Path(path).read_bytes()
    header = _generation_of(raw[:_HEADER_BYTES])
    if header is None:
        return None
    try:
        return orjson.loads(raw[_HEADER_BYTES:_HEADER_BYTES + header[1]])
    except orjson.JSONDecodeError:
        return None


#: The file's first line: ``fredflow-budget <generation, 20 digits> <length of the state, 10 digits>\n``;
#: the schedule's JSON follows (and after it, older bytes nobody reads: the file is never truncated).
_HEADER_PREFIX = b"fredflow-budget "
_HEADER_BYTES = len(_HEADER_PREFIX) + 20 + 1 + 10 + 1


def _header(generation: int, length: int) -> bytes:
    return _HEADER_PREFIX + b"%020d %010d\n" % (generation, length)


def _generation_of(header: bytes) -> tuple[int, int] | None:
    """(generation, length of the state) from the file's header; None when empty, torn or another format."""
    if len(header) != _HEADER_BYTES or not header.startswith(_HEADER_PREFIX) or not header.endswith(b"\n"):
        return None
    try:
        generation, length = header[len(_HEADER_PREFIX):-1].split(b" ")
        return int(generation), int(length)
    except ValueError:
        return None


class PrefectPermits:
    """Permits drawn in blocks from a Prefect global concurrency limit with slot decay (rate-limit mode).

    A thread of its own keeps up to two blocks in hand while there is demand; :meth:`take` never waits.
    """

    def __init__(self, name: str) -> None:
        from prefect.client.orchestration import get_client
        from prefect.exceptions import ObjectNotFound
        from prefect.settings import get_current_settings

        self.name = name
        if not get_current_settings().api.url:  # a temporary server would have no such limit
            raise UsageError(f"--prefect-limit {name} needs PREFECT_API_URL: the Prefect server that holds the limit")
        try:
            with get_client(sync_client=True) as client:
                limit = client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            raise UsageError(f"--prefect-limit {name}: no such Prefect global concurrency limit; create it with "
                             f"'prefect gcl create {name} --limit 2 --slot-decay-per-second 2'") from None
        except Exception as exc:  # noqa: BLE001 - no Prefect API reachable: say so in one line
            raise UsageError(f"--prefect-limit {name}: cannot read it from the Prefect API "
                             f"({type(exc).__name__}); is PREFECT_API_URL set?") from None
        if not limit.slot_decay_per_second:
            raise UsageError(f"--prefect-limit {name}: the limit has no slot decay, so it bounds concurrency, "
                             f"not a rate; recreate it with --slot-decay-per-second")
        if not limit.active:
            raise UsageError(f"--prefect-limit {name}: the limit is inactive (it would admit everything)")
        self.limit, self.decay = int(limit.limit), float(limit.slot_decay_per_second)
        self.block = max(1, min(self.limit, math.ceil(self.decay * PERMIT_BLOCK_S)))
        self._held = 0
        self.drawn = 0  # permits drawn from Prefect, in all
        self.calls = 0  # Prefect API calls that drew them
        self._cond = threading.Condition()
        self._error: BaseException | None = None
        self._closed = False
        # in this thread's context: Prefect's settings (the API url) may be context-local (temporary_settings)
        self._thread = threading.Thread(target=contextvars.copy_context().run, args=(self._pump,),
                                        name="fredflow-prefect-permits", daemon=True)
        self._thread.start()

    def take(self, n: int) -> int:
        """Up to ``n`` permits from those in hand (maybe 0); asks the thread for more."""
        with self._cond:
            if self._error is not None:
                raise self._error
            k = min(n, self._held)
            self._held -= k
            if n > k or self._held < self.block:
                self._cond.notify()
            return k

    def give_back(self, k: int) -> None:
        if k > 0:
            with self._cond:
                self._held += k

    def _pump(self) -> None:
        from prefect.concurrency.sync import rate_limit

        while True:
            with self._cond:
                while not self._closed and self._held >= self.block:
                    self._cond.wait(1.0)
                if self._closed:
                    return
            try:  # waits for the limit's slots to decay, retrying on 423, up to PERMIT_WAIT_S
                rate_limit(self.name, occupy=self.block, timeout_seconds=PERMIT_WAIT_S, strict=True)
            except TimeoutError:
                continue  # other runs hold the limit's slots: try again
            except BaseException as exc:  # noqa: BLE001 - handed to the run by the next take()
                with self._cond:
                    self._error = UsageError(f"--prefect-limit {self.name}: {exc}".splitlines()[0])
                return
            with self._cond:
                self._held += self.block
                self.drawn += self.block
                self.calls += 1

    def close(self) -> None:
        """Stop drawing: the thread ends after the block it is waiting for, if any (bounded by PERMIT_WAIT_S)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(PERMIT_WAIT_S + 1)


def schedule_for(settings: "Settings") -> Schedule:
    """The schedule a run paces through: the key's shared one (``key_budget="machine"``) or its own,
    drawing permits from a Prefect global concurrency limit when ``prefect_limit`` names one."""
    schedule: Schedule | None = None
    if settings.key_budget == "machine":
        try:
            schedule = SharedSchedule(key_file(settings), settings.rate, settings.burst)
        except OSError as exc:
            log.warning("no shared budget for the key (%s: %s): this run paces alone",
                        type(exc).__name__, exc.strerror or exc)
    if schedule is None:
        schedule = Schedule(settings.rate, settings.burst)
    if settings.prefect_limit:
        schedule.permits = PrefectPermits(settings.prefect_limit)
    return schedule
