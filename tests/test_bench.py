"""`fredflow bench --quick` end to end: result schema, summary, charts (and the data they plot), README block.

One bench (sequential, asyncio and thread on three tiny scenarios) is shared by
the tests of this module; dask is left out to keep it well under a minute
(its records have the same schema, and `fredflow bench --quick` covers it).
"""

from __future__ import annotations

import csv
import json
import statistics
from pathlib import Path

import pytest

from fredflow.bench.results import RUN_SCHEMA, SCHEMA_VERSION, validate_run

RUNNERS = ("sequential", "asyncio", "thread")
SCENARIOS = ("daily", "backfill", "scale")


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    from fredflow.bench import main

    out = tmp_path_factory.mktemp("bench-out")
    readme = out / "README.md"
    readme.write_text("# hand-written intro\n\nkept as is\n")
    code = main(["--quick", *SCENARIOS, "--runners", ",".join(RUNNERS), "--out", str(out), "--readme", str(readme),
                 "--no-progress", "--overhead-tasks", "24"])
    summary = json.loads((out / "summary.json").read_text())
    runs_dir = Path(summary["runs_dir"])
    records = [json.loads(p.read_text()) for p in sorted(runs_dir.glob("*.json")) if p.name != "summary.json"]
    return {"code": code, "out": out, "summary": summary, "records": records, "readme": readme}


def test_every_run_succeeds_and_is_verified(bench):
    assert bench["code"] == 0
    records = bench["records"]
    expected = {("daily", r) for r in RUNNERS} | {("backfill", r) for r in RUNNERS} | {("scale", "asyncio")}
    assert {(r["scenario"], r["runner"]) for r in records} == expected
    for r in records:
        assert r["ok"], r["error"]
        assert r["rows_verified"] and r["rows_in_db"] == r["expected_rows"] == r["rows"] > 0


def test_run_records_follow_the_schema(bench):
    for r in bench["records"]:
        assert validate_run(r) == [], r["run_key"]
        assert set(RUN_SCHEMA) <= set(r)
        assert r["schema_version"] == SCHEMA_VERSION
        assert r["wall_s"] > 0 and r["process_wall_s"] >= r["wall_s"]
        assert r["cpu_s"] > 0 and r["peak_rss_mb"] > 50 and r["peak_tree_rss_mb"] >= r["peak_rss_mb"] * 0.5
        assert r["requests"] >= r["n_series"] and r["admitted"] >= r["n_series"]
        assert r["ideal_s"] == max(r["ideal_rate_s"], r["ideal_latency_s"], r["ideal_parse_s"]) > 0
        assert r["efficiency"] == pytest.approx(r["ideal_s"] / r["wall_s"], abs=1e-4)
        # Prefect only where it belongs, and its per-task overhead with it
        assert r["prefect_imported"] is (r["runner"] == "thread")
        assert (r["prefect_task_overhead_ms"] is not None) is (r["runner"] == "thread")
        # the rate limit's utilization exists exactly for rate-limited scenarios
        assert (r["rate_utilization"] is not None) is (r["rate_limit"] is not None)
        if r["rate_utilization"] is not None:
            assert 0 < r["rate_utilization"] <= 1.2
            assert sum(r["admitted_per_second"]) == r["admitted"]


def test_validate_run_catches_missing_keys_and_wrong_types(bench):
    record = dict(bench["records"][0])
    del record["wall_s"]
    record["rows_verified"] = "yes"
    record["rep"] = True
    problems = validate_run(record)
    assert "missing wall_s" in problems
    assert any(p.startswith("rows_verified") for p in problems)
    assert any(p.startswith("rep") for p in problems)


def test_summary_json_and_csv(bench):
    summary, records = bench["summary"], bench["records"]
    for key in ("session_id", "machine", "command", "groups", "headline", "targets", "prefect_overhead", "parse",
                "scale", "charts", "duration_s"):
        assert key in summary
    assert summary["machine"]["cpus"] >= 1
    assert summary["prefect_overhead"]["thread"]["ok"] and summary["prefect_overhead"]["thread"]["ms_per_task"] > 0
    with open(bench["out"] / "summary.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == len(records)
    assert {row["run_key"] for row in rows} == {r["run_key"] for r in records}
    # headline ratios are ratios of the medians of the records
    heads = {(h["scenario"], h["runner"]): h for h in summary["headline"]}
    wall = {key: statistics.median(r["wall_s"] for r in records if (r["scenario"], r["runner"]) == key)
            for key in heads}
    for runner in ("sequential", "thread"):
        assert heads["backfill", runner]["vs_asyncio"] == pytest.approx(
            wall["backfill", runner] / wall["backfill", "asyncio"], rel=1e-2)
    assert heads["backfill", "asyncio"]["speedup_vs_sequential"] == pytest.approx(
        wall["backfill", "sequential"] / wall["backfill", "asyncio"], rel=1e-2)
    names = {t["target"] for t in summary["targets"]}
    assert "backfill: asyncio achieved ÷ ideal" in names and "every run: rows verified in DuckDB" in names


def _png_size(path: Path) -> tuple[int, int]:
    from PIL import Image

    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        return image.size


def test_charts_exist_and_hold_the_measured_series(bench):
    out, records, summary = bench["out"], bench["records"], bench["summary"]
    charts = out / "charts"
    assert set(summary["charts"]) == {"time_per_runner.png", "scaling.png", "utilization.png"}
    for name, data in summary["charts"].items():
        width, height = _png_size(charts / name)
        assert width > 600 and height > 300
        assert json.loads((charts / name).with_suffix(".json").read_text()) == data

    def median_wall(scenario, runner):
        return statistics.median(r["wall_s"] for r in records if (r["scenario"], r["runner"]) == (scenario, runner))

    per_runner = summary["charts"]["time_per_runner.png"]
    assert set(per_runner) == {"daily (n=24)", "backfill (n=60)"}
    for panel, scenario in (("daily (n=24)", "daily"), ("backfill (n=60)", "backfill")):
        assert list(per_runner[panel]) == list(RUNNERS)
        for runner in RUNNERS:
            assert per_runner[panel][runner]["median"] == pytest.approx(median_wall(scenario, runner), abs=1e-3)

    scaling = summary["charts"]["scaling.png"]
    assert list(scaling) == ["asyncio"]
    assert scaling["asyncio"]["n"] == [10, 30]
    for n, wall, rss in zip(scaling["asyncio"]["n"], scaling["asyncio"]["wall_s"], scaling["asyncio"]["peak_rss_mb"]):
        (run,) = [r for r in records if r["scenario"] == "scale" and r["n_series"] == n]
        assert wall == pytest.approx(run["wall_s"], abs=1e-3) and rss == pytest.approx(run["peak_tree_rss_mb"], abs=0.1)

    utilization = summary["charts"]["utilization.png"]
    assert utilization["scenario"] == "daily" and utilization["rate_limit"] == 60.0
    assert list(utilization["timeline"]) == list(RUNNERS)
    for runner, line in utilization["timeline"].items():
        (run,) = [r for r in records if (r["scenario"], r["runner"], r["rep"]) == ("daily", runner, line["rep"])]
        assert line["admitted_per_second"] == run["admitted_per_second"]
        assert utilization["per_run"][runner]["rate_utilization"] == [run["rate_utilization"]]


def test_readme_block_is_written_and_the_rest_kept(bench):
    text = bench["readme"].read_text()
    assert text.startswith("# hand-written intro\n\nkept as is")
    assert "fredflow-bench:begin" in text and "fredflow-bench:end" in text
    for name in ("time_per_runner.png", "scaling.png", "utilization.png"):
        assert f"](charts/{name})" in text
    assert "2 cores" in text or f"{bench['summary']['machine']['cpus']} cores" in text


def test_scenarios_match_the_issue():
    from fredflow.bench.scenarios import scenarios

    default, full = scenarios("default"), scenarios("full")
    backfill = default["backfill"]
    assert (backfill.sizes, backfill.obs_per_series, backfill.latency, backfill.concurrency, backfill.rate) == \
        ((2000,), 1000, 0.05, 64, None)
    assert default["daily"].rate and default["faults"].fault_rate > 0
    assert full["scale"].sizes[0] == 100 and full["scale"].sizes[-1] == 10_000
    assert set(default["backfill"].runners) == {"sequential", "asyncio", "thread", "dask"}


def test_bench_package_import_is_light():
    import subprocess
    import sys

    code = ("import sys, fredflow.bench, fredflow.bench.cli, fredflow.bench.harness, fredflow.bench.worker; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('prefect', 'dask', 'distributed', 'matplotlib')))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
