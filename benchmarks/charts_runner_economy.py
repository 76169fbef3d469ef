"""Charts of the runner-economy benchmarks: utilization and 429s per runner (``shared_key.py``) and the
fixed cost per runner (``fixed_cost.py``), from their newest result files (or the ones given).

    uv run python benchmarks/charts_runner_economy.py
    uv run python benchmarks/charts_runner_economy.py --shared-key results/shared_key-….json --fixed-cost results/fixed_cost-….json

Writes ``benchmarks/results/charts/rate_limit_per_runner.png`` and ``fixed_cost_per_runner.png``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

RESULTS = Path(__file__).parent / "results"
RUNNERS = ("asyncio", "thread", "dask")


def newest(prefix: str) -> Path:
    files = sorted(RESULTS.glob(f"{prefix}-*.json"))
    if not files:
        raise SystemExit(f"no benchmarks/results/{prefix}-*.json: run benchmarks/{prefix}.py first")
    return files[-1]


def rate_limit_chart(path: Path, out: Path) -> None:
    runs = json.loads(path.read_text())["runs"]
    cases = [(r, c) for r in sorted({run["server_rate"] for run in runs}) for c in ("at-limit", "over-limit")]
    fig, (util_ax, share_ax) = plt.subplots(1, 2, figsize=(11, 4))
    width = 0.8 / len(RUNNERS)
    for i, runner in enumerate(RUNNERS):
        util, share = [], []
        for rate, case in cases:
            run = next((x for x in runs if x["runner"] == runner and x["case"] == case and x["server_rate"] == rate), None)
            util.append(run["server_utilization"] if run else 0)
            share.append(run["throttled_pct"] if run else 0)
        xs = [k + (i - 1) * width for k in range(len(cases))]
        util_ax.bar(xs, util, width, label=runner)
        share_ax.bar(xs, share, width, label=runner)
    labels = [f"{rate:g} req/s\n{case}" for rate, case in cases]
    for ax in (util_ax, share_ax):
        ax.set_xticks(range(len(cases)), labels)
    for k, (_, case) in enumerate(cases):  # the targets
        low, high = (0.97, 1.0) if case == "at-limit" else (0.9, 5.0)
        util_ax.hlines(low, k - 0.45, k + 0.45, colors="k", linestyles="dashed")
        share_ax.hlines(high, k - 0.45, k + 0.45, colors="k", linestyles="dashed")
    util_ax.set_ylim(0.5, 1.05)
    util_ax.set_ylabel("utilization of the server's real limit")
    share_ax.set_ylabel("429s, % of requests")
    util_ax.set_title("utilization (dashed: target, at least)")
    share_ax.set_title("429 share (dashed: target, at most)")
    util_ax.legend(loc="lower left")
    fig.suptitle(f"default CLI path, strict bucket burst 2 ({path.name})", fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def fixed_cost_chart(path: Path, out: Path) -> None:
    medians = json.loads(path.read_text())["medians"]
    runners = [r for r in RUNNERS if r in medians]
    bound = [medians[r]["rate_bound_seconds"] for r in runners]
    fixed = [medians[r]["fixed_cost_seconds"] for r in runners]
    fig, ax = plt.subplots(figsize=(6, 4.2))
    ax.barh(runners, bound, label="what the rate needs (requests / 2 req/s)")
    ax.barh(runners, fixed, left=bound, label="fixed cost (start-up, idle, merge, shutdown)")
    for y, (b, f) in enumerate(zip(bound, fixed)):
        ax.text(b + f + 0.3, y, f"{b + f:.1f} s", va="center")
    ax.set_xlabel("wall time of `fredflow ingest`, s")
    ax.set_xlim(0, max(b + f for b, f in zip(bound, fixed)) * 1.2)
    ax.invert_yaxis()
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), fontsize=8, ncol=1)
    ax.set_title(f"60 series at 2 req/s ({path.name})", fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared-key", type=Path)
    parser.add_argument("--fixed-cost", type=Path)
    args = parser.parse_args()
    charts = RESULTS / "charts"
    charts.mkdir(parents=True, exist_ok=True)
    rate_limit_chart(args.shared_key or newest("shared_key"), charts / "rate_limit_per_runner.png")
    fixed_cost_chart(args.fixed_cost or newest("fixed_cost"), charts / "fixed_cost_per_runner.png")
    print(f"wrote {charts / 'rate_limit_per_runner.png'} and {charts / 'fixed_cost_per_runner.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
