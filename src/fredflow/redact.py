"""The one redactor: every message fredflow derives from a request, a response or an exception
passes through :func:`redact` before it is shown, logged or stored.

It removes ``api_key=<anything>`` in any spelling a URL, a form, a JSON body or a log line may
carry it (``api_key=…``, ``api_key%3D…``, ``"api_key": "…"``), and every occurrence of a key
registered with :func:`register_secret` (the run's key, wherever it is echoed on its own).
Applied in :class:`fredflow.errors.FredflowError` (so error text, ``ingest_failures.message``,
``--json`` and Prefect's task and flow states never hold it), in a :class:`logging.Filter` on
fredflow's handlers and Prefect's, and to every line the CLI writes.
"""

from __future__ import annotations

import logging
import re

MASK = "REDACTED"

# api_key, then = (or its URL encoding, or a JSON/Python key-value separator), then the value
_PATTERN = re.compile(
    r"""(api_key)(\s*(?:=|%3D|%3d|["']?\s*:\s*["']?))([^&\s"'<>;,)}\]]*)""",
    re.IGNORECASE,
)
_SECRETS: set[str] = set()


def register_secret(value: str | None) -> None:
    """Redact ``value`` wherever it appears from now on (values shorter than 8 characters are ignored)."""
    if value and len(value) >= 8 and value != "**********":
        _SECRETS.add(value)


def redact(text: object) -> str:
    """``text`` (made a string) with every api key removed."""
    out = text if isinstance(text, str) else str(text)
    if "api_key" in out.lower():
        out = _PATTERN.sub(lambda m: m.group(1) + m.group(2) + MASK, out)
    for secret in _SECRETS:
        if secret in out:
            out = out.replace(secret, MASK)
    return out


class RedactingFilter(logging.Filter):
    """A handler filter: the formatted message of every record, redacted (its args folded in).
    ``tracebacks=False`` (the CLI's console): a record keeps its message and loses its traceback."""

    def __init__(self, *, tracebacks: bool = True) -> None:
        super().__init__()
        self.tracebacks = tracebacks

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad format string is not ours to fix here
            return True
        cleaned = redact(message)
        if cleaned != message or record.args:
            record.msg, record.args = cleaned, None
        if not self.tracebacks:
            record.msg, record.args = str(record.msg).split("\nTraceback", 1)[0], None
            record.exc_info, record.exc_text, record.stack_info = None, None, None
        elif record.exc_info and record.exc_info[1] is not None:
            # tracebacks carry exception text too: keep the type, redact the text
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        return True


_FILTER = RedactingFilter()
_CONSOLE_FILTER = RedactingFilter(tracebacks=False)

#: Set by the CLI: its console shows fredflow's one line for a failure, not other libraries' tracebacks.
CONSOLE_TRACEBACKS = True


def install_log_redaction() -> None:
    """Put the redacting filter on every handler of every logger configured so far (the root logger,
    fredflow's, Prefect's console and API handlers, …): call again after a library sets up its logging.
    A handler writing to the terminal also drops tracebacks when :data:`CONSOLE_TRACEBACKS` is off."""
    import sys

    loggers = [logging.getLogger()] + [lg for lg in list(logging.Logger.manager.loggerDict.values())
                                       if isinstance(lg, logging.Logger)]
    for logger in loggers:
        for handler in logger.handlers:
            console = isinstance(handler, logging.StreamHandler) and getattr(handler, "stream", None) in (
                sys.stderr, sys.stdout, sys.__stderr__, sys.__stdout__)
            chosen = _CONSOLE_FILTER if console and not CONSOLE_TRACEBACKS else _FILTER
            for old in (_FILTER, _CONSOLE_FILTER):
                if old is not chosen and old in handler.filters:
                    handler.removeFilter(old)
            if chosen not in handler.filters:
                handler.addFilter(chosen)


__all__ = ["MASK", "RedactingFilter", "install_log_redaction", "redact", "register_secret"]
