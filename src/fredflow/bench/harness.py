"""The bench loop: simulator per scenario size, runners interleaved over k repetitions, one process per run.

For each scenario and size the harness

1. starts the simulator (:class:`~fredflow.sim.SimProcess`, its own process);
2. counts the rows the catalog holds (the truth for verification) and times
   :func:`fredflow.sources.fred.parse.parse_observations` on a sample of real bodies
   (the CPU term of the ideal time, measured in this bench);
3. warms the simulator's body cache with one unrecorded asyncio run (unlimited
   scenarios), so no measured run pays for rendering;
4. runs ``reps`` rounds; each round runs every runner once, in an order
   rotated from round to round; every run is ``python -m fredflow.bench.worker``
   in a new process session (its CPU and peak RSS come from ``wait4``), with
   the simulator's stats reset before and read after;
5. counts the rows per series in the run's DuckDB file against the truth.

Prefect runs report to one Prefect API started for the bench
(:mod:`fredflow.bench.prefect_server`) unless ``PREFECT_API_URL`` is set.
"""

from __future__ import annotations

import os
import shutil
import statistics
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .processes import CpuSnapshot, Display, PrefectServer, run_process
from .results import SCHEMA_VERSION, validate_run
from .scenarios import Plan, Scenario

NOISY_SHARE = 0.5


# --------------------------------------------------------------------------- per scenario point


@dataclass
class Truth:
    per_series: dict[str, int]
    total: int


def catalog_truth(sim) -> Truth:  # noqa: ANN001
    catalog = sim.catalog
    per = {sid: catalog.observations(sid).num_rows for sid in catalog.series_ids}
    return Truth(per, sum(per.values()))


def _get(url: str, attempts: int = 40) -> bytes:
    for attempt in range(attempts):
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                return response.read()
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            time.sleep(min(0.05 * 2 ** attempt, 1.0))  # 429, injected faults: try again
    raise RuntimeError(f"cannot fetch a sample body from the simulator ({url.split('?')[0]})")


def measure_parse(sim, api_key: str, sample: int = 16, passes: int = 5) -> dict[str, Any]:  # noqa: ANN001
    """CPU µs per observation of :func:`fredflow.sources.fred.parse.parse_observations`, on real bodies of this catalog."""
    from fredflow.sources.fred.parse import parse_observations

    ids = sim.catalog.series_ids
    step = max(1, len(ids) // sample)
    chosen = ids[::step][:sample]
    bodies = []
    for sid in chosen:
        body = _get(f"{sim.url}/series/observations?series_id={sid}&api_key={api_key}&file_type=json")
        try:
            parse_observations(body)
        except ValueError:  # a truncated body from the faults scenario: fetch it again
            body = _get(f"{sim.url}/series/observations?series_id={sid}&api_key={api_key}&file_type=json")
        bodies.append(body)
    rows = sum(parse_observations(b).table.num_rows for b in bodies)  # warm
    per_pass = []
    for _ in range(passes):
        t0 = time.process_time()
        for body in bodies:
            parse_observations(body)
        per_pass.append(time.process_time() - t0)
    us = statistics.median(per_pass) / max(rows, 1) * 1e6
    return {"us_per_row": round(us, 4), "sample_series": len(bodies), "sample_rows": rows,
            "passes": [round(p, 4) for p in per_pass]}


def ideal_terms(scenario: Scenario, n_series: int, concurrency: int, parse: dict[str, Any], rows: int) -> dict[str, float]:
    requests = scenario.requests_min(n_series)
    rate_s = requests / scenario.rate if scenario.rate else 0.0
    latency_s = requests * scenario.latency / concurrency
    parse_s = parse["us_per_row"] * rows / 1e6
    return {"ideal_rate_s": round(rate_s, 4), "ideal_latency_s": round(latency_s, 4),
            "ideal_parse_s": round(parse_s, 4), "ideal_s": round(max(rate_s, latency_s, parse_s), 4)}


def verify(db: Path, truth: Truth) -> dict[str, Any]:
    import duckdb

    if not db.exists():
        return {"rows_in_db": 0, "series_in_db": 0, "rows_verified": False}
    con = duckdb.connect(str(db), read_only=True)
    try:
        per = dict(con.execute("SELECT series_id, count(*) FROM observations GROUP BY series_id").fetchall())
    finally:
        con.close()
    return {"rows_in_db": int(sum(per.values())), "series_in_db": len(per), "rows_verified": per == truth.per_series}


def _offset(worker: dict[str, Any], stats: dict[str, Any]) -> float | None:
    """Seconds from the simulator's stats reset (bucket 0 of admitted_per_second) to the call of ``ingest()``."""
    start = (worker.get("epoch") or {}).get("start")
    return round(start - stats["started_at"], 3) if start and stats.get("started_at") else None


def utilization(stats: dict[str, Any], worker: dict[str, Any], scenario: Scenario, concurrency: int) -> dict[str, Any]:
    per_second = list(stats.get("admitted_per_second") or [])
    admitted = int(stats.get("admitted", sum(per_second)))
    out: dict[str, Any] = {"rate_utilization": None, "rate_utilization_steady": None, "concurrency_utilization": None}
    wall = worker.get("wall_s") or 0.0
    if scenario.rate and wall > 0:
        out["rate_utilization"] = round(admitted / (scenario.rate * wall), 4)
        active = [i for i, c in enumerate(per_second) if c]
        if active:
            interior = per_second[active[0] + 1: active[-1]]  # whole seconds between the first and the last request
            if interior:
                out["rate_utilization_steady"] = round(statistics.median(interior) / scenario.rate, 4)
    fetch = worker.get("fetch_s") or 0.0
    if scenario.latency and fetch > 0:
        out["concurrency_utilization"] = round(admitted * scenario.latency / (concurrency * fetch), 4)
    return out


# --------------------------------------------------------------------------- the bench


@dataclass
class Bench:
    plan: Plan
    out: Path
    work: Path
    session_id: str
    display: Display
    thread_slots: int = 8
    dask_workers: int = 2
    dask_threads: int = 4
    keep_dbs: bool = False
    overhead_tasks: int = 200
    records: list[dict[str, Any]] = field(default_factory=list)
    overhead: dict[str, dict[str, Any]] = field(default_factory=dict)
    parse: dict[str, dict[str, Any]] = field(default_factory=dict)
    prefect: PrefectServer | None = None

    @property
    def runs_dir(self) -> Path:
        return self.out / "runs" / self.session_id

    def runner_options(self, runner: str) -> dict[str, Any]:
        if runner == "thread":
            return {"thread_slots": self.thread_slots}
        if runner == "dask":
            return {"workers": self.dask_workers, "threads_per_worker": self.dask_threads}
        return {}

    def env(self, runner: str) -> dict[str, str]:
        env = dict(os.environ)
        env.pop("FREDFLOW_FAIL_ONCE", None)
        if runner in ("thread", "dask") and self.prefect is not None and self.prefect.url:
            env["PREFECT_API_URL"] = self.prefect.url
        return env

    # -- Prefect per-task overhead

    def measure_overhead(self, runner: str) -> dict[str, Any]:
        self.display.stage(f"Prefect per-task overhead · {runner}")
        spec = {"runner": runner, "n_tasks": self.overhead_tasks, "workers": self.dask_workers,
                "threads_per_worker": self.dask_threads, "thread_slots": self.thread_slots}
        res = run_process("fredflow.bench.overhead", spec, self.work, f"overhead-{runner}", env=self.env(runner))
        result = dict(res.result)
        result["process_wall_s"] = round(res.wall_s, 3)
        self.overhead[runner] = result
        if result.get("ok"):
            self.display.log(f"[cyan]Prefect {runner}[/cyan]: {result['ms_per_task']:.1f} ms per task "
                             f"({result['slot_ms_per_task']:.0f} ms of a slot, {result['slots']} slots, "
                             f"{result['n_tasks']} no-op tasks), fixed {result['fixed_s']:.1f} s")
        else:
            self.display.log(f"[red]Prefect {runner} overhead failed[/red]: {result.get('error')}")
        return result

    # -- one run

    def run_one(self, scenario: Scenario, n_series: int, runner: str, rep: int, sim, truth: Truth,  # noqa: ANN001
                *, warmup: bool = False) -> dict[str, Any] | None:
        from fredflow.sim.server import DEMO_API_KEY

        name = f"{scenario.name}-n{n_series}-{runner}-r{rep}" + ("-warmup" if warmup else "")
        db = self.work / f"{name}.duckdb"
        staging = self.work / f"{name}.staging"
        settings = scenario.settings(sim.url, DEMO_API_KEY)
        concurrency = 1 if runner == "sequential" else scenario.concurrency
        spec = {"runner": runner, "runner_options": self.runner_options(runner), "db": str(db),
                "staging_root": str(staging), "settings": settings, "release": 1,
                "sequential_rate": scenario.effective_client_rate if scenario.rate else None}
        label = f"{scenario.name} n={n_series} · {runner} · " + ("warm-up" if warmup else f"rep {rep + 1}")
        self.display.run_started(label)
        sim.reset_stats()
        load = os.getloadavg()[0]
        before = CpuSnapshot.take(sim.pid, self.prefect.pid if self.prefect else None)
        started_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
        res = run_process("fredflow.bench.worker", spec, self.work, name, env=self.env(runner),
                          on_progress=self.display.run_progress)
        after = CpuSnapshot.take(sim.pid, self.prefect.pid if self.prefect else None)
        stats = sim.stats()
        worker = res.result
        checked = verify(db, truth)
        if not self.keep_dbs:
            db.unlink(missing_ok=True)
            Path(str(db) + ".wal").unlink(missing_ok=True)
            shutil.rmtree(staging, ignore_errors=True)
        if warmup:
            self.display.run_finished(f"[dim]warm-up {scenario.name} n={n_series}: {res.wall_s:.1f} s[/dim]",
                                      counted=False)
            return None

        summary = worker.get("summary") or {}
        ok = bool(worker.get("ok")) and res.returncode in (0, 3)
        wall = worker.get("wall_s")
        rows = summary.get("n_rows")
        requests = summary.get("requests")
        ideal = ideal_terms(scenario, n_series, concurrency, self.parse[f"{scenario.name}-{n_series}"], truth.total)
        sim_cpu = after.sim - before.sim
        prefect_cpu = (after.prefect - before.prefect) if self.prefect and self.prefect.pid else None
        background = (after.busy - before.busy) - res.cpu_s - sim_cpu - (prefect_cpu or 0.0) - (after.harness - before.harness)
        by_status = stats.get("by_status", {})
        overhead = self.overhead.get(runner, {})
        record: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION,
            "session_id": self.session_id,
            "run_key": name,
            "scenario": scenario.name,
            "runner": runner,
            "rep": rep,
            "n_series": n_series,
            "obs_per_series": scenario.obs_per_series,
            "latency_s": scenario.latency,
            "rate_limit": scenario.rate,
            "fault_rate": scenario.fault_rate,
            "concurrency": concurrency,
            "runner_options": self.runner_options(runner),
            "started_at": started_at,
            "ok": ok,
            "error": worker.get("error") if not ok else None,
            "exit_code": res.returncode,
            "status": summary.get("status", "failed"),
            "wall_s": wall,
            "process_wall_s": round(res.wall_s, 4),
            "startup_s": worker.get("startup_s"),
            "import_s": worker.get("import_s"),
            "plan_s": worker.get("plan_s"),
            "fetch_s": worker.get("fetch_s"),
            "merge_s": worker.get("merge_s"),
            "first_batch_s": worker.get("first_batch_s"),
            "n_batches": worker.get("n_batches"),
            "requests": requests,
            "requests_per_s": round(requests / wall, 3) if ok and wall else None,
            "rows": rows,
            "rows_per_s": round(rows / wall, 1) if ok and wall else None,
            "n_failed": summary.get("n_failed"),
            "retries": summary.get("retries"),
            "throttled_client": summary.get("throttled"),
            "server_requests": int(stats.get("requests", 0)),
            "admitted": int(stats.get("admitted", 0)),
            "throttled_429": int(by_status.get("429", 0)),
            "faults_injected": int(sum(stats.get("faults", {}).values())),
            "admitted_per_second": list(stats.get("admitted_per_second", [])),
            "admitted_t0_s": _offset(worker, stats),
            **(utilization(stats, worker, scenario, concurrency) if ok else
               {"rate_utilization": None, "rate_utilization_steady": None, "concurrency_utilization": None}),
            "prefect_task_overhead_ms": overhead.get("ms_per_task") if runner in ("thread", "dask") else None,
            "cpu_s": worker.get("cpu_s"),
            "process_cpu_s": round(res.cpu_s, 3),
            "peak_rss_mb": worker.get("peak_rss_mb"),
            "peak_children_rss_mb": worker.get("peak_children_rss_mb"),
            "peak_tree_rss_mb": worker.get("peak_tree_rss_mb"),
            "peak_fetch_rss_mb": worker.get("peak_fetch_rss_mb"),
            "peak_merge_rss_mb": worker.get("peak_merge_rss_mb"),
            "process_peak_rss_mb": res.maxrss_mb,
            "sim_cpu_s": round(sim_cpu, 3),
            "prefect_server_cpu_s": round(prefect_cpu, 3) if prefect_cpu is not None else None,
            "background_cpu_s": round(max(0.0, background), 3),
            # other processes used more than half a core on average while this run's process lived
            # (the kernel writing back our own files counts as "other": a little is normal)
            "noisy": background > NOISY_SHARE * res.wall_s,
            "loadavg_1m": round(load, 2),
            "prefect_imported": worker.get("prefect_imported"),
            "expected_rows": truth.total,
            **checked,
            **ideal,
            "efficiency": round(ideal["ideal_s"] / wall, 4) if ok and wall else None,
        }
        problems = validate_run(record)
        if problems:  # a harness bug, not a run failure: say so loudly but keep the data
            record["schema_problems"] = problems
            self.display.log(f"[red]schema problems in {name}: {problems}[/red]")
        from .results import write_json

        write_json(self.runs_dir / f"{name}.json", record)
        self.records.append(record)
        if ok:
            mark = "[green]✓ verified[/green]" if record["rows_verified"] else "[red]✗ rows differ[/red]"
            util = f", util {record['rate_utilization']:.2f}" if record["rate_utilization"] is not None else ""
            self.display.run_finished(
                f"{label}: [bold]{wall:.2f} s[/bold] ({record['requests_per_s']:.0f} req/s, "
                f"{record['rows_per_s']:,.0f} rows/s{util}, {record['throttled_429']} 429s, {record['retries']} retries, "
                f"cpu {record['cpu_s']:.1f} s, rss {record['peak_tree_rss_mb']:.0f} MB) {record['rows_in_db']:,} rows {mark}")
        else:
            self.display.run_finished(f"[red]{label}: FAILED[/red] {record['error']}")
        return record

    # -- a scenario

    def run_scenario(self, scenario: Scenario) -> None:
        from fredflow.sim import SimProcess
        from fredflow.sim.server import DEMO_API_KEY

        runners = self.plan.runners_of(scenario)
        if not runners:
            return
        for n_series in scenario.sizes:
            self.display.stage(f"{scenario.name} n={n_series}: starting the simulator")
            with SimProcess(startup_timeout=60.0, **scenario.sim_config(n_series)) as sim:
                self.display.stage(f"{scenario.name} n={n_series}: truth and parse CPU")
                truth = catalog_truth(sim)
                self.parse[f"{scenario.name}-{n_series}"] = measure_parse(sim, DEMO_API_KEY)
                if scenario.warmup:
                    self.run_one(scenario, n_series, "asyncio", 0, sim, truth, warmup=True)
                for rep in range(self.plan.reps):
                    shift = rep % len(runners)
                    for runner in runners[shift:] + runners[:shift]:
                        if rep < self.plan.reps_of(scenario, runner):
                            self.run_one(scenario, n_series, runner, rep, sim, truth)

    def run(self) -> None:
        self.runs_dir.mkdir(parents=True, exist_ok=True)
        prefect_runners = self.plan.prefect_runners()
        if prefect_runners:
            self.display.stage("starting a Prefect API for the bench")
            self.prefect = PrefectServer(self.work / "prefect-server.log").__enter__()
        try:
            for runner in prefect_runners:
                self.measure_overhead(runner)
            for scenario in self.plan.scenarios:
                self.run_scenario(scenario)
        finally:
            if self.prefect is not None:
                self.prefect.__exit__(None, None, None)


def new_session_id() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def make_work_dir(path: Path | None) -> tuple[Path, bool]:
    if path is not None:
        path.mkdir(parents=True, exist_ok=True)
        return path, False
    return Path(tempfile.mkdtemp(prefix="fredflow-bench-")), True
