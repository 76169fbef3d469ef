"""Progress of a run: a rich bar on a terminal, plain log lines otherwise, nothing in tests.

Runners report finished batches; the display shows series done/total, rows,
requests/s and an ETA. Everything goes to stderr so ``--json`` keeps stdout clean.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Protocol

from .staging import BatchManifest

log = logging.getLogger("fredflow")


class Progress(Protocol):
    def start(self, n_series: int, n_batches: int) -> None: ...
    def batch_done(self, manifest: BatchManifest) -> None: ...
    def close(self) -> None: ...


class NullProgress:
    def start(self, n_series: int, n_batches: int) -> None:
        pass

    def batch_done(self, manifest: BatchManifest) -> None:
        pass

    def close(self) -> None:
        pass


class _Totals:
    def __init__(self) -> None:
        self.series = self.rows = self.requests = self.failed = self.batches = 0
        self.started = time.monotonic()

    def add(self, manifest: BatchManifest) -> None:
        self.series += manifest.n_series
        self.rows += manifest.rows
        self.requests += manifest.requests
        self.failed += len(manifest.failures)
        self.batches += 1

    @property
    def rps(self) -> float:
        return self.requests / max(time.monotonic() - self.started, 1e-9)


class LogProgress:
    """One log line per finished batch (at most one every ``every`` seconds, plus the last)."""

    def __init__(self, every: float = 2.0) -> None:
        self._every = every
        self._last = 0.0
        self._totals = _Totals()
        self._n_series = self._n_batches = 0

    def start(self, n_series: int, n_batches: int) -> None:
        self._n_series, self._n_batches = n_series, n_batches
        self._totals = _Totals()
        log.info("fetching %d series in %d batches", n_series, n_batches)

    def batch_done(self, manifest: BatchManifest) -> None:
        t = self._totals
        t.add(manifest)
        now = time.monotonic()
        if now - self._last >= self._every or t.batches == self._n_batches:
            self._last = now
            log.info("%d/%d series, %d rows, %d failed, %.1f req/s", t.series, self._n_series, t.rows, t.failed, t.rps)

    def close(self) -> None:
        pass


class RichProgress:
    """A rich progress bar on stderr."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self._bar = Progress(
            TextColumn("[bold]series"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[rows]:,} rows  {task.fields[rps]:.1f} req/s  {task.fields[failed]} failed"),
            TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
            console=Console(stderr=True), transient=False,
        )
        self._task = None
        self._totals = _Totals()

    def start(self, n_series: int, n_batches: int) -> None:
        self._totals = _Totals()
        self._bar.start()
        self._task = self._bar.add_task("ingest", total=n_series, rows=0, rps=0.0, failed=0)

    def batch_done(self, manifest: BatchManifest) -> None:
        t = self._totals
        t.add(manifest)
        self._bar.update(self._task, completed=t.series, rows=t.rows, rps=t.rps, failed=t.failed)

    def close(self) -> None:
        self._bar.stop()


def for_terminal(quiet: bool = False) -> Progress:
    """A bar when stderr is a terminal, log lines when it is not, nothing when ``quiet``."""
    if quiet:
        return NullProgress()
    return RichProgress() if sys.stderr.isatty() else LogProgress()
