"""What the warehouse knows of each series between runs: plain values that cross stages.

The destination reads :class:`SeriesState` for an incremental plan
(:mod:`fredflow.sources.fred.changes` decides from it what changed) and the merge
writes it, with a run's :class:`StateUpdate`, in the run's one transaction.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime


@dataclass(frozen=True, slots=True)
class SeriesState:
    """What the last successful fetch of a series left: the input of an incremental run."""

    last_updated: datetime | None
    last_observation_date: date | None
    checked_through: datetime | None = None


@dataclass(frozen=True, slots=True)
class StateUpdate:
    """What a merge writes to ``series_state`` besides the fetched series' own state.

    ``checked_through``: the newest FRED ``last_updated`` visible when the run
    was planned; every series the run fetched, or judged unchanged, is known to
    reflect every update up to there. ``unchanged``: series judged unchanged
    (only their ``checked_through`` moves). ``reset``: forget these series'
    state first (``--reset-state``).
    """

    checked_through: datetime | None = None
    unchanged: tuple[str, ...] = ()
    reset: tuple[str, ...] = ()
