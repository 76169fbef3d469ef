"""Prefect's per-task overhead, measured: ``python -m fredflow.bench.overhead SPEC.json RESULT.json``.

A flow on the same task runner fredflow's ``thread``/``dask`` runners build
(:func:`fredflow.runners.prefect.task_runners.task_runner_for`) maps ``warm`` no-op
async tasks (starting the cluster, importing everything in the workers), then
maps ``n_tasks`` more and waits for all of them. The first phase is the fixed
cost; the second, divided by ``n_tasks``, is the overhead per task
(``ms_per_task``, wall clock with ``slots`` tasks running at once) and, times
``slots``, the time a task holds a slot beyond its own work (``slot_ms_per_task``).
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from typing import Any

import fredflow.runners.prefect  # noqa: F401 - sets Prefect's env defaults before prefect loads

from prefect import flow, task  # noqa: E402 - this module is Prefect-only
from prefect.cache_policies import NO_CACHE  # noqa: E402


@task(name="noop", cache_policy=NO_CACHE, persist_result=False)
async def noop(i: int) -> int:
    return i


def _wait(futures) -> None:  # noqa: ANN001
    for future in futures:
        future.result()


@flow(name="fredflow-bench-overhead", log_prints=False)
def overhead_flow(n_tasks: int, warm: int) -> dict[str, float]:
    t0 = time.perf_counter()
    _wait(noop.map(range(warm)))
    t1 = time.perf_counter()
    _wait(noop.map(range(n_tasks)))
    t2 = time.perf_counter()
    return {"warm_s": t1 - t0, "map_s": t2 - t1}


def measure(runner: str, n_tasks: int, *, workers: int, threads_per_worker: int, thread_slots: int) -> dict[str, Any]:
    from fredflow.runners.prefect.task_runners import RunnerShape, task_runner_for

    shape = RunnerShape(runner, workers=workers, threads_per_worker=threads_per_worker, thread_slots=thread_slots)
    slots = shape.slots
    task_runner = task_runner_for(shape)
    t0 = time.perf_counter()
    timings = overhead_flow.with_options(task_runner=task_runner)(n_tasks=n_tasks, warm=slots)
    total = time.perf_counter() - t0
    return {
        "runner": runner,
        "n_tasks": n_tasks,
        "slots": slots,
        "fixed_s": round(total - timings["map_s"], 3),
        "map_s": round(timings["map_s"], 3),
        "ms_per_task": round(timings["map_s"] / n_tasks * 1000, 2),
        "slot_ms_per_task": round(timings["map_s"] * slots / n_tasks * 1000, 2),
    }


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    with open(argv[0], encoding="utf-8") as fh:
        spec = json.load(fh)
    try:
        result = {"ok": True, **measure(spec["runner"], spec["n_tasks"], workers=spec["workers"],
                                        threads_per_worker=spec["threads_per_worker"],
                                        thread_slots=spec["thread_slots"])}
        code = 0
    except BaseException as exc:  # noqa: BLE001
        traceback.print_exc()
        result = {"ok": False, "runner": spec.get("runner"), "error": f"{type(exc).__name__}: {exc}"[:2000]}
        code = 1
    with open(argv[1] + ".tmp", "w", encoding="utf-8") as fh:
        json.dump(result, fh)
    os.replace(argv[1] + ".tmp", argv[1])
    return code


if __name__ == "__main__":
    sys.exit(main())
