"""The batch generator and batch sizing (fredflow.run.batches)."""

from __future__ import annotations

from datetime import date

import pytest

from fredflow.run.batches import Batch, auto_batch_size, iter_batches, windows

IDS = [f"S{i:02d}" for i in range(10)]


def test_batches_cover_every_id_once_in_order_with_consecutive_indices():
    batches = list(iter_batches(IDS, 4, first_index=7))
    assert [b.index for b in batches] == [7, 8, 9]
    assert [list(b.series_ids) for b in batches] == [IDS[0:4], IDS[4:8], IDS[8:10]]
    assert all(b.fetch_metadata for b in batches)


def test_windows_are_window_major_and_metadata_comes_with_the_first_window_only():
    cuts = [(date(2000, 1, 1), date(2009, 12, 31)), (date(2010, 1, 1), None)]
    batches = list(iter_batches(IDS[:5], 3, windows=cuts))
    assert [(b.start, b.end, b.series_ids) for b in batches] == [
        (date(2000, 1, 1), date(2009, 12, 31), tuple(IDS[0:3])), (date(2000, 1, 1), date(2009, 12, 31), tuple(IDS[3:5])),
        (date(2010, 1, 1), None, tuple(IDS[0:3])), (date(2010, 1, 1), None, tuple(IDS[3:5]))]
    assert [b.fetch_metadata for b in batches] == [True, True, False, False]


def test_spans_skip_windows_a_series_does_not_reach_except_the_open_last_one():
    cuts = [(date(1950, 1, 1), date(1979, 12, 31)), (date(1980, 1, 1), date(1999, 12, 31)), (date(2000, 1, 1), None)]
    spans = [(date(1990, 1, 1), date(2020, 1, 1)), None, (date(1950, 1, 1), date(1960, 1, 1))]
    batches = list(iter_batches(["A", "B", "C"], 10, windows=cuts, spans=spans, fetch_metadata=False))
    assert [b.series_ids for b in batches] == [("B", "C"), ("A", "B"), ("A", "B", "C")]
    with pytest.raises(ValueError):
        list(iter_batches(["A"], 1, spans=[None]))  # spans need metadata already fetched


def test_per_series_starts_never_go_before_the_batch_start():
    batch = Batch(0, ("A", "B", "C"), start=date(2000, 1, 1), starts=(date(1990, 1, 1), date(2005, 1, 1), None))
    assert [batch.start_of(i) for i in range(3)] == [date(2000, 1, 1), date(2005, 1, 1), date(2000, 1, 1)]


def test_batch_key_changes_with_what_it_fetches():
    a = Batch(3, ("A", "B"), start=date(2000, 1, 1))
    assert a.key == Batch(3, ("A", "B"), start=date(2000, 1, 1)).key
    assert a.key != Batch(3, ("A", "C"), start=date(2000, 1, 1)).key
    assert a.key != Batch(3, ("A", "B"), start=date(2000, 1, 2)).key
    assert a.key != Batch(3, ("A", "B"), start=date(2000, 1, 1), vintages=True).key


def test_windows_accept_spans_ints_and_strings():
    assert windows(date(2000, 1, 1), date(2001, 12, 31), 1) == windows(date(2000, 1, 1), date(2001, 12, 31), "1y")
    assert windows(date(2000, 1, 1), date(2000, 1, 20), "1w")[-1] == (date(2000, 1, 15), date(2000, 1, 20))


@pytest.mark.parametrize("n_series, slots, rate, overhead, expected", [
    (0, 4, 2.0, 0.0, 1),          # nothing to do
    (100, 4, 2.0, 0.0, 7),        # no overhead: 4 batches per slot for the tail
    (1000, 8, 300.0, 0.065, 49),  # Dask: 20 × 65 ms of work per batch at 300/8 req/s beats the tail bound (32)
    (10, 8, 2.0, 0.025, 1),       # at most ceil(n / slots): never fewer batches than slots
    (10**6, 4, 2.0, 0.0, 500),    # capped
])
def test_auto_batch_size(n_series, slots, rate, overhead, expected):
    assert auto_batch_size(n_series, slots=slots, rate=rate, task_overhead=overhead) == expected
