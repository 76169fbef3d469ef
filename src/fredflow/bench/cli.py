"""``fredflow bench``: argument parsing and the end of a bench (summary, table, files, charts, README)."""

from __future__ import annotations

import argparse
import shlex
import shutil
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .scenarios import DEFAULT_ORDER, RUNNERS, Plan, scenarios

EXIT_OK, EXIT_FAILED_RUNS, EXIT_USAGE = 0, 1, 2


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return int(text)


def _sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(t) for t in text.split(",") if t)
    except ValueError:
        sizes = ()
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"expected comma-separated series counts, got {text!r}")
    return sizes


def _runners(text: str) -> tuple[str, ...]:
    names = tuple(t for t in text.split(",") if t)
    unknown = [n for n in names if n not in RUNNERS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"runners are a comma-separated subset of {','.join(RUNNERS)}")
    return names


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fredflow bench",
        description="Run the same workloads against the simulator (its own process) with every runner -- a "
                    "sequential baseline, asyncio, thread, dask -- k times, interleaved, one process per run; "
                    "print a table, write one JSON per run, a summary, charts and optionally the README block.",
    )
    p.add_argument("scenarios", nargs="*", metavar="SCENARIO",
                   help=f"scenarios to run: {', '.join(DEFAULT_ORDER)} (default: all)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="tiny sizes, seconds per run (tests, smoke checks)")
    mode.add_argument("--full", action="store_true", help="scale up to 10,000 series, every runner on it")
    p.add_argument("-k", "--reps", type=_positive_int, help="repetitions per runner (default 2; 1 with --quick)")
    p.add_argument("--baseline-reps", type=_positive_int,
                   help="cap on repetitions of the sequential baseline (default: 1 for backfill and faults)")
    p.add_argument("--runners", type=_runners, help=f"subset of {','.join(RUNNERS)}")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"),
                   help="results directory: runs/<session>/*.json, summary.json/.csv, charts/ (default %(default)s)")
    p.add_argument("--readme", type=Path, help="update the generated block of this Markdown file")
    p.add_argument("--work-dir", type=Path, help="where runs write DuckDB files (default: a temporary directory)")
    p.add_argument("--keep-dbs", action="store_true", help="keep every run's DuckDB file in the work dir")
    p.add_argument("--no-charts", action="store_true", help="skip the PNG charts")
    p.add_argument("--no-progress", action="store_true", help="plain log lines instead of the progress display")
    p.add_argument("--json", action="store_true", help="print the summary JSON on stdout instead of tables")
    w = p.add_argument_group("workload overrides (apply to every selected scenario)")
    w.add_argument("--series", type=_positive_int, help="series count (one size)")
    w.add_argument("--sizes", type=_sizes, help="series counts, e.g. 100,1000,10000")
    w.add_argument("--obs", type=_positive_int, help="observations per series")
    w.add_argument("--latency", type=float, help="seconds of simulated latency per request")
    w.add_argument("--rate", type=float, help="the simulator's rate limit, requests/s (0: none)")
    w.add_argument("--fault-rate", type=float, help="fraction of requests that fail")
    w.add_argument("--concurrency", type=_positive_int, help="requests in flight per run")
    r = p.add_argument_group("runner options")
    r.add_argument("--thread-slots", type=_positive_int, default=8, help="thread: batches at once (default 8)")
    r.add_argument("--dask-workers", type=_positive_int, default=2, help="dask: worker processes (default 2)")
    r.add_argument("--dask-threads", type=_positive_int, default=4, help="dask: threads per worker (default 4)")
    r.add_argument("--overhead-tasks", type=_positive_int, help="no-op tasks for the Prefect overhead (default 100)")
    p.add_argument("--command-label", help=argparse.SUPPRESS)
    return p


def make_plan(args: argparse.Namespace) -> Plan:
    mode = "quick" if args.quick else "full" if args.full else "default"
    catalog = scenarios(mode)
    names = args.scenarios or list(DEFAULT_ORDER)
    unknown = [n for n in names if n not in catalog]
    if unknown:
        raise ValueError(f"unknown scenario {', '.join(unknown)}; choose from {', '.join(DEFAULT_ORDER)}")
    sizes = args.sizes or ((args.series,) if args.series else None)
    rate = None if args.rate is None else args.rate
    selected = []
    for name in dict.fromkeys(names):
        s = catalog[name].with_overrides(sizes=sizes, obs_per_series=args.obs, latency=args.latency,
                                         fault_rate=args.fault_rate, concurrency=args.concurrency,
                                         baseline_reps=args.baseline_reps)
        if rate is not None:
            from dataclasses import replace

            s = replace(s, rate=rate or None, client_rate=None)
        selected.append(s)
    reps = args.reps or (1 if args.quick else 2)
    return Plan(scenarios=selected, reps=reps, mode=mode, runners_filter=args.runners)


def build_summary(bench, plan: Plan, *, command: str, started: float, started_at: str,  # noqa: ANN001
                  machine: dict[str, Any]) -> dict[str, Any]:
    from .results import SCHEMA_VERSION, headline, scale_analysis, summarize_groups, targets

    groups = summarize_groups(bench.records)
    heads = headline(groups)
    return {
        "schema_version": SCHEMA_VERSION,
        "session_id": bench.session_id,
        "mode": plan.mode,
        "reps": plan.reps,
        "command": command,
        "started_at": started_at,
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "duration_s": round(time.perf_counter() - started, 1),
        "machine": machine,
        "scenario_order": [s.name for s in plan.scenarios],
        "scenarios": {s.name: s.describe() for s in plan.scenarios},
        "runner_options": {r: bench.runner_options(r) for r in ("thread", "dask")},
        "prefect_api": None if bench.prefect is None else ("external" if bench.prefect.external else "bench"),
        "parse": bench.parse,
        "prefect_overhead": bench.overhead,
        "groups": groups,
        "headline": heads,
        "targets": targets(groups, heads, bench.records),
        "scale": scale_analysis(groups),
        "runs_dir": str(bench.runs_dir),
        "runs": [r["run_key"] for r in bench.records],
        "charts": {},
    }


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        plan = make_plan(args)
    except ValueError as exc:
        sys.stderr.write(f"fredflow bench: error: {exc}\n")
        return EXIT_USAGE

    from .harness import Bench, make_work_dir, new_session_id
    from .processes import Display, machine_info
    from .results import write_csv, write_json

    command = args.command_label or "fredflow bench " + shlex.join(argv)
    started = time.perf_counter()
    started_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    machine = machine_info()
    out = args.out.resolve()
    work, temporary = make_work_dir(args.work_dir)
    display = Display(enabled=not args.no_progress, total_runs=plan.n_runs())
    if machine.get("loadavg_at_start", 0) > 0.7 and machine.get("cpus", 1) <= 4:
        display.log(f"[yellow]warning: load average {machine['loadavg_at_start']} at start: other processes "
                    f"compete for {machine.get('cpus')} cores; numbers will be noisy (see background_cpu_s)[/yellow]")
    overhead_tasks = args.overhead_tasks or (40 if args.quick else 100)
    bench = Bench(plan=plan, out=out, work=work, session_id=new_session_id(), display=display,
                  thread_slots=args.thread_slots, dask_workers=args.dask_workers, dask_threads=args.dask_threads,
                  keep_dbs=args.keep_dbs, overhead_tasks=overhead_tasks)
    interrupted = False
    try:
        bench.run()
    except KeyboardInterrupt:
        interrupted = True
        display.log("[yellow]interrupted: writing what was measured so far[/yellow]")
    finally:
        display.close()
        if temporary and not args.keep_dbs:
            shutil.rmtree(work, ignore_errors=True)

    summary = build_summary(bench, plan, command=command, started=started, started_at=started_at, machine=machine)
    if not args.no_charts and bench.records:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            sys.stderr.write("fredflow bench: matplotlib is not installed (uv sync, or pip install "
                             "'fredflow[bench]'): no charts\n")
        else:
            from .charts import render_all

            summary["charts"] = render_all(summary["groups"], bench.records, out / "charts",
                                           title_suffix=f" · {machine.get('cpus')} cores · {bench.session_id}")
    summary["duration_s"] = round(time.perf_counter() - started, 1)
    write_json(bench.runs_dir / "summary.json", summary)
    write_json(out / "summary.json", summary)
    write_csv(out / "summary.csv", bench.records)
    write_csv(bench.runs_dir / "summary.csv", bench.records)
    if args.readme:
        from .report import markdown, update_readme

        update_readme(args.readme, markdown(summary, (out / "charts") if summary["charts"] else None,
                                            args.readme.resolve().parent))
    if args.json:
        import json

        sys.stdout.write(json.dumps(summary, default=str) + "\n")
    else:
        from .report import print_tables

        print_tables(summary)
        print(f"\n{len(bench.records)} runs in {summary['duration_s'] / 60:.1f} min; results in {out} "
              f"(runs/{bench.session_id}/, summary.json, summary.csv" + (", charts/)" if summary["charts"] else ")"))
    if interrupted:
        return 130
    failed = [r for r in bench.records if not r["ok"] or not r["rows_verified"]]
    overhead_failed = [k for k, v in bench.overhead.items() if not v.get("ok")]
    return EXIT_FAILED_RUNS if failed or overhead_failed or not bench.records else EXIT_OK
