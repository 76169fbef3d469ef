"""``fredflow show`` as a user runs it: a subprocess, on a database holding FRED's recorded GDP vintages."""

from __future__ import annotations

import csv
import io
import subprocess
import sys

import orjson
import pyarrow.parquet as pq
import pytest

from test_warehouse import _hold, gdp_database, recording


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    path = tmp_path_factory.mktemp("show") / "gdp.duckdb"
    wh = gdp_database(path, recording("all_releases_json__i0"))
    return path, wh


def show(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fredflow.cli", "show", *args], capture_output=True, text=True,
                          timeout=120)


def test_csv_when_piped_is_the_panel(db):
    path, wh = db
    done = show("--db", str(path), "--series", "gdp", "--asof", "2019-01-01", "--freq", "a", "--units", "pc1",
                "--start", "2010-01-01")
    assert done.returncode == 0, done.stderr
    rows = list(csv.reader(io.StringIO(done.stdout)))
    assert rows[0] == ["date", "GDP"]
    panel = wh.panel(["GDP"], start="2010-01-01", freq="a", units="pc1", asof="2019-01-01")
    assert [r[0] for r in rows[1:]] == [d.isoformat() for d in panel["date"].to_pylist()]
    assert [float(r[1]) for r in rows[1:]] == pytest.approx(panel["GDP"].to_pylist(), rel=1e-15)
    assert rows[-1][0] == "2018-01-01"  # as published on 2019-01-01: nothing of 2019 yet


def test_json_long_first_release(db):
    path, wh = db
    done = show("--db", str(path), "--series", "GDP", "--first-release", "--long", "--format", "json")
    assert done.returncode == 0, done.stderr
    records = orjson.loads(done.stdout)
    assert len(records) == 132 and set(records[0]) == {"series_id", "date", "value"}
    assert records[0] == {"series_id": "GDP", "date": "1991-10-01", "value": 5736.6}


def test_parquet_and_table(db, tmp_path):
    path, wh = db
    out = tmp_path / "gdp.parquet"
    done = show("--db", str(path), "--series", "GDP", "--asof", "2019-01-01", "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert pq.read_table(out).equals(wh.panel(["GDP"], asof="2019-01-01"))
    done = show("--db", str(path), "--series", "GDP", "--asof", "2019-01-01", "--end", "1947-01-01",
                "--format", "table")
    assert done.returncode == 0, done.stderr
    assert "as of 2019-01-01" in done.stdout and "GDP" in done.stdout and "1946-01-01" in done.stdout
    assert "│          . │" in done.stdout or " . " in done.stdout  # 1946 is "." as of 2019


@pytest.mark.parametrize(("args", "message"), [
    (("--series", "GDP,NOPE", "--asof", "2019-01-01"), "no vintages stored for NOPE"),
    (("--series", "GDP", "--asof", "2019-01-01", "--freq", "m"), "higher than the native frequency of GDP"),
    (("--series", "GDP", "--asof", "2019-02-30"), "--asof '2019-02-30' is not a date"),
    (("--series", "GDP", "--asof", "1990-01-01"), "before the first stored vintage of GDP"),
    (("--series", "GDP", "--format", "parquet"), "--format parquet needs --out"),
    (("--series", "GDP", "--asof", "2019-01-01", "--first-release"), "not allowed with argument"),
    (("--series", "GDP", "--units", "pcx"), "invalid choice"),
])
def test_usage_errors_are_one_line_and_exit_2(db, args, message):
    path, _ = db
    done = show("--db", str(path), *args)
    assert done.returncode == 2
    assert message in done.stderr and done.stderr.count("\n") == 1 and done.stdout == ""


def test_no_database_and_a_locked_one(db, tmp_path):
    done = show("--db", str(tmp_path / "none.duckdb"), "--series", "GDP")
    assert done.returncode == 2 and "no database at" in done.stderr
    path, _ = db
    holder = _hold(path, 30)
    try:
        done = show("--db", str(path), "--series", "GDP", "--asof", "2019-01-01", "--lock-timeout", "0.3")
    finally:
        holder.kill()
        holder.wait()
    assert done.returncode == 1 and "locked by a writer" in done.stderr and done.stderr.count("\n") == 1
