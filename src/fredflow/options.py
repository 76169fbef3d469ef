"""What a run is asked to do: :class:`RunOptions`, the one definition the CLI, the Python API and the
Prefect flows all build and pass down (a pydantic model, so the Prefect UI renders it as a form).

How to talk to FRED and how fast (url, key, rate, retries) is the other half, :class:`~fredflow.settings.Settings`:
options say *what* to fetch and *where* to put it, settings *how*.

Adding a run option touches three files: a field here (with its docstring and check), its flag in
:mod:`fredflow.cli`, and the stage that uses it (usually :mod:`fredflow.run.plan`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer, PlainValidator, WithJsonSchema, model_validator

from .errors import UsageError
from .sources.fred.catalog import CatalogSpec


class Mode(StrEnum):
    """``full``: every series of the catalog. ``incremental``: only series changed since the database
    last fetched them (and series it never fetched). ``backfill``: ``[start, end]`` in windows."""

    FULL = "full"
    INCREMENTAL = "incremental"
    BACKFILL = "backfill"


class RunnerName(StrEnum):
    """``asyncio``: one event loop in this process. ``thread``/``dask``: the Prefect flow on a thread
    pool or a Dask cluster."""

    ASYNCIO = "asyncio"
    THREAD = "thread"
    DASK = "dask"


_SPAN = re.compile(r"^\s*(\d+)\s*([ymwd])\s*$", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class Span:
    """A length of calendar time: ``10y``, ``18m``, ``6w``, ``90d``. ``str(span)`` gives it back."""

    count: int
    unit: str  # y, m, w or d

    @classmethod
    def parse(cls, text: "str | int | Span", flag: str = "--window") -> "Span":
        """``"10y"`` → ``Span(10, "y")``; an int counts years. One-line :class:`UsageError` otherwise."""
        if isinstance(text, Span):
            return text
        if isinstance(text, int) and not isinstance(text, bool):
            text = f"{text}y"
        match = _SPAN.match(text) if isinstance(text, str) else None
        if not match or int(match.group(1)) < 1:
            raise UsageError(f"{flag} {text!r}: use a whole number and a unit, e.g. 10y, 18m, 6w or 90d")
        return cls(int(match.group(1)), match.group(2).lower())

    def __str__(self) -> str:
        return f"{self.count}{self.unit}"

    def shift(self, day: date, sign: int = 1) -> date:
        """``day`` moved by this span (``sign=-1``: back); month ends clamp (Mar 31 - 1m = Feb 28/29)."""
        count = sign * self.count
        if self.unit == "d":
            return day + timedelta(days=count)
        if self.unit == "w":
            return day + timedelta(weeks=count)
        months = count * (12 if self.unit == "y" else 1)
        year, month = divmod(day.year * 12 + day.month - 1 + months, 12)
        month += 1
        for clamp in (day.day, 30, 29, 28):
            try:
                return date(year, month, min(day.day, clamp))
            except ValueError:
                continue
        raise AssertionError("unreachable")


def _span_field(flag: str) -> Any:
    return Annotated[Span, PlainValidator(lambda v: Span.parse(v, flag)), PlainSerializer(str, return_type=str),
                     WithJsonSchema({"type": "string", "pattern": r"^\d+[ymwdYMWD]$", "examples": ["10y", "18m"]})]


WindowSpan = _span_field("--window")
RevisionSpan = _span_field("--revision-window")

DEFAULT_WINDOW = Span(10, "y")  # what --window meant by default before backfills were planned by pages
DEFAULT_REVISION_WINDOW = Span(2, "y")  # what --revision-window meant by default before it became opt-in

#: Runner options: which runners they apply to.
RUNNER_FIELDS = {"workers": ("dask",), "threads_per_worker": ("dask",), "thread_slots": ("thread",),
                 "dask_address": ("dask",)}


def check_dates(start: date | None, end: date | None, first: str = "--start", last: str = "--end") -> None:
    if start and end and start > end:
        raise UsageError(f"{first} {start} is after {last} {end}")


class RunOptions(BaseModel):
    """One run: what to fetch, into which database, how it is split and run. Frozen; checked on creation
    (:class:`UsageError`, one line, naming the CLI flag)."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    db: Path
    """The DuckDB file (created if missing)."""
    catalog: CatalogSpec | None = None
    """Which series: exactly one of explicit ids, a file of ids, a release or a category (None only to resume)."""
    mode: Mode = Mode.FULL
    """full, incremental or backfill (see :class:`Mode`). With ``vintages``, incremental fetches only the
    series whose ``last_updated`` moved, and of each only the vintages after the newest one stored."""
    start: date | None = None
    """First observation date (backfill: required)."""
    end: date | None = None
    """Last observation date (default: through the latest)."""
    window: WindowSpan | None = None
    """Backfill: cut ``[start, end]`` into windows of this length (default none: one request page per
    100,000 rows of each series, the fewest requests; a window pays only on a server without a rate limit)."""
    revision_window: RevisionSpan | None = None
    """Incremental, opt-in: re-fetch a changed series only from its last stored observation minus this
    (default none: the whole series, so a revision anywhere in its history is applied; a window
    saves bytes, not requests, and loses revisions older than it)."""
    reset_state: bool = False
    """Forget the stored state of the catalog's series: this run is an initial load for them."""
    vintages: bool = False
    """Store the revision history (ALFRED) in ``vintages`` instead of current values."""
    realtime_start: date | None = None
    """Vintages: first vintage date (default 1776-07-04)."""
    realtime_end: date | None = None
    """Vintages: last vintage date (default 9999-12-31)."""
    batch_size: int | None = None
    """Series per batch (one mapped task); None: sized from the runner's overhead and slots."""
    staging_dir: str | None = None
    """Where runs stage their files (default: ``<db name>.staging/`` beside the database)."""
    runner: RunnerName = RunnerName.ASYNCIO
    """asyncio, thread or dask."""
    workers: int | None = Field(None, ge=1)
    """Dask LocalCluster: worker processes (default 2)."""
    threads_per_worker: int | None = Field(None, ge=1)
    """Dask LocalCluster: threads per worker process (default 4)."""
    thread_slots: int | None = Field(None, ge=1)
    """Thread runner: batches run at once (default 8)."""
    dask_address: str | None = None
    """Use an existing Dask cluster (``tcp://HOST:8786``) instead of a local one."""
    handback: bool | None = None
    """Dask: batches hand their staged bytes back to the flow, which stages them (default: with
    ``dask_address`` and a local staging path; off for object storage or a shared folder)."""
    head_start: bool = True
    """Thread/dask from the CLI or ``ingest()``: fetch the first batches in this process while the temporary
    Prefect server and the Dask LocalCluster start, then hand the rest to the task runner (off: every batch
    is a Prefect task run; an existing cluster, ``dask_address``, never uses it)."""
    resume: str | None = None
    """The id of an unfinished run to finish instead of planning a new one."""
    force: bool = False
    """Resume even though newer runs were committed since."""

    @model_validator(mode="before")
    @classmethod
    def _coerce(cls, values: Any) -> Any:
        if isinstance(values, dict) and isinstance(values.get("staging_dir"), Path):
            values = {**values, "staging_dir": str(values["staging_dir"])}
        return values

    @model_validator(mode="after")
    def _check(self) -> "RunOptions":
        check_dates(self.start, self.end)
        check_dates(self.realtime_start, self.realtime_end, "--realtime-start", "--realtime-end")
        if self.batch_size is not None and self.batch_size < 1:
            raise UsageError("--batch-size must be a positive integer or 'auto'")
        backfill = self.mode == Mode.BACKFILL
        if backfill and self.start is None and self.resume is None:
            raise UsageError("a backfill needs --start (and optionally --end, default: the latest observation)")
        if backfill and self.end is None and self.start is not None and self.start > date.today():
            raise UsageError(f"--start {self.start} is in the future; nothing to backfill")
        if self.reset_state and (self.end is not None or self.vintages):
            raise UsageError("--reset-state needs a run that stores state: without --end and without --vintages")
        if self.window is not None and not backfill:
            raise UsageError("--window applies to backfills only ('fredflow backfill')")
        if self.revision_window is not None and self.mode != Mode.INCREMENTAL:
            raise UsageError("--revision-window applies to --mode incremental only")
        if self.vintages and self.mode == Mode.INCREMENTAL and not self.stores_vintage_state:
            raise UsageError("--vintages --mode incremental keeps whole histories up to date: "
                             "no --start/--end/--realtime-start/--realtime-end")
        if (self.realtime_start or self.realtime_end) and not self.vintages:
            raise UsageError("--realtime-start/--realtime-end need --vintages")
        if self.handback is not None and self.runner != RunnerName.DASK:
            raise UsageError(f"--handback/--no-handback do not apply to --runner {self.runner}")
        if not self.head_start and self.runner == RunnerName.ASYNCIO:
            raise UsageError("--no-head-start applies to --runner thread or dask")
        if self.resume is None and self.catalog is None:
            raise UsageError("give exactly one of --series, --series-file, --release or --category")
        wrong = [name for name, runners in RUNNER_FIELDS.items()
                 if getattr(self, name) is not None and self.runner not in runners]
        if wrong:
            flags = ", ".join("--" + name.replace("_", "-") for name in wrong)
            raise UsageError(f"{flags} do not apply to --runner {self.runner}")
        return self

    @classmethod
    def build(cls, **fields: Any) -> "RunOptions":
        """Options from keyword fields; a type error (a pydantic ``ValidationError``) becomes one-line
        :class:`UsageError` naming the field."""
        from pydantic import ValidationError

        try:
            return cls(**fields)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "options"
            raise UsageError(f"{where}: {first['msg']}") from None

    @property
    def backfill_window(self) -> Span | None:
        """The explicit ``--window`` (None: a backfill is planned by request pages, not by time)."""
        return self.window

    @property
    def stores_vintage_state(self) -> bool:
        """Whether a vintage run fetches whole histories (every date, every vintage): it records each
        series' newest vintage date in ``vintage_state``, from which an incremental vintage run goes on."""
        return (self.vintages and self.start is None and self.end is None and self.realtime_start is None
                and self.realtime_end is None)

    @property
    def stores_state(self) -> bool:
        """Whether the run fetches its series through their latest observation (so records their state)."""
        return self.end is None and not self.vintages

    def runner_options(self) -> dict[str, Any]:
        """The runner fields that were given (the rest take the runner's defaults)."""
        return {name: getattr(self, name) for name in RUNNER_FIELDS if getattr(self, name) is not None}

    def parameters(self, settings_public: dict[str, Any]) -> dict[str, Any]:
        """What ``run.json`` and ``ingest_runs.parameters`` keep of the run (no secrets)."""
        return {
            "catalog": self.catalog.describe() if self.catalog else None, "runner": str(self.runner),
            "runner_options": self.runner_options(), "batch_size": self.batch_size or "auto",
            "start": self.start, "end": self.end, "mode": str(self.mode),
            "window": str(self.window) if self.window else None,
            "revision_window": str(self.revision_window) if self.revision_window else None,
            "reset_state": self.reset_state, "vintages": self.vintages,
            "realtime_start": self.realtime_start, "realtime_end": self.realtime_end, "settings": settings_public,
        }
