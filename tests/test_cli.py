"""CLI contract: bad input → exit 2 with one line on stderr and no traceback; nothing written."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

KEY = "abcdefghijklmnopqrstuvwxyz012345"


def fredflow(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("FRED_")}
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "fredflow.cli", *args], capture_output=True, text=True,
                          env=full_env, timeout=timeout)


@pytest.mark.parametrize("args,needle", [
    (["--series", "GDP", "--start", "2020-13-01"], "invalid date '2020-13-01'"),
    (["--series", "GDP", "--end", "yesterday"], "invalid date 'yesterday'"),
    (["--series", "GDP", "--start", "2021-01-01", "--end", "2020-01-01"], "--start 2021-01-01 is after --end 2020-01-01"),
    (["--series", "GDP", "--release", "10"], "not allowed with argument"),
    ([], "one of the arguments --series --series-file --release --category is required"),
    (["--series-file", "/nonexistent/ids.txt"], "cannot read series file /nonexistent/ids.txt"),
    (["--series", "GDP", "--rate", "0"], "expected a number > 0"),
    (["--series", "GDP", "--batch-size", "-3"], "expected a whole number >= 1"),
    (["--series", "GDP", "--runner", "spark"], "invalid choice: 'spark'"),
    (["--series", " , "], "--series lists no series ids"),
])
def test_usage_errors_exit_2_with_one_line(tmp_path, args, needle):
    db = tmp_path / "f.duckdb"
    result = fredflow("ingest", "--db", str(db), *args, env={"FRED_API_KEY": KEY})
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert needle in lines[0]
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
    assert not db.exists()


def test_empty_series_file_is_a_usage_error(tmp_path):
    ids = tmp_path / "ids.txt"
    ids.write_text("# nothing here\n\n")
    result = fredflow("ingest", "--db", str(tmp_path / "f.duckdb"), "--series-file", str(ids), env={"FRED_API_KEY": KEY})
    assert result.returncode == 2
    assert "lists no series ids" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_missing_api_key_is_fatal_exit_1(tmp_path):
    result = fredflow("ingest", "--db", str(tmp_path / "f.duckdb"), "--series", "GDP", "--json")
    assert result.returncode == 1
    assert "FRED api key not set" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert result.stdout.count("\n") == 1 and '"status":"failed"' in result.stdout
    assert not (tmp_path / "f.duckdb").exists()


def test_runs_on_missing_db_is_a_usage_error(tmp_path):
    result = fredflow("runs", "--db", str(tmp_path / "none.duckdb"))
    assert result.returncode == 2 and "no database at" in result.stderr
