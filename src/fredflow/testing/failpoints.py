"""Named points in a run where a test can freeze the process to kill it (``kill -9``) there.

Set ``FREDFLOW_PAUSE_AT=<name>`` and ``FREDFLOW_PAUSE_FILE=<path>``: on reaching
that point the process writes the name to the file and sleeps, so the test
knows exactly where it is killed. Unset (always, outside tests) it costs one
dictionary lookup.

Points: ``after-staging`` (every batch staged, merge not begun),
``merge-before-commit`` (inside the merge transaction, rows inserted, not committed).
:func:`fatal_at` raises a fatal error at a point (``fetch-batch``: a batch starting).

:func:`fail_once` is the same idea for task retries: with
``FREDFLOW_FAIL_ONCE=<name>`` and ``FREDFLOW_FAIL_FILE=<path>``, the first
process to reach that point creates the file and raises; later ones pass.
"""

from __future__ import annotations

import os
import time
from pathlib import Path


def checkpoint(name: str) -> None:
    """Freeze the process here (until killed) when ``FREDFLOW_PAUSE_AT`` names this point."""
    if os.environ.get("FREDFLOW_PAUSE_AT") != name:
        return
    Path(os.environ["FREDFLOW_PAUSE_FILE"]).write_text(name)
    while True:  # until killed
        time.sleep(3600)


class InjectedFailure(RuntimeError):
    """Raised by :func:`fail_once` (tests only)."""


def fail_once(name: str) -> None:
    """Raise :class:`InjectedFailure` once, in the first process to get here, when ``FREDFLOW_FAIL_ONCE`` names this point."""
    if os.environ.get("FREDFLOW_FAIL_ONCE") != name:
        return
    try:
        with open(os.environ["FREDFLOW_FAIL_FILE"], "x") as marker:  # atomic: exactly one failure
            marker.write(name)
    except FileExistsError:
        return
    raise InjectedFailure(f"injected failure at {name}")


def fatal_at(name: str, detail: str = "") -> None:
    """Raise :class:`~fredflow.errors.FatalRunError` here when ``FREDFLOW_FATAL_AT`` names this point.

    Every hit appends ``detail`` (e.g. the batch index) as a line to ``FREDFLOW_FATAL_FILE``, so a
    test can count how often the point was reached: a fatal error must never be retried.
    """
    if os.environ.get("FREDFLOW_FATAL_AT") != name:
        return
    from ..errors import FatalRunError

    with open(os.environ["FREDFLOW_FATAL_FILE"], "a") as hits:
        hits.write(f"{detail}\n")
    raise FatalRunError(f"injected fatal error at {name}")
