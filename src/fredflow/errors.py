"""Error types: every failure fredflow reports is one of these.

::

    FredflowError
    ├── UsageError                 bad input: one line, exit 2
    ├── FatalRunError              the run cannot go on: nothing committed, exit 1
    │   ├── BadApiKey   (also a FredError)
    │   ├── CatalogNotFound (also a BadRequest)
    │   └── StoreBusy              the database (or the run) is held by another process
    └── FredError                  an answer from FRED, or a transport failure talking to it
        ├── SeriesNotFound         that series fails alone; the run goes on (exit 3)
        ├── BadRequest             any other 4xx: not retried
        ├── RateLimited            429: the whole run slows down, then retries
        └── TransientError         5xx, timeouts, resets, bad bodies: retried with backoff, bounded

FRED's answers are classified in one place (:func:`fredflow.sources.fred.client.classify`) and
each class is handled in one place per policy: permanent per-series failures are recorded and
the run goes on, transient ones are retried, fatal ones abort the run before anything is
committed. The CLI maps them to the exit codes below.
"""

from __future__ import annotations

#: The CLI's exit codes: every series ingested; fatal (nothing committed); usage error; committed, some series failed.
EXIT_OK, EXIT_FATAL, EXIT_USAGE, EXIT_PARTIAL = 0, 1, 2, 3


class FredflowError(Exception):
    """Base class for every error fredflow raises on purpose. Its text passes through
    :func:`fredflow.redact.redact`: no api key survives in it, wherever it is shown or stored."""

    def __init__(self, *args: object) -> None:
        from .redact import redact

        super().__init__(*(redact(a) if isinstance(a, str) else a for a in args))


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM (raised by the CLI's signal handler): unwinds like Ctrl-C everywhere (asyncio,
    Prefect, DuckDB), so every ``finally`` runs: the merge rolls back, the temporary Prefect server and the
    Dask cluster stop, locks are released. The CLI exits 128 + ``signum`` (130, 143)."""

    #: the last signal received in this process (a DuckDB query interrupted by it reports only "interrupted")
    last_signum: int | None = None

    def __init__(self, signum: int) -> None:
        import signal

        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class UsageError(FredflowError):
    """Bad input from the user (dates, options, files). CLI exit code 2.

    Messages name CLI flags (``--start``); raised in a Prefect flow-run process (started by a worker
    or ``fredflow serve``, where the user filled in parameters, not flags) they name the
    parameters instead (``options.start``, ``options.catalog.series``, ``settings.rate``).
    """

    def __init__(self, message: str = "") -> None:
        import os

        if os.environ.get("PREFECT__FLOW_RUN_ID"):
            message = as_parameters(message)
        super().__init__(message)


_CATALOG_FLAGS = ("series", "series-file", "release", "category")
_SETTINGS_FLAGS = ("api-url", "api-key", "rate", "burst", "concurrency", "timeout", "max-attempts")


def as_parameters(message: str) -> str:
    """``--series-file`` → ``options.catalog.series_file``, ``--rate`` → ``settings.rate``, ``--start`` →
    ``options.start``; ``'fredflow backfill'`` → the backfill flow."""
    import re

    def name(match: "re.Match[str]") -> str:
        flag = match.group(1)
        field = flag.replace("-", "_")
        if flag in _CATALOG_FLAGS:
            return f"options.catalog.{field}"
        if flag in _SETTINGS_FLAGS:
            return "api_key (or api_key_secret)" if flag == "api-key" else f"settings.{field}"
        return f"options.{field}"

    message = re.sub(r"(?<![\w-])--([a-z][a-z-]*)", name, message)
    return message.replace("'fredflow backfill'", "the fredflow-backfill flow")


class FatalRunError(FredflowError):
    """The run cannot go on at all (e.g. the api key is refused). Exit code 1, nothing committed."""


class FredError(FredflowError):
    """An error answered by the FRED API (or a transport failure talking to it)."""

    def __init__(self, message: str, *, http_status: int | None = None) -> None:
        super().__init__(message)
        self.message: str = self.args[0] if self.args else message  # redacted
        self.http_status = http_status
        self.attempts = 1  # set by the client to the attempts spent before giving up


class BadApiKey(FredError, FatalRunError):
    """The api key is missing, malformed or not registered: abort the run, no retries."""


class SeriesNotFound(FredError):
    """400/404 "The series does not exist.": that series fails permanently."""


class BadRequest(FredError):
    """Any other 4xx: the request itself is wrong; retrying will not help."""


class CatalogNotFound(BadRequest, FatalRunError):
    """The release or category asked for does not exist: nothing to ingest."""


class RateLimited(FredError):
    """429 Too Many Requests: wait, slow the whole run down, retry."""

    def __init__(self, message: str, *, http_status: int | None = 429, retry_after: float | None = None) -> None:
        super().__init__(message, http_status=http_status)
        self.retry_after = retry_after


class TransientError(FredError):
    """5xx, timeouts, resets, truncated or invalid JSON: retry with backoff, bounded."""


class StoreBusy(FatalRunError):
    """The DuckDB file is locked by another process."""
