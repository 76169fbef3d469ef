"""What a flow run did, as Prefect shows it: a markdown summary artifact, a table artifact of the failed
series, the final state's message.

Artifact keys are stable per deployment (``<deployment>-summary``, ``<deployment>-failures``), so the
UI's Artifacts page keeps one entry per deployment with a version for every run; a run without a
deployment (``fredflow ingest --runner dask``, a flow called from Python) keys them by flow and
database (``fredflow-ingest-<db>-summary``).
"""

from __future__ import annotations

import re
from typing import Any

from ...options import RunOptions
from ...run.execute import RunSummary
from ...run.plan import RunPlan
from ...settings import Settings
from ...staging import BatchManifest


def catalog_label(options: RunOptions) -> str:
    """``release 10``, ``category 32991``, ``GDP``, ``12 series``, ``file ids.txt``, ``resume <id>``."""
    spec = options.catalog
    if spec is None:
        return f"resume {options.resume}" if options.resume else "no catalog"
    if spec.series is not None:
        return spec.series[0] if len(spec.series) == 1 else f"{len(spec.series)} series"
    if spec.series_file is not None:
        return f"file {spec.series_file.name}"
    return f"release {spec.release}" if spec.release is not None else f"category {spec.category}"


def artifact_key(options: RunOptions, kind: str) -> str:
    """Lower-case letters, digits and dashes (Prefect's rule for artifact keys)."""
    from prefect.runtime import deployment, flow_run

    base = deployment.name if deployment.id else f"{flow_run.flow_name or 'fredflow'}-{options.db.stem}"
    return re.sub(r"[^a-z0-9]+", "-", f"{base}-{kind}".lower()).strip("-")


def state_message(summary: RunSummary) -> str:
    text = f"{summary.n_series} series, {summary.n_rows:,} rows, {summary.requests} requests"
    if summary.n_failed:
        shown = ", ".join(summary.failed[:5]) + (" …" if len(summary.failed) > 5 else "")
        text = f"{summary.n_failed} of {summary.n_series} series failed ({shown}); " + text
    return f"run {summary.run_id} {summary.status}: {text}"


def resume_command(options: RunOptions, run_id: str) -> str:
    staging = f" --staging-dir {options.staging_dir}" if options.staging_dir else ""
    return f"fredflow resume {run_id} --db {options.db.absolute()}{staging}"


def _flow_run_id() -> str:
    from prefect.runtime import flow_run

    return str(flow_run.id or "")


def summary_markdown(options: RunOptions, summary: RunSummary, settings: Settings, runner: str) -> str:
    scope = ""
    if summary.mode == "incremental":
        scope = f" ({summary.n_series} of {summary.n_catalog} catalog series changed or new)"
    if summary.resumed_batches:
        scope += f" (resumed: {summary.resumed_batches} batches were already staged)"
    rate = (f"{summary.achieved_rps:.2f} req/s = {summary.utilization:.0%} of settings.rate {settings.rate:g}"
            if summary.achieved_rps else "fetch too short to measure its rate")
    rows = [
        ("status", f"**{summary.status}**" + (f": {summary.n_failed} series failed" if summary.n_failed else "")),
        ("database", f"`{options.db.absolute()}`"), ("catalog", catalog_label(options)),
        ("mode", summary.mode + scope), ("runner", runner),
        ("series", f"{summary.n_series:,}"), ("failed series", f"{summary.n_failed:,}"),
        ("rows", f"{summary.n_rows:,}"), ("requests", f"{summary.requests:,}"),
        ("retries", f"{summary.retries:,}"), ("429s", f"{summary.throttled:,}"),
        ("utilization", rate), ("seconds", f"{summary.seconds:.1f}"),
        ("run id", f"`{summary.run_id}`"), ("flow run", f"`{_flow_run_id()}`"),
    ]
    lines = [f"## fredflow run `{summary.run_id}`: {summary.status}", "", "| | |", "|---|---|"]
    lines += [f"| {name} | {value} |" for name, value in rows]
    if summary.failed:
        lines += ["", f"Failed series are in the `failures` table artifact and in DuckDB: "
                      f"`SELECT * FROM ingest_failures WHERE run_id = '{summary.run_id}'`"]
    return "\n".join(lines) + "\n"


def failures_table(manifests: list[BatchManifest]) -> list[dict[str, Any]]:
    return [{"series_id": f.series_id, "http_status": f.http_status, "attempts": f.attempts, "error": f.message,
             "batch": m.batch_index} for m in sorted(manifests, key=lambda m: m.batch_index) for f in m.failures]


def publish(options: RunOptions, summary: RunSummary, settings: Settings, shape, manifests) -> None:  # noqa: ANN001
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    runner = shape.name if shape.name == "thread" else (
        f"dask {shape.dask_address}" if shape.dask_address else
        f"dask ({shape.workers} workers × {shape.threads_per_worker} threads)")
    create_markdown_artifact(key=artifact_key(options, "summary"),
                             markdown=summary_markdown(options, summary, settings, runner),
                             description=state_message(summary))
    table = failures_table(manifests) or {"series_id": [], "http_status": [], "attempts": [], "error": [],
                                          "batch": []}
    create_table_artifact(key=artifact_key(options, "failures"), table=table,
                          description=f"run {summary.run_id}: {summary.n_failed} failed series")


def publish_failure(options: RunOptions, plan: RunPlan | None, exc: BaseException) -> None:
    """A run that raised: what happened and, when its staged files were kept, how to finish it."""
    from prefect.artifacts import create_markdown_artifact

    from ...run.plan import resumable_runs

    run_id = plan.run_id if plan is not None else None
    lines = [f"## fredflow run `{run_id or '(not planned)'}`: failed", "", "| | |", "|---|---|",
             "| status | **failed**: nothing was committed |", f"| error | {type(exc).__name__}: {exc} |",
             f"| database | `{options.db.absolute()}` |", f"| catalog | {catalog_label(options)} |",
             f"| mode | {options.mode} |", f"| run id | `{run_id}` |", f"| flow run | `{_flow_run_id()}` |"]
    if run_id and any(r.run_id == run_id for r in resumable_runs(options.db, options.staging_dir)):
        lines += ["", "Its staged batches were kept; finish it with:", "",
                  f"    {resume_command(options, run_id)}", "",
                  f"or run the deployment with `options.resume: {run_id}`."]
    create_markdown_artifact(key=artifact_key(options, "summary"), markdown="\n".join(lines) + "\n",
                             description=f"run {run_id} failed: {type(exc).__name__}")
