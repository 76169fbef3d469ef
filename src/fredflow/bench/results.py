"""The result schema, summaries (median and spread), headline ratios, targets, and files.

One JSON object per run (:data:`RUN_SCHEMA`, checked by :func:`validate_run`)
under ``<out>/runs/<session>/``; ``summary.json`` (groups, ratios, targets,
Prefect overhead, machine) and ``summary.csv`` (one row per run) in ``<out>``.
"""

from __future__ import annotations

import csv
import json
import math
import statistics
from pathlib import Path
from typing import Any, Iterable

SCHEMA_VERSION = 1

NUM = (int, float)
#: key → allowed types of a run record (``None`` listed when the value may be missing by design).
RUN_SCHEMA: dict[str, tuple[type, ...]] = {
    "schema_version": (int,),
    "session_id": (str,),
    "run_key": (str,),
    "scenario": (str,),
    "runner": (str,),
    "rep": (int,),
    "n_series": (int,),
    "obs_per_series": (int,),
    "latency_s": NUM,
    "rate_limit": (*NUM, type(None)),
    "fault_rate": NUM,
    "concurrency": (int,),
    "runner_options": (dict,),
    "started_at": (str,),
    "ok": (bool,),
    "error": (str, type(None)),
    "exit_code": (int,),
    "status": (str,),
    # time
    "wall_s": NUM,
    "process_wall_s": NUM,
    "startup_s": NUM,
    "import_s": NUM,
    "plan_s": NUM,
    "fetch_s": NUM,
    "merge_s": NUM,
    "first_batch_s": (*NUM, type(None)),
    "n_batches": (int,),
    # throughput and requests
    "requests": (int,),
    "requests_per_s": NUM,
    "rows": (int,),
    "rows_per_s": NUM,
    "n_failed": (int,),
    "retries": (int,),
    "throttled_client": (int,),
    "server_requests": (int,),
    "admitted": (int,),
    "throttled_429": (int,),
    "faults_injected": (int,),
    "admitted_per_second": (list,),
    "admitted_t0_s": (*NUM, type(None)),
    "rate_utilization": (*NUM, type(None)),
    "rate_utilization_steady": (*NUM, type(None)),
    "concurrency_utilization": (*NUM, type(None)),
    "prefect_task_overhead_ms": (*NUM, type(None)),
    # resources
    "cpu_s": NUM,
    "process_cpu_s": NUM,
    "peak_rss_mb": NUM,
    "peak_children_rss_mb": NUM,
    "peak_tree_rss_mb": NUM,
    "peak_fetch_rss_mb": (*NUM, type(None)),
    "peak_merge_rss_mb": (*NUM, type(None)),
    "process_peak_rss_mb": NUM,
    "sim_cpu_s": NUM,
    "prefect_server_cpu_s": (*NUM, type(None)),
    "background_cpu_s": NUM,
    "loadavg_1m": NUM,
    "noisy": (bool,),
    "prefect_imported": (bool,),
    # verification
    "expected_rows": (int,),
    "rows_in_db": (int,),
    "series_in_db": (int,),
    "rows_verified": (bool,),
    # ideal
    "ideal_s": NUM,
    "ideal_rate_s": NUM,
    "ideal_latency_s": NUM,
    "ideal_parse_s": NUM,
    "efficiency": NUM,
}

#: Keys that are ``None`` when a run failed before it could be measured.
MEASURED = {k for k in RUN_SCHEMA if k not in {
    "schema_version", "session_id", "run_key", "scenario", "runner", "rep", "n_series", "obs_per_series",
    "latency_s", "rate_limit", "fault_rate", "concurrency", "runner_options", "started_at", "ok", "error",
    "exit_code", "expected_rows", "ideal_s", "ideal_rate_s", "ideal_latency_s", "ideal_parse_s",
}}


def validate_run(record: dict[str, Any]) -> list[str]:
    """Problems with a run record: missing keys, wrong types (an empty list means valid)."""
    problems = []
    for key, types in RUN_SCHEMA.items():
        if key not in record:
            problems.append(f"missing {key}")
            continue
        value = record[key]
        if value is None and (type(None) in types or (key in MEASURED and not record.get("ok"))):
            continue
        if isinstance(value, bool) and bool not in types:
            problems.append(f"{key}: bool where {types} expected")
        elif not isinstance(value, types):
            problems.append(f"{key}: {type(value).__name__} {value!r:.40} where {[t.__name__ for t in types]} expected")
    if record.get("schema_version") != SCHEMA_VERSION:
        problems.append(f"schema_version {record.get('schema_version')} != {SCHEMA_VERSION}")
    return problems


# --------------------------------------------------------------------------- statistics


def spread(values: Iterable[float | None]) -> dict[str, Any]:
    xs = sorted(v for v in values if v is not None)
    if not xs:
        return {"n": 0, "median": None, "min": None, "max": None}
    return {"n": len(xs), "median": round(statistics.median(xs), 4), "min": round(xs[0], 4),
            "max": round(xs[-1], 4)}


SUMMARY_METRICS = ("wall_s", "requests_per_s", "rows_per_s", "rate_utilization", "rate_utilization_steady",
                   "concurrency_utilization", "throttled_429", "retries", "cpu_s", "peak_rss_mb",
                   "peak_tree_rss_mb", "peak_fetch_rss_mb", "peak_merge_rss_mb", "efficiency", "fetch_s", "merge_s", "plan_s", "first_batch_s",
                   "background_cpu_s", "sim_cpu_s", "prefect_server_cpu_s")


def group_key(record: dict[str, Any]) -> tuple[str, int, str]:
    return record["scenario"], record["n_series"], record["runner"]


def summarize_groups(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per (scenario, n_series, runner): medians and spread over the successful runs."""
    groups: dict[tuple[str, int, str], list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault(group_key(r), []).append(r)
    out = []
    for (scenario, n_series, runner), runs in groups.items():
        ok = [r for r in runs if r["ok"]]
        entry = {
            "scenario": scenario, "n_series": n_series, "runner": runner, "runs": len(runs), "ok_runs": len(ok),
            "rows_verified": bool(ok) and len(ok) == len(runs) and all(r["rows_verified"] for r in ok),
            "rows": max((r["rows_in_db"] for r in ok), default=0), "expected_rows": runs[0]["expected_rows"],
            "ideal_s": runs[0]["ideal_s"],
            "prefect_task_overhead_ms": runs[0]["prefect_task_overhead_ms"],
            "noisy_runs": sum(1 for r in runs if r.get("noisy")),
        }
        for metric in SUMMARY_METRICS:
            entry[metric] = spread(r.get(metric) for r in ok)
        out.append(entry)
    return out


def _median(groups: list[dict[str, Any]], scenario: str, n: int, runner: str, metric: str = "wall_s"):
    for g in groups:
        if (g["scenario"], g["n_series"], g["runner"]) == (scenario, n, runner):
            return g[metric]["median"]
    return None


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def headline(groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per scenario and size: runner ÷ asyncio (wall), sequential ÷ runner (speed-up), ideal ÷ wall (efficiency)."""
    out = []
    points = sorted({(g["scenario"], g["n_series"]) for g in groups}, key=lambda p: (p[0], p[1]))
    for scenario, n in points:
        runners = [g for g in groups if (g["scenario"], g["n_series"]) == (scenario, n)]
        asyncio_wall = _median(groups, scenario, n, "asyncio")
        seq_wall = _median(groups, scenario, n, "sequential")
        for g in runners:
            wall = g["wall_s"]["median"]
            out.append({
                "scenario": scenario, "n_series": n, "runner": g["runner"], "wall_s": wall,
                "vs_asyncio": _ratio(wall, asyncio_wall),
                "speedup_vs_sequential": _ratio(seq_wall, wall) if g["runner"] != "sequential" else None,
                "efficiency": _ratio(g["ideal_s"], wall),
            })
    return out


# --------------------------------------------------------------------------- targets


def scale_analysis(groups: list[dict[str, Any]], scenario: str = "scale") -> dict[str, dict[str, Any]]:
    """Per runner: sizes, median wall and peak RSS, the linear fit, and the growth of the marginal cost."""
    out: dict[str, dict[str, Any]] = {}
    for runner in sorted({g["runner"] for g in groups if g["scenario"] == scenario}):
        pts = sorted((g["n_series"], g["wall_s"]["median"], g["peak_tree_rss_mb"]["median"],
                      g["peak_fetch_rss_mb"]["median"])
                     for g in groups if g["scenario"] == scenario and g["runner"] == runner
                     and g["wall_s"]["median"] is not None)
        if not pts:
            continue
        ns = [p[0] for p in pts]
        ts = [p[1] for p in pts]
        rss = [p[2] for p in pts]
        fetch_rss = [p[3] for p in pts]
        entry: dict[str, Any] = {"n": ns, "wall_s": ts, "peak_rss_mb": rss, "peak_fetch_rss_mb": fetch_rss,
                                 "ms_per_series": [round(t / n * 1000, 3) for n, t in zip(ns, ts)]}
        if len(pts) >= 2:
            slope, intercept, r2 = linear_fit(ns, ts)
            entry.update(fit_slope_ms_per_series=round(slope * 1000, 4), fit_intercept_s=round(intercept, 3),
                         fit_r2=round(r2, 4), rss_growth=_ratio(rss[-1], rss[0]),
                         fetch_rss_growth=_ratio(fetch_rss[-1], fetch_rss[0]))
        if len(pts) >= 3:
            last = (ts[-1] - ts[-2]) / (ns[-1] - ns[-2])
            before = (ts[-2] - ts[0]) / (ns[-2] - ns[0])
            entry["marginal_growth"] = round(last / before, 3) if before > 0 else None
            entry["marginal_ms_per_series"] = [round((ts[i + 1] - ts[i]) / (ns[i + 1] - ns[i]) * 1000, 4)
                                               for i in range(len(ns) - 1)]
        out[runner] = entry
    return out


def linear_fit(xs: list[float], ys: list[float]) -> tuple[float, float, float]:
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys))
    slope = sxy / sxx if sxx else 0.0
    intercept = my - slope * mx
    ss_tot = sum((y - my) ** 2 for y in ys)
    ss_res = sum((y - intercept - slope * x) ** 2 for x, y in zip(xs, ys))
    return slope, intercept, 1 - ss_res / ss_tot if ss_tot else 1.0


def _target(name: str, value: float | None, op: str, threshold: float, unit: str = "") -> dict[str, Any]:
    met = None if value is None else (value >= threshold if op == ">=" else value <= threshold)
    return {"target": name, "value": value, "op": op, "threshold": threshold, "unit": unit, "met": met}


def targets(groups: list[dict[str, Any]], heads: list[dict[str, Any]], records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The issue's targets, evaluated on this bench's numbers (``met`` is None when not measured)."""
    out = []
    backfill = {h["runner"]: h for h in heads if h["scenario"] == "backfill"}
    if backfill:
        a = backfill.get("asyncio", {})
        out.append(_target("backfill: asyncio achieved ÷ ideal", a.get("efficiency"), ">=", 0.7))
        for runner, limit in (("thread", 1.3), ("dask", 1.6)):
            if runner in backfill:
                out.append(_target(f"backfill: {runner} wall ÷ asyncio wall", backfill[runner]["vs_asyncio"], "<=", limit, "x"))
        for runner in ("asyncio", "thread", "dask"):
            if runner in backfill:
                out.append(_target(f"backfill: {runner} speed-up over sequential", backfill[runner]["speedup_vs_sequential"],
                                   ">=", 25, "x"))
    for runner, s in scale_analysis(groups).items():
        out.append(_target(f"scale: {runner} marginal time per series, largest step ÷ before (linear)",
                           s.get("marginal_growth"), "<=", 1.5, "x"))
        out.append(_target(f"scale: {runner} peak RSS at N={s['n'][-1]} ÷ N={s['n'][0]} (flat)",
                           s.get("rss_growth"), "<=", 1.5, "x"))
        out.append(_target(f"scale: {runner} peak RSS while fetching, N={s['n'][-1]} ÷ N={s['n'][0]} (flat)",
                           s.get("fetch_rss_growth"), "<=", 1.5, "x"))
    if records:
        verified = sum(1 for r in records if r["ok"] and r["rows_verified"])
        out.append(_target("every run: rows verified in DuckDB", round(verified / len(records), 3), ">=", 1.0,
                           f"of {len(records)} runs"))
    return out


# --------------------------------------------------------------------------- files


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str) + "\n", encoding="utf-8")
    tmp.replace(path)


CSV_SKIP = ("admitted_per_second",)


def write_csv(path: Path, records: list[dict[str, Any]]) -> None:
    keys = [k for k in RUN_SCHEMA if k not in CSV_SKIP]
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=keys, extrasaction="ignore")
        writer.writeheader()
        for r in records:
            writer.writerow({k: json.dumps(r[k]) if isinstance(r.get(k), (dict, list)) else r.get(k) for k in keys})


def load_runs(directory: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text(encoding="utf-8")) for p in sorted(Path(directory).glob("*.json"))
            if p.name != "summary.json"]


def fmt_num(value: float | None, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.{digits}f}"


def fmt_spread(s: dict[str, Any], digits: int = 2) -> str:
    if not s or s.get("median") is None:
        return "–"
    if s["n"] == 1:
        return fmt_num(s["median"], digits)
    return f"{fmt_num(s['median'], digits)} ({fmt_num(s['min'], digits)}–{fmt_num(s['max'], digits)})"
