"""The one redactor (fredflow.redact) and the bounds the client keeps against a hostile upstream, in-process."""

from __future__ import annotations

import logging
import math

import pytest

from fredflow.errors import BadRequest, FatalRunError, TransientError
from fredflow.redact import RedactingFilter, redact, register_secret
from fredflow.settings import Settings
from fredflow.sources.fred.client import FredClient, classify
from fredflow.sources.fred.transport import HandlerTransport, Response

KEY = "sekritsekritsekritsekritsekrit42"


@pytest.mark.parametrize("text", [
    f"GET /fred/series?series_id=GDP&api_key={KEY}&file_type=json",
    f"http://proxy/fred/series?api_key%3D{KEY}",
    f'{{"api_key": "{KEY}", "x": 1}}',
    f"{{'api_key': '{KEY}'}}",
    f"<p>api_key={KEY}</p>",
    f"API_KEY={KEY}",
])
def test_every_spelling_of_the_key_is_redacted(text):
    cleaned = redact(text)
    assert KEY not in cleaned and "REDACTED" in cleaned


def test_a_registered_key_is_redacted_wherever_it_appears():
    register_secret(KEY)
    assert redact(f"the key {KEY} echoed alone") == "the key REDACTED echoed alone"
    assert "api_key.html" in redact("Read https://fred.stlouisfed.org/docs/api/api_key.html")  # FRED's own text


def test_errors_carry_redacted_text_only():
    error = classify(502, f"<html>While trying to retrieve http://x/fred/series?api_key={KEY}</html>".encode())
    assert isinstance(error, TransientError) and KEY not in str(error) and KEY not in error.message
    # an echoed URL is not a refused key
    assert isinstance(classify(403, f"denied: /fred/series?api_key={KEY}".encode()), BadRequest)
    assert KEY not in str(FatalRunError(f"api_key={KEY}"))


def test_log_records_are_redacted_with_their_tracebacks():
    record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed: %s", (f"api_key={KEY}",), None)
    try:
        raise ValueError(f"url ?api_key={KEY}")
    except ValueError:
        import sys

        record.exc_info = sys.exc_info()
    RedactingFilter().filter(record)
    text = logging.Formatter().format(record)
    assert KEY not in text and "ValueError" in text
    record2 = logging.LogRecord("x", logging.ERROR, __file__, 1, "boom", None, None)
    record2.exc_info = record.exc_info
    RedactingFilter(tracebacks=False).filter(record2)
    assert "Traceback" not in logging.Formatter().format(record2)


def test_retry_after_is_parsed_and_capped():
    assert classify(429, b"", retry_after="inf").retry_after == math.inf
    assert classify(429, b"", retry_after="nan").retry_after == math.inf
    assert classify(429, b"", retry_after="-5").retry_after == 0.0


async def test_huge_retry_after_waits_the_cap_and_counts_against_max_attempts():
    from fredflow.ratelimit.service import ScheduleLimiter

    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    throttled = Response(429, b'{"error_code":429,"error_message":"Too Many Requests."}', {"Retry-After": "100000"})
    transport = HandlerTransport(lambda e, q: (200, b"{}"), faults=[throttled] * 10)
    settings = Settings(api_key=KEY, max_attempts=3, max_retry_after=2.0, max_throttled_attempts=30)
    client = FredClient(transport, settings, ScheduleLimiter.at(1000, 10), sleep=sleep)
    with pytest.raises(Exception) as failed:
        await client.series("GDP")
    assert failed.value.attempts == 3  # bounded by max_attempts, not max_throttled_attempts (30)
    assert len(transport.requests) == 3 and all(w <= 2.0 for w in waits)
