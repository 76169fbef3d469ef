"""RunOptions: the one definition of a run's options, checked on creation with one-line errors."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest

from fredflow import CatalogSpec, Mode, RunOptions, Span, UsageError

CATALOG = CatalogSpec(series=("GDP",))


def test_defaults_and_round_trip_through_json():
    options = RunOptions.build(db="f.duckdb", catalog=CATALOG, staging_dir=Path("/tmp/s"))
    assert (options.mode, options.runner, options.revision_window, options.window) == ("full", "asyncio", None, None)
    assert options.staging_dir == "/tmp/s" and options.stores_state
    assert RunOptions.model_validate_json(options.model_dump_json()) == options
    windowed = RunOptions.build(db="f.duckdb", catalog=CATALOG, mode="incremental", revision_window="18m")
    assert windowed.revision_window == Span(18, "m") and windowed.model_dump(mode="json")["revision_window"] == "18m"
    assert RunOptions.model_validate_json(windowed.model_dump_json()) == windowed


@pytest.mark.parametrize("fields, needle", [
    ({"start": date(2020, 1, 2), "end": date(2020, 1, 1)}, "--start 2020-01-02 is after --end 2020-01-01"),
    ({"batch_size": 0}, "--batch-size"),
    ({"mode": "backfill"}, "a backfill needs --start"),
    ({"mode": "backfill", "start": date(2999, 1, 1)}, "in the future"),
    ({"window": "5y"}, "--window applies to backfills only"),
    ({"mode": "backfill", "start": date(2000, 1, 1), "window": "ten"}, "--window 'ten'"),
    ({"mode": "incremental", "revision_window": "0d"}, "--revision-window '0d'"),
    ({"reset_state": True, "end": date(2020, 1, 1)}, "--reset-state"),
    ({"vintages": True, "mode": "incremental", "end": date(2020, 1, 1)}, "--vintages --mode incremental keeps"),
    ({"revision_window": "2y"}, "--revision-window applies to --mode incremental only"),
    ({"realtime_start": date(2020, 1, 1)}, "need --vintages"),
    ({"workers": 3}, "--workers do not apply to --runner asyncio"),
    ({"runner": "thread", "dask_address": "tcp://x:1"}, "--dask-address do not apply to --runner thread"),
    ({"runner": "spark"}, "runner"),
    ({"mode": "sometimes"}, "mode"),
    ({"bogus": 1}, "bogus"),
])
def test_bad_options_are_one_usage_line(fields, needle):
    with pytest.raises(UsageError) as failure:
        RunOptions.build(db="f.duckdb", catalog=CATALOG, **fields)
    assert needle in str(failure.value) and "\n" not in str(failure.value)


def test_a_catalog_is_needed_unless_resuming():
    with pytest.raises(UsageError, match="give exactly one of"):
        RunOptions.build(db="f.duckdb")
    assert RunOptions.build(db="f.duckdb", resume="r1").catalog is None
    with pytest.raises(UsageError, match=r"got series, release"):
        CatalogSpec(series=("A",), release=1)


def test_span_parses_shifts_and_clamps_month_ends():
    assert Span.parse("18M") == Span(18, "m") and str(Span.parse(3)) == "3y"
    assert Span.parse("1m").shift(date(2020, 3, 31), -1) == date(2020, 2, 29)
    assert Span.parse("2w").shift(date(2020, 1, 1)) == date(2020, 1, 15)
    assert Span.parse("10y").shift(date(2020, 2, 29)) == date(2030, 2, 28)


def test_mode_and_runner_compare_as_strings():
    options = RunOptions.build(db="f.duckdb", catalog=CATALOG, mode="incremental", runner="dask", workers=3,
                               revision_window="2y")
    assert options.mode == Mode.INCREMENTAL == "incremental" and f"{options.runner}" == "dask"
    assert options.runner_options() == {"workers": 3}
    assert options.parameters({"rate": 2})["revision_window"] == "2y"
