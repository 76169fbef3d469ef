"""parse.py against every real FRED response in tests/data/fred-samples (real FRED responses kept in the repository): exact rows, NULLs, values, dates."""

from __future__ import annotations

import json
from datetime import date, datetime, timezone
from pathlib import Path

import pytest

from fredflow.sources.fred.parse import (
    OBSERVATION_SCHEMA,
    ResponseFormatError,
    parse_last_updated,
    parse_observations,
    parse_series_list,
)

from conftest import SAMPLES


def _observation_samples() -> list[Path]:
    paths = []
    for path in sorted(SAMPLES.glob("*.json")):
        head = path.read_bytes()[:400]
        if b'"observations"' in head or head.lstrip().startswith(b"["):
            paths.append(path)
    return paths


OBSERVATION_SAMPLES = _observation_samples()


def test_samples_are_there():
    # 3 array-only archives + OpenBB T10Y3M + the pyfredapi observation cassettes
    assert len(OBSERVATION_SAMPLES) >= 12, f"fred-samples not found or incomplete at {SAMPLES}"


@pytest.mark.parametrize("path", OBSERVATION_SAMPLES, ids=lambda p: p.name[-70:])
def test_observations_sample_parses_exactly(path: Path):
    raw = path.read_bytes()
    truth = json.loads(raw)  # the stdlib parser is the independent source of truth
    rows = truth if isinstance(truth, list) else truth["observations"]
    page = parse_observations(raw)
    table = page.table
    assert table.schema == OBSERVATION_SCHEMA
    assert table.num_rows == len(rows)
    if isinstance(truth, dict):
        assert page.count == truth["count"] == len(rows)  # every sample is a single complete page
    assert table.column("value").null_count == sum(1 for r in rows if r["value"] == ".")
    # row by row: dates, values (NULL for "."), realtime columns
    got = table.to_pylist()
    for parsed, source in zip(got, rows):
        assert parsed["date"] == date.fromisoformat(source["date"])
        assert parsed["realtime_start"] == date.fromisoformat(source["realtime_start"])
        assert parsed["realtime_end"] == date.fromisoformat(source["realtime_end"])
        if source["value"] == ".":
            assert parsed["value"] is None
        else:
            assert parsed["value"] == float(source["value"])


def test_known_counts_from_the_samples_readme():
    dgs10 = parse_observations((SAMPLES / "aydan-ui+aydan-ui.github.io__DGS10__observations_array_only.json").read_bytes())
    assert dgs10.table.num_rows == 16_423
    assert dgs10.table.column("value").null_count == 700
    t10y3m = next(SAMPLES.glob("OpenBB*T10Y3M_observations.json"))
    page = parse_observations(t10y3m.read_bytes())
    assert page.count == page.table.num_rows == 112
    assert page.table.column("value").null_count >= 1  # "a few '.' on holidays"


def test_vintage_samples_keep_every_realtime_period():
    path = SAMPLES / "gw-moore+pyfredapi__tests_vhs_test_series_test_get_series_all_releases_json__i0.json"
    table = parse_observations(path.read_bytes()).table
    first = table.slice(0, 4).to_pylist()
    assert [r["realtime_start"] for r in first] == [date(1992, 12, 22), date(1996, 1, 19), date(1997, 5, 7), date(1999, 10, 28)]
    assert [r["value"] for r in first] == [199.7, None, 210.4, None]
    assert first[3]["realtime_end"] == date(9999, 12, 31)


@pytest.mark.parametrize("name", [
    "gw-moore+pyfredapi__tests_vhs_test_series_test_get_series_info__i0.json",
    "gw-moore+pyfredapi__6c77e94c176c__tests_vhs_test_series_collection_test_list_methods_diff__i0__WGS10YR_series_metadata.json",
    "gw-moore+pyfredapi__dd697b3309c8__tests_vhs_test_series_collection_test_add_series__i1__CPIAUCSL_series_metadata.json",
])
def test_series_metadata_sample(name: str):
    raw = (SAMPLES / name).read_bytes()
    truth = json.loads(raw)["seriess"][0]
    row = parse_series_list(raw).table.to_pylist()[0]
    assert row["series_id"] == truth["id"]
    assert row["title"] == truth["title"]
    assert row["frequency"] == truth["frequency"]
    assert row["units"] == truth["units"]
    assert row["seasonal_adjustment"] == truth["seasonal_adjustment"]
    assert row["observation_start"] == date.fromisoformat(truth["observation_start"])
    assert row["observation_end"] == date.fromisoformat(truth["observation_end"])
    assert row["popularity"] == truth["popularity"]
    assert row["last_updated"] == parse_last_updated(truth["last_updated"])


def test_last_updated_offsets():
    assert parse_last_updated("2024-10-28 15:23:53-05") == datetime(2024, 10, 28, 20, 23, 53, tzinfo=timezone.utc)
    assert parse_last_updated("2024-12-19 07:55:01-06") == datetime(2024, 12, 19, 13, 55, 1, tzinfo=timezone.utc)
    assert parse_last_updated(None) is None


@pytest.mark.parametrize("pattern,expected_count", [
    ("*release_series__i0.json", 4609),
    ("*category_series__i0.json", 47),
    ("*get_series_updates__i0.json", 135517),
    ("*search_series_json__i0.json", 885),
])
def test_listing_samples(pattern: str, expected_count: int):
    path = next(SAMPLES.glob(pattern))
    raw = path.read_bytes()
    truth = json.loads(raw)
    page = parse_series_list(raw)
    assert page.count == expected_count
    assert page.table.num_rows == len(truth["seriess"])
    assert page.table.column("series_id").to_pylist() == [s["id"] for s in truth["seriess"]]
    assert page.offset == 0 and page.limit == 1000
    assert page.is_last == (expected_count <= 1000)


@pytest.mark.parametrize("body", [
    b'{"count":3,"offset":0,"limit":100000,"observations":[{"realtime_start":"2024-01-01","realt',  # truncated
    b"<html>502 Bad Gateway</html>",
    b'{"seriess": 1}',
    b'{"count":1,"offset":0,"limit":1,"observations":[{"date":"2020-01-01"}]}',
])
def test_malformed_bodies_raise_format_error(body: bytes):
    with pytest.raises(ResponseFormatError):
        if b"seriess" in body:
            parse_series_list(body)
        else:
            parse_observations(body)


def test_unparseable_value_is_an_error_not_a_silent_null():
    body = b'{"count":1,"offset":0,"limit":1,"observations":[{"realtime_start":"2024-01-01","realtime_end":"2024-01-01","date":"2020-01-01","value":"abc"}]}'
    with pytest.raises(ResponseFormatError):
        parse_observations(body)


def test_empty_page():
    page = parse_observations(b'{"count":0,"offset":0,"limit":100000,"observations":[]}')
    assert page.table.num_rows == 0 and page.is_last and page.count == 0
