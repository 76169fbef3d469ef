"""One measured run, in its own process: ``python -m fredflow.bench.worker SPEC.json RESULT.json``.

The harness starts this module per run so that CPU seconds and peak RSS are
the ingester's own. It imports only what its runner needs (no Prefect for
``asyncio`` and ``sequential``), times the phases of the run through a
:class:`~fredflow.progress.Progress`, samples the RSS of its process tree,
and writes one JSON object to ``RESULT.json``. Progress lines
(``progress DONE TOTAL ROWS``) go to stdout for the harness's display.

Keep the module's top level light: Dask's worker processes are spawned and
re-import it as ``__mp_main__``.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import threading
import time
import traceback
from typing import Any

_T_PROCESS = time.perf_counter()


def _mb(kib: int) -> float:
    return round(kib / 1024, 1)  # ru_maxrss is in KiB on Linux


class TreeRssSampler(threading.Thread):
    """Peak RSS of this process (plus its descendants when ``children``), every ``interval`` seconds.

    ``phase`` is set by the run ("fetch" until the fetch ends, then "merge"):
    the peaks are kept per phase too.
    """

    def __init__(self, interval: float = 0.1, children: bool = False) -> None:
        super().__init__(daemon=True, name="rss-sampler")
        self.interval = interval
        self.children = children
        self.peak = 0
        self.phase = "fetch"
        self.peaks: dict[str, int] = {}
        self._halt = threading.Event()
        self._page = os.sysconf("SC_PAGE_SIZE")

    def _self_rss(self) -> int:
        with open("/proc/self/statm", "rb") as fh:
            return int(fh.read().split()[1]) * self._page

    def sample(self) -> None:
        total = self._self_rss()
        if self.children:
            import psutil

            for child in psutil.Process().children(recursive=True):
                try:
                    total += child.memory_info().rss
                except psutil.Error:
                    pass
        self.peak = max(self.peak, total)
        self.peaks[self.phase] = max(self.peaks.get(self.phase, 0), total)

    def run(self) -> None:
        while not self._halt.is_set():
            try:
                self.sample()
            except Exception:  # noqa: BLE001 - never let sampling break a run
                pass
            self._halt.wait(self.interval)

    def stop(self) -> dict[str, float | None]:
        self._halt.set()
        self.join(timeout=2)
        try:
            self.sample()
        except Exception:  # noqa: BLE001
            pass
        mb = {k: round(v / 2**20, 1) for k, v in self.peaks.items()}
        return {"peak_tree_rss_mb": round(self.peak / 2**20, 1), "peak_fetch_rss_mb": mb.get("fetch"),
                "peak_merge_rss_mb": mb.get("merge")}


class Phases:
    """A :class:`fredflow.progress.Progress` that timestamps the run's phases and reports progress on stdout."""

    def __init__(self, every: float = 0.25, sampler: TreeRssSampler | None = None) -> None:
        self.sampler = sampler
        self.t_start = time.perf_counter()
        self.t_fetch: float | None = None
        self.t_first_batch: float | None = None
        self.t_merge: float | None = None
        self.n_batches = 0
        self.n_series = 0
        self.done = self.rows = 0
        self.epoch = {"start": time.time()}
        self._every = every
        self._last = 0.0

    # Progress protocol (fredflow runners)
    def start(self, n_series: int, n_batches: int) -> None:
        self.t_fetch = time.perf_counter()
        self.epoch["fetch"] = time.time()
        self.n_series, self.n_batches = n_series, n_batches
        self.report(0, n_series, 0, force=True)

    def batch_done(self, manifest) -> None:  # noqa: ANN001
        if self.t_first_batch is None:
            self.t_first_batch = time.perf_counter()
        self.done += manifest.n_series
        self.rows += manifest.rows
        self.report(self.done, self.n_series, self.rows)

    def close(self) -> None:
        if self.sampler is not None:
            self.sampler.phase = "merge"
        self.t_merge = time.perf_counter()
        self.epoch["merge"] = time.time()

    # the sequential baseline
    def phase(self, name: str) -> None:
        if name == "fetch":
            self.start(0, 0)
        elif name == "merge":
            self.close()

    def series_done(self, done: int, total: int, rows: int) -> None:
        if self.t_first_batch is None:
            self.t_first_batch = time.perf_counter()
        self.n_series, self.done, self.rows = total, done, rows
        self.report(done, total, rows)

    def report(self, done: int, total: int, rows: int, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._last >= self._every or done == total:
            self._last = now
            sys.stdout.write(f"progress {done} {total} {rows}\n")
            sys.stdout.flush()

    def timings(self, t_end: float) -> dict[str, Any]:
        t_fetch = self.t_fetch if self.t_fetch is not None else t_end
        t_merge = self.t_merge if self.t_merge is not None else t_end
        return {
            "plan_s": round(t_fetch - self.t_start, 4),
            "fetch_s": round(t_merge - t_fetch, 4),
            "merge_s": round(t_end - t_merge, 4),
            "first_batch_s": round(self.t_first_batch - t_fetch, 4) if self.t_first_batch else None,
            "n_batches": self.n_batches,
            "epoch": {**self.epoch, "end": time.time()},
        }


def _cpu(usage: resource.struct_rusage) -> float:
    return usage.ru_utime + usage.ru_stime


def run(spec: dict[str, Any]) -> dict[str, Any]:
    runner = spec["runner"]
    sampler = TreeRssSampler(children=runner == "dask")
    sampler.start()
    t_import = time.perf_counter()
    if runner == "sequential":
        from fredflow.bench.sequential import run_sequential
    else:
        from fredflow import CatalogSpec, Settings, ingest

        if runner in ("thread", "dask"):
            import fredflow.runners.prefect.flows  # noqa: F401 - imported before the clock starts
    import_s = time.perf_counter() - t_import

    self0 = resource.getrusage(resource.RUSAGE_SELF)
    children0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    phases = Phases(sampler=sampler)
    t0 = time.perf_counter()
    if runner == "sequential":
        s = spec["settings"]
        summary = run_sequential(
            spec["db"], s["api_url"], s["api_key"], rate=spec.get("sequential_rate"), timeout=s["timeout"],
            max_attempts=s["max_attempts"], backoff_base=s["backoff_base"], progress=phases.series_done,
            phase=phases.phase,
        )
    else:
        result = ingest(
            spec["db"], CatalogSpec(release=spec.get("release", 1)), settings=Settings(**spec["settings"]),
            runner=runner, runner_options=spec.get("runner_options") or {}, staging_root=spec.get("staging_root"),
            progress=phases,
        )
        summary = result.to_dict()
    t1 = time.perf_counter()
    self1 = resource.getrusage(resource.RUSAGE_SELF)
    children1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    peaks = sampler.stop()
    return {
        "ok": True,
        "error": None,
        "summary": summary,
        "wall_s": round(t1 - t0, 4),
        "import_s": round(import_s, 4),
        "startup_s": round(t_import - _T_PROCESS, 4),
        **phases.timings(t1),
        "cpu_s": round(_cpu(self1) - _cpu(self0) + _cpu(children1) - _cpu(children0), 3),
        "cpu_self_s": round(_cpu(self1) - _cpu(self0), 3),
        "cpu_children_s": round(_cpu(children1) - _cpu(children0), 3),
        "peak_rss_mb": _mb(self1.ru_maxrss),
        "peak_children_rss_mb": _mb(children1.ru_maxrss),
        **peaks,
        "prefect_imported": any(m == "prefect" or m.startswith("prefect.") for m in sys.modules),
        "dask_imported": any(m == "distributed" or m.startswith("distributed.") for m in sys.modules),
    }


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    spec_path, result_path = argv
    with open(spec_path, encoding="utf-8") as fh:
        spec = json.load(fh)
    try:
        result = run(spec)
        code = 0
    except BaseException as exc:  # noqa: BLE001 - reported to the harness
        traceback.print_exc()
        result = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:2000]}
        code = 1
    tmp = result_path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(result, fh, default=str)
    os.replace(tmp, result_path)
    return code


if __name__ == "__main__":
    sys.exit(main())
