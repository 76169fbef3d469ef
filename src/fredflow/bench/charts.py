"""PNG charts of a bench (matplotlib, Agg). Each function returns the data it plotted and writes it
beside the PNG as ``<name>.json``, so tests (and readers) can check a chart against the run records.

* ``time_per_runner.png`` -- median wall time per runner (bars), min–max (whiskers), per scenario;
* ``scaling.png`` -- wall time and peak RSS against the number of series (``scale``);
* ``utilization.png`` -- requests admitted per second over a run against the rate limit (``daily``),
  and the rate utilization of every run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .results import group_key, scale_analysis

RUNNER_COLORS = {"sequential": "#8c8c8c", "asyncio": "#1f77b4", "thread": "#2ca02c", "dask": "#d62728"}
RUNNER_ORDER = ("sequential", "asyncio", "thread", "dask")


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path, data: dict[str, Any]) -> dict[str, Any]:  # noqa: ANN001
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    _plt().close(fig)
    path.with_suffix(".json").write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    return data


def _ordered(runners) -> list[str]:  # noqa: ANN001
    return sorted(runners, key=lambda r: RUNNER_ORDER.index(r) if r in RUNNER_ORDER else 99)


def time_per_runner(groups: list[dict[str, Any]], path: Path, title_suffix: str = "") -> dict[str, Any]:
    """Bars of median wall time (whiskers min–max) per runner, one panel per scenario point (not ``scale``)."""
    plt = _plt()
    points = sorted({(g["scenario"], g["n_series"]) for g in groups if g["scenario"] != "scale"})
    data: dict[str, Any] = {}
    for scenario, n in points:
        entry = {}
        for g in groups:
            if (g["scenario"], g["n_series"]) == (scenario, n) and g["wall_s"]["median"] is not None:
                entry[g["runner"]] = {k: g["wall_s"][k] for k in ("median", "min", "max")}
        data[f"{scenario} (n={n})"] = {r: entry[r] for r in _ordered(entry)}
    n_panels = max(1, len(data))
    fig, axes = plt.subplots(1, n_panels, figsize=(3.6 * n_panels + 0.6, 4.2), squeeze=False)
    for ax, (title, entry) in zip(axes[0], data.items()):
        runners = list(entry)
        med = [entry[r]["median"] for r in runners]
        lo = [entry[r]["median"] - entry[r]["min"] for r in runners]
        hi = [entry[r]["max"] - entry[r]["median"] for r in runners]
        bars = ax.bar(runners, med, yerr=[lo, hi], capsize=4,
                      color=[RUNNER_COLORS.get(r, "#999") for r in runners])
        base = entry.get("asyncio", {}).get("median")
        for bar, r, m in zip(bars, runners, med):
            note = f"{m:.1f} s" + (f"\n{m / base:.2f}× asyncio" if base and r != "asyncio" else "")
            ax.annotate(note, (bar.get_x() + bar.get_width() / 2, m), ha="center", va="bottom", fontsize=7,
                        xytext=(0, 3), textcoords="offset points")
        if med and max(med) / max(min(med), 1e-9) > 15:
            ax.set_yscale("log")
        ax.set_title(title, fontsize=10)
        ax.set_ylabel("wall time, s (median, min–max)")
        ax.tick_params(axis="x", labelsize=8)
        ax.margins(y=0.25)
    fig.suptitle("Time per runner" + title_suffix, fontsize=11)
    fig.tight_layout()
    return _save(fig, path, data)


def scaling(groups: list[dict[str, Any]], path: Path, title_suffix: str = "") -> dict[str, Any]:
    """Median wall time and peak RSS of the process tree against N (the ``scale`` scenario)."""
    plt = _plt()
    analysis = scale_analysis(groups)
    data = {r: {"n": a["n"], "wall_s": a["wall_s"], "peak_rss_mb": a["peak_rss_mb"],
                "peak_fetch_rss_mb": a["peak_fetch_rss_mb"]}
            for r, a in ((r, analysis[r]) for r in _ordered(analysis))}
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4.2))
    for runner, d in data.items():
        color = RUNNER_COLORS.get(runner, "#999")
        left.plot(d["n"], d["wall_s"], "o-", color=color, label=runner)
        right.plot(d["n"], d["peak_rss_mb"], "o-", color=color, label=f"{runner}: whole run")
        if all(v is not None for v in d["peak_fetch_rss_mb"]):
            right.plot(d["n"], d["peak_fetch_rss_mb"], "s--", color=color, alpha=0.7, markersize=4,
                       label=f"{runner}: until the merge")
        a = analysis[runner]
        if "fit_slope_ms_per_series" in a and len(d["n"]) >= 2:
            xs = [0, max(d["n"])]
            left.plot(xs, [a["fit_intercept_s"] + a["fit_slope_ms_per_series"] / 1000 * x for x in xs], ":",
                      color=color, alpha=0.6, linewidth=1)
    left.set_xlabel("series (N)")
    left.set_ylabel("wall time, s (median)")
    left.set_title("time vs N (dotted: linear fit)", fontsize=10)
    right.set_xlabel("series (N)")
    right.set_ylabel("peak RSS of the ingester's processes, MB")
    right.set_title("memory vs N", fontsize=10)
    right.set_ylim(bottom=0)
    left.set_ylim(bottom=0)
    for ax in (left, right):
        ax.grid(alpha=0.3)
        if data:
            ax.legend(fontsize=8)
    fig.suptitle("Scaling" + title_suffix, fontsize=11)
    fig.tight_layout()
    return _save(fig, path, data)


def _representative(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median wall time."""
    runs = sorted(runs, key=lambda r: r["wall_s"])
    return runs[(len(runs) - 1) // 2]


def utilization(records: list[dict[str, Any]], path: Path, scenario: str = "daily",
                title_suffix: str = "") -> dict[str, Any]:
    """Left: admitted requests/s of each runner's median run against the limit. Right: utilization per run."""
    plt = _plt()
    ok = [r for r in records if r["ok"] and r["scenario"] == scenario and r.get("rate_limit")]
    runners = _ordered({r["runner"] for r in ok})
    timeline: dict[str, Any] = {}
    per_run: dict[str, Any] = {}
    for runner in runners:
        runs = [r for r in ok if r["runner"] == runner]
        rep = _representative(runs)
        timeline[runner] = {"rep": rep["rep"], "admitted_per_second": rep["admitted_per_second"],
                            "t0_s": rep.get("admitted_t0_s") or 0.0}
        per_run[runner] = {"rate_utilization": [r["rate_utilization"] for r in sorted(runs, key=lambda r: r["rep"])],
                           "rate_utilization_steady": [r["rate_utilization_steady"]
                                                       for r in sorted(runs, key=lambda r: r["rep"])]}
    limit = ok[0]["rate_limit"] if ok else None
    data = {"scenario": scenario, "rate_limit": limit, "timeline": timeline, "per_run": per_run}
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2), gridspec_kw={"width_ratios": [1.6, 1]})
    for runner, d in timeline.items():
        series = d["admitted_per_second"]
        if not series:
            continue
        xs = [i - d["t0_s"] for i in range(len(series) + 1)]
        left.step(xs, series + series[-1:], where="post", color=RUNNER_COLORS.get(runner, "#999"),
                  label=f"{runner} (rep {d['rep'] + 1})")
    if limit:
        left.axhline(limit, color="black", linestyle="--", linewidth=1, label=f"limit {limit:g}/s")
    left.set_xlabel("seconds since ingest() was called (1 s buckets)")
    left.set_ylabel("requests admitted by the server per second")
    left.set_title(f"{scenario}: admitted requests per second", fontsize=10)
    left.set_ylim(bottom=0)
    left.grid(alpha=0.3)
    if timeline:
        left.legend(fontsize=8)
    width = 0.38
    for i, runner in enumerate(per_run):
        whole = per_run[runner]["rate_utilization"]
        steady = [v for v in per_run[runner]["rate_utilization_steady"] if v is not None]
        color = RUNNER_COLORS.get(runner, "#999")
        right.bar(i - width / 2, sum(whole) / len(whole), width, color=color, alpha=0.55,
                  label="whole run" if i == 0 else None)
        right.scatter([i - width / 2] * len(whole), whole, color="black", s=10, zorder=3)
        if steady:
            right.bar(i + width / 2, sum(steady) / len(steady), width, color=color,
                      label="steady state" if i == 0 else None)
            right.scatter([i + width / 2] * len(steady), steady, color="black", s=10, zorder=3)
    right.axhline(1.0, color="black", linestyle="--", linewidth=1)
    right.set_xticks(range(len(per_run)), list(per_run))
    right.set_ylabel("admitted ÷ (limit × time)")
    right.set_title("rate-limit utilization (dots: runs)", fontsize=10)
    right.set_ylim(0, 1.15)
    if per_run:
        right.legend(fontsize=8, loc="lower right")
    fig.suptitle("Utilization of the rate limit" + title_suffix, fontsize=11)
    fig.tight_layout()
    return _save(fig, path, data)


def render_all(groups: list[dict[str, Any]], records: list[dict[str, Any]], directory: Path,
               title_suffix: str = "") -> dict[str, dict[str, Any]]:
    """Every chart into ``directory``; returns {file name: plotted data}."""
    ok = [r for r in records if r["ok"]]
    charts = {"time_per_runner.png": time_per_runner(groups, directory / "time_per_runner.png", title_suffix)}
    if any(g["scenario"] == "scale" for g in groups):
        charts["scaling.png"] = scaling(groups, directory / "scaling.png", title_suffix)
    if any(r.get("rate_limit") for r in ok):
        scenario = "daily" if any(r["scenario"] == "daily" and r.get("rate_limit") for r in ok) else \
            next(r["scenario"] for r in ok if r.get("rate_limit"))
        charts["utilization.png"] = utilization(records, directory / "utilization.png", scenario, title_suffix)
    return charts


__all__ = ["render_all", "scaling", "time_per_runner", "utilization", "group_key"]
