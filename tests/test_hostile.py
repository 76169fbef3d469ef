"""A hostile upstream (tests/hostile.py), through the CLI, on asyncio and on the Prefect thread runner:
every case ends within its bound, exits 1 or 3 (0 for a listing whose later pages are empty) with one
line on stdout (``--json``), no traceback, and the api key in no byte of stdout, stderr, the DuckDB
file, the staging folder or Prefect's database."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import orjson
import pytest

from hostile import HOSTILE_KEY, HostileServer

#: (mode, exit codes allowed, seconds allowed from the first request to the exit) with the caps the
#: command line sets below (interpreter and Prefect server start-up are not the upstream's doing)
CASES = {
    "echo502": ({3}, 20),
    "echo403": ({1, 3}, 20),  # planning reads series/updates: a 403 there stops the run
    "retry_after_huge": ({3}, 20),
    "retry_after_inf": ({3}, 20),
    "endless": ({3}, 20),
    "absurd_count": ({3}, 20),
    "empty_pages": ({3}, 20),
    "empty_listing": ({0}, 20),
    "redirect": ({1}, 20),
}
#: The Prefect runner also stops its temporary server and Prefect's services after the run.
PREFECT_EXTRA_SECONDS = 20


@pytest.fixture(scope="module")
def prefect_home(tmp_path_factory):
    return tmp_path_factory.mktemp("hostile-prefect-home")


def _run(tmp_path: Path, server: HostileServer, runner: str, prefect_home: Path) -> tuple[int, str, str, float]:
    """Run the CLI against ``server``; the seconds returned run from the server's first request to the exit."""
    catalog = ["--release", "1"] if server.mode == "empty_listing" else ["--series", ",".join(server.series_ids)]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FRED_", "FREDFLOW_", "PREFECT_API"))}
    env["PREFECT_HOME"] = str(prefect_home)
    args = [sys.executable, "-m", "fredflow.cli", "ingest", "--db", str(tmp_path / "h.duckdb"), *catalog,
            "--api-url", server.url, "--api-key", HOSTILE_KEY, "--rate", "200", "--max-attempts", "2",
            "--max-retry-after", "1", "--max-body-bytes", "1000000", "--timeout", "10", "--json", "--quiet",
            "--runner", runner]
    proc = subprocess.run(args, capture_output=True, text=True, env=env, timeout=300)
    ended = time.monotonic()
    return proc.returncode, proc.stdout, proc.stderr, ended - (server.first_request_at or ended)


def _files_under(*roots: Path) -> list[Path]:
    found = []
    for root in roots:
        if root.is_file():
            found.append(root)
        elif root.is_dir():
            found += [p for p in root.rglob("*") if p.is_file()]
    return found


def assert_key_nowhere(*texts: str, roots: tuple[Path, ...] = (), db: Path | None = None) -> None:
    for text in texts:
        assert HOSTILE_KEY not in text, text
    for path in _files_under(*roots):
        assert HOSTILE_KEY.encode() not in path.read_bytes(), path
    if db is not None and db.exists():
        con = duckdb.connect(str(db), read_only=True)
        try:
            tables = [r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()]
            for table in tables:  # every value of every table, as text (compressed pages hide raw bytes)
                dump = str(con.execute(f'SELECT * FROM "{table}"').fetchall())
                assert HOSTILE_KEY not in dump, (table, dump[:500])
        finally:
            con.close()


@pytest.mark.parametrize("runner", ["asyncio", "thread"])
@pytest.mark.parametrize("mode", list(CASES))
def test_hostile_upstream(tmp_path, mode, runner, prefect_home):
    codes, bound = CASES[mode]
    if runner != "asyncio":
        bound += PREFECT_EXTRA_SECONDS
    with HostileServer(mode) as server:
        code, out, err, seconds = _run(tmp_path, server, runner, prefect_home)
    assert code in codes, (code, out, err)
    assert seconds < bound, (seconds, err)
    assert "Traceback" not in err and "Traceback" not in out, err
    lines = out.strip().splitlines()
    assert len(lines) == 1, out
    doc = orjson.loads(lines[0])
    if code == 1:
        assert doc["status"] == "failed"
        last = err.strip().splitlines()[-1]
        assert last.startswith("fredflow: fatal:"), err
    else:
        assert doc["status"] in ("succeeded", "partial")
    db = tmp_path / "h.duckdb"
    assert_key_nowhere(out, err, roots=(tmp_path,), db=db)
    if runner != "asyncio":
        assert_key_nowhere(roots=(prefect_home,))

    # what each mode must have cost at most
    n = len(server.series_ids)
    if mode == "redirect":
        assert server.evil_requests == [], server.evil_requests
        assert "redirected to another host" in doc["error"]
    elif mode == "echo403" and code == 1:
        assert "api_key=REDACTED" in doc["error"] and "api_key=REDACTED" in err
    elif mode in ("echo502", "echo403"):
        con = duckdb.connect(str(db), read_only=True)
        messages = [r[0] for r in con.execute("SELECT message FROM ingest_failures").fetchall()]
        con.close()
        assert len(messages) == n and all("api_key=REDACTED" in m for m in messages), messages
    elif mode in ("retry_after_huge", "retry_after_inf"):
        assert server.requests["series/observations"] <= 2 * n  # each capped wait counted an attempt
    elif mode == "absurd_count":
        assert server.requests["series/observations"] == n  # refused at the first page
    elif mode == "empty_pages":
        assert server.requests["series/observations"] <= n * 5  # first page + one window of 4, then stop
    elif mode == "empty_listing":
        assert server.requests["release/series"] == 2  # the first page, then the first empty one
        assert doc["n_series"] == n
