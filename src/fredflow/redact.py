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
    """A handler filter: the formatted message of every record, redacted (its args folded in)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad format string is not ours to fix here
            return True
        cleaned = redact(message)
        if cleaned != message or record.args:
            record.msg, record.args = cleaned, None
        if record.exc_info and record.exc_info[1] is not None:
            # tracebacks carry exception text too: keep the type, redact the text
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        return True


_FILTER = RedactingFilter()


def install_log_redaction(*logger_names: str) -> None:
    """Put the redacting filter on every handler of the root logger and of ``logger_names``."""
    for name in ("", *logger_names):
        for handler in logging.getLogger(name or None).handlers:
            if _FILTER not in handler.filters:
                handler.addFilter(_FILTER)


__all__ = ["MASK", "RedactingFilter", "install_log_redaction", "redact", "register_secret"]
