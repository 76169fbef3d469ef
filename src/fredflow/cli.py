"""``fredflow``: a thin CLI over the Python API. Parse arguments, call, print.

Exit codes: 0 every series ingested; 3 committed but some series failed
permanently; 1 fatal, nothing committed; 2 usage error (one line, no traceback).
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from datetime import date
from pathlib import Path

import orjson

from .errors import EXIT_FATAL, EXIT_USAGE, FatalRunError, FredflowError, Interrupted, UsageError
from .redact import install_log_redaction, redact, register_secret
from .warehouse.cli import add_show_parser, cmd_show

log = logging.getLogger("fredflow")

#: ``fredflow serve``'s deployment: its own name, so it never takes over prefect.yaml's work-pool deployments.
SERVE_DEPLOYMENT = "fredflow-serve"

#: Exit codes on a signal, as a shell reports them: 128 + the signal number.
EXIT_SIGINT, EXIT_SIGTERM = 128 + signal.SIGINT, 128 + signal.SIGTERM


def _on_signal(signum: int, frame) -> None:  # noqa: ANN001 - signal handler signature
    # Prefect logs a crashed flow and its tasks with tracebacks: the one line fredflow prints speaks for them
    for name in ("prefect", "distributed"):
        logging.getLogger(name).setLevel(logging.CRITICAL + 1)
    from .fetch import cancel_running_batches

    cancel_running_batches()  # batches on other threads (--runner thread) stop too
    Interrupted.last_signum = signum
    raise Interrupted(signum)


def _install_signal_handlers() -> None:
    import threading

    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, _on_signal)


def _interrupted_line(exc: KeyboardInterrupt, args: argparse.Namespace) -> tuple[str, int]:
    """The one line printed on SIGINT/SIGTERM, and the exit code (130 or 143)."""
    from .run.execute import ACTIVE_RUN

    signum = getattr(exc, "signum", None) or Interrupted.last_signum or signal.SIGINT
    name = signal.Signals(signum).name
    run_id = ACTIVE_RUN.run_id or getattr(args, "run_id", None)
    db = ACTIVE_RUN.db or getattr(args, "db", None)
    if ACTIVE_RUN.committed:
        text = f"interrupted ({name}) after run {run_id} committed; its data is in {db}"
    elif run_id:
        text = (f"interrupted ({name}); run {run_id} was not committed, its staged batches are kept: "
                f"finish it with 'fredflow resume {run_id} --db {db}'")
    else:
        text = f"interrupted ({name}) before the run was planned; nothing was committed"
    return f"fredflow: {text}\n", EXIT_SIGTERM if signum == signal.SIGTERM else EXIT_SIGINT


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one actionable line and exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USAGE, f"fredflow: error: {message} (see '{self.prog} --help')\n")


def _date(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid date {text!r}: use YYYY-MM-DD") from None


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}")
    return value


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}")
    return value


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return int(text)


def _batch_size(text: str) -> int | None:
    return None if text == "auto" else _positive_int(text)


def _add_catalog_options(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--series", help="comma-separated series ids, e.g. GDP,CPIAUCSL")
    source.add_argument("--series-file", type=Path, help="file with one series id per line (# comments)")
    source.add_argument("--release", type=_positive_int, help="FRED release id: every series in it")
    source.add_argument("--category", type=int, help="FRED category id: every series in it")


def _add_api_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--api-url", help="FRED API base URL (env FRED_API_URL; default the real FRED)")
    parser.add_argument("--api-key", help="FRED api key (env FRED_API_KEY); never logged or stored")
    parser.add_argument("--rate", type=_positive_float, help="requests per second for the whole run (default 2)")
    parser.add_argument("--burst", type=_positive_int, help="requests allowed at once above the steady rate (default 1: smooth)")
    parser.add_argument("--concurrency", type=_positive_int, help="requests in flight for the whole run (default 8)")
    parser.add_argument("--timeout", type=_positive_float, help="seconds before a request is retried (default 30)")
    parser.add_argument("--max-attempts", type=_positive_int, help="attempts per request on 5xx/timeouts (default 5)")
    parser.add_argument("--max-retry-after", type=_positive_float, metavar="SECONDS",
                        help="longest wait a 429's Retry-After may ask (default 60); a longer one waits this "
                             "and counts against --max-attempts")
    parser.add_argument("--max-body-bytes", type=_positive_int, metavar="N",
                        help="largest response body read (default 64 MiB); a longer one is a format error")
    parser.add_argument("--key-budget", choices=("machine", "run"),
                        help="machine (default): share the api key's rate with every fredflow run on this machine; "
                             "run: pace this run alone")
    parser.add_argument("--budget-dir", metavar="DIR",
                        help="where the per-key budget files live (env FREDFLOW_BUDGET_DIR; default "
                             "$XDG_RUNTIME_DIR/fredflow or ~/.cache/fredflow/budgets)")
    parser.add_argument("--prefect-limit", metavar="NAME",
                        help="also draw every request from this Prefect global concurrency limit (create it: "
                             "prefect gcl create NAME --limit 2 --slot-decay-per-second 2; needs PREFECT_API_URL)")


def _add_db_and_catalog(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--db", type=Path, required=True, help="DuckDB file (created if missing)")
    _add_catalog_options(parser)
    _add_api_options(parser)


def _add_vintage_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--vintages", action="store_true",
                        help="store the revision history (ALFRED) in the vintages table instead of current values")
    parser.add_argument("--realtime-start", type=_date, help="--vintages: first vintage date (default 1776-07-04)")
    parser.add_argument("--realtime-end", type=_date, help="--vintages: last vintage date (default 9999-12-31)")


def _add_run_options(parser: argparse.ArgumentParser, *, batch_size: bool = True) -> None:
    parser.add_argument("--runner", choices=("asyncio", "thread", "dask"), default="asyncio",
                        help="asyncio: one event loop here (default); thread/dask: the Prefect flow fredflow-ingest")
    parser.add_argument("--workers", type=_positive_int, help="dask: worker processes of the local cluster (default 2)")
    parser.add_argument("--threads-per-worker", type=_positive_int, help="dask: threads per worker process (default 4)")
    parser.add_argument("--thread-slots", type=_positive_int, help="thread: batches run at once (default 8)")
    parser.add_argument("--dask-address", help="dask: use an existing cluster, e.g. tcp://10.0.0.5:8786")
    parser.add_argument("--handback", action=argparse.BooleanOptionalAction, default=None,
                        help="dask: batches hand staged bytes back to the flow (default: with --dask-address and a "
                             "local --staging-dir; --no-handback for a folder every worker shares)")
    parser.add_argument("--head-start", action=argparse.BooleanOptionalAction, default=None,
                        help="thread/dask: fetch the first batches here while Prefect and the local cluster start "
                             "(default); --no-head-start: every batch is a Prefect task run")
    parser.add_argument("--quota-address", metavar="HOST:PORT",
                        help="dask: address workers reach the run's token service at (NAT, tunnels; [v6]:PORT)")
    if batch_size:
        parser.add_argument("--batch-size", type=_batch_size, default=None, metavar="N|auto",
                            help="series per batch (default auto)")
    parser.add_argument("--staging-dir", help="where runs stage files: a folder or a URI (s3://bucket/prefix, gs://…; default: beside the db)")
    parser.add_argument("--lock-timeout", type=_non_negative_float, metavar="SECONDS",
                        help="how long the merge waits for another program (a notebook) to release the "
                             "database (default 300); then exit 1, the run resumable")
    parser.add_argument("--json", action="store_true", help="print exactly one JSON object with the summary")
    parser.add_argument("--quiet", action="store_true", help="no progress display")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="fredflow", description="Ingest FRED time series into DuckDB.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    ingest = commands.add_parser("ingest", help="fetch series and merge them into DuckDB in one transaction")
    _add_db_and_catalog(ingest)
    ingest.add_argument("--mode", choices=("full", "incremental"), default="full",
                        help="full: every series (default); incremental: only series changed since the last run "
                             "(the first run loads everything)")
    ingest.add_argument("--revision-window", default=None, metavar="SPAN",
                        help="incremental, opt-in: re-fetch a changed series only from its last observation minus "
                             "this (e.g. 2y; default: the whole series, so revisions anywhere are applied; a window "
                             "saves bytes, not requests, and misses older revisions)")
    ingest.add_argument("--reset-state", action="store_true",
                        help="forget what earlier runs fetched: this run is an initial load")
    ingest.add_argument("--start", type=_date, help="first observation date, YYYY-MM-DD")
    ingest.add_argument("--end", type=_date, help="last observation date, YYYY-MM-DD")
    _add_vintage_options(ingest)
    _add_run_options(ingest)

    backfill = commands.add_parser(
        "backfill", help="all history in windows × series batches, fanned out together, merged in one transaction")
    _add_db_and_catalog(backfill)
    backfill.add_argument("--start", type=_date, required=True, help="first observation date, YYYY-MM-DD")
    backfill.add_argument("--end", type=_date, help="last observation date (default: through the latest)")
    backfill.add_argument("--window", default=None, metavar="SPAN",
                          help="cut the range into windows of this length (e.g. 10y, 18m; default none: one request "
                               "per 100,000 rows of each series, the fewest; a window pays only without a rate limit)")
    _add_vintage_options(backfill)
    _add_run_options(backfill)

    resume = commands.add_parser("resume", help="finish a run that was killed or whose merge failed "
                                                "(fetches only the batches it had not staged)")
    resume.add_argument("run_id", help="the run's id (see 'fredflow runs')")
    resume.add_argument("--db", type=Path, required=True, help="DuckDB file the run ingests into")
    resume.add_argument("--force", action="store_true",
                        help="resume even though newer runs were committed since (their newer values may be replaced)")
    _add_api_options(resume)
    _add_run_options(resume, batch_size=False)

    serve = commands.add_parser("serve", help="serve the daily ingest deployment on a schedule (Prefect flow.serve)")
    serve.add_argument("--db", type=Path, required=True, help="DuckDB file the scheduled runs ingest into")
    _add_catalog_options(serve)
    serve.add_argument("--api-url", help="FRED API base URL (env FRED_API_URL); the key comes from FRED_API_KEY")
    serve.add_argument("--api-key-secret", metavar="BLOCK",
                       help="name of a Prefect Secret block holding the key (instead of FRED_API_KEY)")
    serve.add_argument("--rate", type=_positive_float, help="requests per second for each run (default 2)")
    serve.add_argument("--concurrency", type=_positive_int, help="requests in flight for each run (default 8)")
    serve.add_argument("--runner", choices=("thread", "dask"), default="dask")
    serve.add_argument("--workers", type=_positive_int, default=2)
    serve.add_argument("--threads-per-worker", type=_positive_int, default=4)
    serve.add_argument("--cron", default="0 6 * * *", help="schedule (default 06:00 every day)")
    serve.add_argument("--timezone", default="America/Chicago", help="schedule time zone (default America/Chicago)")
    serve.add_argument("--name", default=SERVE_DEPLOYMENT,
                       help=f"deployment name (default {SERVE_DEPLOYMENT}; never a work-pool deployment's)")

    runs = commands.add_parser("runs", help="list recent runs recorded in the database")
    runs.add_argument("--db", type=Path, required=True)
    runs.add_argument("--limit", type=_positive_int, default=20)
    runs.add_argument("--json", action="store_true")
    runs.add_argument("--staging-dir", help="where runs were staged, if not beside the db")

    changes = commands.add_parser("changes", help="list the revision log: values runs revised, deleted or added")
    changes.add_argument("--db", type=Path, required=True)
    since = changes.add_mutually_exclusive_group()
    since.add_argument("--since", type=_date, help="runs that finished on or after this date, YYYY-MM-DD")
    since.add_argument("--run", dest="run_id", metavar="RUN_ID", help="one run's changes")
    changes.add_argument("--series", help="comma-separated series ids (default all)")
    changes.add_argument("--json", action="store_true", help="print exactly one JSON array of changes")

    commands.add_parser("sim", help="start the embedded FRED-compatible simulator (see 'fredflow sim --help')",
                        add_help=False)
    commands.add_parser("bench", help="benchmark the runners against the simulator (see 'fredflow bench --help')",
                        add_help=False)
    add_show_parser(commands)
    return parser


def _settings(args: argparse.Namespace, stored: dict | None = None):
    """Settings from the environment and the flags; ``stored`` (a resumed run's own) sits between them."""
    from .settings import Settings

    given = dict(api_url=args.api_url, api_key=args.api_key, rate=args.rate, burst=args.burst,
                 concurrency=args.concurrency, timeout=args.timeout, max_attempts=args.max_attempts,
                 max_retry_after=args.max_retry_after, max_body_bytes=args.max_body_bytes,
                 lock_timeout=getattr(args, "lock_timeout", None), quota_address=getattr(args, "quota_address", None),
                 key_budget=args.key_budget, budget_dir=args.budget_dir, prefect_limit=args.prefect_limit)
    try:
        return Settings.from_env(**{**(stored or {}), **{k: v for k, v in given.items() if v is not None}})
    except ValueError as exc:  # pydantic validation
        raise UsageError(str(exc).splitlines()[0]) from None


def _runner_options(args: argparse.Namespace) -> dict:
    """The runner flags given (RunOptions checks that they fit the runner)."""
    options = {"workers": args.workers, "threads_per_worker": args.threads_per_worker,
               "thread_slots": args.thread_slots, "dask_address": args.dask_address,
               "handback": getattr(args, "handback", None), "head_start": getattr(args, "head_start", None)}
    return {k: v for k, v in options.items() if v is not None}


def _catalog_spec(args: argparse.Namespace):
    from .sources.fred.catalog import CatalogSpec

    return CatalogSpec(
        series=tuple(args.series.split(",")) if args.series is not None else None,
        series_file=args.series_file, release=args.release, category=args.category,
    )


def _execute(args: argparse.Namespace, settings=None, **run) -> int:
    """Run the pipeline with the common options of ingest/backfill/resume and print the summary."""
    from .api import ingest
    from .progress import for_terminal

    try:
        summary = ingest(
            args.db, settings=settings or _settings(args), runner=args.runner, staging_dir=args.staging_dir,
            progress=for_terminal(quiet=args.quiet or args.json and not sys.stderr.isatty()),
            **_runner_options(args), **run,
        )
    except FredflowError as exc:
        if args.json and not isinstance(exc, UsageError):
            sys.stdout.write(orjson.dumps({"status": "failed", "error": redact(exc)}).decode() + "\n")
        raise
    if args.json:
        sys.stdout.write(orjson.dumps(summary.to_dict()).decode() + "\n")
    else:
        scope = ""
        if summary.mode == "incremental":
            scope = f" ({summary.n_series} of {summary.n_catalog} catalog series changed or new)"
        elif summary.resumed_batches:
            scope = f" (resumed: {summary.resumed_batches} batches were already staged)"
        print(f"run {summary.run_id} {summary.status}: {summary.n_series} series{scope}, {summary.n_rows:,} rows, "
              f"{summary.n_failed} failed, {summary.requests} requests ({summary.retries} retries, "
              f"{summary.throttled} throttled) in {summary.seconds:.1f}s; "
              + (f"{summary.n_revised} revised, {summary.n_deleted} deleted, {summary.n_added} added "
                 "(fredflow changes); " if summary.n_revised or summary.n_deleted or summary.n_added else "")
              + (f"fetch at {summary.achieved_rps:.1f} req/s = {summary.utilization:.0%} of --rate"
                 if summary.achieved_rps else "fetch too short to measure its rate"))
        if summary.failed:
            shown = ", ".join(summary.failed[:10]) + (" …" if len(summary.failed) > 10 else "")
            print(f"failed series: {shown} (details: SELECT * FROM ingest_failures WHERE run_id = '{summary.run_id}')")
    return summary.exit_code


def cmd_ingest(args: argparse.Namespace) -> int:
    return _execute(args, catalog=_catalog_spec(args), batch_size=args.batch_size, start=args.start, end=args.end,
                    mode=args.mode, revision_window=args.revision_window, reset_state=args.reset_state,
                    vintages=args.vintages, realtime_start=args.realtime_start, realtime_end=args.realtime_end)


def cmd_backfill(args: argparse.Namespace) -> int:
    return _execute(args, catalog=_catalog_spec(args), batch_size=args.batch_size, start=args.start, end=args.end,
                    mode="backfill", window=args.window, vintages=args.vintages,
                    realtime_start=args.realtime_start, realtime_end=args.realtime_end)


def cmd_resume(args: argparse.Namespace) -> int:
    """The run's own settings (api url, rate, …) unless given again; the key from --api-key or FRED_API_KEY."""
    from .run.plan import stored_settings

    stored = stored_settings(args.db, args.run_id, args.staging_dir)
    return _execute(args, settings=_settings(args, stored), catalog=None, resume=args.run_id, force=args.force)


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve ``fredflow-ingest`` on a cron schedule until interrupted (for users without a work pool).

    The deployment is ``fredflow-ingest/<--name>``: it refuses a name that a work-pool deployment
    (``prefect deploy``) already has, which ``flow.serve`` would otherwise take over and pause on exit.
    """
    import os

    if not args.api_key_secret and not os.environ.get("FRED_API_KEY"):
        raise UsageError("set FRED_API_KEY in the environment of 'fredflow serve' (scheduled runs read it "
                         "from there) or name a Prefect Secret block with --api-key-secret")
    from prefect.schedules import Cron

    from .options import RunOptions
    from .runners.prefect.api_server import prefect_api
    from .runners.prefect.flows import ingest_flow

    spec = _catalog_spec(args)
    if spec.series_file is not None:
        spec = spec.model_copy(update={"series_file": spec.series_file.resolve()})
    shape = {"workers": args.workers, "threads_per_worker": args.threads_per_worker} if args.runner == "dask" else {}
    options = RunOptions.build(db=args.db.resolve(), catalog=spec, mode="incremental", runner=args.runner, **shape)
    settings = {k: v for k, v in {"api_url": args.api_url, "rate": args.rate,
                                  "concurrency": args.concurrency}.items() if v is not None}
    parameters = {"options": options.model_dump(mode="json"), "settings": settings}
    if args.api_key_secret:
        parameters["api_key_secret"] = args.api_key_secret
    with prefect_api() as api_url:
        _refuse_work_pool_deployment(f"{ingest_flow.name}/{args.name}")
        log.info("serving deployment '%s/%s' (%s %s) against the Prefect API at %s; Ctrl-C stops",
                 ingest_flow.name, args.name, args.cron, args.timezone, api_url)
        ingest_flow.serve(name=args.name, schedules=[Cron(args.cron, timezone=args.timezone)],
                          parameters=parameters, tags=["fredflow", "serve"])
    return 0


def _refuse_work_pool_deployment(name: str) -> None:
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            existing = client.read_deployment_by_name(name)
        except ObjectNotFound:
            return
    if existing.work_pool_name:
        raise UsageError(f"deployment '{name}' runs on work pool '{existing.work_pool_name}' (prefect deploy); "
                         f"'fredflow serve' would take it over: pick another --name (default {SERVE_DEPLOYMENT})")


def cmd_runs(args: argparse.Namespace) -> int:
    from .destinations.duckdb import recent_runs
    from .run.plan import resumable_runs
    from .settings import staging_root_for

    if not args.db.exists() and not Path(staging_root_for(args.db, args.staging_dir)).exists():
        raise UsageError(f"no database at {args.db}")

    rows = recent_runs(args.db, args.limit)
    resumable = resumable_runs(args.db, args.staging_dir)
    if args.json:
        unfinished = [{"run_id": r.run_id, "started_at": r.started_at, "status": r.status, "mode": r.mode,
                       "staged_batches": r.staged_batches, "n_batches": r.n_batches, "staging": r.staging}
                      for r in resumable]
        sys.stdout.write(orjson.dumps(unfinished + rows, default=str).decode() + "\n")
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table("run_id", "started", "status", "mode", "runner", "series", "of catalog", "failed", "rows",
                  "requests", "retries", "429s", "seconds", "req/s", "util")
    for r in rows:
        table.add_row(r["run_id"], f"{r['started_at']:%Y-%m-%d %H:%M:%S}", r["status"], r.get("mode") or "",
                      r["runner"], str(r["n_series"]), str(r.get("n_catalog") or ""), str(r["n_failed"]),
                      f"{r['n_rows']:,}", str(r["requests"]), str(r["retries"]), str(r["throttled"]),
                      f"{r['seconds']:.1f}", f"{r['achieved_rps']:.1f}" if r["achieved_rps"] else "–",
                      f"{r['utilization']:.0%}" if r["utilization"] else "–")
    console = Console(width=None if sys.stdout.isatty() else 200)  # piped: do not squeeze to 80 columns
    console.print(table)
    if resumable:
        pending = Table("run_id", "started", "status", "mode", "staged batches", "staging folder",
                        title="unfinished runs: finish a resumable one with 'fredflow resume RUN_ID --db …'")
        for r in resumable:
            pending.add_row(r.run_id, r.started_at[:19].replace("T", " "), r.status, r.mode,
                            f"{r.staged_batches}/{r.n_batches}", r.staging)
        console.print(pending)
    return 0


def cmd_changes(args: argparse.Namespace) -> int:
    """The revision log (table ``revisions``), oldest run first."""
    from datetime import datetime, timezone

    from .destinations.duckdb import read_revisions

    if not args.db.exists():
        raise UsageError(f"no database at {args.db}")
    since = datetime(args.since.year, args.since.month, args.since.day, tzinfo=timezone.utc) if args.since else None
    series = [s.strip() for s in args.series.split(",") if s.strip()] if args.series else None
    rows = read_revisions(args.db, since=since, run_id=args.run_id, series=series)
    if args.json:
        sys.stdout.write(orjson.dumps(rows, default=str).decode() + "\n")
        return 0
    for r in rows:
        old = "" if r["kind"] == "added" else ("." if r["old_value"] is None else repr(r["old_value"]))
        new = "" if r["kind"] == "deleted" else ("." if r["new_value"] is None else repr(r["new_value"]))
        print(f"{r['run_id']}  {r['series_id']}  {r['date']}  {r['kind']:<7}  {old} -> {new}")
    kinds = {kind: sum(1 for r in rows if r["kind"] == kind) for kind in ("revised", "deleted", "added")}
    print(f"{len(rows)} changes: {kinds['revised']} revised, {kinds['deleted']} deleted, {kinds['added']} added",
          file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    called_as_program = argv is None  # the console script: a signal may end the process at once
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["sim"]:
        from .sim.__main__ import main as sim_main

        return sim_main(argv[1:]) or 0
    if argv[:1] == ["bench"]:
        from .bench import main as bench_main

        return bench_main(argv[1:])
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    for noisy in ("httpx", "asyncio", "distributed", "prefect"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    import os

    # Dask's worker processes leave semaphores to multiprocessing's resource tracker; after a signal its
    # "leaked semaphore" warning would print after fredflow's last line
    os.environ.setdefault("PYTHONWARNINGS", "ignore::UserWarning:multiprocessing.resource_tracker")
    register_secret(getattr(args, "api_key", None))
    register_secret(os.environ.get("FRED_API_KEY"))
    from . import redact as _redact

    _redact.CONSOLE_TRACEBACKS = args.verbose  # -v keeps other libraries' tracebacks (redacted)
    install_log_redaction()
    _install_signal_handlers()
    try:
        commands = {"ingest": cmd_ingest, "backfill": cmd_backfill, "resume": cmd_resume, "runs": cmd_runs,
                    "serve": cmd_serve, "show": cmd_show, "changes": cmd_changes}
        return commands[args.command](args)
    except UsageError as exc:
        sys.stderr.write(f"fredflow: error: {redact(exc)}\n")
        return EXIT_USAGE
    except FatalRunError as exc:
        sys.stderr.write(f"fredflow: fatal: {redact(exc)} (nothing was committed)\n")
        return EXIT_FATAL
    except FredflowError as exc:
        sys.stderr.write(f"fredflow: fatal: {redact(exc)}\n")
        return EXIT_FATAL
    except KeyboardInterrupt as exc:
        line, code = _interrupted_line(exc, args)
        sys.stderr.write(redact(line))
        if called_as_program:
            # every finally has run (merge rolled back, Prefect server and cluster stopped, locks released);
            # do not wait at interpreter exit for threads still draining a request
            sys.stdout.flush()
            sys.stderr.flush()
            import os as _os

            _os._exit(code)
        return code
    finally:
        sys.stderr.flush()


if __name__ == "__main__":
    sys.exit(main())
